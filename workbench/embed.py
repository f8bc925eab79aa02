"""Embeddings of rows with the bundled (or any local) sentence-transformers model, cached.

Rows are embedded once per (content id, field, model): identical texts share one vector and a
second run over the same data reads the cache it is handed (``cache.StoreCache``, see
``curate.embed_frame``) instead of running the model. The job that fills the cache for a
version is the "embed" task in tasks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from .dedup import field_texts

Progress = Callable[[int, int], None]


def embed_texts(texts: Sequence[str], encoder, *, batch_size: int = 64,
                progress: Progress | None = None) -> np.ndarray:
    """Return unit-length float32 vectors for texts, embedded in length-sorted batches."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    dim = getattr(encoder, "get_embedding_dimension", None) or \
        encoder.get_sentence_embedding_dimension
    out = np.zeros((len(texts), dim()), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        out[idx] = encoder.encode([texts[i] for i in idx], batch_size=len(idx),
                                  normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return out


def embed_rows(frame: pd.DataFrame, *, cache, field: str = "conversation",
               model: str = "default", encoder=None, chunk: int = 1024,
               progress: Progress | None = None) -> np.ndarray:
    """Return one vector per frame row, from the cache or the model (then cached).

    Vectors are cached under the key of the backend that makes them (models.embedding_key):
    the given encoder's, else the one load_embedder picks here (ONNX on a CPU, else torch).
    """
    from .models import embed_backend, encoder_backend, load_embedder

    ids = frame["id"].tolist()
    backend = embed_backend("auto", model) if encoder is None else encoder_backend(encoder)
    cached = cache.get_embeddings(ids, model, field, backend=backend)
    texts = dict(zip(ids, field_texts(frame, field)))
    missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing and encoder is None:
        encoder = load_embedder(model)
        if encoder_backend(encoder) != backend:  # ONNX fell back to torch: another cache key
            backend = encoder_backend(encoder)
            cached = cache.get_embeddings(ids, model, field, backend=backend)
            missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing:
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            vectors = embed_texts([texts[i] for i in part], encoder)
            # A short write per chunk, so others can work meanwhile.
            cache.put_embeddings(part, vectors, model, field, backend=backend)
            cached.update(zip(part, vectors))
            if progress:
                progress(min(start + chunk, len(missing)), len(missing))
    return np.stack([cached[i] for i in ids]) if ids else np.zeros((0, 384), np.float32)
