"""Labels, the learned score and the review queue, run against the store.

The page and the CLI call these; the pure parts live in learn.py (features, classifier,
agreement, queue picking), labels.py keeps the labels themselves.

- Labelling by row key (of a version) becomes labelling by content id, as one undoable action;
  bulk labels take every row of a search, a cleaning rule's hits or an embedding cluster.
- ``train_learned`` fits the learned score on every labelled row of the version's dataset
  (a row labelled bad and then dropped still teaches the model), predicts every row of the
  version and caches the values like any other score (``learned_score``, higher = more likely
  bad; ``learned_<set>_score`` for other label sets).
- ``next_rows`` is the review queue: before there is a model it draws in turn from rows that
  cleaning rules hit, rows with extreme scores, the user's search and random rows; once both
  classes have enough labels it asks the learned score for likely-bad, unsure and random rows.
- ``signal_table`` and ``rule_table`` check every score and every cleaning rule against labels.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import xxhash

from . import jobs, runs
from . import labels as LB
from . import learn as L
from .atomic import write_atomic
from .cache import (
    any_embedding,
    count_embedded,
    count_embedded_version,
    get_embeddings,
    params_hash,
)
from .exceptions import ConfigError, NotFoundError
from .store import CURRENT_LABELS_SQL, RowFilter, Store, VersionInfo

if TYPE_CHECKING:  # scipy is imported where features are built: the queue's seeds need none
    import scipy.sparse as sp

LEARNED = "learned"
SEED_EXTREME_SHARE = 0.01  # the lowest and highest 1% of each score are "extreme"
# Rule hits seed the queue from at most this many rows (a fixed sample beyond): the queue takes
# a few rows per rule, and scanning every rule over 1M rows kept the Label page from opening
# for minutes (50,000 Alpaca rows: 38 s of a 42 s first open, under cProfile; cached after).
# Rows a cleaning step flagged seed it from every row, without a scan.
SEED_SCAN_ROWS = 5_000
# The review queue (Label page) draws from at most this many rows of a version, a fixed sample
# beyond (Store.sample_frame): reading and ranking every row of 1M took minutes and gigabytes
# for the 20 rows of a round. Bulk labels and the learned score's training data cover all rows.
QUEUE_ROWS = 100_000
# Up to this many rows to scan, the page runs the rule scan that seeds the queue itself (well
# under a second); beyond, a background job ("rule_scan") runs it while the queue opens without
# rule seeds: 5,000 Alpaca rows took 1.6-14 s depending on the machine's load.
INLINE_SCAN_ROWS = 1_000
RULE_SCAN_TASK = "rule_scan"


def learned_key(label_set: str = LB.DEFAULT_SET) -> str:
    """Return the score-cache key of a label set's learned score."""
    return LEARNED if label_set == LB.DEFAULT_SET else f"{LEARNED}:{label_set}"


def learned_column(label_set: str = LB.DEFAULT_SET) -> str:
    """Return the column of a label set's learned score (``learned_score``, ...)."""
    return "learned_score" if label_set == LB.DEFAULT_SET else \
        f"learned_{label_set.replace('-', '_')}_score"


# --- labelling rows of a version ---------------------------------------------------------------

def ids_of(store: Store, version_id: int, row_keys: Sequence[int]) -> list[str]:
    """Return the content ids of rows of a version, in the order given (error if not in it)."""
    keys = [int(k) for k in row_keys]
    with store.connect() as con:
        found = dict(con.execute("""SELECT r.row_key, r.id FROM version_rows vr JOIN rows r
            USING (row_key) WHERE vr.version_id = ? AND r.row_key IN
            (SELECT unnest(?::BIGINT[]))""", [int(version_id), keys]).fetchall())
    missing = [k for k in keys if k not in found]
    if missing:
        raise NotFoundError(f"rows {missing[:5]} are not in version {version_id}")
    return [found[k] for k in keys]


def label_rows(store: Store, version_id: int, row_keys: Sequence[int], label: str | None, *,
               reason: str = "", label_set: str = LB.DEFAULT_SET, kind: str = "label",
               description: str = "") -> LB.LabelAction:
    """Label rows of a version (by row key) good or bad, or clear them; return the action."""
    ids = ids_of(store, version_id, row_keys)
    what = description or f"{len(ids)} row(s) of version {version_id} -> {label or 'cleared'}"
    return LB.set_labels(store, ids, label, reasons=reason, label_set=label_set, kind=kind,
                         description=what)


def import_labels(store: Store, version_id: int, path: str | Path, *,
                  label_set: str = LB.DEFAULT_SET) -> LB.LabelAction:
    """Import a JSONL label file against a version's rows (all lines or none); return it."""
    with store.connect() as con:
        pairs = con.execute("""SELECT r.row_key, r.id FROM version_rows vr JOIN rows r
            USING (row_key) WHERE vr.version_id = ?""", [int(version_id)]).fetchall()
    if not pairs:
        store.version(version_id)  # names an unknown version
    found = LB.read_label_file(path, ids_by_key=dict(pairs), known_ids=[i for _, i in pairs])
    return LB.set_labels(store, found["id"].tolist(), found["label"].tolist(),
                         reasons=found["reason"].tolist(), label_set=label_set, kind="file",
                         description=f"{len(found)} label(s) from {Path(path).name}")


@dataclass
class LabelSummary:
    """Labels on a version's rows and in the whole label set, and the newest actions."""

    good: int
    bad: int
    unlabelled: int
    total_good: int
    total_bad: int
    actions: pd.DataFrame


def summary(store: Store, frame: pd.DataFrame, *, label_set: str = LB.DEFAULT_SET
            ) -> LabelSummary:
    """Return label counts on a version's frame and overall, with the newest actions."""
    everything = LB.current_labels(store, label_set=label_set)
    # Counted by rows of the version (two rows with the same text share one label).
    per_row = frame["id"].map(everything.set_index("id")["label"]).fillna("")
    counts = per_row.value_counts()
    return LabelSummary(int(counts.get("good", 0)), int(counts.get("bad", 0)),
                        int(counts.get("", 0)), int((everything["label"] == "good").sum()),
                        int((everything["label"] == "bad").sum()),
                        LB.actions(store, label_set=label_set))


