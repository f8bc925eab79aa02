"""DuckDB store: datasets, immutable versions sharing rows, lineage, drop reasons, caches.

Rows are immutable records (``row_key``); a version is a list of row keys. A filter, dedup,
selection or edit makes a child version that records its operation, parameters, parent and
per-reason counts; unchanged rows are shared, an edited row becomes a new record with the same
``origin_key`` so diffs can pair it with its earlier self. Dropped rows keep their reason and
``duplicate_of`` and can be restored.

DuckDB lets one process hold the file read-write at a time, so no connection outlives a call:
every method opens the file, does its work and closes it, retrying while another process holds
the lock. The UI, the CLI and background jobs can therefore share one store.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import duckdb
import orjson
import pandas as pd
import pyarrow as pa

from .exceptions import NotFoundError, StoreBusyError, WorkbenchError
from .io import ImportReport, read_dataset, write_dataset
from .migrations import MIGRATIONS
from .schema import Example, StepResult, content_id, prompt_text, response_text

DEFAULT_HOME = Path("storage")


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

    def counts(self) -> dict[str, int]:
        return {"added": len(self.added), "removed": len(self.removed),
                "changed": len(self.changed)}


@dataclass(frozen=True)
class RowFilter:
    """Filters for browsing: search text, metadata equality, length and turn ranges, tags."""

    search: str = ""
    metadata: tuple[tuple[str, str], ...] = ()
    min_chars: int | None = None
    max_chars: int | None = None
    min_turns: int | None = None
    max_turns: int | None = None
    tag: str | None = None
    has_note: bool = False


class Store:
    """A handle on one store file; cheap to create, holds no connection between calls."""

    def __init__(self, path: str | Path | None = None, *, lock_timeout: float = 60.0):
        self.path = str(path) if path is not None else str(default_store_path())
        self.lock_timeout = lock_timeout
        self._memory = self.path == ":memory:"
        self._con = duckdb.connect(":memory:") if self._memory else None
        self._lock = threading.RLock()
        if not self._memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # --- connections ---------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a connection that is closed (and the file lock released) afterwards."""
        if self._memory:
            with self._lock:
                yield self._con
            return
        con = self._open()
        try:
            yield con
        finally:
            con.close()

    def _open(self) -> duckdb.DuckDBPyConnection:
        deadline, wait = time.monotonic() + self.lock_timeout, 0.01
        while True:
            try:
                return duckdb.connect(self.path)
            except duckdb.IOException as e:
                if "lock" not in str(e).lower():
                    raise WorkbenchError(f"{self.path}: cannot open the store ({e})") from None
                if time.monotonic() > deadline:
                    raise StoreBusyError(
                        f"{self.path}: another process kept the store locked for "
                        f"{self.lock_timeout:.0f} s; close it or retry") from None
                time.sleep(wait)
                wait = min(wait * 2, 0.25)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a connection inside a transaction that commits, or rolls back on error."""
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
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
                           AS versions, d.created_at
                FROM datasets d LEFT JOIN versions v ON v.version_id = d.active_version
                ORDER BY d.created_at""").df()

    def _dataset_id(self, con: Any, name: str, *, create: bool = False) -> int:
        found = _one(con, "SELECT dataset_id FROM datasets WHERE name = ?", [name])
        if found:
            return found[0]
        if not create:
            known = [r[0] for r in con.execute("SELECT name FROM datasets").fetchall()]
            raise NotFoundError(f"no dataset named '{name}'; known: {', '.join(known) or 'none'}")
        if not name.strip():
            raise WorkbenchError("a dataset needs a non-empty name")
        new_id = _one(con, "SELECT coalesce(max(dataset_id), 0) + 1 FROM datasets")[0]
        con.execute("INSERT INTO datasets (dataset_id, name) VALUES (?, ?)", [new_id, name])
        return new_id

    def active_version(self, dataset: str) -> int:
        """Return the id of a dataset's active version."""
        with self.connect() as con:
            found = _one(con, "SELECT active_version FROM datasets WHERE name = ?",
                                [dataset])
        if not found:
            raise NotFoundError(f"no dataset named '{dataset}'")
        return found[0]

    def set_active(self, version_id: int) -> None:
        """Make a version its dataset's active one."""
        info = self.version(version_id)
        with self.connect() as con:
            con.execute("UPDATE datasets SET active_version = ? WHERE name = ?",
                        [version_id, info.dataset])

    def resolve(self, ref: str | int) -> int:
        """Return a version id from an id, "name" (active version) or "name@N"."""
        if isinstance(ref, int) or str(ref).isdigit():
            return self.version(int(ref)).version_id
        name, _, number = str(ref).partition("@")
        if not number:
            return self.active_version(name)
        with self.connect() as con:
            found = _one(con, """SELECT v.version_id FROM versions v JOIN datasets d USING
                (dataset_id) WHERE d.name = ? ORDER BY v.version_id LIMIT 1 OFFSET ?""",
                                [name, int(number) - 1]) if number.isdigit() else None
        if not found:
            raise NotFoundError(f"no version '{ref}'; use a version id, a dataset name or name@N")
        return found[0]

    # --- versions --------------------------------------------------------------------------
    def version(self, version_id: int) -> VersionInfo:
        """Return one version's record."""
        with self.connect() as con:
            row = _one(con, """SELECT v.version_id, d.name, v.parent_id, v.operation, v.params,
                v.counts, v.n_rows, v.created_at, v.message FROM versions v JOIN datasets d
                USING (dataset_id) WHERE v.version_id = ?""", [version_id])
        if row is None:
            raise NotFoundError(f"no version {version_id}")
        return _version_info(row)

    def versions(self, dataset: str) -> list[VersionInfo]:
        """Return a dataset's versions, oldest first (its lineage is parent_id)."""
        with self.connect() as con:
            self._dataset_id(con, dataset)
            rows = con.execute("""SELECT v.version_id, d.name, v.parent_id, v.operation,
                v.params, v.counts, v.n_rows, v.created_at, v.message FROM versions v
                JOIN datasets d USING (dataset_id) WHERE d.name = ? ORDER BY v.version_id""",
                               [dataset]).fetchall()
        return [_version_info(r) for r in rows]

    def lineage(self, version_id: int) -> list[VersionInfo]:
        """Return the chain of versions from the root to this one."""
        chain, current = [], version_id
        while current is not None:
            info = self.version(current)
            chain.append(info)
            current = info.parent_id
        return chain[::-1]

    def _new_version(self, con: Any, dataset_id: int, parent: int | None, operation: str,
                     params: dict, counts: dict, message: str = "") -> int:
        vid = _one(con, "SELECT coalesce(max(version_id), 0) + 1 FROM versions")[0]
        con.execute("""INSERT INTO versions (version_id, dataset_id, parent_id, operation, params,
                       counts, message) VALUES (?, ?, ?, ?, ?, ?, ?)""",
                    [vid, dataset_id, parent, operation, _json(params), _json(counts), message])
        return vid

    def _finish_version(self, con: Any, vid: int) -> None:
        n = _one(con, "SELECT count(*) FROM version_rows WHERE version_id = ?", [vid]
                        )[0]
        con.execute("UPDATE versions SET n_rows = ? WHERE version_id = ?", [n, vid])
        con.execute("UPDATE datasets SET active_version = ? WHERE dataset_id = (SELECT "
                    "dataset_id FROM versions WHERE version_id = ?)", [vid, vid])

    # --- import ----------------------------------------------------------------------------
    def import_file(self, path: str | Path, dataset: str, *, shape: str = "auto",
                    display_name: str | None = None, max_chars: int | None = None,
                    progress: Callable[[int], None] | None = None
                    ) -> tuple[VersionInfo, ImportReport]:
        """Import a file as a new version of a dataset; return it and the import report."""
        kwargs = {"max_chars": max_chars} if max_chars else {}
        parsed = read_dataset(path, shape=shape, display_name=display_name, progress=progress,
                              **kwargs)
        report = parsed.report
        params = {"file": report.file, "kind": report.kind, "shape": shape,
                  "shapes": dict(report.shapes)}
        counts = {"rows_read": report.rows_read, "imported": report.imported,
                  "rejected": len(report.rejected)}
        vid = self.add_examples(dataset, parsed.examples, operation="import", params=params,
                                counts=counts, lines=parsed.lines, report=report)
        return self.version(vid), report

    def add_examples(self, dataset: str, examples: Sequence[Example], *,
                     operation: str = "import", params: dict | None = None,
                     counts: dict | None = None, parent: int | None = None,
                     lines: Sequence[int] | None = None, report: ImportReport | None = None,
                     message: str = "") -> int:
        """Store examples as a new version (appended to ``parent``'s rows if given); return it."""
        table = _rows_table(examples, lines)
        with self.transaction() as con:
            dataset_id = self._dataset_id(con, dataset, create=True)
            vid = self._new_version(con, dataset_id, parent, operation, params or {},
                                    counts or {"added": len(examples)}, message)
            first = self._insert_rows(con, table)
            if parent is not None:
                con.execute("""INSERT INTO version_rows SELECT ?, pos, row_key FROM version_rows
                               WHERE version_id = ? ORDER BY pos""", [vid, parent])
            con.execute("""INSERT INTO version_rows SELECT ?, (SELECT count(*) FROM version_rows
                WHERE version_id = ?) + row_key - ?, row_key FROM rows WHERE row_key >= ?
                ORDER BY row_key""", [vid, vid, first, first])
            if report is not None:
                _insert_rejects(con, vid, report)
            self._finish_version(con, vid)
        return vid

    def _insert_rows(self, con: Any, table: pa.Table) -> int:
        first = _one(con, "SELECT coalesce(max(row_key), 0) + 1 FROM rows")[0]
        keys = pa.array(range(first, first + table.num_rows), pa.int64())
        origin = table.column("origin_key")
        if origin.null_count == table.num_rows:
            origin = keys
        table = table.set_column(0, "row_key", keys).set_column(1, "origin_key", origin)
        con.register("_new_rows", table)
        con.execute("INSERT INTO rows BY NAME SELECT * FROM _new_rows")
        con.unregister("_new_rows")
        return first

    def import_rejects(self, version_id: int) -> pd.DataFrame:
        """Return the rows an import rejected, with file, line, field, reason and fix."""
        with self.connect() as con:
            return con.execute("""SELECT file, line, field, reason, fix, raw FROM import_rejects
                                  WHERE version_id = ? ORDER BY line""", [version_id]).df()

    # --- reading ---------------------------------------------------------------------------
    def page(self, version_id: int, *, offset: int = 0, limit: int = 50,
             filters: RowFilter | None = None) -> Page:
        """Return one page of a version's rows (server-side filtering) and the match count."""
        filters = filters or RowFilter()
        where, args = _filter_sql(filters)
        with self.connect() as con:
            if not where:
                return self._plain_page(con, version_id, offset, limit)
            sql = f"""FROM version_rows vr JOIN rows r USING (row_key)
                      WHERE vr.version_id = ? AND {where}"""
            total = _one(con, f"SELECT count(*) {sql}", [version_id, *args])[0]
            df = con.execute(f"SELECT vr.pos, {_ROW_COLS} {sql} ORDER BY vr.pos LIMIT ? OFFSET ?",
                             [version_id, *args, limit, offset]).df()
        return Page(_with_previews(df), total, offset, limit)

    def _plain_page(self, con: Any, version_id: int, offset: int, limit: int) -> Page:
        total = _one(con, "SELECT n_rows FROM versions WHERE version_id = ?", [version_id]
                            )
        if total is None:
            raise NotFoundError(f"no version {version_id}")
        keys = con.execute("""SELECT pos, row_key FROM version_rows WHERE version_id = ?
            AND pos >= ? AND pos < ? ORDER BY pos""", [version_id, offset, offset + limit]).df()
        if keys.empty:
            return Page(_with_previews(pd.DataFrame(columns=["pos", *_ROW_NAMES])), total[0],
                        offset, limit)
        lo, hi = int(keys.row_key.min()), int(keys.row_key.max())
        df = con.execute(f"""SELECT {_ROW_COLS} FROM rows r WHERE r.row_key BETWEEN ? AND ?
            AND r.row_key IN (SELECT unnest(?::BIGINT[]))""",
                         [lo, hi, keys.row_key.tolist()]).df()
        df = keys.merge(df, on="row_key").sort_values("pos")
        return Page(_with_previews(df.reset_index(drop=True)), total[0], offset, limit)

    def row(self, row_key: int) -> Row:
        """Return one stored row by key."""
        with self.connect() as con:
            found = _one(con, """SELECT row_key, origin_key, messages, metadata, tags, note
                                   FROM rows WHERE row_key = ?""", [row_key])
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
        df["messages"] = [orjson.loads(m) for m in df["messages"]]
        df["metadata"] = [orjson.loads(m) for m in df["metadata"]]
        df["prompt"] = [prompt_text(m) for m in df["messages"]]
        df["response"] = [response_text(m) for m in df["messages"]]
        df["tags"] = [list(t) if t is not None else [] for t in df["tags"]]
        return df

    def examples(self, version_id: int) -> list[Example]:
        """Return a version's examples in order."""
        with self.connect() as con:
            self._check_version(con, version_id)
            rows = con.execute("""SELECT r.messages, r.metadata FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? ORDER BY vr.pos""", [version_id]
                               ).fetchall()
        return [Example(tuple(orjson.loads(m)), orjson.loads(md)) for m, md in rows]

    def metadata_fields(self, version_id: int, sample: int = 2000) -> dict[str, list[str]]:
        """Return metadata keys seen in a sample of rows, with up to 50 common values each."""
        with self.connect() as con:
            rows = con.execute("""SELECT r.metadata FROM version_rows vr JOIN rows r
                USING (row_key) WHERE vr.version_id = ? AND vr.pos < ?""",
                               [version_id, sample]).fetchall()
        values: dict[str, Counter] = {}
        for (md,) in rows:
            for k, v in orjson.loads(md).items():
                if not k.startswith("_") and isinstance(v, (str, int, float, bool)):
                    values.setdefault(k, Counter())[str(v)] += 1
        return {k: [v for v, _ in c.most_common(50)] for k, c in sorted(values.items())}

    def _check_version(self, con: Any, version_id: int) -> None:
        if _one(con, "SELECT 1 FROM versions WHERE version_id = ?", [version_id]) \
                is None:
            raise NotFoundError(f"no version {version_id}")

    # --- making versions from steps and edits ---------------------------------------------
    def apply_step(self, version_id: int, result: StepResult, *, operation: str,
                   params: dict | None = None, message: str = "") -> VersionInfo:
        """Make a child version from a step's kept/changed/dropped rows; return it."""
        kept, dropped = result.kept, result.dropped
        changed = result.changed if result.changed is not None else pd.DataFrame(
            columns=["row_key", "reason", "detail"])
        with self.connect() as con:
            parent_keys = set(con.execute("SELECT row_key FROM version_rows WHERE version_id = ?",
                                          [version_id]).df().row_key.tolist())
        _check_step(parent_keys, kept, dropped, changed)
        counts = dict(Counter(dropped["reason"])) if len(dropped) else {}
        counts.update({f"changed:{k}": v for k, v in Counter(changed["reason"]).items()})
        counts["kept"] = len(kept)
        with self.transaction() as con:
            vid = self._child(con, version_id, operation, params or {}, counts, message)
            replaced = self._store_changed(con, vid, kept, changed)
            _insert_frame(con, "dropped", dropped.assign(version_id=vid),
                          ["version_id", "row_key", "reason", "duplicate_of", "detail"])
            keys = [replaced.get(k, k) for k in kept["row_key"].tolist()]
            self._set_members(con, vid, keys)
            self._finish_version(con, vid)
        return self.version(vid)

    def _child(self, con: Any, parent: int, operation: str, params: dict, counts: dict,
               message: str) -> int:
        dataset_id = _one(con, "SELECT dataset_id FROM versions WHERE version_id = ?",
                                 [parent])
        if dataset_id is None:
            raise NotFoundError(f"no version {parent}")
        return self._new_version(con, dataset_id[0], parent, operation, params, counts, message)

    def _store_changed(self, con: Any, vid: int, kept: pd.DataFrame, changed: pd.DataFrame
                       ) -> dict[int, int]:
        """Write new records for changed rows; return old row_key -> new row_key."""
        if changed.empty:
            return {}
        by_key = kept.set_index("row_key")
        old_keys = [int(k) for k in changed["row_key"]]
        old = con.execute("""SELECT row_key, origin_key, tags, note FROM rows WHERE row_key IN
                             (SELECT unnest(?::BIGINT[])) """, [old_keys]).df().set_index("row_key")
        examples = [Example(tuple(by_key.at[k, "messages"]), dict(by_key.at[k, "metadata"]))
                    for k in old_keys]
        table = _rows_table(examples, None, origin=[int(old.at[k, "origin_key"]) for k in old_keys],
                            tags=[_tags(by_key, old, k) for k in old_keys],
                            notes=[_note(by_key, old, k) for k in old_keys])
        first = self._insert_rows(con, table)
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
        """Make a child version in which one row is replaced by its edited copy; return it."""
        current = self.row(row_key)
        new_messages = messages if messages is not None else list(current.example.messages)
        _validate_messages(new_messages)
        frame = pd.DataFrame({"row_key": [row_key], "messages": [new_messages],
                              "metadata": [metadata if metadata is not None
                                           else current.example.metadata],
                              "tags": [tags if tags is not None else current.tags],
                              "note": [note if note is not None else current.note]})
        what = [n for n, v in (("messages", messages), ("metadata", metadata), ("tags", tags),
                               ("note", note)) if v is not None]
        return self._replace_rows(version_id, frame, "edit", {"row_key": row_key, "fields": what})

    def tag_rows(self, version_id: int, row_keys: Sequence[int], *,
                 add: Sequence[str] = (), remove: Sequence[str] = ()) -> VersionInfo:
        """Make a child version in which the given rows gain and lose tags; return it."""
        frame = self.frame(version_id)
        frame = frame[frame["row_key"].isin([int(k) for k in row_keys])].copy()
        if frame.empty:
            raise NotFoundError(f"none of rows {list(row_keys)[:5]} is in version {version_id}")
        frame["tags"] = [sorted((set(t) | set(add)) - set(remove)) for t in frame["tags"]]
        return self._replace_rows(version_id, frame, "tag",
                                  {"rows": len(frame), "add": list(add), "remove": list(remove)})

    def _replace_rows(self, version_id: int, frame: pd.DataFrame, operation: str, params: dict
                      ) -> VersionInfo:
        with self.connect() as con:
            members = con.execute("SELECT row_key FROM version_rows WHERE version_id = ? ORDER "
                                  "BY pos", [version_id]).df()
        if not set(frame["row_key"]) <= set(members["row_key"]):
            raise NotFoundError(f"row {frame['row_key'].iloc[0]} is not in version {version_id}")
        changed = pd.DataFrame({"row_key": frame["row_key"], "reason": operation,
                                "detail": ", ".join(params.get("fields", [])) or operation})
        kept = members.merge(frame, on="row_key", how="left")
        result = StepResult(kept=kept, dropped=_empty_dropped(), changed=changed)
        return self.apply_step(version_id, result, operation=operation, params=params)

    def removed(self, version_id: int) -> pd.DataFrame:
        """Return rows dropped along this version's lineage and not in it, with reasons."""
        chain = [v.version_id for v in self.lineage(version_id)]
        with self.connect() as con:
            df = con.execute(f"""SELECT d.version_id AS dropped_in, d.row_key, d.reason,
                d.duplicate_of, d.detail, {_ROW_COLS} FROM dropped d JOIN rows r USING (row_key)
                WHERE d.version_id IN (SELECT unnest(?::INTEGER[])) AND d.row_key NOT IN
                (SELECT row_key FROM version_rows WHERE version_id = ?)
                ORDER BY r.origin_key""", [chain, version_id]).df()
        return _with_previews(df)

    def restore(self, version_id: int, row_keys: Sequence[int]) -> VersionInfo:
        """Make a child version with dropped rows put back in their places; return it."""
        gone = self.removed(version_id)
        wanted = [int(k) for k in row_keys]
        missing = sorted(set(wanted) - set(gone["row_key"].tolist()))
        if missing:
            raise NotFoundError(f"rows {missing[:5]} were not dropped from version {version_id}")
        with self.connect() as con:
            members = con.execute("SELECT row_key FROM version_rows WHERE version_id = ?",
                                  [version_id]).df()["row_key"].tolist()
        with self.transaction() as con:
            counts = {"restored": len(wanted), "kept": len(members) + len(wanted)}
            vid = self._child(con, version_id, "restore", {"rows": wanted}, counts, "")
            self._set_members(con, vid, members + wanted)
            self._finish_version(con, vid)
        return self.version(vid)

    # --- diff and export -------------------------------------------------------------------
    def diff(self, a: int, b: int) -> Diff:
        """Return rows added, removed (with the reason) and changed from version a to b."""
        chain = [v.version_id for v in self.lineage(b)]
        with self.connect() as con:
            self._check_version(con, a)
            con.execute("""CREATE OR REPLACE TEMP TABLE _a AS SELECT r.* FROM version_rows vr
                JOIN rows r USING (row_key) WHERE vr.version_id = ?""", [a])
            con.execute("""CREATE OR REPLACE TEMP TABLE _b AS SELECT r.* FROM version_rows vr
                JOIN rows r USING (row_key) WHERE vr.version_id = ?""", [b])
            added = con.execute(f"""SELECT {_ROW_COLS} FROM _b r WHERE r.origin_key NOT IN
                (SELECT origin_key FROM _a) ORDER BY r.origin_key""").df()
            removed = con.execute(f"""SELECT {_ROW_COLS}, d.reason, d.duplicate_of, d.detail
                FROM _a r LEFT JOIN (SELECT * FROM dropped WHERE version_id IN
                (SELECT unnest(?::INTEGER[]))) d USING (row_key) WHERE r.origin_key NOT IN
                (SELECT origin_key FROM _b) ORDER BY r.origin_key""", [chain]).df()
            changed = con.execute("""SELECT a.row_key AS old_row_key, b.row_key AS new_row_key,
                a.origin_key, a.messages AS old_messages, b.messages AS new_messages,
                a.metadata AS old_metadata, b.metadata AS new_metadata, a.tags AS old_tags,
                b.tags AS new_tags, a.note AS old_note, b.note AS new_note,
                (SELECT string_agg(DISTINCT c.reason, ', ') FROM changed c
                 WHERE c.new_row_key = b.row_key) AS reason
                FROM _a a JOIN _b b USING (origin_key) WHERE a.row_key <> b.row_key
                ORDER BY a.origin_key""").df()
            con.execute("DROP TABLE _a; DROP TABLE _b")
        return Diff(_with_previews(added), _with_previews(removed), changed)

    def export(self, version_id: int, path: str | Path, fmt: str) -> Path:
        """Write a version in an export format; return the path written."""
        return write_dataset(self.examples(version_id), path, fmt)

    def delete_dataset(self, name: str) -> None:
        """Remove a dataset's name and versions (rows stay until unreferenced)."""
        with self.transaction() as con:
            dataset_id = self._dataset_id(con, name)
            ids = [r[0] for r in con.execute("SELECT version_id FROM versions WHERE dataset_id = ?",
                                             [dataset_id]).fetchall()]
            for table in ("version_rows", "dropped", "changed", "import_rejects"):
                con.execute(f"DELETE FROM {table} WHERE version_id IN (SELECT unnest(?::INTEGER[]))",
                            [ids])
            con.execute("DELETE FROM versions WHERE dataset_id = ?", [dataset_id])
            con.execute("DELETE FROM datasets WHERE dataset_id = ?", [dataset_id])


