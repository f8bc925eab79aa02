"""DuckDB store: datasets, immutable versions sharing rows, lineage, drop reasons, caches.

Rows are immutable records (``row_key``); a version is a list of row keys. A filter, dedup,
selection or edit makes a child version that records its operation, parameters, parent and
per-reason counts; unchanged rows are shared, an edited row becomes a new record with the same
``origin_key`` so diffs can pair it with its earlier self. Dropped rows keep their reason and
``duplicate_of`` and can be restored. Positions in a version always follow ``origin_key``, so a
restored row slots back where it was.

DuckDB lets one process hold the file read-write at a time, so no connection outlives a call:
every method opens the file, does its work and closes it, retrying while another process holds
the lock. The UI, the CLI and background jobs can therefore share one store. Inside a process,
calls on the same file take turns (a lock per path), and a call made while the same thread
already has the file open reuses that connection.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa

from .exceptions import (
    ConfigError,
    DiskFullError,
    ExportError,
    NotFoundError,
    StoreBusyError,
    StoreError,
    WorkbenchError,
)
from .io import (
    ImportReport,
    Rejection,
    RowBatch,
    batch_examples,
    encode_metadata,
    hf_splits,
    read_batches,
    write_dataset,
)
from .migrations import MIGRATIONS
from .schema import (
    Example,
    RowError,
    StepResult,
    check_messages,
    check_size,
    id_of_encoded,
    prompt_text,
    response_text,
)

DEFAULT_HOME = Path("storage")
# The stored row columns a version's Parquet shards can carry (engine.decode reads them back).
SHARD_COLUMNS = ("row_key", "id", "messages", "metadata", "tags", "note")
ROLES = ("train", "eval", "pool", "")  # what a dataset is for ("": not said)
# Small row groups let DuckDB compress and write each one during a bulk insert, on its own
# threads, instead of compressing everything in one checkpoint when the file is closed.
ROW_GROUP_ROWS = 16_384
# Set True (before the first store call) to compress stored text. DuckDB 2.0's string
# compression (DICT_FSST) halves the file but doubles the CPU time of an import (measured on
# Alpaca: 13 MB and ~0.32 s of CPU against 27 MB and ~0.14 s); imports must stay near the
# speed of a plain pandas read, so by default text is stored as it is.
COMPRESS_TEXT = False
# An import (or any big add) commits its rows in chunks of about this much work, each in its
# own short transaction, under a version nobody sees until a last short transaction publishes
# it: other processes (the app, `workbench list`, jobs) wait for one chunk at most, and a
# killed import leaves nothing half-visible.
IMPORT_CHUNK_SECONDS = 0.5
# ... and at most about this many bytes of encoded rows, which bounds an import's memory (one
# chunk is parsed while the one before it is inserted) whatever the machine's speed. Measured on
# a 165 MB JSONL (benchmarks/bench_import.py): 16 MB chunks peaked at 340 MB RSS (2.06x the
# file), 8 MB at 311-323 MB (1.88-1.95x, too close to 2x on a loaded machine), 6 MB at 288 MB
# (1.74x) at the same speed; 4 MB saved little more and was ~15% slower.
IMPORT_CHUNK_BYTES = 6 << 20
# Dataset names become file names (exports, downloads): letters, digits, space, - _ and .,
# starting with a letter or digit, not ending with a space or a dot.
DATASET_NAME_MAX = 64
_DATASET_NAME = re.compile(r"[^\W_](?:[\w .-]*[\w-])?")


def check_dataset_name(name: Any) -> str:
    """Return ``name`` if a new dataset may have it; raise WorkbenchError saying what is allowed."""
    if not isinstance(name, str) or not name.strip():
        raise WorkbenchError("a dataset needs a non-empty name")
    if len(name) > DATASET_NAME_MAX or not _DATASET_NAME.fullmatch(name):
        shown = name if len(name) <= 70 else name[:69] + "…"
        raise WorkbenchError(
            f"dataset name {shown!r} is not allowed: use up to {DATASET_NAME_MAX} letters, "
            "digits, spaces, '-', '_' and '.', starting with a letter or digit and not ending "
            "with a space or '.' (for example 'support-eval')")
    return name


def default_home() -> Path:
    """Return the data folder: $WORKBENCH_HOME, else ./storage."""
    return Path(os.environ.get("WORKBENCH_HOME") or DEFAULT_HOME)


def default_store_path() -> Path:
    """Return the store file: $WORKBENCH_STORE, else <home>/workbench.duckdb."""
    env = os.environ.get("WORKBENCH_STORE")
    return Path(env) if env else default_home() / "workbench.duckdb"


@dataclass(frozen=True)
class VersionInfo:
    """One immutable dataset version and how it was made."""

    version_id: int
    dataset: str
    parent_id: int | None
    operation: str
    params: dict
    counts: dict
    n_rows: int
    created_at: Any
    message: str = ""
    number: int = 0  # the version's place in its dataset: 1 for the first, as in name@N

    @property
    def ref(self) -> str:
        """What a person reads and types for this version: "name@N" (N counts per dataset)."""
        return f"{self.dataset}@{self.number}"


@dataclass
class Page:
    """One page of rows of a version, and how many rows match in total."""

    rows: pd.DataFrame
    total: int
    offset: int
    limit: int


@dataclass
class Row:
    """One stored row: its example, tags and note, and where it sits."""

    row_key: int
    origin_key: int
    example: Example
    tags: list[str]
    note: str


@dataclass
class Diff:
    """Rows added, removed (with reasons) and changed between two versions."""

    added: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame
    totals: dict[str, int] | None = None  # set when the tables hold only the first rows

    def counts(self) -> dict[str, int]:
        """Return how many rows were added, removed and changed (all of them, also when the
        tables hold only the first ``limit`` rows)."""
        if self.totals is not None:
            return dict(self.totals)
        return {"added": len(self.added), "removed": len(self.removed),
                "changed": len(self.changed)}


@dataclass(frozen=True)
class RowFilter:
    """Filters for browsing: search text, metadata equality, length and turn ranges, tags.

    ``search`` matches, case-insensitively and literally (``%``, ``_`` and quotes are plain
    characters), the text of any turn, the note, or any user metadata value.
    """

    search: str = ""
    metadata: tuple[tuple[str, Any], ...] = ()
    min_chars: int | None = None
    max_chars: int | None = None
    min_turns: int | None = None
    max_turns: int | None = None
    tag: str | None = None
    has_note: bool = False
    label: Literal["good", "bad", "labelled", "unlabelled"] | None = None
    label_set: str = "quality"


# --- process-wide coordination ------------------------------------------------------------
# One in-memory DuckDB per process hosts the calls: each call ATTACHes the store file and
# DETACHes it afterwards (which checkpoints and releases the file lock). Creating a DuckDB
# instance per call would cost ~12 ms; attaching costs ~1 ms.
_HOST: list = []  # [pid, connection]
_HOST_GUARD = threading.Lock()
_PATH_LOCKS: dict[str, threading.RLock] = {}
_OPEN = threading.local()  # store key -> [connection, in_transaction] for the current thread
_LOG = logging.getLogger(__name__)


def _host() -> duckdb.DuckDBPyConnection:
    """Return this process's host DuckDB, creating it on first use (or after a reset)."""
    with _HOST_GUARD:
        if not _HOST or _HOST[0] != os.getpid():  # a forked child needs its own instance
            con = duckdb.connect(":memory:")
            # Write each full row group as soon as it is inserted (not five at a time), so
            # bulk inserts do that work on the insert's thread, not in the commit.
            con.execute("SET write_buffer_row_group_count = 1")
            if not COMPRESS_TEXT:
                con.execute("SET disabled_compression_methods = 'dict_fsst'")
            _HOST[:] = [os.getpid(), con]
        return _HOST[1]


def _host_cursor() -> duckdb.DuckDBPyConnection:
    """Return a new connection to this process's host DuckDB (one per call and thread)."""
    return _host().cursor()


def _reset_host(broken: duckdb.DuckDBPyConnection | None) -> None:
    """Close a host DuckDB that hit a fatal error; the next call starts a fresh one.

    A fatal error invalidates the whole instance: every later query on it fails, and the
    files it has attached stay locked against other processes until it is closed.
    """
    with _HOST_GUARD:
        if broken is None or not _HOST or _HOST[1] is not broken:
            return  # another thread replaced it already
        _HOST.clear()
    try:
        broken.close()  # closes its cursors too, which releases every attached file
    except duckdb.Error:
        pass


# DuckDB words a full disk differently per operation; the OS error text is always in it.
_DISK_FULL = ("No space left on device", "File too large", "Disk quota exceeded",
              "not enough space")
_WRITE_FAILED = re.compile(r'Could not write file "([^"]+)": ([^\n.]+)')


def _is_disk_full(error: BaseException) -> bool:
    return any(s in str(error) for s in _DISK_FULL)


def _is_fatal(error: BaseException) -> bool:
    return isinstance(error, duckdb.FatalException) or \
        "has been invalidated because of a previous fatal error" in str(error)


def _store_error(error: duckdb.Error, path: str) -> Exception:
    """Return the WorkbenchError a DuckDB failure means for the user, or the error itself."""
    text = str(error)
    found = _WRITE_FAILED.search(text)
    detail = f"could not write {found.group(1)}: {found.group(2)}" if found else \
        text.strip().splitlines()[0][:300]
    if _is_disk_full(error):
        return DiskFullError(f"{path}: disk full: free space and retry ({detail})")
    if _is_fatal(error):
        return StoreError(f"{path}: the database hit a fatal error and was closed; nothing "
                          f"was saved by this step: retry ({detail})")
    if isinstance(error, duckdb.IOException):
        return StoreError(f"{path}: {detail}")
    return error


def _path_lock(path: str) -> threading.RLock:
    with _HOST_GUARD:
        return _PATH_LOCKS.setdefault(path, threading.RLock())


def _is_lock_conflict(error: Exception) -> bool:
    # DuckDB 2.0, another process: 'IO Error: Could not set lock on file "...": Conflicting
    # lock is held in <program> (PID n)'. This process, outside the store: 'Unique file handle
    # conflict: Cannot attach ... already attached by database ...'.
    text = str(error)
    return any(s in text for s in ("Could not set lock", "Conflicting lock",
                                   "Unique file handle conflict"))


