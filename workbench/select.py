"""Subset selection: top-k, diversity-aware top-k, per-cluster quotas, longest-k, thresholds.

Every selector takes the step DataFrame (with score columns from workbench.score) and returns a
``Selection``: a StepResult whose kept rows stay in input order and whose dropped rows carry a
stable reason (``not_selected``, ``too_similar``, ``below_threshold``, ``above_threshold``,
``no_score``) and a detail naming the rule, plus ``rule``: a JSON-ready dict for the new
version's parameters (``store.apply_step(v, sel, operation="select", params=sel.rule)``).

Ties are broken by input order, so every selector is deterministic; rows without a score (NaN)
are never selected by a score rule. ``embedding_map`` gives the page 2-D coordinates and k-means
labels for a scatter plot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from .exceptions import ConfigError
from .schema import DROP_COLUMNS, StepResult
from .score import direction_of

Quota = Literal["proportional", "equal"]
DEFAULT_SIMILARITY = 0.9


@dataclass
class Selection(StepResult):
    """A StepResult plus the rule that made it, for the new version's parameters."""

    rule: dict[str, Any] = field(default_factory=dict)


# --- shared helpers ---------------------------------------------------------------------------

def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k={k!r}: must be a whole number >= 1")
    return int(k)


def _score_column(frame: pd.DataFrame, score: str) -> str:
    column = score if score in frame.columns else f"{score}_score"
    if column not in frame.columns:
        scores = [c for c in frame.columns if str(c).endswith("_score")]
        raise ConfigError(f"score={score!r}: no such column; score columns here: "
                          f"{', '.join(scores) or 'none (run a scorer first)'}")
    return column


def _higher_first(column: str, higher_is_better: bool | None) -> bool:
    if higher_is_better is not None:
        return bool(higher_is_better)
    return direction_of(column) != "lower"


def _ranking(values: np.ndarray, higher_first: bool) -> np.ndarray:
    """Return row positions best first (ties in input order), rows without a value last."""
    ok = np.isfinite(values)
    key = np.where(ok, -values if higher_first else values, 0.0)
    order = np.lexsort((np.arange(len(values)), key, ~ok))
    return order


def _result(frame: pd.DataFrame, keep: np.ndarray, reasons: list[str], details: list[str],
            rule: dict[str, Any], duplicate_of: list[Any] | None = None) -> Selection:
    """Return the Selection keeping rows where ``keep`` is set; the others get reason+detail."""
    drop = ~keep
    keys = frame["row_key"].to_numpy()
    n_dropped = int(drop.sum())
    # No duplicate_of: an all-missing Int64 column built at once (from 50k Nones: 0.2 s).
    duplicates = pd.arrays.IntegerArray(np.zeros(n_dropped, np.int64),
                                        np.ones(n_dropped, bool)) if not duplicate_of \
        else pd.array(np.asarray(duplicate_of, dtype=object)[drop].tolist(), dtype="Int64")
    dropped = pd.DataFrame({
        "row_key": keys[drop].astype("int64"),
        "reason": pd.Series(np.asarray(reasons, dtype=object)[drop], dtype=object),
        "duplicate_of": duplicates,
        "detail": pd.Series(np.asarray(details, dtype=object)[drop], dtype=object)},
        columns=list(DROP_COLUMNS))
    rule = {**rule, "rows_in": len(frame), "selected": int(keep.sum())}
    return Selection(kept=frame[keep], dropped=dropped, rule=rule)


def _describe(column: str, higher_first: bool) -> str:
    return f"{column} ({'highest' if higher_first else 'lowest'} first)"


# --- top-k and thresholds ---------------------------------------------------------------------

def top_k(frame: pd.DataFrame, k: int, *, score: str,
          higher_is_better: bool | None = None) -> Selection:
    """Return the k best rows by one score (direction from the scorer unless given)."""
    k = _check_k(k)
    column = _score_column(frame, score)
    best_first = _higher_first(column, higher_is_better)
    values = frame[column].to_numpy(dtype=np.float64)
    order = _ranking(values, best_first)
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(1, len(frame) + 1)
    keep = (rank <= k) & np.isfinite(values)
    how = _describe(column, best_first)
    # Plain Python ints and bools: formatting numpy scalars costs 3x as much on 50k rows.
    details = [f"top_k: rank {r} by {how}, k={k}" if ok else f"top_k: no {column}"
               for r, ok in zip(rank.tolist(), np.isfinite(values).tolist())]
    rule = {"method": "top_k", "k": k, "score": column, "higher_is_better": best_first}
    return _result(frame, keep, ["not_selected"] * len(frame), details, rule)