# --- helpers ----------------------------------------------------------------------------------
_ROW_NAMES = ["row_key", "origin_key", "id", "messages", "metadata", "tags", "note", "n_turns",
              "n_chars", "response_chars", "source_line"]
_ROW_COLS = ", ".join(f"r.{c}" for c in _ROW_NAMES)


def _one(con: Any, sql: str, args: Sequence = ()) -> tuple | None:
    """Return the first row of a query; fetches it all, as DuckDB needs before register()."""
    rows = con.execute(sql, args).fetchall()
    return rows[0] if rows else None


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _version_info(row: tuple) -> VersionInfo:
    vid, name, parent, op, params, counts, n, created, message = row
    return VersionInfo(vid, name, parent, op, orjson.loads(params or "{}"),
                       orjson.loads(counts or "{}"), n or 0, created, message or "")


def _rows_table(examples: Sequence[Example], lines: Sequence[int] | None, *,
                origin: list[int] | None = None, tags: list[list[str]] | None = None,
                notes: list[str] | None = None) -> pa.Table:
    n = len(examples)
    messages = [e.messages for e in examples]
    return pa.table({
        "row_key": pa.nulls(n, pa.int64()),
        "origin_key": pa.array(origin, pa.int64()) if origin else pa.nulls(n, pa.int64()),
        "id": [content_id(m) for m in messages],
        "messages": [orjson.dumps(m).decode() for m in messages],
        "metadata": [orjson.dumps(e.metadata, default=str).decode() for e in examples],
        "tags": pa.array(tags if tags else [[] for _ in range(n)], pa.list_(pa.string())),
        "note": pa.array(notes if notes else [""] * n, pa.string()),
        "n_turns": pa.array([len(m) for m in messages], pa.int32()),
        "n_chars": pa.array([sum(len(t["content"]) for t in m) for m in messages], pa.int64()),
        "response_chars": pa.array([len(response_text(m)) for m in messages], pa.int64()),
        "source_line": pa.array(lines, pa.int64()) if lines else pa.nulls(n, pa.int64()),
    })


