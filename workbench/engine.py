"""Where a step runs: in this process ("local") or batch by batch on Ray Data ("ray").

The steps are pure functions over DataFrames that look at one row at a time (clean rules,
heuristic scores, embeddings, model scores, generation), so Ray Data's ``map_batches`` runs
them unchanged: the rows go to Parquet shards written by DuckDB inside the data folder, Ray
reads the shards, runs the function on each batch (plain tasks on CPUs; an actor pool when a
model is needed, so it loads once per worker, with a GPU each when the cluster has GPUs) and
the results come back aligned with the input rows. The caller turns them into the same
StepResult or score columns as the local path, so the store writes the same child version:
the store stays the single writer.

Ray is optional (``pip install 'workbench[ray]'``) and started once per process: a local Ray
with this machine's CPUs and no dashboard, or the cluster at ``RAY_ADDRESS``.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from .exceptions import Cancelled, ConfigError, WorkbenchError

Engine = Literal["local", "ray"]
ENGINES: tuple[str, ...] = ("local", "ray")
# Starting Ray costs far more than a small step. Measured on this 2-core shared machine (ray
# 2.60, load average ~13): ray.init 20.6 s, the first map_batches 12.2 s more (a second one
# 0.14 s), so ~33 s before any row is processed.
RAY_START_S = 33.0
# Local speed of each step in rows/s on the same machine: clean (default rules) 198 and
# heuristic scores 19k (measured on 4,000 sample rows, load ~14); embeddings ~50, perplexity
# ~1.8 and greedy generation ~10 tokens/s (~0.08 rows of 128 tokens) from DESIGN.md; exact +
# near dedup ~15k (DESIGN.md: 14-17x datasketch's ~1k docs/s).
LOCAL_ROWS_PER_S = {"clean": 198.0, "score": 19_000.0, "embed": 50.0, "model_score": 1.8,
                    "eval": 0.08, "dedup": 15_000.0}
# Two workers at best halve a step, so Ray pays off once the local run takes longer than twice
# Ray's start-up: from 2 * RAY_START_S * rows/s rows (clean ~13k rows, scores ~1.25M).
RAY_MIN_ROWS = {step: max(1, round(2 * RAY_START_S * rate))
                for step, rate in LOCAL_ROWS_PER_S.items()}
BATCH_ROWS = 1_000  # rows per map_batches call: progress and cancel are checked between them
SHARD_DIR = "ray_shards"  # under the data folder; removed after each step
ATTACH_TIMEOUT_S = 3.0  # how long a RAY_ADDRESS may take to answer a TCP connect
JSON_COLUMNS = ("messages", "metadata")  # nested values travel as JSON text


class EngineError(WorkbenchError):
    """Ray is missing, or the cluster named by RAY_ADDRESS cannot be reached."""


@dataclass(frozen=True)
class Choice:
    """Which engine runs a step and why, in words a person can read."""

    engine: Engine
    reason: str

    def __str__(self) -> str:
        return f"{self.engine}: {self.reason}"


def check_engine(name: Any) -> Engine:
    """Return ``name`` if it is an engine; raise ConfigError naming the choices."""
    if name not in ENGINES:
        raise ConfigError(f"engine={name!r}: use one of {', '.join(ENGINES)}")
    return name


def ray_threshold(step: str) -> int:
    """Return the row count from which ``ray`` is really used for a step: $WORKBENCH_RAY_MIN_ROWS
    for every step when set, else the step's measured break-even (RAY_MIN_ROWS)."""
    raw = os.environ.get("WORKBENCH_RAY_MIN_ROWS")
    if raw is None:
        if step not in RAY_MIN_ROWS:
            raise ConfigError(f"step={step!r}: use one of {', '.join(RAY_MIN_ROWS)}")
        return RAY_MIN_ROWS[step]
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"WORKBENCH_RAY_MIN_ROWS={raw!r}: give a whole number of rows") from None
    if value < 0:
        raise ConfigError(f"WORKBENCH_RAY_MIN_ROWS={value}: must be >= 0")
    return value


def choose(requested: str, n_rows: int, step: str, *, threshold: int | None = None,
           force: bool = False) -> Choice:
    """Return the engine that runs ``step`` (clean, score, embed, model_score, eval, dedup)
    over ``n_rows`` rows, and why.

    "ray" below the step's threshold runs locally (Ray's start-up would cost more than the
    step); ``force`` (or ``threshold=0``) uses Ray whatever the size, as the tests do.
    """
    check_engine(requested)
    if requested == "local":
        return Choice("local", "runs on this machine, as asked")
    limit = ray_threshold(step) if threshold is None else int(threshold)
    if force or n_rows >= limit:
        where = os.environ.get("RAY_ADDRESS") or "a local Ray"
        return Choice("ray", f"{n_rows} rows on {where}")
    return Choice("local", f"{n_rows} rows is below the Ray threshold of {limit} rows for "
                           f"{step} (Ray's start-up would take longer than the step)")


