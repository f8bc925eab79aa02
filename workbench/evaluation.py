"""Evaluation runs wired to the store and the runs folder: start, list, import, compare.

evaluate.py generates and scores; analysis.py compares. This module is the one place that
turns a user's choices (a dataset version, a model name or training run, generation settings)
into an eval job, lists eval runs from the store's run registry (so results survive a page
reload), and reads them back as tables, so that the Evaluate page and the CLI stay thin.
``home`` is the runs folder, as in jobs.py (None: <WORKBENCH_HOME>/runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import analysis, jobs, runs, training
from . import evaluate as ev
from .engine import check_engine
from .exceptions import ConfigError, NotFoundError, WorkbenchError
from .io import ImportReport
from .store import Store, version_label

EVAL_TASK = "eval"  # registered task names (tasks.py)
IMPORT_TASK = "import"
LOOP_TASK = "loop"
# Task -> the kind shown to people; every one of them writes predictions.parquet.
EVAL_TASKS = {EVAL_TASK: "eval", IMPORT_TASK: "import", LOOP_TASK: "loop"}
BASE_MODELS = {"default": "base model (SmolLM2-135M-Instruct)",
               "tiny": "tiny random model (for tests)"}
DEFAULT_LIMIT = 100  # rows a page evaluates unless the user asks for more (the count is shown)
# The per-row columns people read first; the metric columns follow.
OUTPUT_COLUMNS = ("row_key", "prompt", "reference", "prediction")
# The metrics that compare an answer with its reference, and so move with its length.
LENGTH_METRICS = ("exact_match", "token_f1", "rouge_l", "similarity")
Home = str | Path | None


# ---------------------------------------------------------------- models


def trained_runs(store: Store, *, home: Home = None) -> pd.DataFrame:
    """Return the finished training runs (they have an adapter), newest first (registry)."""
    found = training.training_runs(store, home=home)
    return found[found["state"] == "done"].reset_index(drop=True)


def model_choices(store: Store, *, home: Home = None) -> dict[str, str]:
    """Return {model value: label}: each finished training run, newest first, then the base
    model (the tiny random model is for tests: it stays usable by name but is not offered)."""
    choices = {}
    for run in trained_runs(store, home=home).itertuples():
        base = (run.config.get("config") or {}).get("model", "default")
        parent = f", retrained by {run.parent}" if run.parent else ""
        choices[run.run_id] = f"trained run {run.run_id} ({run.data or '?'}, {base}{parent})"
    from .models import test_models_offered

    offered = ("default", "tiny") if test_models_offered() else ("default",)
    return choices | {k: v for k, v in BASE_MODELS.items() if k in offered}


def model_spec(model: str, *, home: Home = None, store: Store | None = None
               ) -> str | dict[str, str]:
    """Return the eval job's model spec for "default", "tiny", a training run id or a folder
    (store: to name the latest training runs when the model is unknown)."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"model must be default, tiny, a training run id or a folder, "
                          f"got {model!r}")
    if model in BASE_MODELS:
        return model
    run_dir = jobs.runs_dir(home) / model
    if (run_dir / "config.json").is_file():
        return _training_run(run_dir, model)
    path = Path(model).expanduser()
    if (path / "train_config.json").is_file():
        return {"run_dir": str(path.resolve())}
    if path.is_dir():
        return str(path.resolve())
    latest = ""
    if store is not None:
        ids = trained_runs(store, home=home)["run_id"].head(5)
        latest = f" (latest: {', '.join(ids) or 'none yet'})"
    raise ConfigError(f"unknown model {model!r}: use default, tiny, a finished training run "
                      f"id{latest} or a local model folder")


def _training_run(run_dir: Path, model: str) -> dict[str, str]:
    job = jobs.status(run_dir)
    if job.task != training.TASK:
        raise ConfigError(f"run {model} is a {job.kind or 'non-training'} run, not a training "
                          "run: pick a finished training run")
    if job.state != "done":
        raise ConfigError(f"training run {model} is {job.state}: evaluate it once it is done")
    return {"run_dir": str(run_dir.resolve())}