def _insert_rejects(con: Any, vid: int, report: ImportReport) -> None:
    if not report.rejected:
        return
    df = pd.DataFrame([r.__dict__ for r in report.rejected]).assign(version_id=vid)
    _insert_frame(con, "import_rejects", df,
                  ["version_id", "file", "line", "field", "reason", "fix", "raw"])


def _insert_frame(con: Any, table: str, df: pd.DataFrame, columns: list[str]) -> None:
    if df.empty:
        return
    con.register("_frame", df[columns])
    con.execute(f"INSERT INTO {table} ({', '.join(columns)}) SELECT * FROM _frame")
    con.unregister("_frame")


def _empty_dropped() -> pd.DataFrame:
    return pd.DataFrame({"row_key": pd.Series(dtype="int64"), "reason": pd.Series(dtype=str),
                         "duplicate_of": pd.Series(dtype="Int64"),
                         "detail": pd.Series(dtype=str)})


def _check_step(parent_keys: set, kept: pd.DataFrame, dropped: pd.DataFrame,
                changed: pd.DataFrame) -> None:
    kept_keys, dropped_keys = list(kept["row_key"]), list(dropped["row_key"])
    if len(set(kept_keys)) != len(kept_keys) or set(kept_keys) & set(dropped_keys):
        raise WorkbenchError("step result lists a row twice (kept twice, or kept and dropped)")
    if set(kept_keys) | set(dropped_keys) != parent_keys or \
            len(kept_keys) + len(dropped_keys) != len(parent_keys):
        raise WorkbenchError(f"step result covers {len(kept_keys) + len(dropped_keys)} rows but "
                             f"the version has {len(parent_keys)}: every row must be kept or "
                             "dropped with a reason")
    if len(dropped) and dropped["reason"].isna().any():
        raise WorkbenchError("every dropped row needs a reason")
    if not set(changed["row_key"]) <= set(kept_keys):
        raise WorkbenchError("a changed row must also be kept")


