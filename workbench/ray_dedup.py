"""Exact and near (MinHash LSH) duplicates over a Ray Dataset, for data that outgrows one node.

`find_duplicates_ray` returns exactly what `dedup.find_duplicates` returns for the same rows
(same clusters frame, cluster ids, order and dtypes); tests/test_ray_dedup.py checks that.
Every row-wise value comes from dedup.py's own functions, and the plan is:

1. map_batches: per row, the exact key and (when ``near``) the MinHash signature, its hash and
   the flag "has shingles" (`dedup.row_keys_and_signatures`).
2. exact groups: hash-partition rows by key (a groupby on ``key % parts``; each partition is
   handled with numpy in one call, not one Python call per key); emit dedup's chain edges and
   the first position of every distinct key (kept distributed: it numbers the exact groups).
3. identical signatures: hash-partition by signature hash; emit chain edges between copies and
   one representative per signature (`dedup.identical_rows`), as local LSH does.
4. LSH: explode representatives into (band, band key) rows, hash-partition by band key, emit
   candidate pairs per bucket (`dedup.bucket_pairs`, same 64-neighbour cap and order).
5. verification, a distributed hash join: pairs partitioned by left position meet the left
   rows' signatures, then by right position the right rows'; estimated Jaccard there.
6. connected components (`component_labels`), distributed: large-star / small-star rounds,
   each a groupby on node, until no edge changes; only (member, label) pairs come back.
7. driver: the members' rows are fetched (a filter on ``_pos``) and dedup's own assembly
   (`clusters_from_labels`: keep policy, similarity to the keeper) runs on members only.

No worker holds all signatures or all edges, and the driver holds no per-row state: only
member ids with their labels, member rows and one count vector per exact group in the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from workbench.dedup import (
    Field,
    KeepPolicy,
    MinHashConfig,
    band_keys,
    bucket_pairs,
    check_field,
    check_keep,
    clusters_from_labels,
    connected_components,
    dense_groups,
    empty_clusters,
    exact_edges,
    field_texts,
    has_shingles,
    identical_rows,
    jaccard_estimate,
    near_enough,
    row_hashes,
    row_keys_and_signatures,
)
from workbench.exceptions import ConfigError

ROWS_PER_PARTITION = 250_000  # rows per hash partition of a shuffle (x bands for LSH rows)
STAGES = 6
DRIVER_EDGES = 0  # edges joined on the driver instead of by distributed rounds (see below)
# Ray Data's default hash shuffle starts aggregator actors for every shuffle: on a 2-core
# machine a 400-row groupby took 25 s with it and 0.8 s with the task-based sort shuffle.
SHUFFLE = "sort_shuffle_pull_based"
_EDGE = pa.schema([("left", pa.int64()), ("right", pa.int64()), ("key", pa.uint64())])
_SIG = pa.schema([("pos", pa.int64()), ("other", pa.int64()), ("sig", pa.binary()),
                  ("part", pa.int64())])


def find_duplicates_ray(ds: Any, *, field: Field = "conversation",
                        near: MinHashConfig | None = None, keep: KeepPolicy = "first",
                        score_column: str | None = None, strip_punctuation: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return the clusters frame `dedup.find_duplicates` returns, computed with Ray Data.

    ``ds`` holds a version's rows in order with the columns find_duplicates reads plus
    ``_pos`` (int64 position 0..n-1); ``messages`` may be lists of {role, content} or their
    JSON text. ``progress(stages_done, STAGES)`` follows the stages.
    """
    check_field(field)
    columns = ds.columns()
    for col in ("row_key", "messages", "_pos"):
        if col not in columns:
            raise ConfigError(f"ds: missing column {col!r} (rows of a version plus _pos)")
    check_keep(pd.DataFrame(columns=columns), keep, score_column)
    if near is not None and not isinstance(near, MinHashConfig):
        raise ConfigError(f"near={near!r}: must be a MinHashConfig or None")
    n = ds.count()
    if n == 0:
        return empty_clusters()
    with _shuffle_strategy(SHUFFLE):
        return _find(ds, n, field, near, keep, score_column, strip_punctuation,
                     progress or (lambda done, total: None))