def version_summary(store: Store, version_id: int, *, label_set: str = LB.DEFAULT_SET
                    ) -> LabelSummary:
    """Return what ``summary`` returns for a version's frame, counted in the store."""
    with store.connect() as con:
        good, bad, none = con.execute(f"""SELECT count(*) FILTER (WHERE l.label = 'good'),
            count(*) FILTER (WHERE l.label = 'bad'), count(*) FILTER (WHERE l.label IS NULL)
            FROM version_rows vr JOIN rows r USING (row_key)
            LEFT JOIN ({CURRENT_LABELS_SQL}) l ON l.id = r.id WHERE vr.version_id = ?""",
                                      [label_set, int(version_id)]).fetchall()[0]
        total_good, total_bad = con.execute(f"""SELECT count(*) FILTER (WHERE label = 'good'),
            count(*) FILTER (WHERE label = 'bad') FROM ({CURRENT_LABELS_SQL})""",
                                            [label_set]).fetchall()[0]
    return LabelSummary(int(good), int(bad), int(none), int(total_good), int(total_bad),
                        LB.actions(store, label_set=label_set))


def version_labels(store: Store, version_id: int, *, label_set: str = LB.DEFAULT_SET
                   ) -> pd.DataFrame:
    """Return the labelled rows of a version in version order (row_key, id, label, prompt,
    response previews), read in the store: what ``with_labels`` keeps of labelled rows."""
    with store.connect() as con:
        keys = con.execute(f"""SELECT vr.pos, vr.row_key FROM version_rows vr
            JOIN rows r USING (row_key) JOIN ({CURRENT_LABELS_SQL}) l ON l.id = r.id
            WHERE vr.version_id = ? AND l.label IS NOT NULL ORDER BY vr.pos""",
                           [label_set, int(version_id)]).df()
    rows = store.rows_of(version_id, keys["row_key"].tolist())
    labels = LB.label_column(store, rows["id"].tolist(), label_set=label_set)
    return rows.assign(label=labels.to_numpy())[["row_key", "id", "label", "prompt",
                                                 "response"]]


def with_labels(store: Store, frame: pd.DataFrame, *, label_set: str = LB.DEFAULT_SET
                ) -> pd.DataFrame:
    """Return the frame plus a ``label`` column ('good', 'bad' or '')."""
    return frame.assign(label=LB.label_column(store, frame["id"].tolist(),
                                              label_set=label_set).to_numpy())