# ---------------------------------------------------------------- starting runs


def start_eval(store: Store, ref: str | int, *, model: str = "default",
               generation: ev.GenerationConfig | None = None,
               style: Mapping[str, Any] | None = None, similarity: bool = True,
               limit: int | None = None, name: str = "", home: Home = None,
               inline: bool = False, device: str = "auto", precision: str = "auto",
               backend: str = "torch", engine: str = "local") -> jobs.JobStatus:
    """Return the status of a new eval job of a model on a dataset version (REF: id or name).

    device ("auto": CUDA, else MPS, else CPU), precision ("auto": bf16 on a GPU that has it,
    fp32 on the CPU) and backend ("torch", or "vllm" with the vllm extra on a CUDA GPU) are
    checked here, so an absent GPU or vLLM fails now with the reason, not in the job.
    ``engine="ray"`` generates on Ray Data from the size threshold on (``engine.choose``)."""
    from . import vllm_backend
    from .device import resolve_device, resolve_precision

    resolve_precision(precision, resolve_device(device))
    vllm_backend.check_backend(backend, device)
    version = store.version(store.resolve(ref))
    if version.n_rows == 0:
        raise ConfigError(f"version {version.version_id} of {version.dataset!r} has no rows")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
    if style:
        ev.as_checks(style=style)  # a bad style fails here, not minutes later in the job
    params = {"store": str(store.path), "version_id": version.version_id,
              "model": model_spec(model, home=home, store=store),
              "generation": (generation or ev.GenerationConfig()).to_dict(),
              "style": dict(style) if style else None,
              "embedder": "default" if similarity else None, "limit": limit,
              "name": name or f"{model} on {version.ref}", "device": device or "auto",
              "precision": precision or "auto", "backend": backend,
              **({} if check_engine(engine) == "local" else {"engine": engine})}
    if inline:
        return _finished(jobs.run_inline(EVAL_TASK, params, kind="eval", home=home))
    return jobs.start(EVAL_TASK, params, kind="eval", home=home)


def _finished(job: jobs.JobStatus) -> jobs.JobStatus:
    if job.state != "done":
        raise WorkbenchError(f"{EVAL_TASKS.get(job.task, job.kind)} run "
                             f"{job.run_id} {job.state}: {job.error or 'stopped'}")
    return job


def import_run(path: str | Path, *, model: str | None = None,
               style: Mapping[str, Any] | None = None, store: Store | None = None,
               similarity: bool = True, name: str | None = None, home: Home = None
               ) -> tuple[jobs.JobStatus, ImportReport]:
    """Return (the finished run, the import report) of scoring an outside predictions file."""
    _, report = ev.import_predictions(path, model=model)  # fails fast, names the bad lines
    if style:
        ev.as_checks(style=style)
    params = {"path": str(path), "model": model, "style": dict(style) if style else None,
              "store": str(store.path) if store is not None else None,
              "embedder": "default" if similarity else None, "name": name or Path(path).name}
    return _finished(jobs.run_inline(IMPORT_TASK, params, kind="import", home=home)), report


def import_upload(file_name: str, data: bytes, **options: Any
                  ) -> tuple[jobs.JobStatus, ImportReport]:
    """Return import_run's result for uploaded bytes (kept only while they are read)."""
    from .views import uploaded_file

    with uploaded_file(file_name, data) as path:
        return import_run(path, **{"name": Path(file_name).name, **options})


# ---------------------------------------------------------------- listing runs