# --- starting Ray ---------------------------------------------------------------------------

def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the data extra)
    except ImportError:
        raise EngineError("engine 'ray' needs Ray Data: pip install 'workbench[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when nothing listens there (ray.init would block)."""
    plain = address.removeprefix("ray://")
    host, _, port = plain.rpartition(":")
    if address == "auto" or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=ATTACH_TIMEOUT_S).close()
    except OSError as e:
        raise EngineError(f"RAY_ADDRESS={address}: no Ray cluster answers there ({e}); start "
                          "one (`ray start --head`) or unset RAY_ADDRESS to use a local Ray"
                          ) from None


def ray_session(address: str | None = None) -> Any:
    """Return the ``ray`` module, connected: to ``address`` or $RAY_ADDRESS when given, else
    to a local Ray started here (this machine's CPUs, no dashboard). Started once per process."""
    ray = _import_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            raise EngineError(f"RAY_ADDRESS={address}: cannot attach to Ray ({e})") from None
        return ray
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": _package_path()}})
    return ray


def _package_path() -> str:
    """Return PYTHONPATH for local workers: the folder holding this ``workbench`` first, so
    the workers run the same code as this process (not another installed copy)."""
    root = str(Path(__file__).resolve().parent.parent)
    rest = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join([root, *([rest] if rest else [])])


def gpu_count() -> int:
    """Return the GPUs the connected Ray cluster has (0 on a CPU-only machine)."""
    return int(_import_ray().cluster_resources().get("GPU", 0))


# --- rows to Parquet shards -----------------------------------------------------------------

def _encoded(frame: pd.DataFrame) -> pa.Table:
    """Return the frame as an Arrow table with a ``_pos`` column; nested values as JSON."""
    out = {"_pos": pa.array(range(len(frame)), pa.int64())}
    for column in frame.columns:
        values = frame[column]
        if column in JSON_COLUMNS:
            out[column] = pa.array([orjson.dumps(v).decode() for v in values], pa.string())
        elif column == "tags":
            out[column] = pa.array([list(t) for t in values], pa.list_(pa.string()))
        else:
            out[column] = pa.array(values.tolist() if values.dtype == object else values)
    return pa.table(out)


def decode(batch: pd.DataFrame) -> pd.DataFrame:
    """Return a batch read from the shards as the step frame it was written from: nested
    values decoded and, for shards the store wrote, the prompt/response/tags/note columns
    filled in as ``Store.frame`` fills them."""
    from .schema import prompt_text, response_text

    batch = batch.copy()
    for column in JSON_COLUMNS:
        if column in batch.columns:
            batch[column] = [orjson.loads(v) for v in batch[column]]
    if "messages" in batch.columns and "prompt" not in batch.columns:
        batch["prompt"] = [prompt_text(m) for m in batch["messages"]]
        batch["response"] = [response_text(m) for m in batch["messages"]]
    if "tags" in batch.columns:
        batch["tags"] = [list(t) if t is not None else [] for t in batch["tags"]]
    if "note" in batch.columns:
        batch["note"] = batch["note"].fillna("")
    return batch


def shard_root(home: str | Path) -> Path:
    """Return the folder that holds step shards inside the data folder ``home``."""
    return Path(home).resolve() / SHARD_DIR


def write_shards(frame: pd.DataFrame, home: str | Path, *, rows_per_file: int = 10 * BATCH_ROWS
                 ) -> Path:
    """Write the frame's rows as Parquet shards of ``rows_per_file`` rows (DuckDB COPY) in a
    new folder under the data folder ``home``; return that folder.

    A shard is a block for Ray Data: results come back, and progress and cancel are checked,
    at least once per shard.
    """
    if rows_per_file < 1:
        raise ConfigError(f"rows_per_file={rows_per_file}: must be >= 1")
    root = shard_root(home)
    folder = (root / uuid.uuid4().hex).resolve()
    if not folder.is_relative_to(Path(home).resolve()):
        raise WorkbenchError(f"{folder}: shards must stay inside the data folder {home}")
    folder.mkdir(parents=True)
    con = duckdb.connect(":memory:")
    try:
        con.register("_rows", _encoded(frame))
        for number, start in enumerate(range(0, max(len(frame), 1), rows_per_file)):
            path = str(folder / f"part-{number:05d}.parquet").replace("'", "''")
            con.execute(f"""COPY (SELECT * FROM _rows WHERE _pos >= {start} AND _pos <
                {start + rows_per_file} ORDER BY _pos) TO '{path}' (FORMAT parquet)""")
    finally:
        con.close()
    return folder