def longest_k(frame: pd.DataFrame, k: int, *,
              unit: Literal["chars", "words"] = "chars") -> Selection:
    """Return the k rows with the longest responses ("Long Is More" baseline).

    The lengths are measured from the ``response`` texts; a frame without them (a score
    table) gives them in a ``response_chars`` or ``response_words`` column instead."""
    k = _check_k(k)
    if unit not in ("chars", "words"):
        raise ConfigError(f"unit={unit!r}: use 'chars' or 'words'")
    if "response" in frame.columns:
        texts = frame["response"].astype(str).tolist()
        lengths = np.array([len(t) if unit == "chars" else len(t.split()) for t in texts],
                           float)
    elif f"response_{unit}" in frame.columns:
        lengths = frame[f"response_{unit}"].to_numpy(dtype=float)
    else:
        raise ConfigError(f"longest_k needs the responses or their lengths (response_{unit})")
    order = _ranking(lengths, True)
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(1, len(frame) + 1)
    # Plain Python ints, as top_k does: formatting numpy scalars is slower (1M rows: 0.15 s).
    details = [f"longest_k: rank {r} by response length ({n} {unit}), k={k}"
               for r, n in zip(rank.tolist(), lengths.astype(np.int64).tolist())]
    rule = {"method": "longest_k", "k": k, "unit": unit}
    return _result(frame, rank <= k, ["not_selected"] * len(frame), details, rule)


def threshold_filter(frame: pd.DataFrame,
                     bounds: Mapping[str, tuple[float | None, float | None]]) -> Selection:
    """Return the rows whose scores all lie within [min, max] (None = unbounded)."""
    if not bounds:
        raise ConfigError("bounds: give at least one {score: (min, max)}")
    keep = np.ones(len(frame), dtype=bool)
    reasons, details = [""] * len(frame), [""] * len(frame)
    rule_bounds = {}
    for score, (lo, hi) in bounds.items():
        column = _score_column(frame, score)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"bounds[{score!r}]=({lo}, {hi}): min is above max")
        rule_bounds[column] = [lo, hi]
        values = frame[column].to_numpy(dtype=np.float64)
        out = ~np.isfinite(values)
        out |= (values < lo) if lo is not None else False
        out |= (values > hi) if hi is not None else False
        for i in np.flatnonzero(out & keep):  # the first failing bound names the reason
            why = _out_of_bounds(column, values[i], lo, hi)
            keep[i], reasons[i], details[i] = False, why[0], f"threshold: {why[1]}"
    return _result(frame, keep, reasons, details, {"method": "threshold", "bounds": rule_bounds})


def _out_of_bounds(column: str, value: float, lo: float | None, hi: float | None
                   ) -> tuple[str, str] | None:
    if not np.isfinite(value):
        return "no_score", f"no {column}"
    if lo is not None and value < lo:
        return "below_threshold", f"{column} = {value:.4g} < min {lo:g}"
    if hi is not None and value > hi:
        return "above_threshold", f"{column} = {value:.4g} > max {hi:g}"
    return None


# --- diversity-aware top-k ----------------------------------------------------------------------

def _unit(vectors: Any, n: int) -> np.ndarray:
    if vectors is None:
        raise ConfigError("vectors: pass one embedding per row (workbench.embed.embed_frame)")
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[0] != n:
        raise ConfigError(f"vectors: expected shape ({n}, dim), got {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def diverse_top_k(frame: pd.DataFrame, k: int, *, score: str, vectors: Any,
                  threshold: float = DEFAULT_SIMILARITY,
                  higher_is_better: bool | None = None, block: int = 256) -> Selection:
    """Return up to k rows taken in score order, skipping any row whose cosine similarity to
    an already chosen row is at least ``threshold``."""
    k = _check_k(k)
    if not -1.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold={threshold}: cosine similarity must be in [-1, 1]")
    column = _score_column(frame, score)
    best_first = _higher_first(column, higher_is_better)
    values = frame[column].to_numpy(dtype=np.float64)
    unit = _unit(vectors, len(frame))
    order = _ranking(values, best_first)
    order = order[np.isfinite(values[order])]
    chosen, blocker, sim = _greedy_diverse(unit, order, k, threshold, block)
    return _diverse_result(frame, values, chosen, blocker, sim,
                           {"method": "diverse_top_k", "k": k, "score": column,
                            "higher_is_better": best_first, "threshold": threshold},
                           _describe(column, best_first))