def labels_jsonl(store: Store, frame: pd.DataFrame, label_set: str = LB.DEFAULT_SET) -> bytes:
    """Return the current labels of a frame's rows (row_key, id) as JSONL bytes (for a
    download); ``version_labels`` gives the labelled rows of a version without the others."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.jsonl"
        LB.write_label_file(store, path, label_set=label_set, frame=frame)
        return path.read_bytes()


# --- label-based filters ------------------------------------------------------------------------
def flagged_to_drop(store: Store, version_id: int, rule: str, *, keep_good: bool = True,
                    label_set: str = LB.DEFAULT_SET) -> pd.DataFrame:
    """Return the rows of a version that ``rule`` flagged for review (row_key, reason, detail,
    label), one per row, less those labelled good when ``keep_good``; texts stay in the store."""
    chosen = store.flagged_keys(version_id, rule, label_set=label_set)
    if keep_good:
        chosen = chosen[chosen["label"] != "good"]
    return chosen.drop_duplicates("row_key").reset_index(drop=True)


def drop_flagged(store: Store, version_id: int, rule: str, *, keep_good: bool = True,
                 label_set: str = LB.DEFAULT_SET, extra_params: dict | None = None
                 ) -> VersionInfo:
    """Drop the rows ``rule`` flagged (keeping rows labelled good if asked) into a new version
    (operation "drop_flagged"); return it. With nothing to drop the version keeps every row,
    so a replayed chain has the same steps."""
    chosen = flagged_to_drop(store, version_id, rule, keep_good=keep_good, label_set=label_set)
    params = {"rule": rule, "kept_good": keep_good, **(extra_params or {})}
    if label_set != LB.DEFAULT_SET:
        params["label_set"] = label_set
    if len(chosen):
        return store.drop_rows(version_id, chosen["row_key"].tolist(), reason=rule,
                               details=chosen["detail"].fillna("").tolist(),
                               operation="drop_flagged", params=params)
    from .schema import StepResult

    kept = store.frame(version_id)[["row_key"]]
    return store.apply_step(version_id, StepResult(kept, pd.DataFrame(
        columns=["row_key", "reason", "detail"])), operation="drop_flagged",
                            params={"rows": 0, "reason": rule, **params})


# --- bulk labels ----------------------------------------------------------------------------------

BulkSource = Literal["search", "rule", "cluster", "rows"]


def bulk_rows(store: Store, version_id: int, frame: pd.DataFrame | None, source: BulkSource,
              value: Any) -> list[int]:
    """Return the row keys a bulk action would label: a search text's matches, a cleaning
    rule's hits (flagged by a step, or found by the rule now), an embedding cluster's rows.
    ``frame`` (the version's rows) is needed by the cluster source only; the rule source reads
    the texts only when the hits are not cached (``start_rule_scan(scope="version")``)."""
    if source == "cluster" and frame is None:
        frame = store.frame(version_id)
    if source == "search":
        text = str(value or "").strip()
        if not text:
            raise ConfigError("search: type the text to look for")
        rows = store.version(version_id).n_rows
        page = store.page(version_id, limit=rows or 1, filters=RowFilter(search=text))
        return [int(k) for k in page.rows["row_key"]]
    if source == "rule":
        hits = version_rule_hits(store, version_id, frame)
        return sorted(hits.loc[hits["rule"] == value, "row_key"].astype(int).unique().tolist())
    if source == "cluster":
        from .quality import embedding_map

        points, missing = embedding_map(store, frame, k=int(value[1]) if isinstance(
            value, tuple) else 8)
        if points is None:
            raise ConfigError(f"{missing:,} rows have no embedding yet: embed them first")
        cluster = str(value[0] if isinstance(value, tuple) else value)
        return points.loc[points["cluster"] == cluster, "row_key"].astype(int).tolist()
    if source == "rows":
        return [int(k) for k in value]
    raise ConfigError(f"source={source!r}: use search, rule, cluster or rows")


def bulk_preview(store: Store, version_id: int, row_keys: Sequence[int], *, n: int = 8,
                 seed: int = 0) -> pd.DataFrame:
    """Return a random sample of the rows a bulk action would label (row_key, prompt, response
    previews); only the sampled rows are read."""
    with store.connect() as con:
        ordered = [r[0] for r in con.execute("""SELECT row_key FROM version_rows
            WHERE version_id = ? AND row_key IN (SELECT unnest(?::BIGINT[])) ORDER BY pos""",
                                             [int(version_id), [int(k) for k in row_keys]]
                                             ).fetchall()]
    # The positions pandas' DataFrame.sample picks from the rows in version order.
    at = pd.RangeIndex(len(ordered)).to_series().sample(min(n, len(ordered)),
                                                        random_state=seed).tolist()
    rows = store.rows_of(version_id, [ordered[i] for i in at]).set_index("row_key")
    return rows.loc[[ordered[i] for i in at], ["prompt", "response"]].reset_index()


# --- the learned score ----------------------------------------------------------------------------

@dataclass
class LearnedResult:
    """A trained learned score: labels used, cross-validated AUROC (95% CI), where scored."""

    label_set: str
    column: str
    n_good: int
    n_bad: int
    outside_version: int
    auroc: float
    low: float
    high: float
    features: list[str]
    calibrated: bool
    seconds: float
    scored_rows: int
    trained_at: str = ""
    note: str = ""

    def as_dict(self) -> dict:
        """Return the result as JSON-ready values."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                for k, v in self.__dict__.items()}


def labelled_frame(store: Store, version_id: int, *, label_set: str = LB.DEFAULT_SET
                   ) -> pd.DataFrame:
    """Return every labelled row of the version's dataset, once per id, with ``y`` (1 = bad)."""
    current = LB.current_labels(store, label_set=label_set)
    if current.empty:
        return pd.DataFrame(columns=["row_key", "id", "messages", "metadata", "prompt",
                                     "response", "y"])
    rows = store.dataset_rows(version_id, current["id"].tolist())
    y = current.set_index("id")["label"].map({"bad": 1, "good": 0})
    return rows.assign(y=rows["id"].map(y).astype(int))


_FEATURES: OrderedDict = OrderedDict()  # a few versions' features, for quick retraining
_FEATURES_MAX = 2


def version_features(store: Store, frame: pd.DataFrame, config: L.LearnConfig, *,
                     scores: pd.DataFrame | None = None) -> tuple[L.Features, list[str]]:
    """Return the features of a frame's rows and their names (fields with every row embedded,
    lexical hashes, score columns); lexical features are cached on disk by content ids."""
    fields = [f for f in config.fields if embedded(store, frame, f, config.model)]
    score_cols = list(scores.columns) if scores is not None and config.use_scores else []
    key = (store.path, _digest(frame["id"]), config.params().__repr__(), tuple(fields),
           _scores_signature(scores if score_cols else None))
    if key in _FEATURES:
        _FEATURES.move_to_end(key)
        return _FEATURES[key]
    sparse = _lexical(store, frame) if config.lexical else None
    vectors = {f: _vectors(store, frame, f, config.model) for f in fields}
    dense = L.dense_features(vectors, scores[score_cols] if score_cols else None,
                             frame["prompt"].str.len().to_numpy(),
                             frame["response"].str.len().to_numpy())
    names = (["words"] if config.lexical else []) + [f"embedding:{f}" for f in fields] + \
        (["prompt-response cosine"] if {"user", "assistant"} <= set(fields) else []) + \
        score_cols + ["lengths"]
    result = (L.Features(sparse, dense, config.dense_weight), names)
    _FEATURES[key] = result
    while len(_FEATURES) > _FEATURES_MAX:
        _FEATURES.popitem(last=False)
    return result


def _member(values: pd.Series, pool) -> np.ndarray:
    """Return values.isin(pool) as a bool array; pandas' isin on Arrow strings loops in Python
    over every value and costs ~1 s at 26k rows."""
    pool = pool if isinstance(pool, (set, frozenset)) else set(pool)
    return np.fromiter((v in pool for v in values.tolist()), bool, len(values))


def _digest(ids: pd.Series) -> str:
    digest = xxhash.xxh3_128()
    for row_id in ids.tolist():
        digest.update(row_id.encode() + b"\n")
    return digest.hexdigest()


def _scores_signature(scores: pd.DataFrame | None) -> str:
    if scores is None:
        return ""
    return params_hash({c: [int(scores[c].notna().sum()), float(np.nansum(scores[c]))]
                        for c in scores.columns})


def version_embedded(store: Store, version_id: int, field: str, model: str = "default"
                     ) -> bool:
    """Return whether every row of a version has a cached embedding of this field (counted in
    the store, as ``embedded`` counts over a frame)."""
    if not any_embedding(store, model, field):  # nothing to count over every row
        return False
    found, total = count_embedded_version(store, version_id, model, field)
    return total > 0 and found == total


def embedded(store: Store, frame: pd.DataFrame, field: str, model: str = "default") -> bool:
    """Return whether every row of the frame has a cached embedding of this field."""
    ids = frame["id"].drop_duplicates().tolist()  # a set() of the Arrow column: 0.15 s at 52k
    return len(ids) > 0 and count_embedded(store, ids, model, field) == len(ids)


def _vectors(store: Store, frame: pd.DataFrame, field: str, model: str = "default"
             ) -> np.ndarray:
    cached = get_embeddings(store, frame["id"].tolist(), model, field)
    return np.stack([cached[i] for i in frame["id"]])


def _save_npz(path: Path, matrix: sp.csr_matrix) -> None:
    import scipy.sparse as sp

    with open(path, "wb") as f:  # a file object: save_npz would add ".npz" to a bare name
        sp.save_npz(f, matrix, compressed=False)


def _lexical(store: Store, frame: pd.DataFrame) -> sp.csr_matrix:
    import scipy.sparse as sp

    path = None if store.path == ":memory:" else \
        Path(store.path).parent / "cache" / "features" / f"{_digest(frame['id'])}-lex.npz"
    if path is not None and path.exists():
        return sp.load_npz(path).tocsr()
    matrix = L.lexical_features(frame["prompt"].tolist(), frame["response"].tolist())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: _save_npz(tmp, matrix))
    return matrix


