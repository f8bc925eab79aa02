"""Training runs wired to the store and the run folders: start, list, curves, playground.

train.py holds the loop and jobs.py the run folders; this module is the one place the Train
page and the CLI call, so both start, list, resume and inspect runs the same way. Runs are
listed from the store's run registry (runs.py, synced with the run folders; never from a
session), so a page reload still shows them; a running run's live numbers come from its folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import device, jobs, models, runs, train
from .exceptions import ConfigError, NotFoundError, WorkbenchError
from .store import Store, default_home, version_label
from .train import TrainConfig

TASK = "train"  # runs are recognised by their task (tasks.py), started or inline
BUILTIN_MODELS = ("default", "tiny")
# The architectures of the built-in models, so their LoRA defaults show without loading them.
_BUILTIN_TYPES = {"default": "llama", "tiny": "llama"}
RUN_COLUMNS = ["run_id", "status", "part_of", "step", "data", "validation", "model", "device",
               "lora", "lr", "length", "batch", "train_loss", "val_loss", "started"]


# ---------------------------------------------------------------- config and start


def build_config(values: Mapping[str, Any]) -> TrainConfig:
    """Return a TrainConfig from form or CLI values (None = unset, 0 max_steps = by epochs)."""
    options = {k: v for k, v in values.items() if v is not None}
    targets = options.get("target_modules")
    if isinstance(targets, str):
        names = [t.strip() for t in targets.split(",") if t.strip()]
        options["target_modules"] = names or None
    if options.get("max_steps") == 0:
        options["max_steps"] = None
    return TrainConfig.from_dict(options)


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the options of a JSON config file; a file that is not UTF-8 JSON, not an object,
    or holds an option that is invalid on its own raises ConfigError naming the file."""
    try:
        values = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#x} at offset "
                          f"{err.start}); save the config as UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a training config must be a JSON object of options")
    try:  # checked alone, so that an error names the file it is in
        build_config(values)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return values


def model_type(model: str) -> str | None:
    """Return the architecture (config.json model_type) of a model name or folder, if known."""
    if model in _BUILTIN_TYPES:
        return _BUILTIN_TYPES[model]
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, OSError):
        return None


def default_targets(model: str) -> list[str]:
    """Return the LoRA target modules picked for a model's architecture ([] = every linear)."""
    kind = model_type(model)
    if kind in train.DEFAULT_TARGET_MODULES:
        return list(train.DEFAULT_TARGET_MODULES[kind])
    if not kind:
        return []
    # peft imports torch and transformers (seconds): only for an architecture not in our table.
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT

    return list(PEFT.get(kind, []))


device_options = device.device_options  # the page's device choices: "auto", then this machine's


def device_label(choice: str) -> str:
    """Return how a device choice reads in a selector: "auto: cuda:0 (NVIDIA H100, 80 GB)",
    "cpu (2 cores)"; a choice this machine refuses reads with the reason."""
    try:
        name = device.describe(device.resolve_device(choice))
    except ConfigError as err:
        return f"{choice}: {err}"
    return f"auto: {name}" if choice == "auto" else name


def qlora_refusal(choice: str = "auto", hardware: device.Hardware | None = None) -> str | None:
    """Return why QLoRA cannot run on a device choice here (one line), or None if it can."""
    try:
        device.check_qlora(device.resolve_device(choice, hardware), hardware)
    except ConfigError as err:
        return str(err)
    return None


def start_run(store: Store, version_id: int, config: TrainConfig, *,
              val_version_id: int | None = None,
              home: str | os.PathLike[str] | None = None) -> jobs.JobStatus:
    """Start a background training job on a store version; return its status. A device,
    precision or QLoRA choice this machine cannot run is refused here, before any job."""
    runtime = train.resolve_runtime(config)
    store.version(version_id)  # a missing version or model folder fails here, not in the job
    model = config.model
    if model not in BUILTIN_MODELS and (Path(model).expanduser().exists()
                                        or not models.HUB_ID.match(model)):
        models.resolve_lm(model)
    if val_version_id is not None:
        if int(val_version_id) == int(version_id):
            raise ConfigError("validation version must differ from the training version")
        store.version(val_version_id)
    return start(store.path, version_id, config, val_version_id=val_version_id, home=home,
                 runtime=runtime)