def _greedy_diverse(unit: np.ndarray, order: np.ndarray, k: int, threshold: float, block: int
                    ) -> tuple[list[int], dict[int, int], dict[int, float]]:
    """Return chosen rows, and for skipped rows the chosen row they resemble and how much.

    Candidates are compared with the chosen set a block at a time (one matrix product), then
    in order within the block, which gives the same result as one-by-one greedy selection.
    """
    chosen: list[int] = []
    blocker: dict[int, int] = {}
    sim: dict[int, float] = {}
    for start in range(0, len(order), block):
        if len(chosen) >= k:
            break
        cand = order[start:start + block]
        prior = list(chosen)  # chosen before this block
        against = unit[cand] @ unit[prior].T if prior else np.zeros((len(cand), 0))
        inner = unit[cand] @ unit[cand].T
        picked: list[int] = []  # positions in cand chosen in this block
        for j, row in enumerate(cand):
            if len(chosen) >= k:
                break
            sims = np.concatenate([against[j], inner[j, picked]])
            if len(sims) and sims.max() >= threshold:
                at = int(sims.argmax())
                blocker[int(row)] = (prior + [int(cand[p]) for p in picked])[at]
                sim[int(row)] = float(sims[at])
                continue
            chosen.append(int(row))
            picked.append(j)
    return chosen, blocker, sim


def _diverse_result(frame: pd.DataFrame, values: np.ndarray, chosen: list[int],
                    blocker: dict[int, int], sim: dict[int, float], rule: dict[str, Any],
                    how: str) -> Selection:
    keep = np.zeros(len(frame), dtype=bool)
    keep[chosen] = True
    keys = frame["row_key"].tolist()
    reasons, details, dup = [], [], []
    for i in range(len(frame)):
        if i in blocker:
            reasons.append("too_similar")
            details.append(f"diverse_top_k: cosine {sim[i]:.3f} >= {rule['threshold']} to "
                           f"selected row {keys[blocker[i]]}")
            dup.append(keys[blocker[i]])
        else:
            reasons.append("not_selected")
            details.append(f"diverse_top_k: not among the first {rule['k']} diverse rows by "
                           f"{how}" if np.isfinite(values[i]) else
                           f"diverse_top_k: no {rule['score']}")
            dup.append(None)
    return _result(frame, keep, reasons, details, rule, dup)


# --- per-cluster quotas ------------------------------------------------------------------------

def kmeans(vectors: Any, k: int, *, seed: int = 0, spherical: bool = False) -> np.ndarray:
    """Return a k-means cluster label per row (scikit-learn, k-means++ init, fixed seed).

    The workbench's one k-means: per-cluster quotas, the embedding map and failure clusters
    (analysis.py) all call it. ``spherical=True`` clusters directions: rows are scaled to unit
    length first, so the distance is 2 - 2 * cosine similarity. At most one cluster per row.
    """
    import warnings

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    x = np.asarray(vectors, dtype=np.float32)
    k = min(_check_k(k), len(x))
    if len(x) == 0:
        return np.zeros(0, dtype=np.int64)
    if spherical:
        x = _unit(x, len(x))
    # Mini-batch k-means past 20k rows: a few seconds instead of tens on 52k x 384.
    model = (MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096)
             if len(x) > 20_000 else KMeans(k, random_state=seed, n_init=3))
    with warnings.catch_warnings():
        # Repeated rows can leave fewer distinct clusters than k: the labels say so already.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit_predict(x).astype(np.int64)