def _cached_scores(store: Store, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the scores cached for the frame's rows that may be features (the frame's own
    score columns when it has them, else the store's newest of each scorer)."""
    if any(str(c).endswith("_score") for c in frame.columns):
        return feature_scores(frame)
    from .quality import with_cached_scores

    # Reading 50k rows' scores takes about a second; a retrain after a round of labels must
    # not pay it again while no score (other than the learned ones) changed.
    key = (store.path, _digest(frame["id"]), _scores_state(store))
    if key not in _SCORES:
        _SCORES.clear()
        _SCORES[key] = feature_scores(with_cached_scores(store, frame[["id"]]))
    return _SCORES[key]


_SCORES: dict = {}


def _scores_state(store: Store) -> tuple:
    """Return a cheap fingerprint of the score cache, learned scores left out."""
    with store.connect() as con:
        return tuple(con.execute("""SELECT count(*), max(created_at) FROM scores
                                    WHERE NOT starts_with(scorer, 'learned')""").fetchall()[0])


def feature_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame's cached score columns a learned score may use as features (every
    ``*_score`` column except learned scores and the combined score, which derive from labels)."""
    columns = [c for c in frame.columns if str(c).endswith("_score")
               and not str(c).startswith(LEARNED) and c != "combined_score"]
    return frame[columns]


@dataclass
class _Fitted:
    model: L.LearnedModel
    features: L.Features
    names: list[str]
    rows: np.ndarray  # training rows in features' numbering
    y: np.ndarray
    outside: int


def trainable_labels(store: Store, version_id: int, *, label_set: str = LB.DEFAULT_SET,
                     config: L.LearnConfig | None = None) -> pd.DataFrame:
    """Return the labelled rows the learned score trains on (``labelled_frame``); raise a
    ConfigError saying what to label while there are too few of either class."""
    config = config or L.LearnConfig()
    labelled = labelled_frame(store, version_id, label_set=label_set)
    if labelled.empty:
        total = len(LB.current_labels(store, label_set=label_set))
        elsewhere = f" ({total} labels are on other datasets)" if total else ""
        raise ConfigError(f"no labelled rows in this dataset{elsewhere}: label at least "
                          f"{config.min_per_class} good and {config.min_per_class} bad rows")
    L.check_labels(labelled["y"].to_numpy(), config.min_per_class)
    return labelled


def _fit(store: Store, version_id: int, frame: pd.DataFrame, config: L.LearnConfig,
         label_set: str) -> _Fitted:
    """Fit on every labelled row of the dataset; features cover the frame, then extra rows."""
    labelled = trainable_labels(store, version_id, label_set=label_set, config=config)
    scores = _cached_scores(store, frame) if config.use_scores else None
    features, names = version_features(store, frame, config, scores=scores)
    position = pd.Series(np.arange(len(frame)), index=frame["id"]).groupby(level=0).first()
    known = _member(labelled["id"], position.index)
    inside, outside = labelled[known], labelled[~known]
    rows = position[inside["id"]].to_numpy()
    y = inside["y"].to_numpy()
    if len(outside):
        features, extra = _with_extra_rows(store, features, outside, config, frame, scores)
        rows = np.concatenate([rows, extra])
        y = np.concatenate([y, outside["y"].to_numpy()])
    model = L.fit(features, rows, y, config)
    return _Fitted(model, features, names, rows, y, len(outside))


def _with_extra_rows(store: Store, features: L.Features, extra: pd.DataFrame,
                     config: L.LearnConfig, frame: pd.DataFrame,
                     scores: pd.DataFrame | None) -> tuple[L.Features, np.ndarray]:
    """Append labelled rows that are not in the version (dropped since, say) to the features."""
    import scipy.sparse as sp

    from .curate import embed_frame

    n = len(features)
    sparse = None
    if features.sparse is not None:
        sparse = sp.vstack([features.sparse, L.lexical_features(
            extra["prompt"].tolist(), extra["response"].tolist())], format="csr")
    dense = features.dense
    if dense is not None:
        fields = [f for f in config.fields if embedded(store, frame, f, config.model)]
        # A handful of rows: embed them now if they were never embedded.
        vectors = {f: embed_frame(store, extra, field=f, model=config.model) for f in fields}
        from .quality import with_cached_scores

        extra_scores = None
        if scores is not None and len(scores.columns):
            extra_scores = with_cached_scores(store, extra).reindex(columns=scores.columns)
        block = L.dense_features(vectors, extra_scores, extra["prompt"].str.len().to_numpy(),
                                 extra["response"].str.len().to_numpy())
        dense = np.vstack([dense, block])
    return L.Features(sparse, dense, features.dense_weight), np.arange(n, n + len(extra))


def train_learned(store: Store, version_id: int, frame: pd.DataFrame, *,
                  label_set: str = LB.DEFAULT_SET, config: L.LearnConfig | None = None
                  ) -> LearnedResult:
    """Fit the learned score on the labels, score every row of the version into the score
    cache and return what was trained, with its cross-validated AUROC."""
    return _train(store, version_id, frame, label_set, config or L.LearnConfig())[0]


def start_learning(store: Store, version_id: int, *, label_set: str = LB.DEFAULT_SET
                   ) -> jobs.JobStatus:
    """Start a background job training the learned score (the "learn" task: the rows are read
    and scored there, ``train_learned``); return its status. Too few labels fail here."""
    store.version(version_id)
    trainable_labels(store, version_id, label_set=label_set)
    return jobs.start("learn", {"store": str(store.path), "version_id": int(version_id),
                                "label_set": label_set})


def learn_jobs(store: Store, version_id: int, *, home: str | Path | None = None
               ) -> list[jobs.JobStatus]:
    """Return the learned-score jobs started on a version, newest first (run registry)."""
    return runs.statuses(store, ["learn"], lambda p: p.get("version_id") == version_id,
                         home=home)


def trained_message(result: LearnedResult) -> str:
    """Return the one line that says what a training gave."""
    return (f"Learned score trained on {result.n_good} good + {result.n_bad} bad labels: "
            f"cross-validated AUROC {result.auroc:.3f} ({result.low:.3f}–{result.high:.3f}).")


def _train(store: Store, version_id: int, frame: pd.DataFrame, label_set: str,
           config: L.LearnConfig, *, save: bool = True) -> tuple[LearnedResult, np.ndarray]:
    """Train and (if ``save``) cache the learned score; return the result and P(bad) of the
    frame's rows."""
    start = time.perf_counter()
    fitted = _fit(store, version_id, frame, config, label_set)
    p_bad = fitted.model.predict(fitted.features, np.arange(len(frame)))
    auc, low, high = fitted.model.auroc()
    if save:
        _save_scores(store, frame, p_bad, label_set, config)
    result = LearnedResult(label_set, learned_column(label_set), fitted.model.n_good,
                           fitted.model.n_bad, fitted.outside, auc, low, high, fitted.names,
                           fitted.model.calibrated, round(time.perf_counter() - start, 3),
                           len(frame), time.strftime("%Y-%m-%d %H:%M:%S"),
                           "" if fitted.model.calibrated else
                           "P(bad) is not calibrated yet: it needs 3 labels of each class "
                           "and held-out rows ranked the right way round")
    _write_result(store, result)
    return result, p_bad