def eval_runs(store: Store, *, home: Home = None, active: bool | None = None,
              finished: bool = False) -> pd.DataFrame:
    """Return the eval runs (eval, import and loop runs, and eval runs written by hand) of the
    store's run registry, newest first: run_id, kind, state, model, data, rows, created,
    label, summary, device. active=True/False: only runs in flight / the others; finished: only the
    done ones, whose predictions can be read. The one listing of eval runs (Evaluate,
    Errors, Iterations)."""
    found = runs.records(store, kinds=list(EVAL_TASKS.values()), home=home)
    if active is not None:
        found = found[~found["state"].isin(jobs.FINAL | {"missing"}) == active]
    if finished:
        found = found[found["state"] == "done"]
    rows = [{"run_id": r.run_id, "kind": r.kind, "state": r.state,
             "model": r.model or "default", "data": _data_name(r),
             "rows": r.summary.get("rows"), "created": r.created, "summary": r.summary,
             "device": r.device or ""}
            for r in found.itertuples()]
    frame = pd.DataFrame(rows, columns=["run_id", "kind", "state", "model", "data", "rows",
                                        "created", "summary", "device"])
    frame["rows"] = frame["rows"].astype("Int64")
    frame.insert(7, "label", [_label(r) for r in frame.itertuples()])
    return frame


def finished_runs(store: Store, *, home: Home = None) -> pd.DataFrame:
    """Return the eval runs that have predictions to read, newest first (eval_runs)."""
    return eval_runs(store, home=home, finished=True)


def _data_name(run: Any) -> str:
    if run.kind == IMPORT_TASK:
        return f"file {Path(str(run.config.get('path', '?'))).name}"
    return run.data or "?"


def _label(run: Any) -> str:
    rows = "" if pd.isna(run.rows) else f" · {run.rows} rows"
    return f"{run.run_id} · {run.kind} · {run.model} · {run.data}{rows}"


def runs_table(store: Store, *, home: Home = None) -> pd.DataFrame:
    """Return one row per eval run: id, kind, state, model, data, rows, device, metric means
    [95% CI]."""
    rows = []
    for run in eval_runs(store, home=home).itertuples():
        row = {"run": run.run_id, "kind": run.kind, "state": run.state, "model": run.model,
               "data": run.data, "rows": run.rows, "device": run.device}
        intervals = run.summary.get("intervals") or {}
        row.update({m: format_ci(ci) for m, ci in intervals.items() if m in ev.METRICS})
        rows.append(row)
    names = [m for m in ev.METRICS if any(m in r for r in rows)]
    return pd.DataFrame(rows, columns=["run", "kind", "state", "model", "data", "rows", "device",
                                       *names])


def format_ci(ci: Mapping[str, float]) -> str:
    """Return "mean [lo, hi]" with three decimals ("–" when there were no values)."""
    mean, lo, hi = (ci.get(k) for k in ("mean", "lo", "hi"))
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def summary_table(run: str | Path, *, home: Home = None) -> pd.DataFrame:
    """Return a finished run's metrics: metric, mean, lo, hi (95% bootstrap interval), n."""
    job = _finished(jobs.status(run, home=home))
    metrics = _summary_metrics(ev.read_summary(job.run_dir))
    return pd.DataFrame([{"metric": name, **ci} for name, ci in metrics.items()],
                        columns=["metric", "mean", "lo", "hi", "n"])


def _summary_metrics(summary: dict) -> dict[str, dict]:
    # A loop run's summary nests the eval part; an eval or import run's is flat.
    return summary.get("metrics") or (summary.get("eval") or {}).get("metrics") or {}


# ---------------------------------------------------------------- one run's rows


def run_predictions(run: str | Path, *, home: Home = None) -> pd.DataFrame:
    """Return a finished run's per-row predictions with every metric column."""
    job = jobs.status(run, home=home)
    if job.task not in EVAL_TASKS:
        raise ConfigError(f"run {job.run_id} is a {job.kind} run, not an evaluation")
    return ev.read_predictions(_finished(job).run_dir)


EMPTY_WARN = 0.5  # warn when more than this share of predictions are empty


