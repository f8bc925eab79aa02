"""Data shaped for display: tables and files the pages and the CLI show. No Streamlit here."""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from pathlib import Path

import orjson
import pandas as pd

from .io import export_suffix
from .store import Diff, Page, Store, VersionInfo

BROWSE_COLUMNS = ["row_key", "prompt", "response", "n_turns", "n_chars", "tags", "note"]


def page_table(page: Page) -> pd.DataFrame:
    """Return the columns of a page shown in the browse table, one line of text per cell."""
    df = page.rows.reindex(columns=BROWSE_COLUMNS).copy()
    for col in ("prompt", "response"):
        df[col] = [" ".join(str(t).split())[:160] for t in df[col].fillna("")]
    df["tags"] = [", ".join(t) if t is not None else "" for t in df["tags"]]
    return df.reset_index(drop=True)


def lineage_table(versions: list[VersionInfo], active: int | None = None) -> pd.DataFrame:
    """Return one row per version: id, parent, operation, params, counts, rows, active mark."""
    return pd.DataFrame([{
        "version": v.version_id, "parent": v.parent_id, "operation": v.operation,
        "rows": v.n_rows, "counts": _compact(v.counts), "params": _compact(v.params),
        "created": v.created_at, "active": "●" if v.version_id == active else "",
    } for v in versions])


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


def save_upload(name: str, data: bytes, folder: Path) -> Path:
    """Write uploaded bytes under a folder with a safe file name; return the path."""
    safe = Path(name).name.replace("/", "_") or "upload.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / safe
    target.write_bytes(data)
    return target


def cleanup_upload(path: Path) -> None:
    """Remove a saved upload once imported (the store keeps the rows)."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