def _save_scores(store: Store, frame: pd.DataFrame, p_bad: np.ndarray, label_set: str,
                 config: L.LearnConfig) -> None:
    # A retrained score replaces the old one for these rows: older values came from fewer
    # labels, and keeping every round would grow the cache by a version's rows each time.
    key = learned_key(label_set)
    latest = LB.actions(store, label_set=label_set, limit=1)
    params = {"label_set": label_set, "config": config.params(),
              "labels_at": int(latest["action_id"].iloc[0]) if len(latest) else 0,
              "trained": time.time()}
    ids = frame["id"].tolist()
    first = pd.Series(p_bad, index=ids).groupby(level=0).first()
    table = pa.table({"id": pa.array(first.index.tolist(), pa.string()),
                      "value": pa.array(first.to_numpy(dtype=np.float64), pa.float64())})
    with store.transaction() as con:
        con.register("_new", table)
        con.execute("DELETE FROM scores WHERE scorer = ? AND id IN (SELECT id FROM _new)", [key])
        con.execute("""INSERT INTO scores (id, scorer, params_hash, value, detail)
                       SELECT id, ?, ?, value, NULL FROM _new""", [key, params_hash(params)])
        con.unregister("_new")


def _result_file(store: Store, label_set: str) -> Path | None:
    if store.path == ":memory:":
        return None
    return Path(store.path).parent / "cache" / "learned" / f"{label_set}.json"


def _write_result(store: Store, result: LearnedResult) -> None:
    path = _result_file(store, result.label_set)
    _MEMORY_RESULTS[(store.path, result.label_set)] = result
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(result.as_dict(), indent=1))


_MEMORY_RESULTS: dict = {}


def last_result(store: Store, label_set: str = LB.DEFAULT_SET) -> LearnedResult | None:
    """Return the newest training result of a label set's learned score, if any."""
    path = _result_file(store, label_set)
    if path is not None and path.exists():
        data = json.loads(path.read_text())
        return LearnedResult(**{k: (float("nan") if v is None and k in ("auroc", "low", "high")
                                    else v) for k, v in data.items()})
    return _MEMORY_RESULTS.get((store.path, label_set))


# --- the review queue ---------------------------------------------------------------------------

@dataclass
class QueueOptions:
    """What feeds the queue: how many rows, a search, rows to leave out, the model config."""

    n: int = 20
    search: str = ""
    skip: Sequence[str] = ()
    label_set: str = LB.DEFAULT_SET
    config: L.LearnConfig = field(default_factory=L.LearnConfig)
    mix: L.QueueMix = field(default_factory=L.QueueMix)
    seed: int = 0
    # False: seed from cleaning rules only when their hits are known without a long scan
    # (flags a step stored, cached hits, a small version); else the queue says they are
    # pending (``Queue.rules_pending``) and ``start_rule_scan`` finds them in the background.
    scan_rules: bool = True


@dataclass
class Queue:
    """The next rows to label and why, the stage (seeds or model) and the model's result."""

    rows: pd.DataFrame
    stage: Literal["seeds", "model"]
    result: LearnedResult | None
    good: int
    bad: int
    message: str = ""
    rules_pending: bool = False  # seeds drawn without the cleaning rules' hits, not yet known


