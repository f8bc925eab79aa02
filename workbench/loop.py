"""Error analysis and closing the loop, wired to the store and the run folders.

analysis.py holds the pure functions; this module loads an eval run's predictions, its
annotations and the training rows behind its model, calls them, and starts the
"retrain and re-evaluate" job (the "loop" task in tasks.py). Pages and the CLI call one
function here.

An eval run is any run folder holding predictions.parquet: an eval job, an import job, a loop
job, or one written by hand with evaluate.write_run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from . import analysis, evaluation, jobs, runs, training
from .cache import cache_of
from .evaluate import (
    PREDICTIONS_FILE,
    metric_columns,
    read_predictions,
    read_summary,
    text_vectors,
)
from .exceptions import ConfigError, NotFoundError
from .schema import Example
from .store import Store, VersionInfo

LOOP_TASK = "loop"  # the registered task (tasks.py)
LOOP_KIND = "loop"
SLICE_KINDS = ("tag", "length", "cluster")
# Eval job parameters a re-evaluation repeats (the model changes, the store is given).
EVAL_KEYS = ("version_id", "generation", "style", "embedder", "limit", "name")


# ---------------------------------------------------------------- eval runs


def run_dir(run: str | Path, *, home: str | Path | None = None) -> Path:
    """Return an eval run's folder from its id or path (NotFoundError without predictions).

    A run id is resolved (and checked) by jobs.run_folder, the one resolver of run ids."""
    path = Path(run)
    folder = path if path.is_dir() else jobs.run_folder(str(run), home=home)
    if not (folder / PREDICTIONS_FILE).is_file():
        raise NotFoundError(f"no eval run '{run}' (no {PREDICTIONS_FILE} in {folder}); "
                            "run an evaluation or import predictions first")
    return folder


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    return orjson.loads(path.read_bytes()) if path.is_file() else {}


def predictions(run: str | Path, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return an eval run's scored predictions (one row per eval row)."""
    return read_predictions(run_dir(run, home=home))


# ---------------------------------------------------------------- failures and annotations


def failures(run: str | Path, *, home: str | Path | None = None,
             include_passing: bool = False) -> pd.DataFrame:
    """Return the run's failures with auto/manual tags, note and severity, worst first."""
    folder = run_dir(run, home=home)
    frame = read_predictions(folder)
    if "row_key" not in frame.columns:
        frame.insert(0, "row_key", range(len(frame)))
    return analysis.failures_table(frame, annotations=analysis.read_annotations(folder),
                                   include_passing=include_passing)


def annotate(run: str | Path, row_key: int, *, tags: Sequence[str] | str | None = None,
             note: str | None = None, home: str | Path | None = None) -> dict[str, Any]:
    """Set a row's manual tags (a list or "a, b" text) and note; return the row's annotation."""
    folder = run_dir(run, home=home)
    keys = set(read_predictions(folder).get("row_key", pd.Series(dtype=int)).astype(int))
    if int(row_key) not in keys:
        raise NotFoundError(f"row {row_key} is not in eval run {folder.name}")
    if isinstance(tags, str):
        tags = [t.strip() for t in tags.split(",") if t.strip()]
    return analysis.annotate(folder, int(row_key), tags=tags, note=note)