@contextmanager
def shards(frame: pd.DataFrame, home: str | Path, *, rows_per_file: int = 10 * BATCH_ROWS
           ) -> Iterator[Path]:
    """Yield a shard folder of the frame's rows, removed afterwards."""
    folder = write_shards(frame, home, rows_per_file=rows_per_file)
    try:
        yield folder
    finally:
        _remove_shards(folder)


@contextmanager
def version_shards(store: Any, version_id: int, columns: Sequence[str], *,
                   positions: Any = None, rows_per_file: int = 10 * BATCH_ROWS
                   ) -> Iterator[tuple[Path, int]]:
    """Yield (shard folder, rows) of a version's rows (or those at ``positions``) that the
    store writes straight to Parquet (``Store.write_shards``) under its data folder, removed
    afterwards: the rows never pass through a pandas frame in this process."""
    home = data_folder(store.path)
    folder = (shard_root(home) / uuid.uuid4().hex).resolve()
    try:
        rows = store.write_shards(version_id, folder, columns=columns,
                                  rows_per_file=rows_per_file, positions=positions)
        yield folder, rows
    finally:
        _remove_shards(folder)


def _remove_shards(folder: Path) -> None:
    """Remove a step's shard folder, and the shard root too when no other step uses it."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.parent.rmdir()  # only when empty: another step's shards stay
    except OSError:
        pass


# --- running a function batch by batch ------------------------------------------------------

Fn = Callable[..., pd.DataFrame]


def _aligned(fn: Fn, batch: pd.DataFrame, out: pd.DataFrame) -> pd.DataFrame:
    if len(out) != len(batch):
        raise WorkbenchError(f"{getattr(fn, '__name__', fn)} returned {len(out)} rows for a "
                             f"batch of {len(batch)}: engine functions keep one row per row")
    return out.reset_index(drop=True).assign(_pos=batch["_pos"].to_numpy())


def _run_batch(batch: pd.DataFrame, fn: Fn, kwargs: dict, sparse: bool = False
               ) -> pd.DataFrame:
    """One task: decode the batch, run the pure function, keep the row positions."""
    out = _aligned(fn, batch, fn(decode(batch).drop(columns="_pos"), **kwargs))
    return _sparse(out, len(batch)) if sparse else out


class _ModelBatches:
    """An actor of the pool: loads the model once, then runs every batch it is given."""

    def __init__(self, fn: Fn, load: Callable[..., Any], load_kwargs: dict, kwargs: dict):
        self.fn, self.kwargs = fn, kwargs
        self.model = load(**load_kwargs)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = self.fn(decode(batch).drop(columns="_pos"), self.model, **self.kwargs)
        return _aligned(self.fn, batch, out)


def map_rows(frame: pd.DataFrame, fn: Fn, *, home: str | Path, kwargs: dict | None = None,
             load: Callable[..., Any] | None = None, load_kwargs: dict | None = None,
             workers: int | None = None, use_gpu: bool = False, batch_rows: int = BATCH_ROWS,
             shard_rows: int = 10 * BATCH_ROWS, progress: Callable[[int, int], None] | None = None,
             cancelled: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Return ``fn`` applied to the frame batch by batch on Ray, one output row per input row,
    in input order.

    ``fn(batch, **kwargs)`` is a pure, importable function. With ``load``, ``fn(batch, model,
    **kwargs)`` runs in an actor pool of ``workers`` actors that each call ``load(**load_kwargs)``
    once (with ``use_gpu``, one GPU per actor when the cluster has GPUs: for loaders that put
    the model on a GPU when there is one). ``progress(rows_done, rows)`` follows
    the batches as they come back; ``cancelled()`` (or a progress callback raising Cancelled)
    is checked between batches and stops the run. The rows travel as Parquet shards of
    ``shard_rows`` rows under the data folder ``home``, removed afterwards.
    """
    if batch_rows < 1:
        raise ConfigError(f"batch_rows={batch_rows}: must be >= 1")
    with shards(frame, home, rows_per_file=shard_rows) as folder:
        out = map_shards(folder, len(frame), fn, kwargs=kwargs, load=load,
                         load_kwargs=load_kwargs, workers=workers, use_gpu=use_gpu,
                         batch_rows=batch_rows, progress=progress, cancelled=cancelled)
    return out.drop(columns="_pos") if "_pos" in out.columns else out


