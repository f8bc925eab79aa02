"""Data shaped for display: tables and files the pages and the CLI show. No Streamlit here."""

from __future__ import annotations

import html
import io
import math
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from .exceptions import PathNotAllowedError
from .io import ImportReport, export_data, export_suffix, write_dataset
from .store import (
    DATASET_NAME_MAX,
    Diff,
    Page,
    Store,
    VersionInfo,
    default_home,
    version_label,
)

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
        "parent": [version_label(v.parent_id, refs) for v in versions],
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
    """Return a download file name and its bytes; a HF dataset folder comes zipped.

    Nothing is written on the server but a HF folder, in a private temporary folder that is
    removed afterwards; the dataset name only shapes the download's name, made safe first.
    """
    info = store.version(version_id)
    stem = f"{safe_file_stem(info.dataset)}-v{info.number}"  # as support@1 reads
    if fmt != "hf":
        return stem + export_suffix(fmt), export_data(store.examples(version_id), fmt)
    with tempfile.TemporaryDirectory(prefix="workbench-export-") as tmp:
        folder = write_dataset(store.examples(version_id), Path(tmp) / stem, "hf")
        return stem + "-hf.zip", _zip_folder(folder)


_UNSAFE_FILE_CHARS = re.compile(r"[^\w.-]+")


def safe_file_stem(name: str, limit: int = 64) -> str:
    """Return a file name stem from a dataset name: letters, digits, '.', '_' and '-' only, so
    never a path, at most ``limit`` characters ("dataset" if nothing is left)."""
    stem = _UNSAFE_FILE_CHARS.sub("_", str(name)).strip("._-")[:limit].strip("._-")
    return stem or "dataset"


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


ALLOW_ANY_PATH_ENV = "WORKBENCH_ALLOW_ANY_PATH"


def path_import_root() -> Path | None:
    """Return the folder that app imports by path must lie in; None if any path is allowed.

    Whoever reaches the app types the path, and the server reads it: by default only files in
    the data folder ($WORKBENCH_HOME, else ./storage), unless $WORKBENCH_ALLOW_ANY_PATH=1.
    """
    if os.environ.get(ALLOW_ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes"):
        return None
    return default_home().expanduser().resolve()


def allowed_import_path(path: str) -> Path:
    """Return the path an app import may read (relative: to the data folder), or refuse it."""
    root, given = path_import_root(), Path(path.strip()).expanduser()
    if root is None:
        return given
    # resolve() follows symlinks and "..", so neither can lead out of the folder.
    target = (given if given.is_absolute() else root / given).resolve()
    if not target.is_relative_to(root):
        raise PathNotAllowedError(f"{path.strip()}: the app imports only from the data folder "
                                  f"{root}; copy the file there or upload it, or start the app "
                                  f"with {ALLOW_ANY_PATH_ENV}=1 to allow any path")
    return target


def import_source(store: Store, dataset: str, *, upload: tuple[str, bytes] | None = None,
                  path: str = "", shape: str = "auto") -> tuple[VersionInfo, ImportReport]:
    """Import an upload (name, bytes) if given, else a path the app may read; return both."""
    if upload is not None:
        name, data = upload
        with uploaded_file(name, data) as saved:
            return store.import_file(saved, dataset, shape=shape, display_name=name)
    return store.import_file(allowed_import_path(path), dataset, shape=shape)


def dataset_name_for(source: str) -> str:
    """Return a valid dataset name suggested by an uploaded file name or a local path ("" if
    none): the file's stem with characters names may not hold replaced by '-'."""
    stem = Path(source.strip().replace("\\", "/").rstrip("/")).stem if source.strip() else ""
    name = re.sub(r"[^\w .-]+", "-", stem)
    name = re.sub(r"^[\W_]+", "", name)[:DATASET_NAME_MAX]
    return name.rstrip(" .-")


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


def progress_text(label: str, done: int, total: int, elapsed_s: float, what: str = "") -> str:
    """Return a progress line with the count and a time estimate: "Checking rules 3/11 · pii ·
    12 s, about 30 s left" (no estimate before the first unit is done)."""
    head = f"{label} {done:,}/{total:,}" + (f" · {what}" if what else "")
    if done <= 0 or total <= 0:
        return f"{head} · {elapsed_s:.0f} s"
    left = elapsed_s / done * max(total - done, 0)
    return f"{head} · {elapsed_s:.0f} s" + (f", about {left:.0f} s left" if done < total else "")


# --- plots of many rows -------------------------------------------------------------------------
PLOT_POINTS = 5_000  # a WebGL scatter of this many points draws at once; 52k did not


@dataclass(frozen=True)
class PlotSample:
    """The rows a scatter draws, and how many rows it stands for."""

    rows: pd.DataFrame
    total: int

    @property
    def caption(self) -> str:
        """Return what the plot shows, with the full count: "5,000 of 51,974 rows (...)"."""
        if len(self.rows) == self.total:
            return f"All {plural(self.total, 'row')}."
        return (f"{len(self.rows):,} of {self.total:,} rows, a random sample: every count and "
                "selection on this page uses all of them.")


def plot_sample(frame: pd.DataFrame, columns: Sequence[str], n: int = PLOT_POINTS,
                seed: int = 0) -> PlotSample:
    """Return at most n rows with a finite value in every column (a fixed random sample, in
    frame order) and how many such rows there are."""
    values = frame[list(columns)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    rows = frame[np.isfinite(values).all(axis=1)]
    if len(rows) <= n:
        return PlotSample(rows, len(rows))
    picked = np.random.default_rng(seed).choice(len(rows), size=n, replace=False)
    return PlotSample(rows.iloc[np.sort(picked)], len(rows))


def hover_texts(texts: Sequence[str], width: int = 100) -> list[str]:
    """Return one-line hover labels of at most ``width`` characters, HTML-escaped (plotly's
    hover labels read a little HTML: dataset text must stay text)."""
    # Only the head of a text can show: split no more of it than that (responses run long).
    return [html.escape(" ".join(str(t)[:4 * width].split())[:width]) for t in texts]


def histogram_table(values: Sequence[float], bins: int = 40) -> pd.DataFrame:
    """Return a histogram of the finite values: one row per bin (start, end, rows), so a chart
    sends the bins, not every value."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return pd.DataFrame({"start": [], "end": [], "rows": []})
    counts, edges = np.histogram(x, bins=bins if x.min() < x.max() else 1)
    return pd.DataFrame({"start": edges[:-1], "end": edges[1:], "rows": counts})
