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

from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from . import jobs
from .exceptions import NotFoundError
from .store import Store

# Task (its registered name, also for older run folders) -> the kind people read (a job
# started with its own kind keeps it).
KINDS = {"train": "train", "eval": "eval", "import": "import", "loop": "loop"}
# Summary values worth a column in a run listing, in this order.
SUMMARY_KEYS = ("train_loss", "val_loss", "token_f1", "rouge_l", "similarity", "exact_match",
                "rows", "steps", "tokens_per_s")
COLUMNS = ["run_id", "kind", "state", "parent", "data", "model", "name", "device", "created",
           "finished", "duration_s", "error"]


def sync(store: Store, *, home: str | Path | None = None) -> None:
    """Record new run folders and refresh the runs that had not finished; a run whose folder
    is gone is kept and marked 'missing'."""
    root = jobs.runs_dir(home)
    with store.connect() as con:
        known = dict(con.execute("SELECT run_id, state FROM runs").fetchall())
    folders = {d.name: d for d in root.iterdir()} if root.is_dir() else {}
    stale = [d for name, d in folders.items()
             if (name not in known or known[name] not in jobs.FINAL)
             and (d / "config.json").is_file()]
    records = [r for r in (_record(d, store) for d in sorted(stale)) if r is not None]
    gone = [name for name, state in known.items() if name not in folders and state != "missing"]
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
    summary = _summary(job)
    return {"run_id": job.run_id, "kind": KINDS.get(task, job.kind or task),
            "task": task, "state": job.state, "parent_run": job.config.get("parent"),
            "version_id": int(version) if version is not None else None,
            "output_version_id": job.result.get("version_id"),
            "model": _model(params, summary), "name": params.get("name") or "",
            "config": orjson.dumps(params, default=str).decode(),
            "device": summary.get("device") or params.get("device") or "",
            "created_at": _time(job.config.get("created")), "started_at": _time(job.started),
            "finished_at": _time(job.finished),
            "summary": orjson.dumps(summary, default=str).decode(), "error": job.error}


def _summary(job: jobs.JobStatus) -> dict[str, Any]:
    """Scalar results of a finished run: its result, or the eval summary's metric means."""
    out: dict[str, Any] = {}
    if job.state != "done":
        return out
    result = dict(job.result)
    for part in ("train", "eval"):  # a loop's result holds both
        if isinstance(result.get(part), dict):
            result = {**result.pop(part), **result}
    summary_file = job.run_dir / "summary.json"
    if summary_file.is_file():
        try:
            result = {**orjson.loads(summary_file.read_bytes()), **result}
        except orjson.JSONDecodeError:
            pass
    for key, value in result.items():
        if isinstance(value, dict) and isinstance(value.get("mean"), (int, float)):
            value = value["mean"]  # a metric with its interval
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            out[key] = value
    return out


def _model(params: dict, summary: dict) -> str:
    model = params.get("model") or (params.get("config") or {}).get("model") or \
        summary.get("model") or ""
    if isinstance(model, dict):
        return f"run:{Path(model.get('run_dir', '?')).name}"
    return str(model)


def _time(value: Any) -> pd.Timestamp | None:
    return pd.Timestamp(value, unit="s").floor("s") if value else None


def table(store: Store, *, kind: str | None = None, parent: str | None = None,
          home: str | Path | None = None) -> pd.DataFrame:
    """Return the runs, newest first: id, kind, state, parent, data (name@N), model, name,
    device, times, error, then the summary metrics any of them has."""
    sync(store, home=home)
    where, args = [], []
    if kind:
        where.append("r.kind = ?")
        args.append(kind)
    if parent:
        where.append("r.parent_run = ?")
        args.append(parent)
    with store.connect() as con:
        frame = con.execute(f"""
            WITH refs AS (SELECT v.version_id, d.name || '@' || row_number() OVER (
                PARTITION BY v.dataset_id ORDER BY v.version_id) AS ref
                FROM versions v JOIN datasets d USING (dataset_id))
            SELECT r.run_id, r.kind, r.state, coalesce(r.parent_run, '') AS parent,
                   coalesce(refs.ref, CASE WHEN r.version_id IS NULL THEN ''
                                      ELSE 'a deleted version' END) AS data,
                   r.model, r.name, r.device, r.created_at AS created,
                   r.finished_at AS finished,
                   date_diff('second', r.started_at, r.finished_at) AS duration_s,
                   coalesce(r.error, '') AS error, r.summary
            FROM runs r LEFT JOIN refs USING (version_id)
            {'WHERE ' + ' AND '.join(where) if where else ''}
            ORDER BY r.created_at DESC NULLS LAST, r.run_id DESC""", args).df()
    summaries = [orjson.loads(s or "{}") for s in frame.pop("summary")]
    for key in SUMMARY_KEYS:
        values = [s.get(key) for s in summaries]
        if any(isinstance(v, (int, float)) for v in values):
            frame[key] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return frame


def children(store: Store, run_id: str, *, home: str | Path | None = None) -> pd.DataFrame:
    """Return the runs that belong to a run (a loop's training and evaluation)."""
    return table(store, parent=jobs.check_run_id(run_id), home=home)