def map_shards(folder: Path, rows: int, fn: Fn, *, kwargs: dict | None = None,
               load: Callable[..., Any] | None = None, load_kwargs: dict | None = None,
               workers: int | None = None, use_gpu: bool = False, batch_rows: int = BATCH_ROWS,
               sparse: bool = False, progress: Callable[[int, int], None] | None = None,
               cancelled: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Return ``fn`` (as for ``map_rows``) applied to the ``rows`` rows of a shard folder,
    with their ``_pos``, in ``_pos`` order.

    ``sparse``: only the output rows with some non-null value come back (a step that reports
    on a few rows, such as what clean changed): the workers drop the others, so the driver
    never holds one output row per input row.
    """
    if batch_rows < 1:
        raise ConfigError(f"batch_rows={batch_rows}: must be >= 1")
    ray = ray_session()
    # One block per shard: Ray merges small files into one block (even with
    # override_num_blocks), and a block is what comes back at once.
    ds = ray.data.read_parquet(str(folder)).repartition(len(list(folder.glob("*.parquet"))))
    mapped = ds.map_batches(**_map_args(fn, kwargs or {}, load, load_kwargs or {}, workers,
                                        use_gpu, batch_rows, sparse))
    parts = _collect(mapped, rows, progress, cancelled)
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    if sparse:
        out = out[out["_pos"] >= 0].drop(columns=_BATCH_ROWS)
    return out.sort_values("_pos", kind="stable").reset_index(drop=True)


_BATCH_ROWS = "_batch_rows"  # sparse output: the input rows a batch covered (for progress)


def _sparse(out: pd.DataFrame, rows: int) -> pd.DataFrame:
    """Keep the output rows with some value; carry the batch's row count for progress (on a
    placeholder row with _pos -1 when no row is kept)."""
    values = out.drop(columns="_pos")
    kept = out[values.notna().any(axis=1)] if len(values.columns) else out.iloc[:0]
    if not len(kept):
        kept = pd.DataFrame({c: [None] for c in values.columns} | {"_pos": [-1]})
    counts = [0] * len(kept)
    counts[0] = rows
    return kept.assign(**{_BATCH_ROWS: counts}).reset_index(drop=True)


def _map_args(fn: Fn, kwargs: dict, load: Callable[..., Any] | None, load_kwargs: dict,
              workers: int | None, use_gpu: bool, batch_rows: int, sparse: bool = False
              ) -> dict:
    ray = _import_ray()
    common = {"batch_format": "pandas", "batch_size": batch_rows,
              "udf_modifying_row_count": sparse}
    if load is None:  # a plain function: Ray tasks, as many as the CPUs allow
        return {"fn": _run_batch, "fn_kwargs": {"fn": fn, "kwargs": kwargs, "sparse": sparse},
                **common}
    if sparse:
        raise ConfigError("sparse output is for plain functions (no model to load)")
    gpus = gpu_count() if use_gpu else 0
    size = workers or max(gpus, 1)
    return {"fn": _ModelBatches, "fn_constructor_kwargs": {
                "fn": fn, "load": load, "load_kwargs": load_kwargs, "kwargs": kwargs},
            "compute": ray.data.ActorPoolStrategy(size=size),
            **({"num_gpus": 1} if gpus else {"num_cpus": 1}), **common}


def _collect(mapped: Any, total: int, progress: Callable[[int, int], None] | None,
             cancelled: Callable[[], bool] | None) -> list[pd.DataFrame]:
    parts, done = [], 0
    for part in mapped.iter_batches(batch_format="pandas", batch_size=None):
        parts.append(part)
        done += int(part[_BATCH_ROWS].sum()) if _BATCH_ROWS in part.columns else len(part)
        if progress:
            progress(done, total)  # a job's progress raises Cancelled when asked to stop
        if cancelled is not None and cancelled():
            raise Cancelled()
    return parts


def data_folder(store_path: str | None = None) -> Path:
    """Return the data folder that holds shards: the store file's folder, else $WORKBENCH_HOME
    (or ./storage) for an in-memory store or no store."""
    from .store import default_home

    if store_path and store_path != ":memory:":
        return Path(store_path).resolve().parent
    return default_home()


@contextmanager
def dataset(frame: pd.DataFrame, home: str | Path, columns: Sequence[str]) -> Iterator[Any]:
    """Yield a Ray Dataset of the frame's ``columns`` plus ``_pos`` (the row's position),
    nested values decoded, read from Parquet shards that are removed afterwards."""
    with shards(frame[list(columns)], home) as folder:
        yield read_shards(folder)


def read_shards(folder: Path) -> Any:
    """Return a Ray Dataset of a shard folder's rows, nested values decoded."""
    return ray_session().data.read_parquet(str(folder)).map_batches(
        decode, batch_format="pandas", udf_modifying_row_count=False)