def tag_rates(run: str | Path, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return per failure tag (and "any") the count and rate with its interval, in one run."""
    frame = failures(run, home=home, include_passing=True)
    return analysis.tag_rates(frame)


# ---------------------------------------------------------------- slices and clusters


def slice_options(run: str | Path, *, home: str | Path | None = None
                  ) -> tuple[list[str], list[str]]:
    """Return (metric columns, slice kinds: tag, length, cluster and metadata.<key>)."""
    frame = predictions(run, home=home)
    keys = sorted({k for m in frame.get("metadata", []) if isinstance(m, dict)
                   for k in m if not str(k).startswith("_")})
    return metric_columns(frame), [*SLICE_KINDS, *(f"metadata.{k}" for k in keys)]


def slices(store: Store, run: str | Path, metric: str, by: str, *, bins: int = 3,
           k: int | None = None, home: str | Path | None = None,
           embedder: str = "default") -> pd.DataFrame:
    """Return per slice of the run the row count and the metric's mean with its interval."""
    frame = failures(run, home=home, include_passing=True)
    if by == "cluster":
        found = _clusters(store, frame, k, embedder)
        names = dict(zip(found.table["cluster"], found.table["name"]))
        frame = frame.assign(cluster=[f"{c}: {names[c]}" for c in found.labels])
    return analysis.slice_metric(frame, metric, by, bins=bins)


def failure_clusters(store: Store, run: str | Path, *, k: int | None = None,
                     home: str | Path | None = None, embedder: str = "default"
                     ) -> pd.DataFrame:
    """Return the failures grouped by prompt embedding: cluster, size, name, terms, row_keys."""
    frame = failures(run, home=home)
    found = _clusters(store, frame, k, embedder)
    table = found.table.copy()
    table["row_keys"] = [frame["row_key"].iloc[r].astype(int).tolist() for r in table["rows"]]
    return table.drop(columns="rows")


def _clusters(store: Store, frame: pd.DataFrame, k: int | None, embedder: str
              ) -> analysis.Clusters:
    vectors = text_vectors(frame["prompt"].astype(str).tolist(), cache=cache_of(store),
                           model=embedder)
    return analysis.cluster_failures(frame, vectors, k)


# ---------------------------------------------------------------- provenance


@dataclass
class FailureDetail:
    """One failure with the training rows behind it: neighbours and the contamination check."""

    row: pd.Series
    train_version: int | None
    neighbours: pd.DataFrame
    overlap: float
    contaminated: bool
    contaminating_prompt: str


def train_version_of(run: str | Path, *, home: str | Path | None = None) -> int | None:
    """Return the dataset version the run's model was trained on (None: a base model)."""
    return analysis.training_version(run_dir(run, home=home))


def failure_detail(store: Store, run: str | Path, row_key: int, *, k: int = 3,
                   train_version: int | None = None, home: str | Path | None = None,
                   embedder: str = "default") -> FailureDetail:
    """Return one eval row with its k nearest training rows and its contamination flag.

    The training rows are those of the run's model, or ``train_version`` when given (a base
    model has none; the detail then has no neighbours).
    """
    frame = failures(run, home=home, include_passing=True)
    match = frame[frame["row_key"].astype(int) == int(row_key)]
    if match.empty:
        raise NotFoundError(f"row {row_key} is not in eval run {Path(str(run)).name}")
    version = train_version if train_version is not None else train_version_of(run, home=home)
    if version is None:
        return FailureDetail(match.iloc[0], None, pd.DataFrame(), 0.0, False, "")
    return _detail(store, match, version, k, embedder)


def _detail(store: Store, match: pd.DataFrame, version: int, k: int, embedder: str
            ) -> FailureDetail:
    train = store.frame(version)
    prompts = train["prompt"].astype(str).tolist()
    vectors = text_vectors([str(match["prompt"].iloc[0]), *prompts], cache=cache_of(store),
                           model=embedder)
    near = analysis.provenance(match, train, vectors[:1], vectors[1:], k)
    check = analysis.contamination([str(match["prompt"].iloc[0])], prompts).iloc[0]
    source = prompts[int(check["train_index"])] if check["train_index"] >= 0 else ""
    return FailureDetail(match.iloc[0], version, near, float(check["overlap"]),
                         bool(check["contaminated"]), source)


# ---------------------------------------------------------------- targeted data


def make_targeted_version(store: Store, run: str | Path, row_keys: Sequence[int], *,
                          answers: Mapping[int, str] | None = None,
                          pool_version: int | None = None, k: int = 3,
                          train_version: int | None = None, message: str = "",
                          home: str | Path | None = None, embedder: str = "default") -> int:
    """Return the id of a new version: the training version plus targeted examples.

    Its params record the eval run. ``answers`` (row_key -> corrected answer) turn failures
    into examples; ``pool_version`` adds the k pool rows nearest each selected failure.
    """
    if not row_keys:
        raise ConfigError("no failures selected: pick the rows (or a cluster) to fix first")
    if not answers and pool_version is None:
        raise ConfigError("give corrected answers or a pool dataset to pull similar rows from")
    folder = run_dir(run, home=home)
    version = train_version if train_version is not None else analysis.training_version(folder)
    if version is None:
        raise ConfigError("the evaluated model is a base model: choose the training version "
                          "that the targeted rows extend")
    chosen = _selected(folder, row_keys)
    examples = _targeted(store, folder, chosen, answers or {}, pool_version, k, version, embedder)
    return add_targeted_version(store, version, examples, eval_run=folder.name,
                                         message=message)


def _selected(folder: Path, row_keys: Sequence[int]) -> pd.DataFrame:
    frame = failures(folder, include_passing=True)
    keys = [int(k) for k in row_keys]
    missing = sorted(set(keys) - set(frame["row_key"].astype(int)))
    if missing:
        raise NotFoundError(f"rows {missing} are not in eval run {folder.name}")
    return frame[frame["row_key"].astype(int).isin(keys)].reset_index(drop=True)


def _targeted(store: Store, folder: Path, chosen: pd.DataFrame, answers: Mapping[int, str],
              pool_version: int | None, k: int, version: int, embedder: str) -> list[Example]:
    answers = {int(key): text for key, text in answers.items()}
    if pool_version is None:
        return analysis.targeted_examples(chosen, eval_run=folder.name, corrected_answers=answers)
    pool = store.frame(pool_version)
    prompts = [*chosen["prompt"].astype(str), *pool["prompt"].astype(str)]
    vectors = text_vectors(prompts, cache=cache_of(store), model=embedder)
    return analysis.targeted_examples(
        chosen, eval_run=folder.name, corrected_answers=answers, pool_frame=pool,
        pool_vectors=vectors[len(chosen):], failure_vectors=vectors[:len(chosen)], k=k,
        exclude_ids=store.frame(version)["id"].tolist())


def targeted_versions(store: Store, run: str | Path, *, home: str | Path | None = None
                      ) -> list[VersionInfo]:
    """Return the targeted versions made from an eval run's failures, newest first."""
    name = run_dir(run, home=home).name
    found = [v for dataset in store.datasets()["name"] for v in store.versions(dataset)
             if v.operation == "targeted" and v.params.get("eval_run") == name]
    return sorted(found, key=lambda v: v.version_id, reverse=True)


# ---------------------------------------------------------------- retrain and re-evaluate


def start_retrain(store: Store, run: str | Path, targeted_version: int, *,
                  config: Mapping[str, Any] | None = None, home: str | Path | None = None
                  ) -> jobs.JobStatus:
    """Return the started job that retrains on a targeted version and re-evaluates.

    It trains with the previous run's config (or ``config``), evaluates the adapter like the
    eval run, and compares with it (the "loop" task)."""
    folder = run_dir(run, home=home)
    store.version(int(targeted_version))  # NotFoundError now, not in the job
    params: dict[str, Any] = {"store": str(store.path), "version_id": int(targeted_version),
                              "eval": _eval_params(folder), "source_run": folder.name,
                              "source_dir": str(folder)}
    params.update(_training(folder, config))
    if _has_similarity(folder, params["eval"]):
        params["before_run"] = str(folder)
    return jobs.start(LOOP_TASK, params, kind=LOOP_KIND, home=_home_of(folder, home))


def previous_training_run(run: str | Path, *, home: str | Path | None = None) -> Path | None:
    """Return the training run folder of the evaluated model (None: a base model)."""
    model = read_summary(run_dir(run, home=home)).get("model")
    return Path(model["run_dir"]) if isinstance(model, Mapping) and model.get("run_dir") else None


def _home_of(folder: Path, home: str | Path | None) -> Path:
    return Path(home) if home is not None else folder.parent


def _eval_params(folder: Path) -> dict[str, Any]:
    params = _config(folder).get("params") or {}
    source = params.get("eval", params)  # a loop run keeps its eval settings under "eval"
    if source.get("version_id") is None:
        source = read_summary(folder)
    if source.get("version_id") is None:
        raise ConfigError(f"eval run {folder.name} names no eval dataset version (imported "
                          "predictions): evaluate the model on a dataset version first")
    return {k: source[k] for k in EVAL_KEYS if k in source}


def _training(folder: Path, config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        from .train import TrainConfig

        return {"config": TrainConfig.from_dict(dict(config)).to_dict()}
    previous = previous_training_run(folder)
    if previous is not None:
        return {"previous_run": str(previous)}
    raise ConfigError(f"eval run {folder.name} evaluated a base model, so there is no previous "
                      "training config: give the training options")


def _has_similarity(folder: Path, eval_params: Mapping[str, Any]) -> bool:
    # the loop task's own report compares on similarity: both runs must have that column.
    if eval_params.get("embedder", "default") is None:
        return False
    import pyarrow.parquet as pq

    return "similarity" in pq.read_schema(folder / PREDICTIONS_FILE).names


def retrain_jobs(store: Store, run: str | Path, *, home: str | Path | None = None
                 ) -> list[jobs.JobStatus]:
    """Return the retrain jobs started from an eval run, newest first (found in the store's
    run registry: only their folders are read)."""
    folder = run_dir(run, home=home)
    return runs.statuses(store, [LOOP_KIND], lambda p: p.get("source_run") == folder.name,
                         home=_home_of(folder, home))


@dataclass
class BeforeAfter:
    """Before (the source eval run) and after (the retrained run) on the rows not trained on."""

    metric: str
    tags: pd.DataFrame
    slices: dict[str, pd.DataFrame]
    counts: dict[str, int]
    delta: dict[str, float]
    regressed: list[str]
    excluded_rows: list[int]


def before_after(store: Store, loop_run: str | Path, *, by: Sequence[str] = ("length",),
                 home: str | Path | None = None) -> BeforeAfter:
    """Return a finished retrain job's before/after report per failure tag and slice.

    Eval rows whose prompt the retrained model saw in training are left out."""
    after_dir = run_dir(loop_run, home=home)
    params = _config(after_dir).get("params") or {}
    if not params.get("source_dir"):
        raise ConfigError(f"run {after_dir.name} is not a retrain job started from an eval run")
    a, b = read_predictions(params["source_dir"]), read_predictions(after_dir)
    excluded = _trained_rows(store, int(params["version_id"]), a)
    a, b = _held_out(a, excluded), _held_out(b, excluded)
    metric = "similarity" if {"similarity"} <= set(a.columns) & set(b.columns) else "rouge_l"
    report = analysis.before_after(a, b, metric=metric, by=by)
    slices = {name: pd.DataFrame(rows) for name, rows in report["slices"].items()}
    return BeforeAfter(metric, pd.DataFrame(report["tags"]), slices, report["counts"],
                       report["delta"], report["regressed_slices"], sorted(excluded))


def _trained_rows(store: Store, version: int, before: pd.DataFrame) -> set[int]:
    # Corrected answers (from this or an earlier iteration) put eval prompts into training.
    seen = set(store.frame(version)["prompt"].astype(str))
    keys = before["row_key"] if "row_key" in before.columns else pd.Series(range(len(before)))
    return {int(k) for k, p in zip(keys, before["prompt"].astype(str)) if p in seen}


def _held_out(frame: pd.DataFrame, excluded: set[int]) -> pd.DataFrame:
    if not excluded or "row_key" not in frame.columns:
        return frame
    return frame[~frame["row_key"].astype(int).isin(excluded)].reset_index(drop=True)


# ---------------------------------------------------------------- iterations over time


def iterations(store: Store, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return one row per finished eval run (oldest first) with its lineage, failure rate and
    metrics.

    Lineage: the model, its training run and version, how that version was made and from
    which eval run's failures."""
    found = evaluation.finished_runs(store, home=home).iloc[::-1]
    rows = [_iteration(store, jobs.runs_dir(home) / run.run_id, run, i + 1)
            for i, run in enumerate(found.itertuples())]
    return pd.DataFrame(rows)


def _iteration(store: Store, folder: Path, run: Any, number: int) -> dict[str, Any]:
    summary, frame = read_summary(folder), read_predictions(folder)
    model = summary.get("model")
    version = analysis.training_version(folder)
    out = {"iteration": number, "created": run.created, "eval_run": run.run_id,
           "kind": run.kind, "model": run.model,
           "train_run": Path(model["run_dir"]).name if isinstance(model, Mapping) else "",
           "train_version": version, **_version_lineage(store, version),
           "eval_version": summary.get("version_id"),
           "from_eval_run": (_config(folder).get("params") or {}).get("source_run", ""),
           "rows": len(frame),
           "failure_rate": float(np.mean([bool(t) for t in analysis.failure_tags(frame)]))}
    out.update({m: v.get("mean") for m, v in (summary.get("metrics") or {}).items()})
    return out


def _version_lineage(store: Store, version: int | None) -> dict[str, Any]:
    if version is None:
        return {"train_dataset": "", "train_operation": "", "train_parent": None}
    try:
        info = store.version(version)
    except NotFoundError:  # the store was replaced since: say so rather than fail
        return {"train_dataset": "?", "train_operation": "missing", "train_parent": None}
    return {"train_dataset": info.dataset, "train_operation": info.operation,
            "train_parent": info.parent_id}


def unevaluated_training_runs(store: Store, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return the training runs no eval run has evaluated yet, newest first (runs table)."""
    evaluated = {str(m).removeprefix("run:")
                 for m in evaluation.eval_runs(store, home=home)["model"]}
    table = training.runs_table(store, home=home)
    return table[~table["run_id"].isin(evaluated)].reset_index(drop=True)


def metric_history(store: Store, metric: str, *, home: str | Path | None = None
                   ) -> pd.DataFrame:
    """Return per finished eval run (oldest first) a metric's mean, lo and hi; runs without it
    are left out."""
    found = evaluation.finished_runs(store, home=home).iloc[::-1]
    rows = []
    for i, run in enumerate(found.itertuples(), start=1):
        value = (run.summary.get("intervals") or {}).get(metric)
        if value and value.get("mean") is not None:
            rows.append({"iteration": i, "eval_run": run.run_id, "mean": value["mean"],
                         "lo": value.get("lo"), "hi": value.get("hi")})
    return pd.DataFrame(rows, columns=["iteration", "eval_run", "mean", "lo", "hi"])


def add_targeted_version(store: Store, train_version: int, examples: Sequence[Example], *,
                         eval_run: str, message: str = "") -> int:
    """Add examples as a child of the training version (operation "targeted"); return its id."""
    if not examples:
        raise ConfigError("no targeted examples: correct some answers or pull pool rows first")
    dataset = store.version(train_version).dataset
    kinds = Counter(e.metadata.get("_targeted", {}).get("kind", "other") for e in examples)
    return store.add_examples(dataset, examples, operation="targeted", parent=train_version,
                              params={"eval_run": eval_run, **dict(kinds)},
                              counts={"added": len(examples)}, message=message)
