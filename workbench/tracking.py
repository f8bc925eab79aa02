"""Experiment tracking: training and evaluation runs logged to MLflow.

Tracking is on when ``MLFLOW_TRACKING_URI`` is set or the user switched it on (the Train and
Evaluate pages, ``workbench tracking on``); the switch lives in ``<data folder>/tracking.json``
and, when it names no URI, runs go to a local file store, ``<data folder>/mlruns``. A switch
set to off wins over the environment variable.

A finished run is logged once, from the job tasks (``after_run``) or afterwards
(``export_runs``, ``workbench mlflow-export``): its parameters, per-step train and validation
loss, eval metrics with their confidence intervals, the data version (name@N) and how it was
made (its recipe), the device, and the adapter as an artifact. The MLflow run carries the
workbench run id as the tag ``workbench.run_id``, so a run already logged is never logged
again. Logging never fails a run: an MLflow error becomes a warning in the run's log.

mlflow is imported only when something is logged (importing it takes seconds).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from . import jobs
from .exceptions import ConfigError, WorkbenchError
from .store import Store, default_home

ENV_URI = "MLFLOW_TRACKING_URI"
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
SETTINGS_FILE = "tracking.json"
DEFAULT_EXPERIMENT = "workbench"
RUN_TAG = "workbench.run_id"
# Tasks whose runs are logged; a loop is logged as its evaluation (its training is a run of
# its own, "<loop>-train", logged as a training run).
LOGGED_TASKS = ("train", "eval", "import", "loop")
# Set while logging, unless the user set them: a tracking server that does not answer must not
# hold a finished run for minutes (MLflow's own defaults retry 7 times with a doubling
# backoff); and MLflow 3 refuses a file store (the local mlruns folder, the default here, and
# the only local store mlflow-skinny can write: SQLite needs SQLAlchemy) without the opt-in.
_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_ALLOW_FILE_STORE": "true"}


class TrackingError(WorkbenchError):
    """MLflow is missing, or refused or failed to log a run."""


@dataclass(frozen=True)
class TrackingSettings:
    """Whether runs are logged, where (a tracking URI), into which experiment, and why."""

    enabled: bool
    uri: str | None
    experiment: str = DEFAULT_EXPERIMENT
    source: str = "off"  # "env" (MLFLOW_TRACKING_URI), "setting" (tracking.json) or "off"

    @property
    def shown_uri(self) -> str:
        """The URI without any user name or password in it, for logs and pages."""
        return redact(self.uri or "")


def redact(uri: str) -> str:
    """Return a URI with its user name and password (if any) replaced by '***'."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def default_uri(home: str | os.PathLike[str] | None = None) -> str:
    """Return the local file store's URI: <data folder>/mlruns."""
    return (Path(home or default_home()) / "mlruns").resolve().as_uri()


def settings(home: str | os.PathLike[str] | None = None) -> TrackingSettings:
    """Return the tracking settings: the data folder's switch, else MLFLOW_TRACKING_URI."""
    home = Path(home or default_home())
    saved = _read_settings(home)
    experiment = saved.get("experiment") or os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT
    env_uri = os.environ.get(ENV_URI, "").strip()
    if saved.get("enabled") is False:
        return TrackingSettings(False, None, experiment, "off")
    if saved.get("enabled") is True:
        return TrackingSettings(True, saved.get("uri") or env_uri or default_uri(home),
                                experiment, "setting")
    if env_uri:
        return TrackingSettings(True, env_uri, experiment, "env")
    return TrackingSettings(False, None, experiment, "off")