def _tags(by_key: pd.DataFrame, old: pd.DataFrame, key: int) -> list[str]:
    if "tags" in by_key.columns and isinstance(by_key.at[key, "tags"], (list, tuple)):
        return list(by_key.at[key, "tags"])
    value = old.at[key, "tags"]
    return list(value) if value is not None else []


def _note(by_key: pd.DataFrame, old: pd.DataFrame, key: int) -> str:
    if "note" in by_key.columns and isinstance(by_key.at[key, "note"], str):
        return by_key.at[key, "note"]
    return old.at[key, "note"] or ""


def _validate_messages(messages: list[dict]) -> None:
    from .schema import RowError, to_example

    try:
        to_example({"messages": messages}, "openai")
    except RowError as e:
        raise WorkbenchError(f"edit rejected: {e}") from None


def _filter_sql(f: RowFilter) -> tuple[str, list]:
    parts: list[str] = []
    args: list = []
    if f.search.strip():
        # messages are stored as JSON text: escape the term the same way before matching.
        term = orjson.dumps(f.search.strip()).decode()[1:-1]
        parts.append("(r.messages ILIKE ? OR r.metadata ILIKE ? OR r.note ILIKE ?)")
        like = "%" + term.replace("%", r"\%").replace("_", r"\_") + "%"
        parts[-1] = parts[-1].replace("ILIKE ?", "ILIKE ? ESCAPE '\\'")
        args += [like, like, like]
    for key, value in f.metadata:
        parts.append("json_extract_string(r.metadata, ?) = ?")
        args += ["$." + _json_key(key), value]
    for column, op, value in (("n_chars", ">=", f.min_chars), ("n_chars", "<=", f.max_chars),
                              ("n_turns", ">=", f.min_turns), ("n_turns", "<=", f.max_turns)):
        if value is not None:
            parts.append(f"r.{column} {op} ?")
            args.append(value)
    if f.tag:
        parts.append("list_contains(r.tags, ?)")
        args.append(f.tag)
    if f.has_note:
        parts.append("r.note <> ''")
    return " AND ".join(parts), args


def _json_key(key: str) -> str:
    return '"' + key.replace('"', '\\"') + '"'


def _with_previews(df: pd.DataFrame) -> pd.DataFrame:
    """Add user/response preview columns from the messages JSON of a (small) frame."""
    if "messages" not in df.columns:
        return df
    msgs = [orjson.loads(m) if isinstance(m, str) else m for m in df["messages"]]
    df = df.copy()
    df["prompt"] = [prompt_text(m)[:300] for m in msgs]
    df["response"] = [response_text(m)[:300] for m in msgs]
    return df
