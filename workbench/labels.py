"""Labels: a person's good/bad judgement of a row, kept by content id in the store.

A label belongs to a *label set* (``quality`` by default; others such as ``off-topic`` or
``wrong-answer`` train learned scores of their own) and is keyed by the row's content ``id``,
so it survives new versions, re-imports and edits of other rows. Every change is one
*action* (a click, a bulk label, a file) in an append-only log: the current label of a row is
its newest event from an action that was not undone, so undoing a bulk action brings back what
each row had before, and the log says who-did-what-when for every label.

Label files (JSONL, one object per line): ``id`` or ``row_key`` (of the version named when
importing), ``label`` (``good`` or ``bad``), optional ``reason``. A file with any bad line is
refused whole, with every bad line's number, field and fix: nothing is half-imported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa

from .atomic import write_atomic
from .exceptions import ConfigError, NotFoundError, WorkbenchError
from .store import CURRENT_LABELS_SQL, Store

LABELS: tuple[str, ...] = ("good", "bad")
DEFAULT_SET = "quality"
_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
MAX_REASON = 500


class LabelFileError(WorkbenchError):
    """A label file was refused; ``problems`` lists every bad line (line, field, reason, fix)."""

    def __init__(self, message: str, problems: list[dict]):
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class LabelAction:
    """One labelling action: its id, label set, kind, description and rows touched."""

    action_id: int
    label_set: str
    kind: str
    description: str
    n_rows: int
    created_at: Any = None
    undone: bool = False


def check_label_set(name: str) -> str:
    """Return a valid label-set name or raise ConfigError saying what a name may hold."""
    if not isinstance(name, str) or not _SET_NAME.match(name):
        raise ConfigError(f"label set {name!r}: use 1-40 lower-case letters, digits, '-' or '_', "
                          "starting with a letter or digit (e.g. quality, off-topic)")
    return name


def check_label(value: Any) -> str:
    """Return 'good' or 'bad' for a label value (any case), or raise ConfigError."""
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in LABELS:
        raise ConfigError(f"label {value!r}: use 'good' or 'bad'")
    return text


# --- writing -------------------------------------------------------------------------------------

def set_labels(store: Store, ids: Sequence[str], labels: str | None | Sequence[str | None], *,
               reasons: str | Sequence[str] = "", label_set: str = DEFAULT_SET,
               kind: str = "label", description: str = "") -> LabelAction:
    """Label rows by content id as one undoable action (None clears a label); return it."""
    check_label_set(label_set)
    ids = [str(i) for i in ids]
    if not ids:
        raise ConfigError("no rows to label")
    per_row = _per_row(labels, len(ids), "labels")
    per_row = [None if v is None else check_label(v) for v in per_row]
    why = [str(r or "")[:MAX_REASON] for r in _per_row(reasons, len(ids), "reasons")]
    last = {i: (v, r) for i, v, r in zip(ids, per_row, why)}  # a repeated id: the last wins
    table = pa.table({"id": pa.array(list(last), pa.string()),
                      "label": pa.array([v for v, _ in last.values()], pa.string()),
                      "reason": pa.array([r for _, r in last.values()], pa.string())})
    with store.transaction() as con:
        action_id = con.execute("SELECT coalesce(max(action_id), 0) + 1 FROM label_actions"
                                ).fetchall()[0][0]
        con.execute("""INSERT INTO label_actions (action_id, label_set, kind, description, n_rows)
                       VALUES (?, ?, ?, ?, ?)""",
                    [action_id, label_set, kind, description, len(last)])
        con.register("_labels", table)
        con.execute("INSERT INTO label_events SELECT ?, id, ?, label, reason FROM _labels",
                    [action_id, label_set])
        con.unregister("_labels")
    return LabelAction(action_id, label_set, kind, description, len(last))


def _per_row(value: Any, n: int, name: str) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ConfigError(f"{name}: {len(values)} values for {n} rows")
    return values


def undo_last(store: Store, label_set: str = DEFAULT_SET) -> LabelAction:
    """Undo the newest action of a label set that is not undone yet; return it."""
    with store.transaction() as con:
        found = con.execute("""SELECT action_id, label_set, kind, description, n_rows, created_at
            FROM label_actions WHERE label_set = ? AND undone_at IS NULL
            ORDER BY action_id DESC LIMIT 1""", [label_set]).fetchall()
        if not found:
            raise NotFoundError(f"nothing to undo in label set '{label_set}'")
        con.execute("UPDATE label_actions SET undone_at = current_timestamp WHERE action_id = ?",
                    [found[0][0]])
    return LabelAction(*found[0], undone=True)


# --- reading -------------------------------------------------------------------------------------



def current_labels(store: Store, ids: Sequence[str] | None = None, *,
                   label_set: str = DEFAULT_SET) -> pd.DataFrame:
    """Return the current label of each labelled row (id, label, reason, labelled_at, ...).

    With ``ids``, only those rows; cleared labels are left out.
    """
    with store.connect() as con:
        if ids is None:
            df = con.execute(CURRENT_LABELS_SQL, [label_set]).df()
        else:
            con.register("_ids", pa.table({"id": pa.array(list({str(i) for i in ids}),
                                                          pa.string())}))
            df = con.execute(f"SELECT * FROM ({CURRENT_LABELS_SQL}) SEMI JOIN _ids USING (id)",
                             [label_set]).df()
            con.unregister("_ids")
    return df[df["label"].notna()].reset_index(drop=True)


def label_sets(store: Store) -> list[str]:
    """Return the label sets that have any action, the default one first."""
    with store.connect() as con:
        names = [r[0] for r in con.execute(
            "SELECT DISTINCT label_set FROM label_actions ORDER BY 1").fetchall()]
    return sorted(set(names) | {DEFAULT_SET}, key=lambda n: (n != DEFAULT_SET, n))


def actions(store: Store, *, label_set: str = DEFAULT_SET, limit: int = 20) -> pd.DataFrame:
    """Return the newest labelling actions of a label set (undone ones marked)."""
    with store.connect() as con:
        return con.execute("""SELECT action_id, kind, description, n_rows, created_at,
            undone_at IS NOT NULL AS undone FROM label_actions WHERE label_set = ?
            ORDER BY action_id DESC LIMIT ?""", [label_set, int(limit)]).df()


def label_column(store: Store, ids: Sequence[str], *, label_set: str = DEFAULT_SET
                 ) -> pd.Series:
    """Return each id's current label ('good', 'bad' or '' when unlabelled), aligned with ids."""
    current = current_labels(store, ids, label_set=label_set).set_index("id")["label"]
    # A dict lookup per id, not a pandas Series lookup (52k ids: 3 s).
    labels = dict(zip(current.index, current.to_numpy()))
    return pd.Series([labels.get(i, "") for i in ids], dtype=object)


