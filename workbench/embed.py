"""Embeddings of rows with the bundled (or any local) sentence-transformers model, cached.

Rows are embedded once per (content id, field, model): identical texts share one vector and a
second run over the same data reads the store's cache instead of running the model.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .cache import get_embeddings, put_embeddings
from .dedup import field_texts
from .store import Store

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


def embed_frame(store: Store, frame: pd.DataFrame, *, field: str = "conversation",
                model: str = "default", encoder=None, chunk: int = 1024,
                progress: Progress | None = None) -> np.ndarray:
    """Return one vector per frame row, from the cache or the model (then cached).

    Vectors are cached under the key of the backend that makes them (models.embedding_key):
    the given encoder's, else the one load_embedder picks here (ONNX on a CPU, else torch).
    """
    from .models import embed_backend, encoder_backend, load_embedder

    ids = frame["id"].tolist()
    backend = embed_backend("auto", model) if encoder is None else encoder_backend(encoder)
    cached = get_embeddings(store, ids, model, field, backend=backend)
    texts = dict(zip(ids, field_texts(frame, field)))
    missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing and encoder is None:
        encoder = load_embedder(model)
        if encoder_backend(encoder) != backend:  # ONNX fell back to torch: another cache key
            backend = encoder_backend(encoder)
            cached = get_embeddings(store, ids, model, field, backend=backend)
            missing = [i for i in dict.fromkeys(ids) if i not in cached]
    if missing:
        for start in range(0, len(missing), chunk):
            part = missing[start:start + chunk]
            vectors = embed_texts([texts[i] for i in part], encoder)
            # A short write per chunk, so others can work meanwhile.
            put_embeddings(store, part, vectors, model, field, backend=backend)
            cached.update(zip(part, vectors))
            if progress:
                progress(min(start + chunk, len(missing)), len(missing))
    return np.stack([cached[i] for i in ids]) if ids else np.zeros((0, 384), np.float32)


def embed_task(params: dict, ctx) -> dict:
    """Job task: embed a dataset version's field(s) into the store's cache; return counts.

    ``params["fields"]`` (a list) embeds several fields one after the other in one job, with
    one progress bar over all of them; ``params["field"]`` names a single one.
    """
    store = Store(params["store"])
    frame = store.frame(int(params["version_id"]))
    fields = params.get("fields") or [params.get("field", "conversation")]
    model = params.get("model", "default")
    dim = 0
    for i, field in enumerate(fields):
        ctx.log(f"embedding {len(frame)} rows ({field}, {i + 1} of {len(fields)}) with {model}")

        def report(done: int, total: int, i: int = i) -> None:
            ctx.progress(i * total + done, len(fields) * total)

        vectors = embed_frame(store, frame, field=field, model=model, progress=report)
        dim = int(vectors.shape[1]) if len(vectors) else 0
    return {"rows": len(frame), "fields": fields, "dim": dim}