def start(
    store: str | os.PathLike[str] | None,
    version_id: int,
    config: TrainConfig,
    *,
    val_version_id: int | None = None,
    home: str | os.PathLike[str] | None = None,
    runtime: train.Runtime | None = None,
) -> jobs.JobStatus:
    """Start a training job in its own process (no checks: see start_run); return its status.
    runtime (as start_run resolved it) names the device in the run listings from the start."""
    params = {
        "store": str(store) if store is not None else None,
        "version_id": version_id,
        "val_version_id": val_version_id,
        "config": config.to_dict(),
    }
    if runtime is not None:
        params |= {"device": runtime.device_name, "precision": runtime.precision}
    return jobs.start(TASK, params, home=home)


def resume(
    run: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None, inline: bool = False
) -> jobs.JobStatus:
    """Continue a failed or cancelled training run in its own folder; return its status."""
    job = jobs.status(run, home=home)
    if job.active:
        raise WorkbenchError(f"run {job.run_id} is still {job.state}; wait for it or cancel it")
    if job.state == "done":
        raise WorkbenchError(f"run {job.run_id} finished already; start a new run to train more")
    if not _exited(job.run_dir, wait_s=5.0):  # cancelled, but still saving its checkpoint
        raise WorkbenchError(f"run {job.run_id} is still stopping; resume it in a moment")
    (job.run_dir / "cancel").unlink(missing_ok=True)
    jobs._write_json(job.run_dir / "status.json", {"state": "queued"})
    if inline:
        jobs.execute(job.run_dir)
        return jobs.status(job.run_dir)
    with open(job.run_dir / "log.txt", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.jobs", str(job.run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    jobs._write_json(job.run_dir / "status.json", {"state": "queued", "pid": proc.pid})
    return jobs.status(job.run_dir)


def _exited(run_dir: Path, wait_s: float) -> bool:
    pid = (jobs._read_json(run_dir / "status.json", {}) or {}).get("pid")
    deadline = time.monotonic() + wait_s
    while pid and jobs._alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def version_choices(store: Store) -> dict[int, str]:
    """Return every dataset version as {version id: "dataset@N · operation · rows"}."""
    out: dict[int, str] = {}
    for name in store.datasets()["name"]:
        for v in store.versions(name):
            out[v.version_id] = f"{v.ref} · {v.operation} · {v.n_rows:,} rows"
    return out


# ---------------------------------------------------------------- runs


def training_runs(store: Store, *, home: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Return the training runs of the store's run registry (runs.records), newest first."""
    return runs.records(store, kinds=[TASK], home=home)


def get_run(run_id: str, home: str | os.PathLike[str] | None = None) -> jobs.JobStatus:
    """Return one training run's status; NotFoundError if it is missing or not a training run."""
    job = jobs.status(run_id, home=home)
    if job.task != TASK:
        raise NotFoundError(f"run '{run_id}' is a {job.kind} job, not a training run")
    return job


def run_config(job: jobs.JobStatus) -> TrainConfig:
    """Return the TrainConfig a run was started with."""
    return TrainConfig.from_dict(job.config["params"].get("config") or {})


def runs_table(store: Store, *, home: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Return one row per training run, from the registry: status, step, data version, key
    config and final (or, while it trains, latest) losses."""
    found = training_runs(store, home=home)
    refs = store.refs() if len(found) else {}
    rows = [_run_row(run, refs) for run in found.itertuples()]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def any_active(table: pd.DataFrame) -> bool:
    """Return whether a runs_table holds a run that is queued or running."""
    return bool((~table["status"].isin(jobs.FINAL | {"missing"})).any())


def _run_row(run: Any, refs: Mapping[int, str]) -> dict:
    params, summary = run.config, run.summary
    c = _config_values(params)
    val_version = params.get("val_version_id")
    return {
        "run_id": run.run_id,
        "status": run.state,
        "part_of": run.parent,  # a loop run that retrained this one
        "step": f"{summary.get('step', 0)}/{summary.get('total') or '?'}",
        "data": run.data,
        "validation": (version_label(val_version, refs) if val_version is not None
                       else f"{c.get('val_fraction', 0):g} split"),
        "model": c.get("model", ""),
        "device": run_device(run),
        "lora": f"r={c.get('lora_r')} α={c.get('lora_alpha')}",
        "lr": c.get("learning_rate"),
        "length": (f"{c['max_steps']} steps" if c.get("max_steps")
                   else f"{c.get('epochs')} epochs"),
        "batch": f"{c.get('batch_size')}×{c.get('grad_accum')}",
        "train_loss": summary.get("train_loss"),
        "val_loss": summary.get("val_loss"),
        "started": run.created,
    }


def run_device(run: Any) -> str:
    """Return what a registry run computes on, e.g. "cuda:0 (NVIDIA H100, 80 GB) · bf16 ·
    QLoRA": as the run recorded it when done, as start_run resolved it before; "" if unknown
    (a run from before devices were recorded)."""
    summary, params = run.summary or {}, run.config or {}
    name = summary.get("device_name") or (run.device if isinstance(run.device, str) else "")
    precision = summary.get("precision") or params.get("precision")
    qlora = "QLoRA" if (params.get("config") or {}).get("qlora") else None
    return " · ".join(p for p in (name, precision, qlora) if p)


def _config_values(params: Mapping[str, Any]) -> dict[str, Any]:
    # A run's saved options over the defaults (also for a run whose config was invalid).
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return defaults | (params.get("config") or {})


def final_losses(job: jobs.JobStatus) -> tuple[float | None, float | None]:
    """Return (train loss, validation loss): the result of a finished run, else the latest."""
    if job.result:
        return job.result.get("train_loss"), job.result.get("val_loss")
    events = jobs.events(job.run_dir)
    last = lambda key: next((e[key] for e in reversed(events) if key in e), None)  # noqa: E731
    return last("loss"), last("val_loss")


def loss_frame(job: jobs.JobStatus) -> pd.DataFrame:
    """Return the loss curves as long rows (step, loss, split = train | validation)."""
    events = jobs.events(job.run_dir)
    rows = [{"step": e["step"], "loss": e[key], "split": split}
            for e in events for key, split in (("loss", "train"), ("val_loss", "validation"))
            if e.get(key) is not None]
    frame = pd.DataFrame(rows, columns=["step", "loss", "split"])
    # A step re-trained after a resume is logged again: keep its latest value.
    return frame.drop_duplicates(["step", "split"], keep="last").reset_index(drop=True)


def live_metrics(job: jobs.JobStatus) -> dict[str, float | None]:
    """Return the latest step's numbers: loss, val_loss, tokens_per_s, eta_s, lr."""
    train_loss, val_loss = final_losses(job)
    last = job.last or {}
    return {"loss": train_loss, "val_loss": val_loss, "tokens_per_s": last.get("tokens_per_s"),
            "eta_s": last.get("eta_s") if job.active else None, "lr": last.get("lr")}


def adapter_dir(job: jobs.JobStatus) -> Path | None:
    """Return the run's final adapter folder, or None until the run is done."""
    folder = job.run_dir / train.ADAPTER
    return folder if folder.is_dir() else None


# ---------------------------------------------------------------- actions on a run


def resume_run(run_id: str, home: str | os.PathLike[str] | None = None) -> jobs.JobStatus:
    """Continue a failed or cancelled run from its last checkpoint in the background."""
    return resume(get_run(run_id, home).run_dir)


def cancel_run(run_id: str, home: str | os.PathLike[str] | None = None) -> jobs.JobStatus:
    """Ask a run to stop (it saves a checkpoint first); return its status."""
    job = get_run(run_id, home)
    jobs.cancel(job.run_dir, grace_s=2.0)
    return jobs.status(job.run_dir)


def default_export_dir(job: jobs.JobStatus) -> Path:
    """Return the suggested folder for a run's merged model: <home>/exports/<run id>-merged."""
    return default_home() / "exports" / f"{job.run_id}-merged"


def merge_run(run_id: str, out_dir: str | os.PathLike[str],
              home: str | os.PathLike[str] | None = None) -> Path:
    """Write the base model with the run's adapter merged in to out_dir; return the folder."""
    job = get_run(run_id, home)
    if adapter_dir(job) is None:
        raise ConfigError(f"run {run_id} is {job.state} and has no final adapter yet; "
                          "merge a finished run")
    return train.merge_and_export(job.run_dir, out_dir)


def compare(run_id: str, prompt: str, *, max_new_tokens: int = 64,
            home: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """Return the greedy replies of (base model, base + the run's adapter) to one prompt."""
    if not prompt.strip():
        raise ConfigError("prompt is empty: type a question for the model")
    job = get_run(run_id, home)
    messages = [{"role": "user", "content": prompt}]
    base = train.generate(run_config(job).model, messages, max_new_tokens=max_new_tokens)
    adapted = train.generate(job.run_dir, messages, max_new_tokens=max_new_tokens)
    return base, adapted