def allocate(sizes: np.ndarray, k: int, quota: Quota = "proportional") -> np.ndarray:
    """Return how many rows each cluster gets: sum = min(k, total), none above its size.

    Proportional quotas follow cluster sizes (largest remainder); equal quotas split k evenly.
    Quota a cluster cannot fill passes to the clusters that still have rows.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    take = np.zeros(len(sizes), dtype=np.int64)
    left = min(int(k), int(sizes.sum()))
    while left > 0:
        room = sizes - take
        weight = (room if quota == "proportional" else (room > 0)).astype(np.float64)
        share = left * weight / weight.sum()
        add = np.floor(share).astype(np.int64)
        # Largest remainder first (ties: lower cluster id), among clusters that still have rows.
        order = np.lexsort((np.arange(len(share)), -(share - add), weight == 0))
        add[order[:left - int(add.sum())]] += 1
        add = np.minimum(add, room)  # an equal share may exceed a small cluster: next round
        take += add
        left -= int(add.sum())
    return take


def cluster_quota(frame: pd.DataFrame, k: int, *, score: str, vectors: Any = None,
                  labels: Any = None, n_clusters: int = 10, quota: Quota = "proportional",
                  seed: int = 0, higher_is_better: bool | None = None) -> Selection:
    """Return k rows spread over k-means clusters of the embeddings, the best by score in each.

    Pass ``labels`` (e.g. from embedding_map) to reuse clusters instead of ``vectors``.
    """
    k = _check_k(k)
    if quota not in ("proportional", "equal"):
        raise ConfigError(f"quota={quota!r}: use 'proportional' or 'equal'")
    column = _score_column(frame, score)
    best_first = _higher_first(column, higher_is_better)
    labels = _labels(frame, vectors, labels, n_clusters, seed)
    values = frame[column].to_numpy(dtype=np.float64)
    scored = np.isfinite(values)
    ids = np.unique(labels)
    take = allocate(np.array([(scored & (labels == c)).sum() for c in ids]), k, quota)
    keep, details = np.zeros(len(frame), dtype=bool), [f"cluster_quota: no {column}"] * len(frame)
    for cluster, n in zip(ids, take):
        members = np.flatnonzero(scored & (labels == cluster))
        ranked = members[_ranking(values[members], best_first)]
        keep[ranked[:n]] = True
        for r, row in enumerate(ranked, 1):
            details[row] = (f"cluster_quota: rank {r} in cluster {cluster} by "
                            f"{_describe(column, best_first)}, quota {n} of {len(members)}")
    rule = {"method": "cluster_quota", "k": k, "score": column, "higher_is_better": best_first,
            "n_clusters": int(len(ids)), "quota": quota, "seed": seed,
            "labels": "given" if vectors is None else "kmeans"}
    return _result(frame, keep, ["not_selected"] * len(frame), details, rule)


def _labels(frame: pd.DataFrame, vectors: Any, labels: Any, n_clusters: int, seed: int
            ) -> np.ndarray:
    if labels is not None:
        out = np.asarray(labels)
        if out.shape != (len(frame),):
            raise ConfigError(f"labels: expected one per row ({len(frame)}), got {out.shape}")
        return out
    return kmeans(_unit(vectors, len(frame)), n_clusters, seed=seed)


# --- the map for the page ----------------------------------------------------------------------

@dataclass
class EmbeddingMap:
    """2-D coordinates and k-means labels of embeddings, for a scatter plot."""

    coords: np.ndarray
    labels: np.ndarray
    method: str
    explained: float | None = None  # PCA: share of variance the two axes keep


def pca_2d(vectors: Any) -> tuple[np.ndarray, float]:
    """Return the projection on the two principal axes and the share of variance they keep."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    # Eigenvectors of the d x d covariance: one pass over the rows, cheaper than an SVD of x.
    values, axes = np.linalg.eigh(x.T @ x)
    top = axes[:, ::-1][:, :2]
    total = float(values.sum())
    kept = float(values[::-1][:2].sum()) / total if total > 0 else 0.0
    coords = x @ top
    coords *= np.where(coords.sum(axis=0) < 0, -1.0, 1.0)  # fix each axis' sign: deterministic
    return coords.astype(np.float32), kept


def embedding_map(vectors: Any, *, method: Literal["pca", "umap"] = "pca", k: int = 8,
                  seed: int = 0) -> EmbeddingMap:
    """Return 2-D coordinates (PCA, or UMAP if umap-learn is installed) and k-means labels."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ConfigError(f"vectors: need at least 2 rows of shape (n, dim), got {x.shape}")
    labels = kmeans(x, k, seed=seed)
    if method == "pca":
        coords, kept = pca_2d(x)
        return EmbeddingMap(coords, labels, "pca", kept)
    if method == "umap":
        return EmbeddingMap(_umap_2d(x, seed), labels, "umap")
    raise ConfigError(f"method={method!r}: use 'pca' or 'umap'")


def _umap_2d(x: np.ndarray, seed: int) -> np.ndarray:
    try:
        import umap
    except ImportError:
        raise ConfigError("method='umap' needs umap-learn (pip install umap-learn); "
                          "method='pca' works without it") from None
    return umap.UMAP(n_components=2, random_state=seed, metric="cosine").fit_transform(x)