class Store:
    """A handle on one store file; cheap to create, holds no connection between calls."""

    def __init__(self, path: str | Path | None = None, *, lock_timeout: float = 60.0):
        self.path = str(path) if path is not None else str(default_store_path())
        self.lock_timeout = lock_timeout
        self._memory = self.path == ":memory:"
        if self._memory:
            self._con = duckdb.connect(":memory:")
            self._lock = threading.RLock()
            self._key = f":memory:{id(self)}"
        else:
            self.path = str(Path(self.path).expanduser().resolve())
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock = _path_lock(self.path)
            self._key = self.path
            self._alias = "store_" + hashlib.md5(self.path.encode()).hexdigest()[:16]
        self._migrate()

    def __repr__(self) -> str:
        return f"Store({self.path!r})"

    # --- connections ---------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a connection that is closed (and the file lock released) afterwards.

        A DuckDB failure that the user can act on (a full disk, an unreadable file, a fatal
        error) comes out as a StoreError naming the file; after a fatal one the process's
        DuckDB is recreated, so the next call works and other processes can open the file.
        """
        held = self._held()
        if held is not None:  # a nested call in this thread: share its connection
            yield held[0]
            return
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise StoreBusyError(f"{self.path}: busy in this process for {self.lock_timeout:.0f} "
                                 "s; retry when the running operation ends")
        host = None
        try:
            if self._memory:
                con = self._con
            else:
                host, con = self._attach()
            self._open_map()[self._key] = [con, False]
            try:
                yield con
            finally:
                del self._open_map()[self._key]
                if not self._memory:
                    self._detach(con, host)
        except duckdb.Error as e:
            if _is_fatal(e) and host is not None:
                _reset_host(host)
            translated = _store_error(e, self.path)
            if translated is e:
                raise
            raise translated from e
        finally:
            self._lock.release()

    def _open_map(self) -> dict:
        if not hasattr(_OPEN, "cons"):
            _OPEN.cons = {}
        return _OPEN.cons

    def _held(self) -> list | None:
        return self._open_map().get(self._key)

    def _attach(self) -> tuple[duckdb.DuckDBPyConnection, duckdb.DuckDBPyConnection]:
        """Return (host, a cursor of it with the store file attached and in use)."""
        deadline, wait = time.monotonic() + self.lock_timeout, 0.005
        while True:
            host = _host()
            try:
                con = host.cursor()
            except duckdb.ConnectionException:  # another thread just closed a broken host
                continue
            try:
                con.execute(f"ATTACH '{_sql_str(self.path)}' AS {self._alias} "
                            f"(ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
                con.execute(f"USE {self._alias}")
                return host, con
            except duckdb.Error as e:
                con.close()
                if _is_fatal(e):
                    _reset_host(host)
                    raise _store_error(e, self.path) from None
                if _is_disk_full(e):  # replaying the write-ahead log needs room too
                    raise _store_error(e, self.path) from None
                if not _is_lock_conflict(e):
                    raise WorkbenchError(f"{self.path}: cannot open the store ({e})") from None
                # We hold this file's lock in this process, so our own alias still attached
                # is a leftover of a call whose DETACH failed: let go of it, then retry.
                self._release_leftover(host)
            if time.monotonic() > deadline:
                raise StoreBusyError(f"{self.path}: another process kept the store locked for "
                                     f"{self.lock_timeout:.0f} s; close it or retry")
            time.sleep(wait)
            wait = min(wait * 2, 0.1)

    def _attached(self, cursor: duckdb.DuckDBPyConnection) -> bool:
        return bool(cursor.execute("SELECT 1 FROM duckdb_databases() WHERE database_name = ?",
                                   [self._alias]).fetchall())

    def _release_leftover(self, host: duckdb.DuckDBPyConnection) -> None:
        cursor = host.cursor()
        try:
            if self._attached(cursor):
                cursor.execute(f"DETACH {self._alias}")
        except duckdb.Error:
            _reset_host(host)  # it cannot be detached: only closing the instance frees the file
        finally:
            cursor.close()

    def _detach(self, con: duckdb.DuckDBPyConnection,
                host: duckdb.DuckDBPyConnection | None = None) -> None:
        # Closing the cursor ends its transaction and drops its temp tables and views;
        # DETACH then checkpoints and lets go of the file.
        con.close()
        cursor = (host or _host()).cursor()
        try:
            cursor.execute(f"DETACH {self._alias}")
        except duckdb.Error as e:
            if self._attached(cursor):
                _reset_host(host)  # never keep the file locked against other processes
                raise
            if _is_fatal(e) or "CHECKPOINT during DETACH failed" not in str(e):
                raise
            # Committed changes are safe in the write-ahead log, and the next ATTACH replays
            # them; only folding them into the file failed (a full disk, typically), and the
            # file is released. So the call stands; a write that does not fit fails loudly.
            _LOG.warning("%s: could not checkpoint the store (%s); its changes stay in the "
                         "write-ahead log until there is room", self.path,
                         _store_error(e, self.path))
        finally:
            cursor.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a connection inside a transaction that commits, or rolls back on error."""
        with self.connect() as con:
            state = self._held()
            if state[1]:  # already inside this thread's transaction: join it
                yield con
                return
            con.execute("BEGIN TRANSACTION")
            state[1] = True
            try:
                yield con
            except BaseException:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:
                    pass  # a failed write may have ended it already; keep the first error
                raise
            finally:
                state[1] = False
            con.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY "
                        "KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)")
            done = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
            for number, name, statements in MIGRATIONS:
                if number in done:
                    continue
                for sql in statements:
                    con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                            [number, name])

    def migrations(self) -> list[tuple[int, str]]:
        """Return the applied migrations, oldest first."""
        with self.connect() as con:
            return con.execute("SELECT version, name FROM schema_migrations ORDER BY version"
                               ).fetchall()

    # --- datasets --------------------------------------------------------------------------
    def datasets(self) -> pd.DataFrame:
        """Return one row per dataset with its active version and row count."""
        with self.connect() as con:
            return con.execute("""
                SELECT d.name, d.description, d.active_version, v.n_rows,
                       (SELECT count(*) FROM versions x WHERE x.dataset_id = d.dataset_id)
                           AS versions, d.created_at, coalesce(d.role, '') AS role
                FROM datasets d LEFT JOIN versions v ON v.version_id = d.active_version
                ORDER BY d.dataset_id""").df()

    def _dataset_id(self, con: Any, name: str, *, create: bool = False) -> int:
        found = _one(con, "SELECT dataset_id FROM datasets WHERE name = ?", [name])
        if found:
            return found[0]
        if not create:
            known = [r[0] for r in con.execute("SELECT name FROM datasets").fetchall()]
            raise NotFoundError(f"no dataset named '{name}'; known: {', '.join(known) or 'none'}")
        check_dataset_name(name)
        new_id = _one(con, "SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets")[0]
        con.execute("INSERT INTO datasets (dataset_id, name) VALUES (?, ?)", [new_id, name])
        return new_id

    def active_version(self, dataset: str) -> int:
        """Return the id of a dataset's active version."""
        with self.connect() as con:
            found = _one(con, "SELECT active_version FROM datasets WHERE name = ?", [dataset])
        if not found:
            raise NotFoundError(f"no dataset named '{dataset}'")
        return found[0]

    def set_role(self, dataset: str, role: str) -> None:
        """Mark what a dataset is for: "train", "eval" (pages preselect it to evaluate on),
        "pool" (rows to draw from) or "" (none)."""
        if role not in ROLES:
            raise WorkbenchError(f"unknown role {role!r}: use one of "
                                 f"{', '.join(repr(r) for r in ROLES)}")
        with self.connect() as con:
            self._dataset_id(con, dataset)
            con.execute("UPDATE datasets SET role = ? WHERE name = ?", [role, dataset])

    def with_role(self, role: str) -> list[str]:
        """Return the datasets marked with a role, newest first."""
        with self.connect() as con:
            return [r[0] for r in con.execute("SELECT name FROM datasets WHERE role = ? "
                                              "ORDER BY dataset_id DESC", [role]).fetchall()]

    def set_active(self, version_id: int) -> None:
        """Make a version its dataset's active one."""
        info = self.version(version_id)
        with self.connect() as con:
            con.execute("UPDATE datasets SET active_version = ? WHERE name = ?",
                        [version_id, info.dataset])

    def resolve(self, ref: str | int) -> int:
        """Return a version id from an id, "name" (active version) or "name@N" (N-th version)."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self.version(int(ref)).version_id
        name, at, number = str(ref).rpartition("@")
        if not at or not number.isdigit():
            return self.active_version(str(ref))
        with self.connect() as con:
            found = _one(con, "SELECT version_id FROM version_refs WHERE dataset = ? AND "
                         "number = ?", [name, int(number)]) if int(number) > 0 else None
        if not found:
            raise NotFoundError(f"no version '{ref}'; use a version id, a dataset name or name@N")
        return found[0]

    # --- versions --------------------------------------------------------------------------
    def version(self, version_id: int) -> VersionInfo:
        """Return one version's record."""
        with self.connect() as con:
            row = _one(con, f"{_VERSION_SQL} WHERE v.version_id = ?", [int(version_id)])
        if row is None:
            raise NotFoundError(f"no version {version_id}")
        return _version_info(row)

    def versions(self, dataset: str) -> list[VersionInfo]:
        """Return a dataset's versions, oldest first (its lineage is parent_id)."""
        with self.connect() as con:
            self._dataset_id(con, dataset)
            rows = con.execute(f"{_VERSION_SQL} WHERE d.name = ? ORDER BY v.version_id",
                               [dataset]).fetchall()
        return [_version_info(r) for r in rows]

    def refs(self) -> dict[int, str]:
        """Return {version id: "name@N"} for every version, to show ids as people read them."""
        with self.connect() as con:
            return dict(con.execute("SELECT version_id, ref FROM version_refs").fetchall())

    def ref_of(self, version_id: int | None) -> str:
        """Return how people name one version (version_label's wording)."""
        return version_label(version_id, self.refs())

    def lineage(self, version_id: int) -> list[VersionInfo]:
        """Return the chain of versions from the root to this one."""
        with self.connect():
            chain, current = [], version_id
            while current is not None:
                info = self.version(current)
                chain.append(info)
                current = info.parent_id
        return chain[::-1]

    def _new_version(self, con: Any, dataset_id: int, parent: int | None, operation: str,
                     params: dict, counts: dict, message: str = "", vid: int | None = None
                     ) -> int:
        vid = _new_version_id(con) if vid is None else vid
        con.execute("""INSERT INTO versions (version_id, dataset_id, parent_id, operation, params,
                       counts, message) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    [vid, dataset_id, parent, operation, _json(params), _json(counts), message])
        return vid

    def _finish_version(self, con: Any, vid: int, *, activate: bool = True) -> None:
        n = _one(con, "SELECT count(*) FROM version_rows WHERE version_id = ?", [vid])[0]
        con.execute("UPDATE versions SET n_rows = ? WHERE version_id = ?", [n, vid])
        if activate:
            con.execute("UPDATE datasets SET active_version = ? WHERE dataset_id = (SELECT "
                        "dataset_id FROM versions WHERE version_id = ?)", [vid, vid])

    # --- import ----------------------------------------------------------------------------
    def import_file(self, path: str | Path, dataset: str, *, shape: str = "auto",
                    display_name: str | None = None, max_chars: int | None = None,
                    progress: Callable[[int], None] | None = None, split: str | None = None,
                    extra_params: dict | None = None) -> tuple[VersionInfo, ImportReport]:
        """Import a file as a new version of a dataset; return it and the import report.

        A file that is no dataset raises ImportFormatError and leaves the store unchanged. The
        file is streamed and committed in short chunks (see IMPORT_CHUNK_SECONDS), so other
        processes can use the store meanwhile; the version appears only once complete.
        ``split`` picks one split of a Hugging Face DatasetDict folder (recorded in params);
        ``extra_params`` are recorded too (a recipe replay names its recipe there).
        """
        kwargs = {"max_chars": max_chars} if max_chars else {}
        report, batches = read_batches(path, shape=shape, display_name=display_name,
                                       progress=progress, split=split, **kwargs)
        params = {"file": report.file, "kind": report.kind, "shape": shape}
        if report.split is not None:
            params["split"] = report.split
        params.update(extra_params or {})

        def finish() -> tuple[dict, dict]:
            counts = {"rows_read": report.rows_read, "imported": report.imported,
                      "rejected": len(report.rejected)}
            final = {**params, "kind": report.kind, "shapes": dict(report.shapes)}
            if report.notes:
                final["kept_as_text"] = len(report.notes)
            return final, counts

        info = self._add_batches(dataset, batches, operation="import", params=params,
                                 finish=finish, report=report)
        return info, report

    def import_splits(self, path: str | Path, dataset: str, *, split: str | None = None,
                      **options: Any) -> list[tuple[VersionInfo, ImportReport]]:
        """Import a file; a Hugging Face DatasetDict folder gives one dataset per split, named
        DATASET-SPLIT (or only ``split``, into DATASET). Return each version and its report."""
        splits = hf_splits(path) if split is None and Path(path).is_dir() else None
        if not splits or len(splits) == 1:
            return [self.import_file(path, dataset, split=split, **options)]
        names = {s: f"{dataset}-{s}" for s in splits}
        with self.connect() as con:  # every name is checked before any split is imported
            for s, name in names.items():
                if _one(con, "SELECT 1 FROM datasets WHERE name = ?", [name]) is None:
                    try:
                        check_dataset_name(name)
                    except WorkbenchError as e:
                        raise WorkbenchError(f"split '{s}': {e}; import it alone with --split "
                                             f"{s} and a dataset name of your own") from None
        return [self.import_file(path, name, split=s, **options) for s, name in names.items()]

    def add_examples(self, dataset: str, examples: Iterable[Example], *,
                     operation: str = "import", params: dict | None = None,
                     counts: dict | None = None, parent: int | None = None,
                     lines: Iterable[int] | None = None, report: ImportReport | None = None,
                     message: str = "") -> int:
        """Store examples as a new version (appended to ``parent``'s rows if given); return it.

        Rows are written in batches as they come, so a generator of any length is fine.
        """
        batches = _encoded(examples, lines)
        added: list[int] = []

        def finish() -> tuple[dict, dict]:
            return params or {}, counts or {"added": added[0]}

        return self._add_batches(dataset, batches, operation=operation, params=params or {},
                                 parent=parent, report=report, message=message,
                                 finish=finish, added=added).version_id

    def _add_batches(self, dataset: str, batches: Iterator[RowBatch], *, operation: str,
                     params: dict, finish: Callable[[], tuple[dict, dict]],
                     parent: int | None = None, report: ImportReport | None = None,
                     message: str = "", added: list[int] | None = None) -> VersionInfo:
        """Store batches as a new version. Input that fits in one chunk is one transaction;
        a longer one is staged chunk by chunk under a version id with no `versions` row (so
        invisible), then published in one short transaction. On failure the staged rows go.

        Each chunk is read and parsed before its transaction opens, so the store is held only
        while rows are inserted, and other processes get their turn between chunks.
        """
        chunks = _Chunks(batches, report)

        def publish(con: Any, staged: _Staged) -> VersionInfo:
            dataset_id = self._dataset_id(con, dataset, create=True)
            if parent is not None:
                self._check_parent(con, parent, dataset_id)  # again: it may have changed
                con.execute("""INSERT INTO version_rows SELECT ?, pos, row_key FROM version_rows
                               WHERE version_id = ? ORDER BY pos""", [staged.vid, parent])
            if added is not None:
                added.append(staged.n)
            staged.save_rejects(con)
            final_params, counts = finish()
            self._new_version(con, dataset_id, parent, operation, final_params, counts,
                              message, vid=staged.vid)
            self._finish_version(con, staged.vid)
            con.execute("DELETE FROM staged_versions WHERE version_id = ?", [staged.vid])
            return self.version(staged.vid)

        chunk = chunks.take()
        with self.transaction() as con:
            self._discard_abandoned(con)
            staged = _Staged(_new_version_id(con), self._start_rows(con, dataset, parent), report)
            if chunks.done:  # it all fits in one chunk: nothing is staged
                staged.add(con, chunk)
                return publish(con, staged)
            con.execute("INSERT INTO staged_versions (version_id, dataset, pid, host) VALUES "
                        "(?, ?, ?, ?)", [staged.vid, dataset, os.getpid(), socket.gethostname()])
        try:
            return self._add_chunks(staged, chunk, chunks, publish)
        except BaseException:
            self._drop_staged(staged.vid)
            raise

    def _add_chunks(self, staged: _Staged, chunk: _Chunk, chunks: _Chunks,
                    publish: Callable[[Any, _Staged], VersionInfo]) -> VersionInfo:
        """Insert chunks, each in its own transaction, and publish with the last one. A worker
        thread inserts one chunk while this thread parses the next (two cores overlap)."""
        def insert(part: _Chunk, last: bool) -> VersionInfo | None:
            with self.transaction() as con:
                staged.add(con, part)
                return publish(con, staged) if last else None

        if self._held() is not None:  # inside the caller's transaction: stay on its thread
            while not chunks.done:
                insert(chunk, False)
                chunk = chunks.take()
            return insert(chunk, True)
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = worker.submit(insert, chunk, False)
            while not chunks.done:
                chunk = chunks.take()
                pending.result()  # one chunk in flight: memory stays bounded
                pending = worker.submit(insert, chunk, chunks.done)
            return pending.result()

    def _start_rows(self, con: Any, dataset: str, parent: int | None) -> int:
        """Check a new version may be added (name, parent); return the parent's row count."""
        found = _one(con, "SELECT dataset_id FROM datasets WHERE name = ?", [dataset])
        if found is None:
            check_dataset_name(dataset)
        if parent is None:
            return 0
        self._check_parent(con, parent, found[0] if found else None)
        return _one(con, "SELECT count(*) FROM version_rows WHERE version_id = ?", [parent])[0]

    def _drop_staged(self, vid: int) -> None:
        try:
            with self.transaction() as con:
                _drop_staged(con, [vid])
        except Exception as e:  # the process is alive, so a later import cannot tell; say it
            _LOG.warning("%s: could not remove the rows of the failed import of version %s "
                         "(%s); they stay invisible and are removed once this process ends",
                         self.path, vid, e)

    def discard_unfinished(self) -> int:
        """Remove what imports that were killed left staged; return how many there were."""
        with self.transaction() as con:
            return self._discard_abandoned(con)

    def _discard_abandoned(self, con: Any) -> int:
        staged = con.execute("""SELECT version_id, pid, host, started_at <
            CAST(current_timestamp AS TIMESTAMP) - INTERVAL 1 DAY
            FROM staged_versions""").fetchall()
        gone = [vid for vid, pid, host, old in staged if _abandoned(pid, host, old)]
        if gone:
            _drop_staged(con, gone)
        return len(gone)

    def _check_parent(self, con: Any, parent: int, dataset_id: int | None) -> None:
        found = _one(con, "SELECT dataset_id FROM versions WHERE version_id = ?", [parent])
        if found is None:
            raise NotFoundError(f"no version {parent}")
        if found[0] != dataset_id:
            raise WorkbenchError(f"version {parent} belongs to another dataset")

    def import_rejects(self, version_id: int) -> pd.DataFrame:
        """Return the rows an import rejected, with file, line, field, reason and fix."""
        with self.connect() as con:
            return con.execute("""SELECT file, line, field, reason, fix, raw FROM import_rejects
                                  WHERE version_id = ? ORDER BY line""", [version_id]).df()

    # --- reading ---------------------------------------------------------------------------
    def page(self, version_id: int, *, offset: int = 0, limit: int = 50,
             filters: RowFilter | None = None) -> Page:
        """Return one page of a version's rows (server-side filtering) and the match count."""
        offset, limit = max(int(offset), 0), max(int(limit), 0)
        where, args = _filter_sql(filters or RowFilter())
        with self.connect() as con:
            self._check_version(con, version_id)
            if not where:
                keys, total = self._plain_keys(con, version_id, offset, limit)
            else:
                keys, total = self._filtered_keys(con, version_id, where, args, offset, limit)
            rows = self._rows_for(con, keys)
            rows["label"] = self._labels_of(con, rows["id"].tolist(),
                                            (filters or RowFilter()).label_set)
        return Page(_with_previews(rows), total, offset, limit)

    def matches(self, version_id: int, filters: RowFilter) -> np.ndarray:
        """Return the keys of a version's rows that the filters match, in version order: one
        scan of the text, so that ``page_of`` can then show any page of them without another."""
        where, args = _filter_sql(filters)
        with self.connect() as con:
            self._check_version(con, version_id)
            keys = con.execute(f"""SELECT vr.row_key FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? {'AND ' + where if where else ''}
                ORDER BY vr.pos""", [version_id, *args]).fetchnumpy()["row_key"]
        return np.asarray(keys, dtype=np.int64)

    def page_of(self, version_id: int, keys: Sequence[int], *, offset: int = 0,
                limit: int = 50, label_set: str = "quality") -> Page:
        """Return one page of the given row keys of a version (as ``matches`` lists them):
        what ``page`` returns for the same filters, offset and limit."""
        offset, limit = max(int(offset), 0), max(int(limit), 0)
        chosen = [int(k) for k in keys[offset:offset + limit]]
        with self.connect() as con:
            self._check_version(con, version_id)
            found = con.execute("""SELECT pos, row_key FROM version_rows WHERE version_id = ?
                AND row_key IN (SELECT unnest(?::BIGINT[])) ORDER BY pos""",
                                [version_id, chosen]).df()
            rows = self._rows_for(con, found)
            rows["label"] = self._labels_of(con, rows["id"].tolist(), label_set)
        return Page(_with_previews(rows), len(keys), offset, limit)

    def _labels_of(self, con: Any, ids: list[str], label_set: str) -> list[str]:
        if not ids:
            return []
        found = dict(con.execute(f"""SELECT id, label FROM ({CURRENT_LABELS_SQL})
            WHERE id IN (SELECT unnest(?::VARCHAR[]))""", [label_set, ids]).fetchall())
        return [found.get(i) or "" for i in ids]

    def _plain_keys(self, con: Any, version_id: int, offset: int, limit: int
                    ) -> tuple[pd.DataFrame, int]:
        total = _one(con, "SELECT n_rows FROM versions WHERE version_id = ?", [version_id])[0]
        keys = con.execute("""SELECT pos, row_key FROM version_rows WHERE version_id = ?
            AND pos >= ? AND pos < ? ORDER BY pos""", [version_id, offset, offset + limit]).df()
        return keys, total or 0

    def _filtered_keys(self, con: Any, version_id: int, where: str, args: list, offset: int,
                       limit: int) -> tuple[pd.DataFrame, int]:
        # One scan of the text: the window count rides along with the page of matches.
        matches = f"""SELECT vr.pos, vr.row_key FROM version_rows vr JOIN rows r
                      USING (row_key) WHERE vr.version_id = ? AND {where}"""
        df = con.execute(f"""SELECT pos, row_key, count(*) OVER () AS total FROM ({matches})
            ORDER BY pos LIMIT ? OFFSET ?""", [version_id, *args, limit, offset]).df()
        if len(df):
            return df[["pos", "row_key"]], int(df["total"].iloc[0])
        total = _one(con, f"SELECT count(*) FROM ({matches})", [version_id, *args])[0]
        return df[["pos", "row_key"]], total

    def _rows_for(self, con: Any, keys: pd.DataFrame) -> pd.DataFrame:
        if keys.empty:
            return pd.DataFrame(columns=["pos", *_ROW_NAMES])
        lo, hi = int(keys.row_key.min()), int(keys.row_key.max())
        # The BETWEEN lets DuckDB skip row groups by their min/max before probing the list.
        df = con.execute(f"""SELECT {_ROW_COLS} FROM rows r WHERE r.row_key BETWEEN ? AND ?
            AND r.row_key IN (SELECT unnest(?::BIGINT[]))""",
                         [lo, hi, [int(k) for k in keys.row_key]]).df()
        df = keys.merge(df, on="row_key").sort_values("pos")
        return df.reset_index(drop=True)

    def row(self, row_key: int) -> Row:
        """Return one stored row by key."""
        with self.connect() as con:
            found = _one(con, """SELECT row_key, origin_key, messages, metadata, tags, note
                                 FROM rows WHERE row_key = ?""", [int(row_key)])
        if found is None:
            raise NotFoundError(f"no row {row_key}")
        key, origin, messages, metadata, tags, note = found
        example = Example(tuple(orjson.loads(messages)), orjson.loads(metadata))
        return Row(key, origin, example, list(tags or []), note or "")

    def frame(self, version_id: int) -> pd.DataFrame:
        """Return a version as the step DataFrame (row_key, id, messages, metadata, ...)."""
        with self.connect() as con:
            self._check_version(con, version_id)
            df = con.execute("""SELECT r.row_key, r.id, r.messages, r.metadata, r.tags, r.note
                FROM version_rows vr JOIN rows r USING (row_key) WHERE vr.version_id = ?
                ORDER BY vr.pos""", [version_id]).df()
        return _step_frame(df)

    def row_keys(self, version_id: int) -> np.ndarray:
        """Return a version's row keys in version order (int64): its id list, no row content."""
        with self.connect() as con:
            self._check_version(con, version_id)
            return con.execute("SELECT row_key FROM version_rows WHERE version_id = ? ORDER BY "
                               "pos", [version_id]).fetchnumpy()["row_key"].astype(np.int64)

    def first_positions(self, version_id: int, ids: Sequence[str]) -> np.ndarray:
        """Return, sorted, the position of the first row of each of these content ids in a
        version (ids not in it are left out): the rows a cache-filling step has to compute."""
        with self.connect() as con:
            self._check_version(con, version_id)
            con.register("_ids", pa.table({"id": pa.array(list({str(i) for i in ids}),
                                                          pa.string())}))
            try:
                found = con.execute("""SELECT min(vr.pos) AS pos FROM version_rows vr JOIN rows r
                    USING (row_key) SEMI JOIN _ids USING (id) WHERE vr.version_id = ?
                    GROUP BY r.id ORDER BY 1""", [version_id]).fetchnumpy()["pos"]
            finally:
                con.unregister("_ids")
        return np.asarray(found, dtype=np.int64)

    def write_shards(self, version_id: int, folder: str | Path, *,
                     columns: Sequence[str] = SHARD_COLUMNS, rows_per_file: int = 10_000,
                     positions: Sequence[int] | np.ndarray | None = None) -> int:
        """Write a version's rows (or only those at ``positions``) as Parquet shards of at
        most ``rows_per_file`` rows into ``folder`` straight from the store's tables with
        DuckDB ``COPY ... TO``; return the number of rows written.

        Each shard holds ``_pos`` (the row's position in the version), ``row_key`` and the
        asked ``columns`` (of SHARD_COLUMNS) in version order, messages and metadata as the
        JSON text the store keeps (what ``engine.decode`` reads): no row passes through a
        pandas frame here, so memory does not grow with the version's size.
        """
        unknown = [c for c in columns if c not in SHARD_COLUMNS]
        if unknown:
            raise ConfigError(f"columns: {unknown} are not stored row columns; use "
                              f"{', '.join(SHARD_COLUMNS)}")
        if rows_per_file < 1:
            raise ConfigError(f"rows_per_file={rows_per_file}: must be >= 1")
        picked = ", ".join(f"r.{c}" for c in dict.fromkeys(["row_key", *columns]))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self.connect() as con:
            self._check_version(con, version_id)
            if positions is None:
                total = _one(con, "SELECT count(*) FROM version_rows WHERE version_id = ?",
                             [version_id])[0]
                chunks = [(start, None) for start in range(0, max(total, 1), rows_per_file)]
            else:
                wanted = np.unique(np.asarray(positions, dtype=np.int64))
                total = len(wanted)
                chunks = [(0, wanted[i:i + rows_per_file])
                          for i in range(0, max(total, 1), rows_per_file)]
            for number, (start, chosen) in enumerate(chunks):
                path = "'" + _sql_str(str(folder / f"part-{number:05d}.parquet")) + "'"
                if chosen is None:
                    where, args = "vr.pos >= ? AND vr.pos < ?", [start, start + rows_per_file]
                else:
                    where, args = "vr.pos IN (SELECT unnest(?::BIGINT[]))", [chosen.tolist()]
                # Rows of a range of positions are a range of row keys too (mostly): the
                # BETWEEN lets DuckDB skip the rows table's other row groups.
                con.execute(f"""COPY (SELECT vr.pos AS _pos, {picked} FROM version_rows vr
                    JOIN rows r USING (row_key) WHERE vr.version_id = ? AND {where}
                    AND r.row_key BETWEEN (SELECT min(row_key) FROM version_rows vr WHERE
                    vr.version_id = ? AND {where}) AND (SELECT max(row_key) FROM version_rows
                    vr WHERE vr.version_id = ? AND {where}) ORDER BY vr.pos)
                    TO {path} (FORMAT parquet)""",
                            [version_id, *args, version_id, *args, version_id, *args])
        return int(total)

    def sample_frame(self, version_id: int, n: int, *, seed: int = 0) -> pd.DataFrame:
        """Return, as a step DataFrame in version order, every row of a version of at most n
        rows, else a fixed random sample of n of them (the same rows for the same seed)."""
        with self.connect() as con:
            self._check_version(con, version_id)
            total = _one(con, "SELECT n_rows FROM versions WHERE version_id = ?",
                         [version_id])[0] or 0
            picked = "" if total <= n else "AND vr.pos IN (SELECT unnest(?::BIGINT[]))"
            args = [version_id] + ([] if total <= n else [np.sort(np.random.default_rng(
                seed).choice(total, int(n), replace=False)).tolist()])
            df = con.execute(f"""SELECT r.row_key, r.id, r.messages, r.metadata, r.tags, r.note
                FROM version_rows vr JOIN rows r USING (row_key) WHERE vr.version_id = ?
                {picked} ORDER BY vr.pos""", args).df()
        return _step_frame(df)

    def row_ids(self, version_id: int) -> pd.DataFrame:
        """Return a version's row keys and content ids (``row_key``, ``id``), in version order:
        what a join with the caches keyed by id needs, without reading any row's text."""
        with self.connect() as con:
            self._check_version(con, version_id)
            return con.execute("""SELECT r.row_key, r.id FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? ORDER BY vr.pos""", [version_id]).df()

    def response_lengths(self, row_keys: Sequence[int], unit: str = "chars",
                         chunk_rows: int = 20_000) -> np.ndarray:
        """Return the length of each row's response (its last assistant turn), in the order of
        ``row_keys``: characters from the ``response_chars`` column every insert fills, words
        (``str.split``) from the messages read ``chunk_rows`` at a time; no frame of the rows.
        A row without a stored count (none is expected) is measured from its messages."""
        keys = np.asarray([int(k) for k in row_keys], dtype=np.int64)
        out = np.full(len(keys), -1, dtype=np.int64)
        with self.connect() as con:
            con.register("_keys", pa.table({"row_key": pa.array(keys, pa.int64()),
                                            "_at": pa.array(np.arange(len(keys)), pa.int64())}))
            try:
                if unit == "chars":
                    found = con.execute("""SELECT k._at, r.response_chars FROM _keys k
                        JOIN rows r USING (row_key) WHERE r.response_chars IS NOT NULL
                        """).fetchnumpy()
                    out[found["_at"]] = found["response_chars"]
                todo = np.flatnonzero(out < 0)
                for start in range(0, len(todo), chunk_rows):
                    part = todo[start:start + chunk_rows]
                    rows = con.execute("""SELECT k._at, r.messages FROM _keys k JOIN rows r
                        USING (row_key) WHERE k._at IN (SELECT unnest(?::BIGINT[]))""",
                                       [part.tolist()]).fetchnumpy()
                    texts = [response_text(orjson.loads(m)) for m in rows["messages"]]
                    out[rows["_at"]] = [len(t) if unit == "chars" else len(t.split())
                                        for t in texts]
            finally:
                con.unregister("_keys")
        if (out < 0).any():
            raise NotFoundError(f"no row {int(keys[np.flatnonzero(out < 0)[0]])}")
        return out

    def frame_of(self, version_id: int, row_keys: Sequence[int]) -> pd.DataFrame:
        """Return, as a step DataFrame in version order, the rows of a version with these keys:
        ``frame`` for some rows (the texts a step needs) without reading the others."""
        with self.connect() as con:
            self._check_version(con, version_id)
            con.register("_keys", pa.table({"row_key": pa.array(
                [int(k) for k in row_keys], pa.int64())}))
            df = con.execute("""SELECT r.row_key, r.id, r.messages, r.metadata, r.tags, r.note
                FROM version_rows vr SEMI JOIN _keys USING (row_key) JOIN rows r
                USING (row_key) WHERE vr.version_id = ? ORDER BY vr.pos""", [version_id]).df()
            con.unregister("_keys")
        return _step_frame(df)

    def rows_of(self, version_id: int, row_keys: Sequence[int]) -> pd.DataFrame:
        """Return rows of a version by key, in version order, with their position (``pos``)
        and one-line previews: a few rows' texts without reading the others."""
        keys = pd.DataFrame({"row_key": [int(k) for k in row_keys]}, dtype="int64")
        with self.connect() as con:
            self._check_version(con, version_id)
            positions = con.execute("""SELECT pos, row_key FROM version_rows
                WHERE version_id = ? AND row_key IN (SELECT unnest(?::BIGINT[]))""",
                                    [version_id, keys["row_key"].tolist()]).df()
            rows = self._rows_for(con, positions.sort_values("pos"))
        return _with_previews(rows)

    def dataset_rows(self, version_id: int, ids: Sequence[str]) -> pd.DataFrame:
        """Return, as a step DataFrame, the rows with these content ids in any version of this
        version's dataset (one row per id: the newest)."""
        with self.connect() as con:
            self._check_version(con, version_id)
            con.register("_ids", pa.table({"id": pa.array(list({str(i) for i in ids}),
                                                          pa.string())}))
            df = con.execute("""SELECT r.row_key, r.id, r.messages, r.metadata, r.tags, r.note
                FROM rows r SEMI JOIN _ids USING (id) WHERE r.row_key IN (SELECT vr.row_key
                FROM version_rows vr JOIN versions v USING (version_id) WHERE v.dataset_id =
                (SELECT dataset_id FROM versions WHERE version_id = ?))
                QUALIFY row_number() OVER (PARTITION BY r.id ORDER BY r.row_key DESC) = 1
                ORDER BY r.row_key""", [int(version_id)]).df()
            con.unregister("_ids")
        return _step_frame(df)

    def examples(self, version_id: int) -> list[Example]:
        """Return a version's examples in order."""
        with self.connect() as con:
            self._check_version(con, version_id)
            rows = con.execute("""SELECT r.messages, r.metadata FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? ORDER BY vr.pos""", [version_id]
                               ).fetchall()
        return [Example(tuple(orjson.loads(m)), orjson.loads(md)) for m, md in rows]

    def metadata_fields(self, version_id: int, sample: int = 2000) -> dict[str, list[str]]:
        """Return user metadata keys seen in a sample of rows, with up to 50 common values each.

        Values are given as a metadata filter matches them: strings as they are, numbers and
        booleans as JSON (``true``, ``3``, ``1.5``).
        """
        with self.connect() as con:
            rows = con.execute("""SELECT r.metadata FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? AND vr.pos < ?""",
                               [version_id, sample]).fetchall()
        values: dict[str, Counter] = {}
        for (md,) in rows:
            for k, v in orjson.loads(md).items():
                if not k.startswith("_") and isinstance(v, (str, int, float, bool)):
                    values.setdefault(k, Counter())[_filter_value(v)] += 1
        return {k: [v for v, _ in c.most_common(50)] for k, c in sorted(values.items())}

    def _check_version(self, con: Any, version_id: int) -> None:
        if _one(con, "SELECT 1 FROM versions WHERE version_id = ?", [int(version_id)]) is None:
            raise NotFoundError(f"no version {version_id}")

    def _members(self, con: Any, version_id: int) -> list[int]:
        self._check_version(con, version_id)
        return [r[0] for r in con.execute("SELECT row_key FROM version_rows WHERE version_id = ?"
                                          " ORDER BY pos", [version_id]).fetchall()]

    # --- making versions from steps and edits ---------------------------------------------
    def apply_step(self, version_id: int, result: StepResult, *, operation: str,
                   params: dict | None = None, message: str = "") -> VersionInfo:
        """Make a child version from a step's kept/changed/dropped rows; return it."""
        kept, dropped = result.kept, result.dropped
        changed = result.changed if result.changed is not None else pd.DataFrame(
            columns=["row_key", "reason", "detail"])
        if "detail" not in changed.columns:
            changed = changed.assign(detail=None)
        dropped = _dropped_frame(dropped)
        flagged = _flagged_frame(getattr(result, "flagged", None))
        with self.connect() as con:
            parent_keys = set(self._members(con, version_id))
        _check_step(parent_keys, kept, dropped, changed)
        if not {int(k) for k in flagged["row_key"]} <= {int(k) for k in kept["row_key"]}:
            raise WorkbenchError("a flagged row must also be kept (flags are for review)")
        counts = dict(Counter(dropped["reason"])) if len(dropped) else {}
        counts.update({f"changed:{k}": v for k, v in Counter(changed["reason"]).items()})
        counts.update({f"flagged:{k}": v for k, v in Counter(flagged["reason"]).items()})
        counts["kept"] = len(kept)
        with self.transaction() as con:
            vid = self._child(con, version_id, operation, params or {}, counts, message)
            replaced = self._store_changed(con, vid, kept, changed)
            _insert_frame(con, "dropped", dropped.assign(version_id=vid),
                          ["version_id", "row_key", "reason", "duplicate_of", "detail"])
            # A flag names the row as it is in the new version (a changed row has a new key).
            _insert_frame(con, "flagged", flagged.assign(
                version_id=vid, row_key=[replaced.get(int(k), int(k)) for k in flagged["row_key"]]),
                          ["version_id", "row_key", "reason", "detail"])
            keys = [replaced.get(int(k), int(k)) for k in kept["row_key"].tolist()]
            self._set_members(con, vid, keys)
            self._finish_version(con, vid)
        return self.version(vid)

    def _child(self, con: Any, parent: int, operation: str, params: dict, counts: dict,
               message: str) -> int:
        dataset_id = _one(con, "SELECT dataset_id FROM versions WHERE version_id = ?", [parent])
        if dataset_id is None:
            raise NotFoundError(f"no version {parent}")
        return self._new_version(con, dataset_id[0], parent, operation, params, counts, message)

    def _store_changed(self, con: Any, vid: int, kept: pd.DataFrame, changed: pd.DataFrame
                       ) -> dict[int, int]:
        """Write new records for changed rows; return old row_key -> new row_key."""
        if changed.empty:
            return {}
        old_keys = [int(k) for k in changed["row_key"]]
        # Whole columns, looked up once: a cell lookup per row and field took 11 s for 6k rows.
        new = kept.set_index("row_key").reindex(columns=["messages", "metadata", "tags", "note"]
                                                ).loc[old_keys]
        old = con.execute("""SELECT row_key, origin_key, tags, note FROM rows WHERE row_key IN
                             (SELECT unnest(?::BIGINT[]))""", [old_keys]).df().set_index("row_key"
                                                                                         ).loc[old_keys]
        examples = [Example(tuple(m), dict(d)) for m, d in zip(new["messages"], new["metadata"])]
        first = _next_row_key(con)
        _insert_batches(con, _encoded(examples, keys=old_keys), first,
                        origin=[int(k) for k in old["origin_key"]],
                        tags=[_tags(n, o) for n, o in zip(new["tags"], old["tags"])],
                        notes=[_note(n, o) for n, o in zip(new["note"], old["note"])])
        mapping = {k: first + i for i, k in enumerate(old_keys)}
        rows = changed.assign(version_id=vid, new_row_key=[mapping[k] for k in old_keys])
        _insert_frame(con, "changed", rows.rename(columns={"row_key": "old_row_key"}),
                      ["version_id", "new_row_key", "old_row_key", "reason", "detail"])
        return mapping

    def _set_members(self, con: Any, vid: int, keys: list[int]) -> None:
        # Dense positions in original (origin) order, so restored rows slot back in place.
        con.register("_keys", pa.table({"row_key": pa.array(keys, pa.int64())}))
        con.execute("""INSERT INTO version_rows SELECT ?, row_number() OVER (ORDER BY r.origin_key,
            r.row_key) - 1, r.row_key FROM rows r SEMI JOIN _keys k USING (row_key)
            ORDER BY 2""", [vid])
        con.unregister("_keys")

    def edit_row(self, version_id: int, row_key: int, *, messages: list[dict] | None = None,
                 metadata: dict | None = None, tags: list[str] | None = None,
                 note: str | None = None) -> VersionInfo:
        """Make a child version in which one row is replaced by its edited copy; return it.

        The child becomes the dataset's active version only if ``version_id`` was: an edit of
        an older version never silently replaces newer work as the default.
        """
        current = self.row(row_key)
        new_messages = list(messages) if messages is not None else list(current.example.messages)
        _validate_edit(new_messages, metadata, tags, note)
        if messages is not None:
            new_messages = [{"role": m["role"], "content": m["content"]} for m in new_messages]
        frame = pd.DataFrame({"row_key": [int(row_key)], "messages": [new_messages],
                              "metadata": [metadata if metadata is not None
                                           else current.example.metadata],
                              "tags": [list(tags) if tags is not None else current.tags],
                              "note": [note if note is not None else current.note]})
        what = [n for n, v in (("messages", messages), ("metadata", metadata), ("tags", tags),
                               ("note", note)) if v is not None]
        if not what:
            raise WorkbenchError("edit rejected: nothing to change (give messages, metadata, "
                                 "tags or note)")
        return self._replace_rows(version_id, frame, "edit",
                                  {"row_key": int(row_key), "fields": what})

    def tag_rows(self, version_id: int, row_keys: Sequence[int], *,
                 add: Sequence[str] = (), remove: Sequence[str] = ()) -> VersionInfo:
        """Make a child version in which the given rows gain and lose tags; return it."""
        _validate_tags(list(add) + list(remove))
        keys = sorted({int(k) for k in row_keys})
        with self.connect() as con:
            frame = con.execute("""SELECT row_key, messages, metadata, tags, note FROM rows
                WHERE row_key IN (SELECT row_key FROM version_rows WHERE version_id = ?)
                AND row_key IN (SELECT unnest(?::BIGINT[])) ORDER BY row_key""",
                                [version_id, keys]).df()
        missing = sorted(set(keys) - set(frame["row_key"].tolist()))
        if missing or not keys:
            raise NotFoundError(f"rows {missing[:5] or keys} are not in version {version_id}")
        frame["messages"] = [orjson.loads(m) for m in frame["messages"]]
        frame["metadata"] = [orjson.loads(m) for m in frame["metadata"]]
        frame["tags"] = [sorted((set(t if t is not None else []) | set(add)) - set(remove))
                         for t in frame["tags"]]
        return self._replace_rows(version_id, frame, "tag",
                                  {"rows": len(frame), "add": list(add), "remove": list(remove)})

    def _replace_rows(self, version_id: int, frame: pd.DataFrame, operation: str, params: dict
                      ) -> VersionInfo:
        # An edit keeps every other row and every position: copy the parent's membership with
        # the edited keys swapped, instead of rebuilding it (cheap at a million rows).
        changed = pd.DataFrame({"row_key": frame["row_key"], "reason": operation,
                                "detail": ", ".join(params.get("fields", [])) or operation})
        with self.transaction() as con:
            members = con.execute("""SELECT count(*) FROM version_rows WHERE version_id = ? AND
                row_key IN (SELECT unnest(?::BIGINT[]))""",
                                  [version_id, [int(k) for k in frame["row_key"]]]).fetchall()
            if members[0][0] != len(frame):
                raise NotFoundError(f"row {frame['row_key'].iloc[0]} is not in version "
                                    f"{version_id}")
            counts = {f"changed:{operation}": len(frame)}
            active = _one(con, """SELECT d.active_version FROM datasets d JOIN versions v
                USING (dataset_id) WHERE v.version_id = ?""", [version_id])
            vid = self._child(con, version_id, operation, params, counts, "")
            mapping = self._store_changed(con, vid, frame, changed)
            con.register("_map", pa.table({"row_key": pa.array(list(mapping), pa.int64()),
                                           "new_key": pa.array(list(mapping.values()),
                                                               pa.int64())}))
            con.execute("""INSERT INTO version_rows SELECT ?, vr.pos, coalesce(m.new_key,
                vr.row_key) FROM version_rows vr LEFT JOIN _map m USING (row_key)
                WHERE vr.version_id = ? ORDER BY vr.pos""", [vid, version_id])
            con.unregister("_map")
            self._finish_version(con, vid, activate=active is not None and active[0] == version_id)
        return self.version(vid)

    def removed(self, version_id: int, *, limit: int | None = None, offset: int = 0,
                reason: str | None = None, search: str = "") -> pd.DataFrame:
        """Return rows dropped along this version's lineage and not in it, with reasons (the
        first ``limit`` of them in row order, if given; ``removed_count`` counts them all).
        ``offset`` skips that many first; ``reason`` keeps one reason; ``search`` keeps rows
        whose text matches as ``RowFilter.search`` does, so any dropped row can be paged to."""
        chain = [v.version_id for v in self.lineage(version_id)]
        where, args = self._removed_where(reason, search)
        cap = "" if limit is None else f"LIMIT {max(int(limit), 0)}"
        cap += f" OFFSET {max(int(offset), 0)}" if offset else ""
        with self.connect() as con:
            df = con.execute(f"""SELECT d.dropped_in, d.row_key, d.reason, d.duplicate_of,
                d.detail, {_ROW_COLS} FROM ({_REMOVED_SQL}) d JOIN rows r USING (row_key)
                {where} ORDER BY r.origin_key, r.row_key {cap}""", [chain, version_id, *args]
                             ).df()
        return _with_previews(df)

    def removed_count(self, version_id: int, *, reason: str | None = None,
                      search: str = "") -> int:
        """Return how many rows were dropped along this version's lineage and are not in it
        (of one ``reason`` and matching ``search``, when given, as ``removed`` filters)."""
        chain = [v.version_id for v in self.lineage(version_id)]
        where, args = self._removed_where(reason, search)
        join = " JOIN rows r USING (row_key)" if search.strip() else ""
        with self.connect() as con:
            return int(_one(con, f"SELECT count(*) FROM ({_REMOVED_SQL}) d{join} {where}",
                            [chain, version_id, *args])[0])

    def removed_reasons(self, version_id: int) -> pd.DataFrame:
        """Return how many rows each reason dropped along this version's lineage (of those
        ``removed`` lists): reason, rows; most first."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            return con.execute(f"""SELECT reason, count(*) AS rows FROM ({_REMOVED_SQL})
                GROUP BY reason ORDER BY rows DESC, reason""", [chain, version_id]).df()

    @staticmethod
    def _removed_where(reason: str | None, search: str) -> tuple[str, list]:
        parts, args = [], []
        if reason:
            parts.append("d.reason = ?")
            args.append(reason)
        text, more = _filter_sql(RowFilter(search=search))
        if text:
            parts.append(text)
            args += more
        return ("WHERE " + " AND ".join(parts)) if parts else "", args

    def flagged(self, version_id: int) -> pd.DataFrame:
        """Return rows of this version that a step along its lineage flagged for review, with
        the rule (``reason``), its detail and the version that flagged them."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            df = con.execute(f"""SELECT f.flagged_in, f.row_key, f.reason, f.detail,
                {_ROW_COLS} FROM ({_FLAGGED_SQL}) f JOIN rows r USING (row_key)
                ORDER BY r.origin_key, r.row_key, f.reason""", [chain, version_id]).df()
        return _with_previews(df)

    def flagged_count(self, version_id: int) -> int:
        """Return how many rows of this version are flagged for review by any rule."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            return int(_one(con, f"SELECT count(DISTINCT row_key) FROM ({_FLAGGED_SQL})",
                            [chain, version_id])[0])

    def flagged_summary(self, version_id: int, *, label_set: str = "quality") -> pd.DataFrame:
        """Return one row per rule that flagged rows of this version (as ``flagged`` finds
        them): reason, rows, and how many of them are labelled bad and good; by reason."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            return con.execute(f"""SELECT f.reason, count(DISTINCT f.row_key) AS rows,
                count(*) FILTER (WHERE l.label = 'bad') AS labelled_bad,
                count(*) FILTER (WHERE l.label = 'good') AS labelled_good
                FROM ({_FLAGGED_SQL}) f JOIN rows r USING (row_key)
                LEFT JOIN ({CURRENT_LABELS_SQL}) l ON l.id = r.id
                GROUP BY f.reason ORDER BY f.reason""", [chain, version_id, label_set]).df()

    def flagged_keys(self, version_id: int, reason: str, *, label_set: str = "quality"
                     ) -> pd.DataFrame:
        """Return the rows of this version a rule flagged, without their texts: row_key,
        reason, detail and current label ('' if none), in row order."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            return con.execute(f"""SELECT f.row_key, f.reason, f.detail,
                coalesce(l.label, '') AS label FROM ({_FLAGGED_SQL}) f
                JOIN rows r USING (row_key) LEFT JOIN ({CURRENT_LABELS_SQL}) l ON l.id = r.id
                WHERE f.reason = ? ORDER BY r.origin_key, r.row_key""",
                               [chain, version_id, label_set, reason]).df()

    def drop_rows(self, version_id: int, row_keys: Sequence[int], *, reason: str,
                  details: Sequence[str] | str = "", operation: str = "drop",
                  params: dict | None = None) -> VersionInfo:
        """Make a child version without the given rows, each dropped with ``reason``; return it."""
        if not isinstance(reason, str) or not reason.strip():
            raise WorkbenchError("every dropped row needs a reason")
        keys = list(dict.fromkeys(int(k) for k in row_keys))
        with self.connect() as con:
            members = self._members(con, version_id)
        missing = sorted(set(keys) - set(members))
        if missing or not keys:
            raise NotFoundError(f"rows {missing[:5]} are not in version {version_id}"
                                if missing else "no rows to drop")
        gone = set(keys)
        detail = [details] * len(keys) if isinstance(details, str) else list(details)
        result = StepResult(pd.DataFrame({"row_key": [k for k in members if k not in gone]}),
                            pd.DataFrame({"row_key": keys, "reason": reason, "detail": detail}))
        return self.apply_step(version_id, result, operation=operation,
                               params={"rows": len(keys), "reason": reason, **(params or {})})

    def restore(self, version_id: int, row_keys: Sequence[int]) -> VersionInfo:
        """Make a child version with dropped rows put back in their places; return it."""
        gone = self.removed(version_id)
        wanted = sorted({int(k) for k in row_keys})
        missing = sorted(set(wanted) - set(gone["row_key"].tolist()))
        if missing or not wanted:
            raise NotFoundError(f"rows {missing[:5]} were not dropped from version {version_id}"
                                if missing else "no rows to restore")
        with self.transaction() as con:
            members = self._members(con, version_id)
            counts = {"restored": len(wanted), "kept": len(members) + len(wanted)}
            vid = self._child(con, version_id, "restore", {"rows": wanted}, counts, "")
            self._set_members(con, vid, members + wanted)
            self._finish_version(con, vid)
        return self.version(vid)

    # --- diff and export -------------------------------------------------------------------
    def diff(self, a: int, b: int, *, limit: int | None = None) -> Diff:
        """Return rows added, removed (with the reason) and changed from version a to b.

        With ``limit``, each table holds its first ``limit`` rows (in row order) and
        ``counts()`` still counts every row: the texts of a million-row diff stay in the store.
        """
        chain = [v.version_id for v in self.lineage(b)]
        cap = "" if limit is None else f"LIMIT {max(int(limit), 0)}"
        with self.connect() as con:
            self._check_version(con, a)
            for name, vid in (("_a", a), ("_b", b)):  # keys only: the texts stay where they are
                con.execute(f"""CREATE OR REPLACE TEMP TABLE {name} AS SELECT r.row_key,
                    r.origin_key FROM version_rows vr JOIN rows r USING (row_key)
                    WHERE vr.version_id = ?""", [vid])
            con.execute("""CREATE OR REPLACE TEMP TABLE _added AS SELECT row_key FROM _b
                ANTI JOIN _a USING (origin_key); CREATE OR REPLACE TEMP TABLE _gone AS
                SELECT row_key FROM _a ANTI JOIN _b USING (origin_key)""")
            added = con.execute(f"""SELECT {_ROW_COLS} FROM rows r SEMI JOIN _added
                USING (row_key) ORDER BY r.origin_key {cap}""").df()
            removed = con.execute(f"""SELECT {_ROW_COLS}, d.reason, d.duplicate_of, d.detail
                FROM rows r SEMI JOIN _gone USING (row_key) LEFT JOIN (SELECT * FROM dropped
                WHERE version_id IN (SELECT unnest(?::INTEGER[])) QUALIFY row_number() OVER
                (PARTITION BY row_key ORDER BY version_id DESC) = 1) d USING (row_key)
                ORDER BY r.origin_key {cap}""", [chain]).df()
            changed = con.execute(f"{_CHANGED_SQL} {cap}").df()
            totals = None if limit is None else dict(zip(("added", "removed", "changed"), _one(
                con, """SELECT (SELECT count(*) FROM _added), (SELECT count(*) FROM _gone),
                (SELECT count(*) FROM _a a JOIN _b b USING (origin_key)
                 WHERE a.row_key <> b.row_key)""")))
            con.execute("DROP TABLE _a; DROP TABLE _b; DROP TABLE _added; DROP TABLE _gone")
        return Diff(_with_previews(added), _with_previews(removed), changed, totals)

    def export(self, version_id: int, path: str | Path, fmt: str, *,
               overwrite: bool = False) -> Path:
        """Write a version in an export format; return the path written.

        Never writes the store itself or anything in the data folder; an existing target is
        refused unless ``overwrite``, and replaced atomically when it is (see write_dataset).
        """
        self._check_export_target(Path(path))
        return write_dataset(self.examples(version_id), path, fmt, overwrite=overwrite)

    def _check_export_target(self, path: Path) -> None:
        target = path.expanduser().resolve()
        if not self._memory and target in (Path(self.path), Path(self.path + ".wal")):
            raise ExportError(f"{path}: that is the store itself; export to a file outside the "
                              "data folder")
        home = default_home().expanduser().resolve()
        if target.is_relative_to(home):
            raise ExportError(f"{path}: inside the data folder {home}, which holds the store "
                              "and run folders; export to a path outside it")

    def delete_dataset(self, name: str) -> None:
        """Remove a dataset's name and versions, and every row no other version references.

        Version ids and row keys are never handed out again, and labels, scores and
        embeddings stay (they are keyed by content, not by row).
        """
        with self.transaction() as con:
            dataset_id = self._dataset_id(con, name)
            ids = [r[0] for r in con.execute("SELECT version_id FROM versions WHERE dataset_id = ?",
                                             [dataset_id]).fetchall()]
            for table in ("version_rows", "dropped", "changed", "flagged", "import_rejects"):
                con.execute(f"DELETE FROM {table} "
                            "WHERE version_id IN (SELECT unnest(?::INTEGER[]))", [ids])
            con.execute("DELETE FROM versions WHERE dataset_id = ?", [dataset_id])
            con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])
            # Staged rows of running imports are in version_rows too, so they stay.
            con.execute("""DELETE FROM rows r WHERE NOT EXISTS
                (SELECT 1 FROM version_rows vr WHERE vr.row_key = r.row_key)""")


# --- helpers ----------------------------------------------------------------------------------
_ROW_NAMES = ["row_key", "origin_key", "id", "messages", "metadata", "tags", "note", "n_turns",
              "n_chars", "response_chars", "source_line"]
_ROW_COLS = ", ".join(f"r.{c}" for c in _ROW_NAMES)
_CHANGED_SQL = """SELECT ra.row_key AS old_row_key, rb.row_key AS new_row_key, ra.origin_key,
    ra.messages AS old_messages, rb.messages AS new_messages, ra.metadata AS old_metadata,
    rb.metadata AS new_metadata, ra.tags AS old_tags, rb.tags AS new_tags, ra.note AS old_note,
    rb.note AS new_note, (SELECT string_agg(DISTINCT c.reason, ', ') FROM changed c
    WHERE c.new_row_key = rb.row_key) AS reason
    FROM _a a JOIN _b b USING (origin_key) JOIN rows ra ON ra.row_key = a.row_key
    JOIN rows rb ON rb.row_key = b.row_key WHERE a.row_key <> b.row_key ORDER BY ra.origin_key"""
# Rows dropped along a version's lineage (versions in ?) and not in the version (?), each
# with its newest drop; rows flagged along the lineage and in the version, newest per rule.
_REMOVED_SQL = """SELECT d.version_id AS dropped_in, d.row_key, d.reason, d.duplicate_of,
    d.detail FROM dropped d WHERE d.version_id IN (SELECT unnest(?::INTEGER[]))
    AND d.row_key NOT IN (SELECT row_key FROM version_rows WHERE version_id = ?)
    QUALIFY row_number() OVER (PARTITION BY d.row_key ORDER BY d.version_id DESC) = 1"""
_FLAGGED_SQL = """SELECT f.version_id AS flagged_in, f.row_key, f.reason, f.detail
    FROM flagged f WHERE f.version_id IN (SELECT unnest(?::INTEGER[]))
    AND f.row_key IN (SELECT row_key FROM version_rows WHERE version_id = ?)
    QUALIFY row_number() OVER (PARTITION BY f.row_key, f.reason ORDER BY f.version_id DESC) = 1"""
_VERSION_SQL = """SELECT v.version_id, d.name, v.parent_id, v.operation, v.params, v.counts,
    v.n_rows, v.created_at, v.message, r.number
    FROM versions v JOIN datasets d USING (dataset_id) JOIN version_refs r USING (version_id)"""


def version_label(version_id: int | None, refs: Mapping[int, str]) -> str:
    """Return how people name a version id: "name@N" (refs: Store.refs(), or the ref column
    of the version_refs view), "deleted version (id 7)" when the store no longer has it, ""
    for no version. The one wording of a version reference outside the store."""
    if version_id is None or pd.isna(version_id):
        return ""
    return refs.get(int(version_id)) or f"deleted version (id {int(version_id)})"


def _one(con: Any, sql: str, args: Sequence = ()) -> tuple | None:
    """Return the first row of a query; fetches it all, as DuckDB needs before register()."""
    rows = con.execute(sql, args).fetchall()
    return rows[0] if rows else None


def _sql_str(text: str) -> str:
    return text.replace("'", "''")


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _version_info(row: tuple) -> VersionInfo:
    vid, name, parent, op, params, counts, n, created, message, number = row
    return VersionInfo(vid, name, parent, op, orjson.loads(params or "{}"),
                       orjson.loads(counts or "{}"), n or 0, created, message or "", number)


def _next_row_key(con: Any) -> int:
    # The counter, not max + 1: rows of a deleted dataset are removed, and their keys must
    # not come back for other data.
    return _one(con, """SELECT greatest(next_id, (SELECT coalesce(max(row_key), 0) + 1
        FROM rows)) FROM id_counters WHERE name = 'row'""")[0]


def _new_version_id(con: Any) -> int:
    """Return a version id never handed out before (in this transaction's store)."""
    vid = _one(con, """SELECT greatest(next_id, (SELECT coalesce(max(version_id), 0) + 1
        FROM versions)) FROM id_counters WHERE name = 'version'""")[0]
    con.execute("UPDATE id_counters SET next_id = ? WHERE name = 'version'", [vid + 1])
    return vid


def _abandoned(pid: int | None, host: str | None, old: bool) -> bool:
    """Return whether the process that staged an import is gone (or, elsewhere, a day old)."""
    if host != socket.gethostname() or not pid:
        return bool(old)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _drop_staged(con: Any, ids: list[int]) -> None:
    """Remove staged versions: their new rows, memberships, rejects and records."""
    con.execute("""DELETE FROM rows WHERE row_key IN (SELECT row_key FROM version_rows
        WHERE version_id IN (SELECT unnest(?::INTEGER[])))""", [ids])
    for table in ("version_rows", "import_rejects", "staged_versions"):
        con.execute(f"DELETE FROM {table} WHERE version_id IN (SELECT unnest(?::INTEGER[]))",
                    [ids])


@dataclass
class _Chunk:
    """Rows (keyless tables) to insert in one transaction, and how many rejects the report
    had by then."""

    tables: list[pa.Table]
    rejects: int


class _Chunks:
    """Cuts a stream of row batches into chunks of about IMPORT_CHUNK_SECONDS of reading."""

    def __init__(self, batches: Iterable[RowBatch], report: ImportReport | None):
        self._batches = iter(batches)
        self._report = report
        self.done = False

    def take(self) -> _Chunk:
        """Read and return the next chunk (at least one batch, unless the stream has ended)."""
        deadline = time.monotonic() + IMPORT_CHUNK_SECONDS
        taken: list[pa.Table] = []
        size = 0
        for batch in self._batches:
            # Arrow right away: a row as Python objects takes about twice its bytes.
            taken.append(_rows_table(batch))
            size += taken[-1].nbytes
            if time.monotonic() >= deadline or size >= IMPORT_CHUNK_BYTES:
                break
        else:
            self.done = True
        return _Chunk(taken, len(self._report.rejected) if self._report is not None else 0)


@dataclass
class _Staged:
    """A version being written: its id, the rows before its own (a parent's) and its rows."""

    vid: int
    start: int
    report: ImportReport | None
    n: int = 0
    rejects_saved: int = 0

    def add(self, con: Any, chunk: _Chunk) -> None:
        """Insert a chunk's rows at the end of this version, and the rejects read with them."""
        first = _next_row_key(con)
        n = _insert_tables(con, chunk.tables, first)
        con.execute("INSERT INTO version_rows SELECT ?, ? + i, ? + i FROM range(?) t(i)",
                    [self.vid, self.start + self.n, first, n])
        self.n += n
        self.save_rejects(con, chunk.rejects)

    def save_rejects(self, con: Any, upto: int | None = None) -> None:
        """Insert the report's rejects (up to number ``upto``) not saved yet."""
        if self.report is None:
            return
        upto = len(self.report.rejected) if upto is None else upto
        if upto > self.rejects_saved:
            _insert_rejects(con, self.vid, self.report.rejected[self.rejects_saved:upto])
            self.rejects_saved = upto


class _Counted:
    """An iterator that counts what it has handed out, to name the example that failed."""

    def __init__(self, items: Iterable[Any]):
        self._items = iter(items)
        self.n = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        item = next(self._items)
        self.n += 1
        return item


def _encoded(examples: Iterable[Example], lines: Iterable[int] | None = None,
             keys: Sequence[int] | None = None) -> Iterator[RowBatch]:
    """Yield examples as RowBatches; an invalid one raises WorkbenchError naming it."""
    counted = _Counted(examples)
    try:
        yield from batch_examples(counted, lines)
    except RowError as e:
        i = counted.n - 1
        which = f"row {keys[i]}" if keys is not None and i < len(keys) else f"example {i + 1}"
        raise WorkbenchError(f"{which} rejected: {e}") from None


def _batch_table(batch: RowBatch, first: int, origin: Sequence[int] | None = None,
                 tags: Sequence[list[str]] | None = None,
                 notes: Sequence[str] | None = None) -> pa.Table:
    return _with_keys(_rows_table(batch), first, origin, tags, notes)


# The system allocator gives freed batches back; Arrow's default pool (mimalloc) keeps them,
# which added ~50 MB to an import's peak memory.
_POOL = pa.system_memory_pool()


def _rows_table(batch: RowBatch) -> pa.Table:
    """Return a batch's rows as a compact Arrow table, without keys (given at insert time)."""
    messages, metadata, n_turns, n_chars, response_chars, lines = batch.columns()
    return pa.table({
        # orjson wrote UTF-8 already: take the bytes as strings without re-encoding them.
        "id": pa.array(list(map(id_of_encoded, messages)), pa.string(), memory_pool=_POOL),
        "messages": pa.array(messages, pa.binary(), memory_pool=_POOL).view(pa.string()),
        "metadata": pa.array(metadata, pa.binary(), memory_pool=_POOL).view(pa.string()),
        "n_turns": pa.array(n_turns, pa.int32(), memory_pool=_POOL),
        "n_chars": pa.array(n_chars, pa.int64(), memory_pool=_POOL),
        "response_chars": pa.array(response_chars, pa.int64(), memory_pool=_POOL),
        "source_line": pa.array(lines, pa.int64(), memory_pool=_POOL),
    })


def _with_keys(table: pa.Table, first: int, origin: Sequence[int] | None = None,
               tags: Sequence[list[str]] | None = None,
               notes: Sequence[str] | None = None) -> pa.Table:
    """Return the table with row keys from ``first`` (and origin keys, tags, notes if given)."""
    keys = pa.array(np.arange(first, first + table.num_rows, dtype=np.int64), memory_pool=_POOL)
    table = table.append_column("row_key", keys).append_column(
        "origin_key", pa.array(origin, pa.int64(), memory_pool=_POOL) if origin is not None
        else keys)
    if tags is not None:
        table = table.append_column("tags", pa.array(tags, pa.list_(pa.string()),
                                                     memory_pool=_POOL))
    if notes is not None:
        table = table.append_column("note", pa.array(notes, pa.string(), memory_pool=_POOL))
    return table


def _insert_table(con: Any, table: pa.Table) -> None:
    # New rows without tags or a note get them in SQL: cheaper than building constant columns.
    extra = []
    if "tags" not in table.column_names:
        extra.append("[]::VARCHAR[] AS tags")
    if "note" not in table.column_names:
        extra.append("'' AS note")
    con.register("_new_rows", table)
    con.execute(f"INSERT INTO rows BY NAME SELECT {', '.join(['*', *extra])} FROM _new_rows")
    con.unregister("_new_rows")


def _insert_batches(con: Any, batches: Iterable[RowBatch], first: int, *,
                    origin: Sequence[int] | None = None, tags: Sequence[list[str]] | None = None,
                    notes: Sequence[str] | None = None) -> int:
    """Insert batches with consecutive row keys from ``first``; return how many rows.

    DuckDB inserts (and compresses) one batch on a worker thread while this thread converts
    the next; DuckDB releases the GIL, so on two cores the two overlap.
    """
    n = 0
    pending = None
    with ThreadPoolExecutor(max_workers=1) as worker:
        try:
            for batch in batches:
                part = slice(n, n + len(batch))
                table = _batch_table(batch, first + n, origin and origin[part],
                                     tags and tags[part], notes and notes[part])
                n += len(batch)
                if pending is not None:
                    pending.result()
                pending = worker.submit(_insert_table, con, table)
        finally:
            if pending is not None:
                pending.result()  # never leave a write running on a connection we give back
    _used_row_keys(con, first + n)
    return n


def _insert_tables(con: Any, tables: list[pa.Table], first: int) -> int:
    """Insert keyless row tables with consecutive row keys from ``first``; return how many."""
    n = 0
    for table in tables:
        _insert_table(con, _with_keys(table, first + n))
        n += table.num_rows
    _used_row_keys(con, first + n)
    return n


def _used_row_keys(con: Any, upto: int) -> None:
    con.execute("UPDATE id_counters SET next_id = greatest(next_id, ?) WHERE name = 'row'",
                [upto])


def _insert_rejects(con: Any, vid: int, rejected: Sequence[Rejection]) -> None:
    if not rejected:
        return
    df = pd.DataFrame([r.__dict__ for r in rejected]).assign(version_id=vid)
    _insert_frame(con, "import_rejects", df,
                  ["version_id", "file", "line", "field", "reason", "fix", "raw"])


def _insert_frame(con: Any, table: str, df: pd.DataFrame, columns: list[str]) -> None:
    if df.empty:
        return
    con.register("_frame", df[columns])
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM _frame")
    con.unregister("_frame")


def _dropped_frame(dropped: Any) -> pd.DataFrame:
    base = pd.DataFrame({"row_key": pd.Series(dtype="int64"), "reason": pd.Series(dtype=str),
                         "duplicate_of": pd.Series(dtype="Int64"),
                         "detail": pd.Series(dtype=str)})
    if dropped is None or len(dropped) == 0:
        return base
    missing = [c for c in ("duplicate_of", "detail") if c not in dropped.columns]
    return dropped.assign(**{c: None for c in missing})


def _step_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Decode stored rows into the step DataFrame (messages, metadata, prompt, response)."""
    df["messages"] = [orjson.loads(m) for m in df["messages"]]
    df["metadata"] = [orjson.loads(m) for m in df["metadata"]]
    df["prompt"] = [prompt_text(m) for m in df["messages"]]
    df["response"] = [response_text(m) for m in df["messages"]]
    df["tags"] = [list(t) if t is not None else [] for t in df["tags"]]
    df["note"] = df["note"].fillna("")
    return df


def _flagged_frame(flagged: Any) -> pd.DataFrame:
    base = pd.DataFrame({"row_key": pd.Series(dtype="int64"), "reason": pd.Series(dtype=str),
                         "detail": pd.Series(dtype=str)})
    if flagged is None or len(flagged) == 0:
        return base
    return flagged.assign(**({} if "detail" in flagged.columns else {"detail": None}))[
        ["row_key", "reason", "detail"]]


def _check_step(parent_keys: set, kept: pd.DataFrame, dropped: pd.DataFrame,
                changed: pd.DataFrame) -> None:
    kept_keys = [int(k) for k in kept["row_key"]]
    dropped_keys = [int(k) for k in dropped["row_key"]]
    if len(set(kept_keys)) != len(kept_keys) or set(kept_keys) & set(dropped_keys):
        raise WorkbenchError("step result lists a row twice (kept twice, or kept and dropped)")
    if set(kept_keys) | set(dropped_keys) != parent_keys or \
            len(kept_keys) + len(dropped_keys) != len(parent_keys):
        raise WorkbenchError(f"step result covers {len(kept_keys) + len(dropped_keys)} rows but "
                             f"the version has {len(parent_keys)}: every row must be kept or "
                             "dropped with a reason")
    if len(dropped) and (dropped["reason"].isna().any()
                         or not all(isinstance(r, str) and r for r in dropped["reason"])):
        raise WorkbenchError("every dropped row needs a reason")
    if not {int(k) for k in changed["row_key"]} <= set(kept_keys):
        raise WorkbenchError("a changed row must also be kept")


def _tags(new: Any, old: Any) -> list[str]:
    """Return a changed row's tags: the step's if it has any column of them, else the old."""
    if isinstance(new, (list, tuple)):
        return list(new)
    return list(old) if old is not None else []


def _note(new: Any, old: Any) -> str:
    """Return a changed row's note: the step's if it has one, else the old."""
    if isinstance(new, str):
        return new
    return old or ""


def _validate_edit(messages: list, metadata: Any, tags: Any, note: Any) -> None:
    if metadata is not None and not isinstance(metadata, dict):
        raise WorkbenchError("edit rejected: metadata must be a dict")
    try:  # the same checks and size caps as an import
        check_messages(messages)
        check_size(messages)
        if metadata is not None:
            encode_metadata(metadata)
    except RowError as e:
        raise WorkbenchError(f"edit rejected: {e}") from None
    if tags is not None:
        _validate_tags(tags)
    if note is not None and not isinstance(note, str):
        raise WorkbenchError("edit rejected: note must be a string")


def _validate_tags(tags: Any) -> None:
    if isinstance(tags, str) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise WorkbenchError("tags must be a list of non-empty strings")


# --- browsing filters -------------------------------------------------------------------------
# A search term is matched against the stored JSON first (cheap, and a superset of the real
# matches once escaped the way JSON escapes it), then confirmed on the decoded texts, so that
# "role", "content" or a "\n" escape never match by themselves.
# The whole JSON text is screened first with a case-insensitive RE2 regex of the term ($jre,
# _search_regex), 2-3x faster than ILIKE over 1M rows (benchmarks/bench_search.py); the ILIKE
# per turn and per value decides, so the rows found are those ILIKE alone finds.
_SEARCH_SQL = r"""(
    (regexp_matches(r.messages, $jre) AND list_bool_or(list_transform(
        json_extract_string(r.messages, '$[*].content'), lambda c: c ILIKE $pat ESCAPE '\')))
    OR r.note ILIKE $pat ESCAPE '\'
    OR (regexp_matches(r.metadata, $jre) AND list_bool_or(list_transform(
        list_zip(json_keys(r.metadata), json_extract_string(r.metadata, '$.*')),
        lambda kv: NOT starts_with(kv[1], '_')
                   AND (kv[2] ILIKE $pat ESCAPE '\' OR kv[2] ILIKE $jpat ESCAPE '\')))))"""


def _like_pattern(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# ILIKE compares DuckDB's lower() of both sides; RE2's (?i) folds case by Unicode orbits. They
# agree on every code point but one: lower('İ') is 'i', which RE2 does not fold to 'i' or 'I'
# (tests/test_search_prefilter.py checks all code points against the installed DuckDB).
_FOLD_APART = {c: "[iI\u0130]" for c in "iI\u0130"}


def _search_regex(term: str) -> str:
    """Return a case-insensitive RE2 regex matching, as a substring, every text that
    ``ILIKE '%term%'`` matches (a screen for the ILIKE, which keeps the last word)."""
    return "(?i)" + "".join(_FOLD_APART.get(c) or (
        c if c.isalnum() or ord(c) > 127 else f"\\x{{{ord(c):x}}}") for c in term)


def _filter_sql(f: RowFilter) -> tuple[str, list]:
    parts: list[str] = []
    args: list = []
    term = f.search.strip()
    if term:
        jterm = orjson.dumps(term).decode()[1:-1]  # as the term appears inside stored JSON
        sql = _SEARCH_SQL.replace("$jpat", "?").replace("$pat", "?").replace("$jre", "?")
        parts.append(sql)
        pat, jpat, jre = _like_pattern(term), _like_pattern(jterm), _search_regex(jterm)
        args += [jre, pat, pat, jre, pat, jpat]
    for key, value in f.metadata:
        sql, more = _metadata_sql(str(key), _filter_value(value))
        parts.append(sql)
        args += more
    for column, op, value in (("n_chars", ">=", f.min_chars), ("n_chars", "<=", f.max_chars),
                              ("n_turns", ">=", f.min_turns), ("n_turns", "<=", f.max_turns)):
        if value is not None:
            parts.append(f"r.{column} {op} ?")
            args.append(int(value))
    if f.tag:
        parts.append("list_contains(r.tags, ?)")
        args.append(f.tag)
    if f.has_note:
        parts.append("coalesce(r.note, '') <> ''")
    if f.label:
        parts.append(_label_sql(f.label))
        args += [f.label_set] + ([f.label] if f.label in ("good", "bad") else [])
    return " AND ".join(parts), args


# The current label of each row of a label set: its newest event from an action not undone
# (a NULL label is a cleared one). labels.py writes the events; browsing filters read them.
CURRENT_LABELS_SQL = """SELECT e.id, e.label, e.reason, a.created_at AS labelled_at,
    a.action_id, a.kind FROM label_events e JOIN label_actions a USING (action_id)
    WHERE a.undone_at IS NULL AND e.label_set = ?
    QUALIFY row_number() OVER (PARTITION BY e.id ORDER BY e.action_id DESC) = 1"""


def _label_sql(label: str) -> str:
    if label not in ("good", "bad", "labelled", "unlabelled"):
        raise WorkbenchError(f"label filter {label!r}: use good, bad, labelled or unlabelled")
    current = f"SELECT id FROM ({CURRENT_LABELS_SQL}) WHERE label IS NOT NULL"
    if label in ("good", "bad"):
        return f"r.id IN ({current} AND label = ?)"
    return f"r.id {'IN' if label == 'labelled' else 'NOT IN'} ({current})"


def _metadata_sql(key: str, value: str) -> tuple[str, list]:
    """Return the SQL and arguments matching rows whose metadata ``key`` equals ``value``.

    Numbers compare as numbers (DuckDB writes 1e20 back as 100000000000000000000.0). A plain
    text value must appear in the stored JSON as ``"key":"value"``: checking that substring
    first spares parsing the JSON of every other row.
    """
    path = "$." + _json_key(key)
    sql, args = "json_extract_string(r.metadata, ?) = ?", [path, value]
    if _is_number(value):
        sql = (f"({sql} OR TRY_CAST(json_extract_string(r.metadata, ?) AS DOUBLE) = "
               "TRY_CAST(? AS DOUBLE))")
        return sql, [*args, path, value]
    if value not in ("true", "false", "null") and value[:1] not in ("[", "{"):
        pair = orjson.dumps(key).decode() + ":" + orjson.dumps(value).decode()
        return f"(contains(r.metadata, ?) AND {sql})", [pair, *args]
    return sql, args


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _filter_value(value: Any) -> str:
    # json_extract_string gives strings as they are and other values as JSON text.
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _json_key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _with_previews(df: pd.DataFrame) -> pd.DataFrame:
    """Add user/response preview columns from the messages JSON of a (small) frame."""
    if "messages" not in df.columns:
        return df
    msgs = [orjson.loads(m) if isinstance(m, str) else m for m in df["messages"]]
    df = df.copy()
    df["prompt"] = [prompt_text(m)[:300] for m in msgs]
    df["response"] = [response_text(m)[:300] for m in msgs]
    return df