def run_warnings(predictions: pd.DataFrame) -> list[str]:
    """Return what makes a run's metrics hard to trust, worded for people (empty: nothing):
    mostly empty predictions, or most answers cut off at max new tokens."""
    n = len(predictions)
    if not n:
        return ["the run has no rows"]
    out = []
    empty = predictions["prediction"].fillna("").astype(str).str.strip().eq("")
    if empty.mean() > EMPTY_WARN:
        out.append(f"{empty.sum():,} of {n:,} predictions ({empty.mean():.0%}) are empty: the "
                   "model did not answer (a random or base model, a chat template it does not "
                   "follow, or an end token at once), so every metric of this run is near 0 "
                   "and says nothing about quality")
    if "hit_max" in predictions.columns:
        cut = predictions["hit_max"].fillna(False).astype(bool) & ~empty
        if cut.mean() > EMPTY_WARN:
            out.append(f"{cut.sum():,} of {n:,} answers ({cut.mean():.0%}) stopped at max new "
                       "tokens: they are cut off; raise max new tokens for a fair score")
    return out


def outputs_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Return the per-row display table: row, prompt, reference, prediction, main metrics."""
    metrics = [m for m in ev.METRICS if m in predictions.columns]
    columns = [c for c in OUTPUT_COLUMNS if c in predictions.columns] + metrics
    return predictions[columns].reset_index(drop=True)


def row_detail(predictions: pd.DataFrame, position: int) -> dict[str, Any]:
    """Return one row's texts, prompt turns, metadata and every metric and check, by position."""
    if not 0 <= position < len(predictions):
        raise NotFoundError(f"no row at position {position}: the run has {len(predictions)}")
    row = predictions.iloc[position]
    checks = {c: row[c] for c in ev.metric_columns(predictions)}
    return {"row_key": row.get("row_key"), "prompt_messages": row.get("prompt_messages", []),
            "reference": row["reference"], "prediction": row["prediction"],
            "metadata": row.get("metadata", {}), "model": row.get("model"),
            "n_tokens": row.get("n_tokens"), "hit_max": row.get("hit_max"),
            "metrics": {k: v.item() if hasattr(v, "item") else v for k, v in checks.items()}}