def next_rows(store: Store, version_id: int, frame: pd.DataFrame,
              options: QueueOptions | None = None,
              progress: Callable[[str], None] | None = None) -> Queue:
    """Return the next rows to label: seeds before there is a model, then active learning.
    ``progress`` hears what is being done (each cleaning rule the first time, training)."""
    options = options or QueueOptions()  # a fresh one: the dataclass is mutable
    if options.n < 1:
        raise ConfigError(f"n={options.n}: ask for at least one row")
    current = LB.current_labels(store, frame["id"].tolist(), label_set=options.label_set)
    done = set(current["id"]) | {str(s) for s in options.skip}
    candidates = np.flatnonzero(~_member(frame["id"], done))
    all_labels = labelled_frame(store, version_id, label_set=options.label_set)
    good, bad = int((all_labels["y"] == 0).sum()), int((all_labels["y"] == 1).sum())
    vectors = _diversity_vectors(store, frame)
    if min(good, bad) >= options.config.min_per_class:
        if progress:
            progress("training the learned score")
        # A queue drawn from a sample of the version must not leave the cached learned score
        # fresh on the sample and stale elsewhere: only a queue over every row saves it.
        every_row = len(frame) >= store.version(version_id).n_rows
        frame = with_texts(store, version_id, frame)  # the features read every row's text
        result, p_bad = _train(store, version_id, frame, options.label_set, options.config,
                               save=every_row)
        picks = L.pick_queue(p_bad, candidates, options.n, vectors=vectors, mix=options.mix,
                             seed=options.seed + len(done))
        return Queue(_queue_frame(store, version_id, frame, picks, p_bad), "model", result,
                     good, bad)
    pending = not options.scan_rules and rule_scan_pending(store, version_id, frame)
    sources = seed_sources(store, version_id, frame, search=options.search, seed=options.seed,
                           progress=progress, rules=not pending)
    labelled_rows = set(range(len(frame))) - set(candidates.tolist())
    picks = L.pick_seeds(sources, labelled_rows, options.n, vectors=vectors,
                         seed=options.seed + len(done))
    need = options.config.min_per_class
    message = (f"{good} good and {bad} bad labels so far: the learned score starts at {need} "
               f"of each; until then rows come from cleaning-rule hits, extreme scores, your "
               "search and random rows")
    if pending:
        message += ("; rows that cleaning rules hit join when the rule scan of this version "
                    "(running in the background) finishes")
    return Queue(_queue_frame(store, version_id, frame, picks, None), "seeds", None, good, bad,
                 message, pending)


def _cached_learned(store: Store, frame: pd.DataFrame, label_set: str) -> np.ndarray:
    with store.connect() as con:
        con.register("_ids", pa.table({"id": pa.array(list(set(frame["id"])), pa.string())}))
        values = dict(con.execute("""SELECT id, value FROM scores SEMI JOIN _ids USING (id)
                                     WHERE scorer = ?""", [learned_key(label_set)]).fetchall())
        con.unregister("_ids")
    return frame["id"].map(values).to_numpy(dtype=np.float64)


def _diversity_vectors(store: Store, frame: pd.DataFrame) -> np.ndarray | None:
    # Near-identical rows are judged once: any embedded field tells them apart.
    for field_name in ("conversation", "user", "assistant"):
        if embedded(store, frame, field_name):
            return _vectors(store, frame, field_name)
    return None


def queue_rows(store: Store, version_id: int) -> pd.DataFrame:
    """Return the rows the review queue draws from, as keys and ids only (``row_key``, ``id``,
    version order): all of a version up to QUEUE_ROWS, else the fixed sample
    ``Store.sample_frame`` takes. ``next_rows`` reads the texts of the rows it needs."""
    rows = store.row_ids(version_id)
    if len(rows) <= QUEUE_ROWS:
        return rows
    return rows.iloc[_sample_at(len(rows), QUEUE_ROWS)].reset_index(drop=True)


def _sample_at(n: int, k: int) -> np.ndarray:
    """Return the positions, in order, of a fixed random sample of k of n rows (all if n <= k)."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, k, replace=False))


def with_texts(store: Store, version_id: int, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame's rows as a step DataFrame (texts included): the frame itself when it
    has them, else those rows read from the store (a queue frame may hold only keys and ids)."""
    if "messages" in frame.columns:
        return frame
    return store.frame_of(version_id, frame["row_key"].tolist())


def _queue_frame(store: Store, version_id: int, frame: pd.DataFrame, picks: list[L.Pick],
                 p_bad: np.ndarray | None) -> pd.DataFrame:
    idx = [p.index for p in picks]
    # Only the picked rows' texts are read: the queue may rank rows by keys and ids alone.
    picked = with_texts(store, version_id, frame.iloc[idx]).set_index("row_key")
    out = picked.loc[frame["row_key"].iloc[idx].to_numpy()].reset_index()[
        ["row_key", "id", "messages", "prompt", "response"]]
    out["source"] = [p.source for p in picks]
    out["why"] = [p.why for p in picks]
    out["p_bad"] = p_bad[idx] if p_bad is not None else np.nan
    return out.reset_index(drop=True)


def seed_sources(store: Store, version_id: int, frame: pd.DataFrame, *, search: str = "",
                 seed: int = 0, progress: Callable[[str], None] | None = None,
                 rules: bool = True) -> list[L.SeedSource]:
    """Return the sources the queue draws from before there is a model: each cleaning rule's
    hits (the flags a cleaning step stored, else the default rules run once and cached; none
    with ``rules=False``), extreme values of each cached score, the user's search, and random
    rows."""
    position = pd.Series(np.arange(len(frame)), index=frame["row_key"].astype(int))
    sources = []
    flagged = store.flagged(version_id) if rules else pd.DataFrame()
    hits = pd.DataFrame(columns=["row_key", "rule", "detail"]) if not rules else \
        flagged.rename(columns={"reason": "rule"}) if len(flagged) else \
        rule_hits(store, _seed_scan_rows(frame), progress=progress,
                  texts=lambda rows: with_texts(store, version_id, rows))
    for rule, group in hits.groupby("rule", sort=False):
        at = position.reindex(group["row_key"].astype(int)).dropna().astype(int).to_numpy()
        sources.append(L.SeedSource(f"rule:{rule}", at,
                                    [f"cleaning rule {rule}: {d}" for d in group["detail"]]))
    from .quality import with_cached_scores

    scored = feature_scores(with_cached_scores(store, frame))
    if len(scored.columns):
        sources.append(_extremes(scored))
    if search.strip():
        keys = bulk_rows(store, version_id, frame, "search", search)
        at = position.reindex(keys).dropna().astype(int).to_numpy()
        sources.append(L.SeedSource("search", at, [f"matches your search {search!r}"] * len(at)))
    rng = np.random.default_rng(seed)
    sources.append(L.SeedSource("random", rng.permutation(len(frame))[:5000],
                                ["a random row"] * min(len(frame), 5000)))
    return sources