@contextmanager
def _shuffle_strategy(strategy: str) -> Iterator[None]:
    from ray.data.context import DataContext, ShuffleStrategy

    context = DataContext.get_current()
    before = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy(strategy)
    try:
        yield
    finally:
        context.shuffle_strategy = before


def _find(ds: Any, n: int, field: str, near: MinHashConfig | None, keep: str,
          score_column: str | None, strip_punctuation: bool,
          progress: Callable[[int, int], None]) -> pd.DataFrame:
    import ray

    parts = max(2, math.ceil(n / ROWS_PER_PARTITION))
    # A Dataset keeps the DataContext it was made under: rebuilt from its blocks here, the
    # features (and all shuffles derived from them) use SHUFFLE, the caller's ds is untouched.
    rows = ray.data.from_arrow_refs(ds.map_batches(_features, batch_format="pandas", fn_kwargs={
        "field": field, "near": near, "strip_punctuation": strip_punctuation,
        "parts": parts}).to_arrow_refs())
    progress(1, STAGES)
    exact = _shuffle(rows.select_columns(["pos", "key", "part"]), _exact_part, parts)
    progress(2, STAGES)
    edges = _where(exact, "right", True).select_columns(["left", "right"])
    if near is not None:
        edges = edges.union(_near_edges(rows, near, parts, progress))
    progress(STAGES - 1, STAGES)
    pos, label = component_labels(edges, parts)
    clusters = _assemble(ds, exact, pos, label, field, near, keep, score_column,
                         strip_punctuation)
    progress(STAGES, STAGES)
    return clusters


# --- row-wise features ----------------------------------------------------------------------

def _features(batch: pd.DataFrame, *, field: str, near: MinHashConfig | None,
              strip_punctuation: bool, parts: int) -> pa.Table:
    keys, sig = row_keys_and_signatures(field_texts(_decoded(batch), field),  # type: ignore
                                        near=near, strip_punctuation=strip_punctuation)
    out = {"pos": batch["_pos"].to_numpy(np.int64), "key": keys, "part": _part(keys, parts)}
    if sig is not None:
        out["sig"] = _to_bytes(sig)
        out["sig_part"] = _part(row_hashes(sig), parts)
        out["valid"] = has_shingles(sig)
    return pa.table(out)


def _decoded(batch: pd.DataFrame) -> pd.DataFrame:
    """Return the batch with messages as lists of dicts (Parquet shards may hold JSON text)."""
    if len(batch) and isinstance(batch["messages"].iloc[0], str):
        return batch.assign(messages=[orjson.loads(m) for m in batch["messages"]])
    return batch


def _part(keys: np.ndarray, parts: int) -> np.ndarray:
    return (np.asarray(keys).astype(np.uint64) % np.uint64(parts)).astype(np.int64)


def _to_bytes(sig: np.ndarray) -> np.ndarray:
    return np.array([row.tobytes() for row in sig], dtype=object)


def _from_bytes(blobs: np.ndarray, num_perm: int) -> np.ndarray:
    return np.frombuffer(b"".join(blobs), dtype=np.uint32).reshape(len(blobs), num_perm)


def _shuffle(ds: Any, fn: Callable, partitions: int, **kwargs: Any) -> Any:
    """Return fn applied to each hash partition of ds (its "part" column), materialized."""
    return ds.groupby("part", num_partitions=partitions).map_groups(
        fn, batch_format="numpy", fn_kwargs=kwargs).materialize()


def _where(ds: Any, column: str, non_negative: bool) -> Any:
    """Return the rows of ds whose column is >= 0 (or < 0, or True for a bool column)."""
    return ds.map_batches(_rows_where, batch_format="pyarrow", fn_kwargs={
        "column": column, "non_negative": non_negative})


def _rows_where(batch: pa.Table, *, column: str, non_negative: bool) -> pa.Table:
    values = batch[column].to_numpy()
    mask = values if values.dtype == bool else (values >= 0) == non_negative
    return batch.filter(pa.array(mask))