def length_check(predictions: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Return (the run's length warning, "" when its answers are about as long as the
    references; every overlap metric's mean per reference-relative length bucket)."""
    metrics = [m for m in LENGTH_METRICS if m in predictions.columns]
    table = analysis.metrics_by_length(predictions, metrics)
    return analysis.run_length_warning(analysis.mean_length_ratio(predictions)), table


# ---------------------------------------------------------------- comparing two runs


@dataclass
class RunComparison:
    """Run b against run a: analysis.compare_runs' result and the training data diff."""

    run_a: str
    run_b: str
    comparison: analysis.Comparison
    training: dict[str, Any] | None  # training_diff; None when a model is a base model
    length: analysis.LengthControl | None = None  # the comparison with answer length held fixed


def common_metrics(run_a: str | Path, run_b: str | Path, *, home: Home = None) -> list[str]:
    """Return the metric columns both runs have, the most telling first: similarity, then
    token F1 and the rest in METRICS order (exact match ties almost every free-text row),
    then format checks."""
    a, b = run_predictions(run_a, home=home), run_predictions(run_b, home=home)
    shared = [m for m in ev.metric_columns(a) if m in b.columns]
    first = [m for m in ("similarity", "token_f1") if m in shared]
    return first + [m for m in shared if m not in first]


def slice_options(run: str | Path, *, home: Home = None) -> list[str]:
    """Return what a run's rows can be sliced by: length, tag, then its metadata keys."""
    frame = run_predictions(run, home=home)
    keys = sorted({k for m in frame.get("metadata", []) if isinstance(m, dict) for k in m})
    return ["length", "tag", *keys]


def compare(run_a: str | Path, run_b: str | Path, *, metric: str | None = None,
            by: Sequence[str] = ("length",), margin: float = 0.0,
            regression_margin: float = 0.1, store: Store | None = None,
            home: Home = None) -> RunComparison:
    """Return run b versus run a on one metric (default similarity, else token_f1): per-row
    win/loss/tie, regressions, per-slice deltas, the diff of their training data, and the
    length-aware view (analysis.length_control: warning, length buckets, controlled win rate)."""
    a_job, b_job = jobs.status(run_a, home=home), jobs.status(run_b, home=home)
    if a_job.run_dir.resolve() == b_job.run_dir.resolve():
        raise ConfigError(f"pick two different runs (both are {a_job.run_id})")
    a, b = run_predictions(a_job.run_dir), run_predictions(b_job.run_dir)
    metric = metric or ("similarity" if {"similarity"} <= set(a) & set(b) else "token_f1")
    result = analysis.compare_runs(a, b, metric, margin=margin,
                                   regression_margin=regression_margin, by=tuple(by))
    return RunComparison(a_job.run_id, b_job.run_id, result, _training(store, a_job, b_job),
                         analysis.length_control(result))


def _training(store: Store | None, a: jobs.JobStatus, b: jobs.JobStatus) -> dict | None:
    if store is None:
        return None
    try:
        diff = training_diff(store, a.run_dir, b.run_dir)
    except NotFoundError:  # trained on versions of another store
        return None
    if diff is not None:
        refs = store.refs()
        diff["ref_a"], diff["ref_b"] = (version_label(diff[k], refs)
                                        for k in ("version_a", "version_b"))
    return diff


def regressions_table(result: RunComparison, limit: int = 200) -> pd.DataFrame:
    """Return the rows where run b is worse by more than the margin: texts, both scores, delta."""
    comparison = result.comparison
    metric = comparison.metric
    columns = ["row_key", "prompt", "reference", "prediction", "prediction_b",
               f"{metric}_a", f"{metric}_b", "delta"]
    table = comparison.regressions.reindex(columns=columns).head(limit)
    return table.rename(columns={"prediction": "prediction_a"})


def slice_deltas(result: RunComparison) -> pd.DataFrame:
    """Return every slice's delta (b - a, higher is better) with its interval, one table."""
    parts = [table.assign(by=by) for by, table in result.comparison.slices.items() if len(table)]
    if not parts:
        return pd.DataFrame(columns=["by", "slice", "n", "mean_a", "mean_b", "delta",
                                     "delta_lo", "delta_hi", "regressed"])
    table = pd.concat(parts, ignore_index=True)
    return table[["by", "slice", "n", "mean_a", "mean_b", "delta", "delta_lo", "delta_hi",
                  "regressed"]]


def length_summary(result: RunComparison) -> str:
    """Return one line: each run's mean length ratio and b's raw and length-controlled win
    rates with their intervals."""
    lc = result.length
    if lc is None:
        return "no length view"
    raw, ctl = lc.win_rate, lc.lc_win_rate
    return (f"length: A {lc.ratio_a:.2f}× and B {lc.ratio_b:.2f}× the reference; B win rate "
            f"{raw['mean']:.3f} [{raw['lo']:.3f}, {raw['hi']:.3f}] raw, {ctl['mean']:.3f} "
            f"[{ctl['lo']:.3f}, {ctl['hi']:.3f}] length-controlled ({lc.similar} of "
            f"{raw['n']} pairs of similar length)")


def training_summary(result: RunComparison) -> str:
    """Return one line on how the two models' training data differ (or why there is no diff)."""
    training = result.training
    if training is None:
        return "no training data diff: at least one model is a base model or outside predictions"
    counts = ", ".join(f"{k} {v}" for k, v in training["counts"].items())
    refs = [training.get(f"ref_{s}") or version_label(training[f"version_{s}"], {})
            for s in "ab"]
    return f"training data {refs[0]} → {refs[1]}: {counts}"


# ---------------------------------------------------------------- a judge between two runs

PAIRWISE_TASK = "pairwise_judge"
PAIRWISE_KIND = "pairwise_judge"
PAIRWISE_FILE = ev.PAIRWISE_FILE
NO_JUDGE = ("No judge is configured. Set one up on the Score & select page (LLM judge: a local "
            "model or an OpenAI-compatible endpoint and its key variable); the judge used there "
            "most recently is the one asked here.")


def judge_config(store: Store, *, home: Home = None) -> dict | None:
    """Return the options of the judge configured most recently (the newest judge job's on
    Score & select, as the store's run registry recorded them: no run folder is read), or
    None when no judge has been set up."""
    for params in runs.records(store, kinds=["judge"], home=home)["config"]:
        if params.get("judge"):
            return dict(params["judge"])
    return None


def start_pairwise_judge(store: Store, run_a: str | Path, run_b: str | Path, *,
                         config: Mapping[str, Any] | None = None, limit: int | None = None,
                         home: Home = None, inline: bool = False) -> jobs.JobStatus:
    """Return the status of a new job asking the judge, per shared row and in both orders,
    which run's answer is better given the reference (config None: judge_config(store))."""
    from .judge import JudgeConfig

    config = dict(config) if config is not None else judge_config(store, home=home)
    if config is None:
        raise ConfigError(NO_JUDGE)
    JudgeConfig(**config)  # a bad option fails here, naming it
    a_job, b_job = jobs.status(run_a, home=home), jobs.status(run_b, home=home)
    if a_job.run_dir.resolve() == b_job.run_dir.resolve():
        raise ConfigError(f"pick two different runs (both are {a_job.run_id})")
    analysis.pair_rows(run_predictions(a_job.run_dir), run_predictions(b_job.run_dir))
    params = {"run_a": str(a_job.run_dir.resolve()), "run_b": str(b_job.run_dir.resolve()),
              "judge": config, "limit": limit}
    if inline:
        return jobs.run_inline(PAIRWISE_TASK, params, kind=PAIRWISE_KIND, home=home)
    return jobs.start(PAIRWISE_TASK, params, kind=PAIRWISE_KIND, home=home)


def pairwise_judge_runs(store: Store, run_a: str, run_b: str, *, home: Home = None
                        ) -> list[jobs.JobStatus]:
    """Return the judge comparisons of run b against run a, newest first (found in the
    store's run registry: only their folders are read)."""
    return runs.statuses(
        store, [PAIRWISE_KIND], lambda p: Path(p.get("run_a", "")).name == run_a
        and Path(p.get("run_b", "")).name == run_b, home=home)


def pairwise_summary(job: jobs.JobStatus) -> str:
    """Return one line on a finished judge comparison: b's win rate given the reference."""
    r = job.result
    rate = r.get("win_rate", {})
    if not r or rate.get("n", 0) == 0:
        return f"judge comparison {job.run_id}: no pair judged ({r.get('failed', 0)} failed)"
    from .judge import MODE_LABELS

    mode = f"; answers: {MODE_LABELS[r['mode']]}" if r.get("mode") in MODE_LABELS else ""
    return (f"judge (reference-guided, both orders): B win rate {rate['mean']:.3f} "
            f"[{rate['lo']:.3f}, {rate['hi']:.3f}]; B wins {r['win']}, loses {r['loss']}, "
            f"ties {r['tie']} ({r['inconsistent']} ties from orders that disagree); "
            f"{r['failed']} not judged{mode}")


def training_diff(store: Store, eval_run_a: str | Path, eval_run_b: str | Path
                  ) -> dict[str, Any] | None:
    """Return the store diff between the training versions of two eval runs' models (None
    when either model is a base model): counts and the added/removed/changed rows."""
    a, b = analysis.training_version(eval_run_a), analysis.training_version(eval_run_b)
    if a is None or b is None:
        return None
    diff = store.diff(a, b)
    return {"version_a": a, "version_b": b, "counts": diff.counts(), "diff": diff}