def _seed_scan_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Return the rows whose rule hits seed the queue: all, or SEED_SCAN_ROWS of them drawn
    with a fixed seed (the same rows on every reopen, so the cached hits serve them)."""
    if len(frame) <= SEED_SCAN_ROWS:
        return frame
    return frame.iloc[_sample_at(len(frame), SEED_SCAN_ROWS)]


def rule_scan_pending(store: Store, version_id: int, frame: pd.DataFrame) -> bool:
    """Return whether seeding a queue over ``frame`` (``queue_rows``) from cleaning rules
    waits for a long scan: no cleaning step stored flags, the rows to scan are more than
    INLINE_SCAN_ROWS, and their hits are not cached yet (``scan_queue_rules`` caches them)."""
    rows = _seed_scan_rows(frame)
    if len(rows) <= INLINE_SCAN_ROWS or store.path == ":memory:":
        return False
    return not store.flagged_count(version_id) and not _rules_path(store, rows,
                                                                   _hit_rules()).exists()


def scan_queue_rules(store: Store, version_id: int, *,
                     row_progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Run the default rules over the rows whose hits seed a version's queue (those of
    ``queue_rows``) and cache them, as the queue would; return (row_key, rule, detail).
    ``row_progress(checks_done, rows * rules, "rule i/n · name")`` follows the scan.

    Those rows are found by their places in the version, not by reading every row's key: at
    1M rows the job then holds the store ~0.1 s instead of ~1 s, while the page waits on it."""
    queue = _sample_at(store.version(version_id).n_rows, QUEUE_ROWS)
    at = queue[_sample_at(len(queue), SEED_SCAN_ROWS)]
    with store.connect() as con:
        rows = con.execute("""SELECT r.row_key, r.id FROM version_rows vr JOIN rows r
            USING (row_key) WHERE vr.version_id = ? AND vr.pos IN (SELECT unnest(?::BIGINT[]))
            ORDER BY vr.pos""", [int(version_id), at.tolist()]).df()
    return rule_hits(store, rows, texts=lambda r: with_texts(store, version_id, r),
                     row_progress=row_progress)


def version_rule_hits(store: Store, version_id: int, frame: pd.DataFrame | None = None, *,
                      row_progress: Callable[[int, int, str], None] | None = None
                      ) -> pd.DataFrame:
    """Return ``rule_hits`` over every row of a version (what bulk labels by rule read): the
    cached hits, else a scan of the texts (read only then). ``frame``: the version's rows, or
    just their keys and ids; read from the store when not given."""
    rows = frame if frame is not None else store.row_ids(version_id)
    return rule_hits(store, rows, texts=lambda r: with_texts(store, version_id, r),
                     row_progress=row_progress)


def version_rules_pending(store: Store, rows: pd.DataFrame) -> bool:
    """Return whether ``version_rule_hits`` over a version's rows (keys and ids are enough)
    waits for a long scan: more than INLINE_SCAN_ROWS rows and their hits not cached yet."""
    if len(rows) <= INLINE_SCAN_ROWS or store.path == ":memory:":
        return False
    return not _rules_path(store, rows, _hit_rules()).exists()


RuleScope = Literal["queue", "version"]


def start_rule_scan(store: Store, version_id: int, scope: RuleScope = "queue"
                    ) -> jobs.JobStatus:
    """Start a background job that finds the cleaning rules' hits on a version and caches
    them (the "rule_scan" task: progress counts rows x rules, cancel stops it): on the rows
    that seed its queue (``scan_queue_rules``), or with ``scope="version"`` on every row
    (``version_rule_hits``, what bulk labels by rule read)."""
    if scope not in ("queue", "version"):
        raise ConfigError(f"scope={scope!r}: use queue or version")
    store.version(version_id)  # an unknown version fails here, not in the job
    return jobs.start(RULE_SCAN_TASK, {"store": str(store.path), "version_id": int(version_id),
                                       "scope": scope})


