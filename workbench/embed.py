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
CPU_BATCH = 64  # texts per batch on the CPU (and MPS): the measured figures used it
GPU_MAX_BATCH = 1024


def batch_texts(encoder) -> int:
    """Return the texts per embedding batch: 64 off CUDA; on a CUDA GPU as many texts of the
    encoder's longest input as fit 30% of its free memory (activations of the widest layer,
    x8 for attention and temporaries), at most GPU_MAX_BATCH."""
    from .device import rows_that_fit

    device = str(getattr(encoder, "device", "cpu"))
    if not device.startswith("cuda"):
        return CPU_BATCH
    config = getattr(getattr(encoder[0], "auto_model", None), "config", None)
    width = getattr(config, "intermediate_size", None) or 4096  # unknown: a large encoder's
    per_text = 8 * 4 * width * (getattr(encoder, "max_seq_length", None) or 512)
    return rows_that_fit(device, per_text, cpu_rows=CPU_BATCH, most=GPU_MAX_BATCH)


def embed_texts(texts: Sequence[str], encoder, *, batch_size: int | None = None,
                progress: Progress | None = None) -> np.ndarray:
    """Return unit-length float32 vectors for texts, embedded in length-sorted batches
    (batch_size None: batch_texts, the encoder's device decides)."""
    batch_size = batch_size or batch_texts(encoder)
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
               progress: Progress | None = None, device: str = "auto") -> np.ndarray:
    """Return one vector per frame row, from the cache or the model (then cached).

    Vectors are cached under the key of the backend that makes them (models.embedding_key):
    the given encoder's, else the one load_embedder picks on ``device`` (ONNX on a CPU, else
    torch).
    """
    from .models import embed_backend, encoder_backend, load_embedder

    ids = frame["id"].tolist()
    backend = embed_backend("auto", model, device) if encoder is None \
        else encoder_backend(encoder)
    cached = cache.get_embeddings(ids, model, field, backend=backend)
    texts = dict(zip(ids, field_texts(frame, field)))
    missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing and encoder is None:
        encoder = load_embedder(model, device=device)
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
