"""The registry of runs: every run folder of this store recorded as a row of the `runs` table.

A run folder (jobs.py) holds a run's bulky outputs (adapter, predictions, events) and is the
truth for a run in progress, written by its worker. The registry is what people list and
query: kind, state, the dataset version it read, the run it belongs to (a loop's training
and evaluation point to the loop), model, device, timings and summary metrics, in one table
that joins to the versions (so data is named "support@2"). ``sync`` brings it up to date:
a folder is read when it is new to the registry or its run had not finished at the last
look, so listing a thousand finished runs reads no folder at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from . import jobs
from .evaluate import PREDICTIONS_FILE, model_label, read_summary
from .exceptions import NotFoundError
from .store import Store, version_label

# Task (its registered name, also for older run folders) -> the kind people read (a job
# started with its own kind keeps it).
KINDS = {"train": "train", "eval": "eval", "import": "import", "loop": "loop"}
# Summary values worth a column in a run listing, in this order.
SUMMARY_KEYS = ("train_loss", "val_loss", "token_f1", "rouge_l", "similarity", "exact_match",
                "rows", "steps", "tokens_per_s")
COLUMNS = ["run_id", "kind", "state", "parent", "data", "model", "name", "device", "created",
           "finished", "duration_s", "error"]


def sync(store: Store, *, home: str | Path | None = None) -> None:
    """Record new run folders and refresh the runs that changed; a run whose folder is gone
    is kept and marked 'missing'.

    A finished ("done") run is never read again. Any other run is read again only when its
    folder's signature (jobs.signature: sizes and times of its state files, whether its
    worker lives) differs from the one its last read recorded, so listing the runs while a
    few are in flight costs a few stat calls, not a read of every folder."""
    root = jobs.runs_dir(home)
    with store.connect() as con:
        known = {r[0]: r[1:] for r in con.execute(
            "SELECT run_id, state, seen, parent_run FROM runs").fetchall()}
    folders = {d.name: d for d in root.iterdir() if d.is_dir()} if root.is_dir() else {}
    records = []
    for name in sorted(folders):
        folder = folders[name]
        state, seen, parent = known.get(name, (None, None, None))
        if state == "done" and seen is not None:
            continue
        signature = jobs.signature(folder, parent=parent)
        if seen == signature and state not in ("queued", "missing"):
            continue
        record = _record(folder, store) if (folder / "config.json").is_file() else \
            _hand_made(folder)
        if record is not None and record["parent_run"] != parent:  # a child run, first read
            signature = jobs.signature(folder, parent=record["parent_run"])
        if record is not None:
            records.append({**record, "seen": signature})
    gone = [name for name, (state, _, _) in known.items()
            if name not in folders and state != "missing"]
    if not records and not gone:
        return
    with store.connect() as con:
        for record in records:
            con.execute("DELETE FROM runs WHERE run_id = ?", [record["run_id"]])
            con.execute(f"INSERT INTO runs ({', '.join(record)}) VALUES "
                        f"({', '.join('?' * len(record))})", list(record.values()))
        for name in gone:
            con.execute("UPDATE runs SET state = 'missing' WHERE run_id = ?", [name])


def _record(folder: Path, store: Store) -> dict[str, Any] | None:
    try:
        job = jobs.status(folder)
    except NotFoundError:
        return None
    params = job.config.get("params") or {}
    owner = params.get("store")
    if owner and Path(owner).resolve() != Path(store.path).resolve():
        return None  # a run of another store that shares this runs folder
    task = job.task
    version = params.get("version_id", (params.get("eval") or {}).get("version_id"))
    written = _read_summary(folder)
    summary = _summary(job, written)
    return {"run_id": job.run_id, "kind": KINDS.get(task, job.kind or task),
            "task": task, "state": job.state, "parent_run": job.config.get("parent"),
            "version_id": int(version) if version is not None else None,
            "output_version_id": job.result.get("version_id"),
            "model": _model(params, written), "name": params.get("name") or "",
            "config": orjson.dumps(params, default=str).decode(),
            "device": summary.get("device") or job.device or params.get("device") or "",
            "created_at": _time(job.config.get("created")), "started_at": _time(job.started),
            "finished_at": _time(job.finished),
            "summary": orjson.dumps(summary, default=str).decode(), "error": job.error}


def _hand_made(folder: Path) -> dict[str, Any] | None:
    """The record of an eval run written without a job (evaluate.write_run): predictions and
    a summary, no config; None for a folder that is neither."""
    predictions = folder / PREDICTIONS_FILE
    if not predictions.is_file():
        return None
    written = _read_summary(folder)
    created = _time(predictions.stat().st_mtime)
    version = written.get("version_id")
    return {"run_id": folder.name, "kind": written.get("kind") or "eval", "task": None,
            "state": "done", "parent_run": None,
            "version_id": int(version) if version is not None else None,
            "model": _model({}, written), "name": written.get("name") or "",
            "config": "{}", "device": written.get("device") or "", "created_at": created,
            "started_at": created, "finished_at": created,
            "summary": orjson.dumps(_flat(written), default=str).decode(), "error": ""}


def _read_summary(folder: Path) -> dict[str, Any]:
    try:
        return read_summary(folder)
    except orjson.JSONDecodeError:  # being written, or damaged: the listing goes on
        return {}


def _summary(job: jobs.JobStatus, written: dict[str, Any]) -> dict[str, Any]:
    """What a listing shows of a run: its progress (step of total) and, when it is done, its
    scalar results (the result, or the eval summary's metric means with their intervals);
    while it trains, its latest losses."""
    progress = {"step": job.step, "total": job.total}
    if job.state != "done":
        losses = {}
        if job.task == "train" and job.step:
            for event in reversed(jobs.events(job.run_dir)):
                for key, name in (("loss", "train_loss"), ("val_loss", "val_loss")):
                    if key in event and name not in losses:
                        losses[name] = event[key]
        return {**_flat(losses), **progress}
    result = dict(job.result)
    for part in ("train", "eval"):  # a loop's result holds both
        if isinstance(result.get(part), dict):
            result = {**result.pop(part), **result}
    return {**_flat({**written, **result}), **progress}


def _flat(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            value = value["mean"]  # a metric with its interval
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[key] = value
    metrics = result.get("metrics") or (result.get("eval") or {}).get("metrics")
    if isinstance(metrics, dict) and metrics:
        out["intervals"] = metrics  # {metric: {mean, lo, hi, n}}: an eval run's metrics
    return out


def _model(params: dict, written: dict) -> str:
    """The model a run used, as people read it: the evaluated model of a run with an eval
    summary (a loop's is its own training run), else the one it was given or trained."""
    model = written.get("model") or params.get("model") or \
        (params.get("config") or {}).get("model")
    return model_label(model) if model else ""


def _time(value: Any) -> pd.Timestamp | None:
    # Kept to the microsecond, so runs started within one second still sort right.
    return pd.Timestamp(value, unit="s") if value else None


def records(store: Store, *, kinds: Sequence[str] | None = None, parent: str | None = None,
            home: str | Path | None = None) -> pd.DataFrame:
    """Return the registry's runs (synced first), newest first: run_id, kind, task, state,
    parent, version_id, data (version_label), model, name, device, created, finished,
    duration_s, error, config (the run's parameters) and summary (summary values, progress
    and an eval run's metric intervals) as dicts. The one query every run listing reads."""
    sync(store, home=home)
    where, args = [], []
    if kinds is not None:
        where.append(f"r.kind IN ({', '.join('?' * len(kinds))})" if kinds else "false")
        args.extend(kinds)
    if parent:
        where.append("r.parent_run = ?")
        args.append(parent)
    with store.connect() as con:
        frame = con.execute(f"""
            SELECT r.run_id, r.kind, coalesce(r.task, '') AS task, r.state,
                   coalesce(r.parent_run, '') AS parent, r.version_id, v.ref AS data,
                   r.model, r.name, r.device, date_trunc('second', r.created_at) AS created,
                   date_trunc('second', r.finished_at) AS finished,
                   date_diff('second', r.started_at, r.finished_at) AS duration_s,
                   coalesce(r.error, '') AS error, r.config, r.summary
            FROM runs r LEFT JOIN version_refs v USING (version_id)
            {'WHERE ' + ' AND '.join(where) if where else ''}
            ORDER BY r.created_at DESC NULLS LAST, r.run_id DESC""", args).df()
    frame["data"] = [ref if isinstance(ref, str) else version_label(vid, {})
                     for ref, vid in zip(frame["data"], frame["version_id"])]
    frame["config"] = [orjson.loads(c or "{}") for c in frame["config"]]
    frame["summary"] = [orjson.loads(s or "{}") for s in frame["summary"]]
    return frame


def statuses(store: Store, kinds: Sequence[str],
             match: Callable[[dict[str, Any]], bool] = lambda params: True, *,
             home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the live status (jobs.status) of the registry's runs of these kinds whose
    parameters ``match``, newest first. Only those runs' folders are read, so a lookup costs
    what its own runs cost, not a read of every run folder ever made."""
    root = jobs.runs_dir(home)
    found = []
    for run in records(store, kinds=kinds, home=home).itertuples():
        if run.state == "missing" or not match(run.config):
            continue
        try:
            found.append(jobs.status(root / run.run_id))
        except NotFoundError:  # removed since the registry last looked
            continue
    return found


def table(store: Store, *, kind: str | None = None, parent: str | None = None,
          home: str | Path | None = None) -> pd.DataFrame:
    """Return the runs, newest first: id, kind, state, parent, data (name@N), model, name,
    device, times, error, then the summary metrics any of them has."""
    frame = records(store, kinds=[kind] if kind else None, parent=parent, home=home)
    summaries = frame.pop("summary").tolist()
    frame = frame[COLUMNS]
    for key in SUMMARY_KEYS:
        values = [s.get(key) for s in summaries]
        if any(isinstance(v, (int, float)) for v in values):
            frame[key] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return frame


def children(store: Store, run_id: str, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return the runs that belong to a run (a loop's training and evaluation)."""
    return table(store, parent=jobs.check_run_id(run_id), home=home)