def rule_scan_jobs(store: Store, version_id: int, scope: RuleScope = "queue", *,
                   home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the rule scan jobs of this scope started on a version, newest first (from the
    run registry)."""
    return runs.statuses(store, [RULE_SCAN_TASK], lambda p: p.get("version_id") == version_id
                         and p.get("scope", "queue") == scope, home=home)


def _extremes(scores: pd.DataFrame) -> L.SeedSource:
    rows, why = [], []
    for column in scores.columns:
        x = scores[column].to_numpy(dtype=np.float64)
        ok = np.isfinite(x)
        if ok.sum() < 10:
            continue
        lo, hi = np.quantile(x[ok], [SEED_EXTREME_SHARE, 1 - SEED_EXTREME_SHARE])
        for i in np.flatnonzero(ok & ((x <= lo) | (x >= hi))):
            rows.append(i)
            why.append(f"{column} {x[i]:.3g} is among the {'lowest' if x[i] <= lo else 'highest'}"
                       f" {SEED_EXTREME_SHARE:.0%}")
    return L.SeedSource("extreme scores", np.array(rows, dtype=int), why)


# --- rule hits and agreement with labels ---------------------------------------------------------

def rule_hits(store: Store, frame: pd.DataFrame, rules: Sequence | None = None,
              progress: Callable[[str], None] | None = None,
              texts: Callable[[pd.DataFrame], pd.DataFrame] | None = None, *,
              row_progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """Return (row_key, rule, detail) for every row a drop or flag rule hits (default rules),
    plus rows a cleaning step flagged for review; cached on disk by content ids. ``texts``
    gives the rows with their texts when the frame has only keys and ids (read only when the
    hits are not cached). ``progress`` hears each rule's name, ``row_progress`` the count of
    rows x rules checked (as ``clean.run`` reports it)."""
    rules = _hit_rules(rules)
    path = _rules_path(store, frame, rules)
    if path is not None and path.exists():
        by_id = pd.read_parquet(path)
    else:
        by_id = _scan_rules(texts(frame) if texts else frame, rules, progress, row_progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda tmp: by_id.to_parquet(tmp, index=False))
    keys = frame.drop_duplicates("id").set_index("id")["row_key"]
    hits = by_id.assign(row_key=by_id["id"].map(keys)).dropna(subset=["row_key"])
    return hits[["row_key", "rule", "detail"]].astype({"row_key": int}).reset_index(drop=True)


def _hit_rules(rules: Sequence | None = None) -> list:
    """Return the drop and flag rules among ``rules`` (default: the default rules)."""
    from . import clean

    return [r for r in (rules if rules is not None else clean.default_rules())
            if r.action != "change"]


def _rules_path(store: Store, frame: pd.DataFrame, rules: Sequence) -> Path | None:
    """Return where the rules' hits on the frame's rows are cached (None: in-memory store)."""
    if store.path == ":memory:":
        return None
    key = params_hash([r.params() for r in rules])
    return Path(store.path).parent / "cache" / "rules" / f"{_digest(frame['id'])}-{key}.parquet"


def _scan_rules(frame: pd.DataFrame, rules: Sequence, progress: Callable[[str], None] | None,
                row_progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    from . import clean

    convs = [list(m) for m in frame["messages"]]
    metas = frame["metadata"].tolist() if "metadata" in frame.columns else [{}] * len(convs)
    parts = []
    for i, rule in enumerate(rules):
        if progress:
            progress(f"cleaning rule {rule.name} ({i + 1} of {len(rules)}), once per version")
        # In chunks when someone follows the rows; a rule looks at one row at a time.
        hits = clean.scan_rule(rule, convs, metas, (i + 1, len(rules)), row_progress)
        at = [i for i, h in enumerate(hits) if h is not None]
        parts.append(pd.DataFrame({"id": frame["id"].to_numpy()[at], "rule": rule.name,
                                   "detail": [hits[i].detail for i in at]}))
    return pd.concat(parts, ignore_index=True) if parts else \
        pd.DataFrame(columns=["id", "rule", "detail"])


def rule_table(store: Store, frame: pd.DataFrame, preview: Any, *,
               label_set: str = LB.DEFAULT_SET) -> pd.DataFrame:
    """Return, per rule of a cleaning preview: rows it hits, labelled bad and good among them,
    and the precision (share of labelled hits that are bad) with a 95% Wilson interval."""
    labels = LB.label_column(store, frame["id"].tolist(), label_set=label_set)
    by_key = pd.Series(labels.to_numpy(), index=frame["row_key"].astype(int))
    rows = []
    for report in preview.rules:
        hit = by_key.reindex([int(k) for k in getattr(report, "row_keys", [])])
        bad, good = int((hit == "bad").sum()), int((hit == "good").sum())
        p, lo, hi = L.wilson(bad, bad + good)
        rows.append({"rule": report.name, "action": report.action, "rows": report.rows,
                     "labelled_bad": bad, "labelled_good": good, "precision": p, "low": lo,
                     "high": hi})
    return pd.DataFrame(rows, columns=["rule", "action", "rows", "labelled_bad",
                                       "labelled_good", "precision", "low", "high"])


def signal_table(store: Store, frame: pd.DataFrame, *, label_set: str = LB.DEFAULT_SET
                 ) -> pd.DataFrame:
    """Return each score column's AUROC against the labels on this frame (with a 95% CI), in
    its declared direction, and the direction that actually separates bad rows."""
    from .score import direction_of

    labelled = with_labels(store, frame, label_set=label_set)
    labelled = labelled[labelled["label"] != ""]
    columns = [c for c in frame.columns if str(c).endswith("_score")]
    if labelled.empty or not columns:
        return pd.DataFrame(columns=["score", "declared", "labelled", "auroc", "low", "high",
                                     "bad_rows_score"])
    y = (labelled["label"] == "bad").astype(int).to_numpy()
    better = {c: direction_of(c) or "higher" for c in columns}
    return L.signal_agreement(labelled[columns], y, better)


def version_signal_table(store: Store, version_id: int, table: pd.DataFrame, *,
                         label_set: str = LB.DEFAULT_SET) -> pd.DataFrame:
    """Return ``signal_table`` of a version's score table (``quality.score_table``), reading
    the labels of its labelled rows only: every other row would be dropped by it anyway."""
    labelled = version_labels(store, version_id, label_set=label_set)["row_key"]
    return signal_table(store, table[table["row_key"].isin(labelled)], label_set=label_set)


def fitted_weights(store: Store, frame: pd.DataFrame, columns: Sequence[str], *,
                   label_set: str = LB.DEFAULT_SET) -> tuple[dict[str, float], dict[str, str]]:
    """Return combined-score weights and directions fitted to the labels on this frame."""
    labelled = with_labels(store, frame, label_set=label_set)
    labelled = labelled[labelled["label"] != ""]
    if labelled.empty:
        raise ConfigError("no labelled rows in this version: label rows first")
    y = (labelled["label"] == "bad").astype(int).to_numpy()
    return L.fit_weights(labelled[list(columns)], y)