def _read_settings(home: Path) -> dict[str, Any]:
    try:
        saved = orjson.loads((home / SETTINGS_FILE).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return saved if isinstance(saved, dict) else {}


def set_enabled(enabled: bool, *, uri: str | None = None, experiment: str | None = None,
                home: str | os.PathLike[str] | None = None) -> TrackingSettings:
    """Switch tracking on or off in the data folder (uri None: MLFLOW_TRACKING_URI, else the
    local mlruns folder); return the settings now in force."""
    if not isinstance(enabled, bool):
        raise ConfigError(f"enabled must be True or False, got {enabled!r}")
    if uri is not None and not (isinstance(uri, str) and uri.strip()):
        raise ConfigError(f"uri must be a tracking URI such as http://127.0.0.1:5000, got {uri!r}")
    home = Path(home or default_home())
    home.mkdir(parents=True, exist_ok=True)
    saved = {**_read_settings(home), "enabled": enabled}
    for key, value in (("uri", uri), ("experiment", experiment)):
        if value is not None:
            saved[key] = value.strip()
    jobs._write_json(home / SETTINGS_FILE, saved)
    return settings(home)


# ---------------------------------------------------------------- what a run logs


@dataclass
class RunRecord:
    """What one workbench run logs: params, metrics (key, value, step), tags, files."""

    run_id: str
    kind: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # artifact file name -> text
    folders: dict[str, Path] = field(default_factory=dict)  # artifact path -> local folder
    started: float | None = None
    finished: float | None = None


def run_record(run_dir: str | os.PathLike[str], result: Mapping[str, Any] | None = None, *,
               store: Store | None = None) -> RunRecord:
    """Return what a finished run folder logs (result None: its result.json)."""
    run_dir = Path(run_dir)
    job = jobs.status(run_dir)
    task = job.task
    if task not in LOGGED_TASKS:
        raise TrackingError(f"run {job.run_id} is a {task} run; only {', '.join(LOGGED_TASKS)} "
                            "runs are logged")
    result = dict(job.result if result is None else result)
    params = job.config.get("params") or {}
    if task == "loop":  # the loop's own evaluation; result is the loop's, or the eval summary
        result = result.get("eval", result)
    record = RunRecord(job.run_id, "train" if task == "train" else "eval",
                       str(params.get("name") or result.get("name") or job.run_id),
                       started=job.started, finished=job.finished or time.time())
    record.tags = {RUN_TAG: job.run_id, "workbench.task": task}
    if job.parent:
        record.tags["workbench.parent_run"] = job.parent
    if task == "train":
        _add_training(record, run_dir, result)
    else:
        _add_evaluation(record, run_dir, params, result)
    store = store or (Store(params["store"]) if params.get("store") else None)
    _add_data(record, store, result.get("version_id", params.get("version_id")), "data")
    _add_data(record, store, result.get("val_version_id"), "val_data")
    if result.get("device"):
        record.params["device"] = record.tags["workbench.device"] = str(result["device"])
    return record


def _add_training(record: RunRecord, run_dir: Path, result: Mapping[str, Any]) -> None:
    from . import training  # imports torch: only for a training run

    config_file = run_dir / "train_config.json"
    if config_file.is_file():
        record.params.update(_flat("", orjson.loads(config_file.read_bytes())))
    curves = training.loss_frame(jobs.status(run_dir))
    names = {"train": "train_loss", "validation": "val_loss"}
    record.metrics += [(names[r.split], float(r.loss), int(r.step)) for r in curves.itertuples()]
    last = int(result.get("steps") or 0)
    skip = {"train_loss", "val_loss", "version_id", "val_version_id"}
    record.metrics += [(k, float(v), last) for k, v in result.items()
                       if k not in skip and _number(v)]
    adapter = run_dir / "adapter"
    if adapter.is_dir():
        record.folders["adapter"] = adapter


def _add_evaluation(record: RunRecord, run_dir: Path, params: Mapping[str, Any],
                    summary: Mapping[str, Any]) -> None:
    from .evaluate import model_label

    options = params.get("eval") or params  # a loop's evaluation options sit under "eval"
    model = summary.get("model", params.get("model"))
    record.params["model"] = model_label(model)
    for key in ("embedder", "limit", "file"):
        if options.get(key) is not None or summary.get(key) is not None:
            record.params[key] = str(summary.get(key, options.get(key)))
    record.params.update(_flat("generation.", summary.get("generation") or {}))
    if summary.get("style"):
        record.params["style"] = _text(summary["style"])
    for metric, ci in (summary.get("metrics") or {}).items():
        record.metrics += [(f"{metric}{suffix}", float(ci[key]), 0)
                           for key, suffix in (("mean", ""), ("lo", "_ci_lo"), ("hi", "_ci_hi"),
                                               ("n", "_n"))
                           if _number(ci.get(key))]
    record.metrics += [(k, float(summary[k]), 0) for k in ("rows", "tokens", "seconds",
                                                            "tokens_per_s")
                       if _number(summary.get(k))]
    if (run_dir / "summary.json").is_file():
        record.texts["summary.json"] = (run_dir / "summary.json").read_text(encoding="utf-8")


def _add_data(record: RunRecord, store: Store | None, version_id: Any, key: str) -> None:
    if version_id is None:
        return
    record.params[f"{key}_version_id"] = str(version_id)
    if store is None:
        return
    try:
        ref = store.refs().get(int(version_id))
        if ref is None:
            record.params[f"{key}_version"] = "a deleted version"
            return
        record.params[f"{key}_version"] = record.tags[f"workbench.{key}_version"] = ref
    except WorkbenchError as e:
        record.tags[f"workbench.{key}_version_error"] = str(e)[:500]
        return
    if key == "data":
        try:
            name, text = version_recipe(store, int(version_id))
            record.texts[name] = text
        except Exception as e:  # noqa: BLE001 - the run is still logged, saying why not this
            record.tags["workbench.recipe_error"] = _reason(e, None)


def version_recipe(store: Store, version_id: int) -> tuple[str, str]:
    """Return (artifact file name, text) saying how a version was made: its recipe as YAML,
    or, for a version a recipe cannot describe (not made from an import), its lineage (each
    step's operation, parameters and counts) as JSON."""
    from . import recipes

    try:
        return "recipe.yaml", recipes.to_yaml(recipes.build(store, version_id))
    except WorkbenchError:
        pass
    chain = [{"version": v.ref, "operation": v.operation,
              "params": v.params, "counts": v.counts, "rows": v.n_rows, "message": v.message}
             for v in store.lineage(version_id)]
    return "lineage.json", json.dumps(chain, indent=2, ensure_ascii=False, default=str) + "\n"


def _flat(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    return {f"{prefix}{k}": _text(v) for k, v in values.items() if v is not None}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit for a parameter value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


# ---------------------------------------------------------------- logging to MLflow


def log_run(run_dir: str | os.PathLike[str], result: Mapping[str, Any] | None = None, *,
            store: Store | None = None, config: TrackingSettings | None = None) -> str | None:
    """Log a finished run to MLflow unless it is there already; return the MLflow run id
    (None when tracking is off). TrackingError says why it could not."""
    config = config or settings()
    if not config.enabled:
        return None
    record = run_record(run_dir, result, store=store)
    with _mlflow_client(config) as (client, experiment_id):
        existing = _logged_runs(client, experiment_id, record.run_id)
        return existing.get(record.run_id) or _send(client, experiment_id, record)


def after_run(ctx: Any, result: Mapping[str, Any], *, store: str | None = None) -> None:
    """Log the run a job task just finished, if tracking is on; an error becomes a warning
    in the run's log, never a failed run."""
    config = None
    try:
        config = settings()
        if not config.enabled:
            return
        mlflow_id = log_run(ctx.run_dir, result, store=Store(store) if store else None,
                            config=config)
        ctx.log(f"logged to MLflow ({config.shown_uri}, experiment {config.experiment}): "
                f"run {mlflow_id}")
    except Exception as e:  # noqa: BLE001 - whatever MLflow raises, the run stays done
        ctx.log(f"warning: not logged to MLflow: {_reason(e, config and config.uri)}")


@dataclass
class ExportReport:
    """What mlflow-export did: runs logged now, runs already there, runs that failed."""

    logged: dict[str, str] = field(default_factory=dict)  # workbench run id -> MLflow run id
    already: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # workbench run id -> reason

    def summary(self) -> str:
        """Return one line of counts."""
        return (f"{len(self.logged)} logged, {len(self.already)} already in MLflow, "
                f"{len(self.failed)} failed")


def export_runs(store: Store, *, home: str | os.PathLike[str] | None = None,
                config: TrackingSettings | None = None) -> ExportReport:
    """Log every finished training and evaluation run of the store that MLflow does not hold
    yet; return what was logged, skipped and failed. home: the runs folder."""
    from . import runs

    config = config or settings()
    if not config.enabled:
        raise TrackingError(f"tracking is off: set {ENV_URI} or switch it on "
                            "(`workbench tracking on`)")
    table = runs.table(store, home=home)
    done = table[(table["state"] == "done")]["run_id"].tolist()
    report = ExportReport()
    with _mlflow_client(config) as (client, experiment_id):
        logged = _logged_runs(client, experiment_id)
        for run_id in reversed(done):  # oldest first, as they ran
            folder = jobs.run_folder(run_id, home=home)
            if jobs.status(folder).task not in LOGGED_TASKS:
                continue
            if run_id in logged:
                report.already[run_id] = logged[run_id]
                continue
            try:
                report.logged[run_id] = _send(client, experiment_id,
                                              run_record(folder, store=store))
            except Exception as e:  # noqa: BLE001 - one bad run does not stop the export
                report.failed[run_id] = _reason(e, config.uri)
    return report


@contextlib.contextmanager
def _mlflow_client(config: TrackingSettings) -> Iterator[tuple[Any, str]]:
    """Yield (MlflowClient, experiment id) for the settings, with _ENV_DEFAULTS in force."""
    saved = {k: os.environ.get(k) for k in _ENV_DEFAULTS}
    os.environ.update({k: v for k, v in _ENV_DEFAULTS.items() if saved[k] is None})
    try:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError("MLflow is not installed: pip install 'workbench[tracking]' "
                                "(or mlflow-skinny)") from None
        client = MlflowClient(tracking_uri=config.uri)
        yield client, _experiment_id(client, config.experiment)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process created it a moment ago
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _logged_runs(client: Any, experiment_id: str, run_id: str | None = None) -> dict[str, str]:
    """Return {workbench run id: MLflow run id} of the finished runs already logged (one run
    id, or all); a run that broke off half-logged is deleted so that it is logged again."""
    query = f"tags.`{RUN_TAG}` = '{run_id}'" if run_id else ""
    found, token = {}, None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  page_token=token)
        for run in page:
            workbench_id = run.data.tags.get(RUN_TAG)
            if workbench_id and run.info.status == "FINISHED":
                found[workbench_id] = run.info.run_id
            elif workbench_id:
                client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            return found


def _send(client: Any, experiment_id: str, record: RunRecord) -> str:
    """Create the MLflow run for a record, log everything, close it; return its id."""
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, start_time=_ms(record.started), tags=record.tags,
                            run_name=record.name)
    mlflow_id = run.info.run_id
    try:
        stamp = _ms(record.finished)
        params = [Param(k, v) for k, v in record.params.items()]
        metrics = [Metric(k, v, stamp, step) for k, v, step in record.metrics]
        for i in range(0, max(len(params), 1), 100):  # MLflow's batch limit for params
            client.log_batch(mlflow_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(mlflow_id, metrics=metrics[i:i + 1000])
        client.log_batch(mlflow_id, tags=[RunTag("workbench.kind", record.kind)])
        for name, text in record.texts.items():
            client.log_text(mlflow_id, text, name)
        for path, folder in record.folders.items():
            client.log_artifacts(mlflow_id, str(folder), path)
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(mlflow_id, status="FAILED")
        raise
    client.set_terminated(mlflow_id, status="FINISHED", end_time=stamp)
    return mlflow_id


def _ms(seconds: float | None) -> int | None:
    return int(seconds * 1000) if seconds else None


def _reason(error: BaseException, uri: str | None) -> str:
    text = " ".join(str(error).split())[:300]
    for secret in {uri, os.environ.get(ENV_URI)} - {None, ""}:
        text = text.replace(secret, redact(secret))  # never a password in a log
    return f"{type(error).__name__}: {text}" if not isinstance(error, WorkbenchError) else text