# --- files ---------------------------------------------------------------------------------------

def read_label_file(path: str | Path, *, ids_by_key: Mapping[int, str], known_ids: Iterable[str]
                    ) -> pd.DataFrame:
    """Return (id, label, reason) rows of a JSONL label file, or raise LabelFileError.

    ``ids_by_key`` resolves ``row_key`` values (of the version named by the user); ``known_ids``
    are the content ids a line may name. Every bad line is reported; none is imported then.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WorkbenchError(f"{path}: cannot read the label file ({e.strerror or e})") from None
    known = set(known_ids)
    rows, problems = [], []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_label_line(line, ids_by_key, known))
        except _BadLine as bad:
            problems.append({"line": number, "field": bad.field, "reason": bad.reason,
                             "fix": bad.fix})
    if problems:
        first = problems[0]
        raise LabelFileError(
            f"{path}: {len(problems)} bad line(s), nothing imported; line {first['line']}, "
            f"field '{first['field']}': {first['reason']} ({first['fix']})", problems)
    if not rows:
        raise LabelFileError(f"{path}: no labels in the file", [])
    return pd.DataFrame(rows, columns=["id", "label", "reason"])


class _BadLine(Exception):
    def __init__(self, field: str, reason: str, fix: str):
        super().__init__(reason)
        self.field, self.reason, self.fix = field, reason, fix


def _label_line(line: bytes, ids_by_key: Mapping[int, str], known: set[str]) -> tuple:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise _BadLine("(line)", f"not JSON ({e})", "write one JSON object per line") from None
    if not isinstance(record, dict):
        raise _BadLine("(line)", f"a JSON {type(record).__name__}, not an object",
                       'write {"id": ..., "label": "good"|"bad"}')
    row_id = _line_id(record, ids_by_key, known)
    if "label" not in record:
        raise _BadLine("label", "missing", 'add "label": "good" or "bad"')
    try:
        label = check_label(record["label"])
    except ConfigError:
        raise _BadLine("label", f"{record['label']!r} is not a label",
                       'use "good" or "bad"') from None
    reason = record.get("reason", "")
    if reason is not None and not isinstance(reason, str):
        raise _BadLine("reason", f"wrong type: {type(reason).__name__}", "write it as text")
    return row_id, label, (reason or "")[:MAX_REASON]


def _line_id(record: dict, ids_by_key: Mapping[int, str], known: set[str]) -> str:
    if "id" in record:
        value = record["id"]
        if not isinstance(value, str) or value not in known:
            raise _BadLine("id", f"{value!r} is not a row of this version",
                           "use the id shown for the row, or its row_key")
        return value
    if "row_key" in record:
        key = record["row_key"]
        if isinstance(key, bool) or not isinstance(key, int) or key not in ids_by_key:
            raise _BadLine("row_key", f"{key!r} is not a row of this version",
                           "use a row_key of the version you import into (workbench show)")
        return ids_by_key[key]
    raise _BadLine("id", "missing (neither id nor row_key)", 'add "id" or "row_key"')


def write_label_file(store: Store, path: str | Path, *, label_set: str = DEFAULT_SET,
                     frame: pd.DataFrame | None = None, overwrite: bool = False) -> int:
    """Write the current labels (of a version's rows if ``frame`` is given) as JSONL; return
    how many lines. An existing file is kept unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise WorkbenchError(f"{path}: the file exists; choose another name or pass overwrite")
    ids = frame["id"].tolist() if frame is not None else None
    current = current_labels(store, ids, label_set=label_set)
    keys = frame.drop_duplicates("id").set_index("id")["row_key"] if frame is not None else None
    lines = []
    for row in current.itertuples():
        record = {"id": row.id, "label": row.label, "reason": row.reason or "",
                  "labelled_at": str(row.labelled_at)}
        if keys is not None:
            record["row_key"] = int(keys[row.id])
        lines.append(orjson.dumps(record))
    write_atomic(path, b"\n".join(lines) + (b"\n" if lines else b""))
    return len(lines)
