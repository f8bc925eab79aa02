"""Caches in the store keyed by content id: embeddings and scores survive re-imports.

A row's ``id`` hashes its conversation, so an embedding or a score computed once is found
again for the same text in any dataset or version. Writes are short transactions, so a
background job can fill the cache while the app reads.

Embeddings are keyed by (id, model, field), where the stored model is
``models.embedding_key(model, backend)``: callers pass the model name ("default") and read or
write the vectors of the backend that embeds here. Torch and fp32 ONNX vectors are the same
numbers and share a key; int8 ONNX ones (models.ONNX_INT8) get their own, so none are mixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa

from .store import Store


def params_hash(params: dict) -> str:
    """Return a short stable hash of scorer parameters (key order does not matter)."""
    return hashlib.blake2b(orjson.dumps(params, option=orjson.OPT_SORT_KEYS, default=str),
                           digest_size=8).hexdigest()


def get_embeddings(store: Store, ids: Sequence[str], model: str, field: str, *,
                   backend: str = "auto") -> dict[str, np.ndarray]:
    """Return the cached vectors (of model as backend makes them) for those ids that have one."""
    if not len(ids) or not _any_vectors(store, model, field):
        return {}
    model = _embedding_key(model, backend)
    with store.connect() as con:
        con.register("_ids", pa.table({"id": pa.array(list(set(ids)), pa.string())}))
        table = con.sql("""SELECT e.id, e.vector FROM embeddings e SEMI JOIN _ids USING (id)
                           WHERE e.model = $model AND e.field = $field""",
                        params={"model": model, "field": field}).to_arrow_table()
        con.unregister("_ids")
    if table.num_rows == 0:
        return {}
    flat = table.column("vector").combine_chunks()
    vectors = np.asarray(flat.flatten(), dtype=np.float32).reshape(table.num_rows, -1)
    return dict(zip(table.column("id").to_pylist(), vectors))


def count_embedded(store: Store, ids: Sequence[str], model: str, field: str, *,
                   backend: str = "auto") -> int:
    """Return how many of the distinct ids have a cached vector (of model as backend makes
    them), without reading the vectors."""
    if not len(ids) or not _any_vectors(store, model, field):
        return 0
    model = _embedding_key(model, backend)
    with store.connect() as con:
        con.register("_ids", pa.table({"id": pa.array(list(set(ids)), pa.string())}))
        n = con.execute("""SELECT count(DISTINCT id) FROM embeddings SEMI JOIN _ids USING (id)
                           WHERE model = ? AND field = ?""", [model, field]).fetchall()[0][0]
        con.unregister("_ids")
    return int(n)


def count_embedded_version(store: Store, version_id: int, model: str, field: str, *,
                           backend: str = "auto") -> tuple[int, int]:
    """Return (distinct ids of a version with a cached vector, distinct ids of the version),
    counted in the store without reading the ids or the vectors."""
    with store.connect() as con:
        ids = """SELECT DISTINCT r.id FROM version_rows vr JOIN rows r USING (row_key)
                 WHERE vr.version_id = ?"""
        total = con.execute(f"SELECT count(*) FROM ({ids})", [int(version_id)]).fetchall()[0][0]
        if not total or not _any_vectors(store, model, field):
            return 0, int(total)
        found = con.execute(f"""SELECT count(DISTINCT e.id) FROM embeddings e SEMI JOIN ({ids})
            v USING (id) WHERE e.model = ? AND e.field = ?""",
                            [int(version_id), _embedding_key(model, backend), field]
                            ).fetchall()[0][0]
    return int(found), int(total)


def unembedded_positions(store: Store, version_id: int, model: str, field: str, *,
                         backend: str = "auto") -> np.ndarray:
    """Return, sorted, the position of the first row of each distinct content id of a version
    that has no cached vector (of model as backend makes them): the rows to embed, found in
    the store without reading ids or vectors into this process."""
    with store.connect() as con:
        firsts = """SELECT r.id, min(vr.pos) AS pos FROM version_rows vr JOIN rows r
                    USING (row_key) WHERE vr.version_id = ? GROUP BY r.id"""
        if not _any_vectors(store, model, field):
            sql, args = f"SELECT pos FROM ({firsts}) ORDER BY pos", [int(version_id)]
        else:
            sql = f"""SELECT f.pos FROM ({firsts}) f ANTI JOIN (SELECT id FROM embeddings
                WHERE model = ? AND field = ?) e USING (id) ORDER BY f.pos"""
            args = [int(version_id), _embedding_key(model, backend), field]
        found = con.execute(sql, args).fetchnumpy()["pos"]
    return np.asarray(found, dtype=np.int64)


def put_embeddings(store: Store, ids: Sequence[str], vectors: np.ndarray, model: str,
                   field: str, *, backend: str = "auto") -> int:
    """Store vectors (made by backend; "auto": as loaded here) for ids not cached yet; return
    how many were added."""
    if not len(ids):
        return 0
    model = _embedding_key(model, backend)
    vectors = np.asarray(vectors, dtype=np.float32)
    table = pa.table({"id": pa.array(list(ids), pa.string()),
                      "vector": pa.FixedSizeListArray.from_arrays(vectors.reshape(-1),
                                                                  vectors.shape[1])})
    with store.transaction() as con:
        con.register("_new", table)
        before = con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]
        con.execute("""INSERT INTO embeddings SELECT DISTINCT ON (n.id) n.id, ?, ?,
            n.vector::FLOAT[] FROM _new n WHERE n.id NOT IN (SELECT id FROM embeddings
            WHERE model = ? AND field = ?)""", [model, field, model, field])
        after = con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]
        con.unregister("_new")
    return after - before


def _any_vectors(store: Store, model: str, field: str) -> bool:
    """Whether the store holds any vector of this model (under any backend's key) and field:
    without one, nothing is cached whatever the key, and the key (which may import torch to
    look for a GPU) is not needed."""
    with store.connect() as con:
        return bool(con.execute("""SELECT 1 FROM embeddings WHERE field = ? AND (model = ?
                                   OR starts_with(model, ?)) LIMIT 1""",
                                [field, model, f"{model}@"]).fetchall())


def any_embedding(store: Store, model: str, field: str) -> bool:
    """Return whether the store holds any vector of this model and field (any backend)."""
    return _any_vectors(store, model, field)


def _embedding_key(model: str, backend: str) -> str:
    from .models import embedding_key  # imports torch: only once embeddings are touched

    return embedding_key(model, backend)


def get_scores(store: Store, ids: Sequence[str], scorer: str, params: dict
               ) -> dict[str, float]:
    """Return cached score values for those ids that have one."""
    if not len(ids):
        return {}
    with store.connect() as con:
        con.register("_ids", pa.table({"id": pa.array(list(set(ids)), pa.string())}))
        rows = con.execute("""SELECT s.id, s.value FROM scores s SEMI JOIN _ids USING (id)
                              WHERE s.scorer = ? AND s.params_hash = ?""",
                           [scorer, params_hash(params)]).fetchall()
        con.unregister("_ids")
    return dict(rows)


def scores_fingerprint(store: Store) -> tuple[int, str]:
    """Return (rows, newest write) of the score cache: it changes whenever a score is added,
    replaced or marked newest, so a view of a version's scores can be reused until it does."""
    with store.connect() as con:
        n, newest = con.execute("SELECT count(*), max(created_at) FROM scores").fetchall()[0]
    return int(n), str(newest)


def put_scores(store: Store, ids: Sequence[str], values: Sequence[float], scorer: str,
               params: dict, details: Sequence[str] | None = None) -> int:
    """Store score values (and an optional text per value, such as a judge's reason) for ids
    not cached yet; return how many were added."""
    if not len(ids):
        return 0
    table = pa.table({"id": pa.array(list(ids), pa.string()),
                      "value": pa.array(list(values), pa.float64()),
                      "detail": pa.array(list(details) if details is not None
                                         else [None] * len(ids), pa.string())})
    key = params_hash(params)
    with store.transaction() as con:
        con.register("_new", table)
        before = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
        con.execute("""INSERT INTO scores (id, scorer, params_hash, value, detail) SELECT
            DISTINCT ON (n.id) n.id, ?, ?, n.value, n.detail FROM _new n WHERE n.id NOT IN
            (SELECT id FROM scores WHERE scorer = ? AND params_hash = ?)""",
                    [scorer, key, scorer, key])
        after = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
        con.unregister("_new")
    return after - before


class StoreCache:
    """The store's score and embedding caches as one object that a pure step is handed.

    Steps (score.py, evaluate.py, embed.py) never import the store or this module: a task or a
    wiring module passes ``StoreCache(store)`` where a step takes ``cache=``; the step calls
    these four methods, with the arguments of the functions above less the store.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def get_embeddings(self, ids: Sequence[str], model: str, field: str, *,
                       backend: str = "auto") -> dict[str, np.ndarray]:
        """Return cached vectors by id (see get_embeddings)."""
        return get_embeddings(self.store, ids, model, field, backend=backend)

    def put_embeddings(self, ids: Sequence[str], vectors: np.ndarray, model: str, field: str,
                       *, backend: str = "auto") -> int:
        """Cache vectors; return how many were added (see put_embeddings)."""
        return put_embeddings(self.store, ids, vectors, model, field, backend=backend)

    def get_scores(self, ids: Sequence[str], scorer: str, params: dict) -> dict[str, float]:
        """Return cached scores by id (see get_scores)."""
        return get_scores(self.store, ids, scorer, params)

    def put_scores(self, ids: Sequence[str], values: Sequence[float], scorer: str,
                   params: dict, details: Sequence[str] | None = None) -> int:
        """Cache scores; return how many were added (see put_scores)."""
        return put_scores(self.store, ids, values, scorer, params, details)


def cache_of(store: Store | None) -> StoreCache | None:
    """Return the store's caches for a step's ``cache=``, or None without a store."""
    return StoreCache(store) if store is not None else None