def _by_pos(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # dedup's tie-breaks follow row position, so each partition is put in position order.
    order = np.argsort(group["pos"], kind="stable")
    return {name: values[order] for name, values in group.items()}


# --- exact groups ---------------------------------------------------------------------------

def _exact_part(group: dict[str, np.ndarray]) -> pa.Table:
    """Return chain edges of equal keys, then (first position, -1, key) per distinct key."""
    group = _by_pos(group)
    pos, keys = group["pos"], group["key"]
    pairs = exact_edges(dense_groups(keys))
    left, right = pairs["left"].to_numpy(), pairs["right"].to_numpy()
    _, first = np.unique(keys, return_index=True)
    return pa.table({"left": np.concatenate([pos[left], pos[first]]),
                     "right": np.concatenate([pos[right], np.full(len(first), -1)]),
                     "key": np.concatenate([keys[left], keys[first]])}, schema=_EDGE)


def _collect(ds: Any, left: str = "left", right: str = "right"
             ) -> tuple[np.ndarray, np.ndarray]:
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        lefts.append(batch[left].astype(np.int64))
        rights.append(batch[right].astype(np.int64))
    return np.concatenate(lefts), np.concatenate(rights)


# --- near duplicates ------------------------------------------------------------------------

def _near_edges(rows: Any, near: MinHashConfig, parts: int,
                progress: Callable[[int, int], None]) -> Any:
    """Return the near edges as a dataset of (left, right): identical copies, verified pairs."""
    valid = _where(rows, "valid", True).select_columns(["pos", "sig", "sig_part"])
    valid = valid.rename_columns({"sig_part": "part"})
    identical = _shuffle(valid, _identical_part, parts, num_perm=near.num_perm)
    copies = _where(identical, "other", True).select_columns(["pos", "other"]).rename_columns(
        {"pos": "left", "other": "right"})
    reps = _where(identical, "other", False).map_batches(
        _repart_by_pos, batch_format="pyarrow", fn_kwargs={"parts": parts}).materialize()
    progress(3, STAGES)
    bands, band_rows = near.lsh_params()
    exploded = reps.map_batches(_band_rows, batch_format="numpy", fn_kwargs={
        "bands": bands, "rows": band_rows, "num_perm": near.num_perm, "parts": parts})
    pairs = _shuffle(exploded, _bucket_part, max(parts, parts * bands // 4), parts=parts)
    progress(4, STAGES)
    if pairs.count() == 0:
        return copies
    attached = _shuffle(pairs.union(reps), _attach_left, parts, parts=parts)
    verified = _shuffle(attached.union(reps), _verify, parts, near=near)
    return copies.union(verified.select_columns(["left", "right"]))


def _identical_part(group: dict[str, np.ndarray], *, num_perm: int) -> pa.Table:
    """Return chain edges between equal signatures (sig empty), then each representative."""
    group = _by_pos(group)
    pos, blobs = group["pos"], group["sig"]
    reps, (a, b) = identical_rows(_from_bytes(blobs, num_perm), np.arange(len(pos)))
    return pa.table({"pos": np.concatenate([pos[a], pos[reps]]),
                     "other": np.concatenate([pos[b], np.full(len(reps), -1)]),
                     "sig": np.concatenate([np.full(len(a), b"", dtype=object), blobs[reps]]),
                     "part": np.zeros(len(a) + len(reps), np.int64)}, schema=_SIG)


def _repart_by_pos(batch: pa.Table, *, parts: int) -> pa.Table:
    part = pa.array(_part(batch["pos"].to_numpy(), parts))
    return batch.set_column(batch.schema.get_field_index("part"), "part", part)


def _band_rows(batch: dict[str, np.ndarray], *, bands: int, rows: int, num_perm: int,
               parts: int) -> dict[str, np.ndarray]:
    keys = band_keys(_from_bytes(batch["sig"], num_perm), bands, rows).ravel()
    return {"pos": np.repeat(batch["pos"], bands),
            "band": np.tile(np.arange(bands, dtype=np.int64), len(batch["pos"])),
            "key": keys, "part": _part(keys, parts)}


def _bucket_part(group: dict[str, np.ndarray], *, parts: int) -> pa.Table:
    """Return candidate pairs (left < right) of the LSH buckets in this partition."""
    group = _by_pos(group)
    pos, band, keys = group["pos"], group["band"], group["key"]
    lefts, rights = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for b in np.unique(band):
        rows = np.flatnonzero(band == b)
        left, right = bucket_pairs(keys[rows])
        lefts.append(pos[rows[left]])
        rights.append(pos[rows[right]])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    lo, hi = np.minimum(left, right), np.maximum(left, right)
    return pa.table({"pos": lo, "other": hi, "sig": np.full(len(lo), b"", dtype=object),
                     "part": _part(lo, parts)}, schema=_SIG)


def _split_sigs(group: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Return (positions with a signature, their blobs, the other rows) of a joined partition."""
    is_sig = group["other"] < 0
    order = np.argsort(group["pos"][is_sig])
    rest = {name: values[~is_sig] for name, values in group.items()}
    return group["pos"][is_sig][order], group["sig"][is_sig][order], rest


def _attach_left(group: dict[str, np.ndarray], *, parts: int) -> pa.Table:
    """Return each distinct pair keyed by its right row, carrying the left row's signature."""
    sig_pos, blobs, pairs = _split_sigs(group)
    code = np.unique(np.stack([pairs["pos"], pairs["other"]], axis=1), axis=0)
    left, right = code[:, 0], code[:, 1]
    return pa.table({"pos": right, "other": left,
                     "sig": blobs[np.searchsorted(sig_pos, left)],
                     "part": _part(right, parts)}, schema=_SIG)


def _verify(group: dict[str, np.ndarray], *, near: MinHashConfig) -> pa.Table:
    """Return the pairs whose estimated Jaccard reaches near.threshold, as (left, right)."""
    sig_pos, blobs, pairs = _split_sigs(group)
    k = len(pairs["pos"])
    both = _from_bytes(np.concatenate(
        [pairs["sig"], blobs[np.searchsorted(sig_pos, pairs["pos"])]]), near.num_perm)
    ok = near_enough(jaccard_estimate(both, np.arange(k), np.arange(k, 2 * k)), near)
    return pa.table({"left": pairs["other"][ok], "right": pairs["pos"][ok],
                     "key": np.zeros(int(ok.sum()), np.uint64)}, schema=_EDGE)


# --- connected components -----------------------------------------------------------------

def component_labels(edges: Any, parts: int, *, driver_edges: int = DRIVER_EDGES
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Return (nodes, label): every node in an edge, sorted, and its component's smallest node.

    ``edges`` is a dataset of int64 (left, right); self-loops are left out. Up to
    ``driver_edges`` edges are joined on the driver with `dedup.connected_components`; more
    run as the large-star / small-star rounds of Kiveris et al. 2014 ("Connected Components
    in MapReduce and Beyond"), each a hash-partitioned groupby, until a round changes no edge.
    Then every edge links a node to its component's smallest node, and only those (node,
    label) pairs come to the driver: one per member, which the clusters frame holds anyway.
    Both ways give the same labels.
    """
    import ray

    refs = edges.map_batches(_no_loops, batch_format="pyarrow").to_arrow_refs()
    if not refs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    with _shuffle_strategy(SHUFFLE):  # rebuilt under it: the rounds' shuffles use SHUFFLE
        return _labels(ray.data.from_arrow_refs(refs), parts, driver_edges)


def _labels(edges: Any, parts: int, driver_edges: int) -> tuple[np.ndarray, np.ndarray]:
    if edges.count() <= driver_edges:
        left, right = _collect(edges)
        nodes = np.unique(np.concatenate([left, right]))
        local = connected_components(len(nodes), np.searchsorted(nodes, left),
                                     np.searchsorted(nodes, right))
        return nodes, nodes[local]
    directed = edges.map_batches(_both_ways, batch_format="numpy", fn_kwargs={"parts": parts})
    while True:
        large = _shuffle(directed, _large_star, parts, parts=parts)
        directed = _shuffle(large, _small_star, parts, parts=parts)
        if _changes(large) + _changes(directed) == 0:
            break
    # Converged: each component is a star around its smallest node.
    child, root = _collect(directed.map_batches(_down, batch_format="pyarrow"), "node", "nbr")
    nodes = np.union1d(child, root)
    label = nodes.copy()
    label[np.searchsorted(nodes, child)] = root
    return nodes, label


def _changes(ds: Any) -> int:
    """Return the sum of ds's ``changed`` column: one partial sum per block comes back."""
    sums = ds.map_batches(_block_sum, batch_format="numpy", batch_size=None)
    return sum(int(b["changed"].sum()) for b in sums.iter_batches(batch_format="numpy",
                                                                   batch_size=None))


def _block_sum(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"changed": np.array([batch["changed"].sum()], dtype=np.int64)}


def _no_loops(batch: pa.Table) -> pa.Table:
    """Return the edges that join two different nodes (a node alone is no cluster)."""
    return batch.filter(pa.array(batch["left"].to_numpy() != batch["right"].to_numpy()))


def _both_ways(batch: dict[str, np.ndarray], *, parts: int) -> dict[str, np.ndarray]:
    """Return each edge (left, right) as rows (node, nbr) both ways, partitioned by node."""
    node = np.concatenate([batch["left"], batch["right"]]).astype(np.int64)
    nbr = np.concatenate([batch["right"], batch["left"]]).astype(np.int64)
    return {"node": node, "nbr": nbr, "changed": np.zeros(len(node), np.int64),
            "part": _part(node, parts)}


def _neighbours(group: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the partition's distinct (node, nbr) rows sorted by node, and each row's start
    index of its node's run (rows of one node are contiguous)."""
    pairs = np.unique(np.stack([group["node"], group["nbr"]], axis=1), axis=0)
    node, nbr = pairs[:, 0], pairs[:, 1]
    new = np.concatenate([[True], node[1:] != node[:-1]])
    return node, nbr, np.flatnonzero(new)


def _large_star(group: dict[str, np.ndarray], *, parts: int) -> pa.Table:
    """Large-star: link every larger neighbour of u to the smallest of u and its neighbours.

    Input rows (node, nbr) carry each edge both ways; out rows (node=larger, nbr=smaller)
    are partitioned by the larger end for small-star. ``changed`` marks an edge that moved.
    """
    node, nbr, starts = _neighbours(group)
    low = np.minimum(np.minimum.reduceat(nbr, starts), node[starts])
    m = np.repeat(low, np.diff(np.append(starts, len(node))))
    up = nbr > node
    return pa.table({"node": nbr[up], "nbr": m[up], "changed": (m[up] != node[up]).astype(
        np.int64), "part": _part(nbr[up], parts)})


def _small_star(group: dict[str, np.ndarray], *, parts: int) -> pa.Table:
    """Small-star: link u and its smaller neighbours to the smallest of them.

    Input rows (node=u, nbr=smaller); out rows carry each edge both ways, partitioned by
    node for large-star. ``changed`` is 1 on the (v, m) row of each edge that replaced an edge
    (u, v), 0 elsewhere (the kept edge u -> m and all the reverse rows).
    """
    node, nbr, starts = _neighbours(group)
    m = np.repeat(np.minimum.reduceat(nbr, starts), np.diff(np.append(starts, len(node))))
    first = np.zeros(len(node), bool)
    first[starts] = True  # rows are sorted, so u's first row is (u, m)
    hi = np.where(first, node, nbr)  # u -> m, then every other smaller neighbour v -> m
    both = np.concatenate([hi, m])
    return pa.table({"node": both, "nbr": np.concatenate([m, hi]),
                     "changed": np.concatenate([(~first).astype(np.int64),
                                                np.zeros(len(hi), np.int64)]),
                     "part": _part(both, parts)})


def _down(batch: pa.Table) -> pa.Table:
    """Return the (larger, smaller) rows of a both-ways edge table."""
    return batch.filter(pa.array(batch["node"].to_numpy() > batch["nbr"].to_numpy()))


# --- cluster assembly on members only -------------------------------------------------------

def _assemble(ds: Any, exact: Any, nodes: np.ndarray, label: np.ndarray, field: str,
              near: MinHashConfig | None, keep: str, score_column: str | None,
              strip_punctuation: bool) -> pd.DataFrame:
    """Return the clusters frame from each member's component label and the members' rows."""
    if len(nodes) == 0:
        return empty_clusters()
    frame = ds.map_batches(_member_rows, batch_format="pandas",
                           fn_kwargs={"members": nodes}).to_pandas()
    frame = frame.sort_values("_pos", ignore_index=True)
    keys, sig = row_keys_and_signatures(field_texts(frame, field), near=near,  # type: ignore
                                        strip_punctuation=strip_punctuation)
    group = _exact_groups(exact, keys)
    local = np.searchsorted(nodes, label)
    similarity = {} if sig is None else {"near": lambda a, b: jaccard_estimate(sig, a, b)}
    return clusters_from_labels(frame, local, group, similarity, keep, score_column,
                                lambda: _methods(local, group))


def _methods(label: np.ndarray, group: np.ndarray) -> dict[int, str]:
    """Return each cluster's loosest method from its members' exact groups alone.

    Exact edges join rows of one group, so a cluster spanning two groups (or holding a row
    with no group) has a near edge between groups, which is what dedup's edge-based rule
    finds; a cluster inside one group is exact. No edges are needed here.
    """
    order = np.lexsort((group, label))
    lab, grp = label[order], group[order]
    start = np.concatenate([[True], lab[1:] != lab[:-1]])
    first_group = np.repeat(grp[start], np.diff(np.append(np.flatnonzero(start), len(lab))))
    mixed = (grp != first_group) | (grp < 0)
    loose = set(np.unique(lab[mixed]).tolist())
    return {int(r): "near" if int(r) in loose else "exact" for r in np.unique(lab)}


def _member_rows(batch: pd.DataFrame, *, members: np.ndarray) -> pd.DataFrame:
    return _decoded(batch[np.isin(batch["_pos"].to_numpy(), members)])


def _exact_groups(exact: Any, keys: np.ndarray) -> np.ndarray:
    """Return dedup's exact-group number of each key: distinct keys seen before its first row.

    -1 for the empty text's key 0, which still takes a number (as pandas.factorize does).
    """
    wanted = np.unique(keys[keys != 0])
    firsts = _where(exact, "right", False)
    found = firsts.map_batches(_keys_in, batch_format="numpy", fn_kwargs={"wanted": wanted})
    key_of, first_of = _collect(found, "key", "left")
    first = dict(zip(key_of.astype(np.uint64).tolist(), first_of.tolist()))
    query = np.array(sorted({first[int(k)] for k in wanted}), dtype=np.int64)
    before = np.zeros(len(query), np.int64)
    for batch in firsts.map_batches(_count_before, batch_format="numpy", batch_size=None,
                                    fn_kwargs={"query": query}).iter_batches(
            batch_format="numpy", batch_size=None):
        before += batch["count"].sum(axis=0)
    rank = dict(zip(query.tolist(), before.tolist()))
    return np.array([rank[first[int(k)]] if k else -1 for k in keys], dtype=np.int64)


def _keys_in(batch: dict[str, np.ndarray], *, wanted: np.ndarray) -> dict[str, np.ndarray]:
    hit = np.isin(batch["key"], wanted)
    return {"key": batch["key"][hit], "left": batch["left"][hit]}


def _count_before(batch: dict[str, np.ndarray], *, query: np.ndarray
                  ) -> dict[str, np.ndarray]:
    firsts = np.sort(batch["left"])
    return {"count": np.searchsorted(firsts, query, side="left")[None, :]}
