"""Data shaped for display: tables and files the pages and the CLI show. No Streamlit here."""

from __future__ import annotations

import io
import math
import re
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import orjson
import pandas as pd

from .io import ImportReport, export_suffix
from .store import Diff, Page, Store, VersionInfo

BROWSE_COLUMNS = ["row_key", "label", "user", "response", "system", "n_turns", "n_chars", "tags",
                  "note"]


def page_table(page: Page) -> pd.DataFrame:
    """Return the columns of a page shown in the browse table, one line of text per cell.

    The last user turn stands for the prompt: a long shared system prompt would otherwise fill
    every cell of the column with the same words.
    """
    messages = [orjson.loads(m) if isinstance(m, str) else list(m)
                for m in page.rows.get("messages", pd.Series(dtype=object))]
    df = page.rows.reindex(columns=BROWSE_COLUMNS).copy()
    df["user"] = [_one_line(_last(m, "user")) for m in messages]
    df["system"] = ["✓" if _last(m, "system") else "" for m in messages]
    df["response"] = [_one_line(t) for t in df["response"].fillna("")]
    df["tags"] = [", ".join(t) if t is not None else "" for t in df["tags"]]
    df["note"] = [_one_line(t) for t in df["note"].fillna("")]
    df["label"] = df["label"].fillna("")
    return df.reset_index(drop=True)


def _last(messages: list[dict], role: str) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == role), "")


def _one_line(text: str, width: int = 300) -> str:
    return " ".join(str(text).split())[:width]


def lineage_table(versions: list[VersionInfo], active: int | None = None) -> pd.DataFrame:
    """Return one row per version: active mark, name@N, parent, operation, rows, counts,
    params."""
    refs = {v.version_id: v.ref for v in versions}
    return pd.DataFrame({
        "active": ["●" if v.version_id == active else "" for v in versions],
        "version": [v.ref for v in versions],
        "parent": [refs.get(v.parent_id, f"id {v.parent_id}") if v.parent_id else ""
                   for v in versions],
        "operation": [v.operation for v in versions],
        "rows": [v.n_rows for v in versions],
        "counts": [_compact(v.counts) for v in versions],
        "params": [_compact(v.params) for v in versions],
        "created": [v.created_at for v in versions],
    })


def _compact(value: dict) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= 200 else text[:199] + "…"


def diff_tables(diff: Diff) -> dict[str, pd.DataFrame]:
    """Return the added, removed and changed rows of a diff as display tables."""
    removed = diff.removed.reindex(columns=["row_key", "reason", "duplicate_of", "detail",
                                            "prompt", "response"])
    added = diff.added.reindex(columns=["row_key", "prompt", "response"])
    changed = diff.changed.reindex(columns=["old_row_key", "new_row_key", "reason"]).copy()
    changed["before"] = [_last_turn(m) for m in diff.changed.get("old_messages", [])]
    changed["after"] = [_last_turn(m) for m in diff.changed.get("new_messages", [])]
    return {"removed": removed, "added": added, "changed": changed}


def _last_turn(messages_json: str) -> str:
    messages = orjson.loads(messages_json)
    return " ".join(messages[-1]["content"].split())[:200] if messages else ""


def export_bytes(store: Store, version_id: int, fmt: str) -> tuple[str, bytes]:
    """Return a download file name and its bytes; a HF dataset folder comes zipped."""
    info = store.version(version_id)
    stem = f"{info.dataset}-v{version_id}"
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / (stem + export_suffix(fmt))
        store.export(version_id, target, fmt)
        if target.is_dir():
            return stem + "-hf.zip", _zip_folder(target)
        return target.name, target.read_bytes()


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()


@contextmanager
def uploaded_file(name: str, data: bytes) -> Iterator[Path]:
    """Yield a temporary path holding uploaded bytes under a safe name; removed afterwards.

    The store keeps the rows, so the upload itself need not outlive the import.
    """
    safe = Path(name.replace("\\", "/")).name
    safe = safe if safe not in ("", ".", "..") else "upload.jsonl"
    with tempfile.TemporaryDirectory(prefix="workbench-upload-") as tmp:
        target = Path(tmp) / safe
        target.write_bytes(data)
        yield target


def import_source(store: Store, dataset: str, *, upload: tuple[str, bytes] | None = None,
                  path: str = "", shape: str = "auto") -> tuple[VersionInfo, ImportReport]:
    """Import an upload (name, bytes) if given, else a local path; return version and report."""
    if upload is not None:
        name, data = upload
        with uploaded_file(name, data) as saved:
            return store.import_file(saved, dataset, shape=shape, display_name=name)
    return store.import_file(path.strip(), dataset, shape=shape)


def dataset_name_for(source: str) -> str:
    """Return a dataset name suggested by an uploaded file name or a local path."""
    return Path(source.strip().rstrip("/\\")).stem if source.strip() else ""


def plural(n: int, word: str) -> str:
    """Return "1 row", "2 rows", "1,000 rows"."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def page_count(total: int, size: int) -> int:
    """Return how many pages of `size` rows `total` rows fill (at least 1)."""
    return max(1, math.ceil(total / size))


def selected_row_keys(page: Page, positions: list[int]) -> list[int]:
    """Return the row keys at the selected table positions, ignoring stale positions.

    A selection survives reruns, so it may point past a page that filters have shortened.
    """
    return [int(page.rows.iloc[i]["row_key"]) for i in positions if 0 <= i < len(page.rows)]


# Every ASCII punctuation character may be backslash-escaped in CommonMark; escaping them all
# also defuses Streamlit's own :color[...] / :material/...: and $math$ syntax.
_MARKDOWN_SPECIAL = re.compile(r"([!-/:-@\[-`{-~])")


def md_escape(text: object) -> str:
    """Return text that a markdown renderer shows literally (no links, images, HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split("\n")))
