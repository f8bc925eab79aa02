"""Readers and writers: JSONL, JSON, CSV, Parquet, plain text and Hugging Face dataset folders.

A reader never drops a row silently: each record read either becomes an Example or a
Rejection naming the file, line (or item), field, reason and fix, so that
``imported + rejected == rows_read`` always holds. A file that is not a dataset at all raises
ImportFormatError and returns nothing.
"""

from __future__ import annotations

import codecs
import csv
import io as _io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, get_args

import orjson

from .exceptions import ExportError, ImportFormatError
from .schema import (ALPACA_JOIN, SHAPES, Example, RowError, detect_shape, shape_hint,
                     to_example)

FileKind = Literal["jsonl", "json", "csv", "tsv", "parquet", "hf", "txt"]
ExportFormat = Literal["openai", "alpaca_json", "alpaca_jsonl", "sharegpt", "sharegpt_jsonl",
                       "parquet", "hf"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
MAX_CHARS = 1_000_000
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
             ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".txt": "txt"}
# Columns that hold JSON inside CSV cells.
_JSON_COLUMNS = ("messages", "conversations", "history", "metadata")


@dataclass(frozen=True)
class Rejection:
    """One record that could not be imported, and how to fix it."""

    file: str
    line: int
    field: str
    reason: str
    fix: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.reason} — {self.fix}"


@dataclass
class ImportReport:
    """What an import read, kept and rejected; imported + rejected == rows_read."""

    file: str
    kind: str
    rows_read: int = 0
    imported: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    shapes: Counter = field(default_factory=Counter)
    blank_lines: int = 0

    @property
    def unit(self) -> str:
        """How a position in this file is counted: line, item (JSON array) or row."""
        return {"json": "item", "parquet": "row", "hf": "row"}.get(self.kind, "line")

    def summary(self) -> str:
        shapes = ", ".join(f"{k} {v}" for k, v in self.shapes.most_common()) or "none"
        return (f"{self.file}: read {self.rows_read} rows, imported {self.imported}, "
                f"rejected {len(self.rejected)} (shapes: {shapes})")


@dataclass
class ParsedFile:
    """The examples read from a file, the line each came from, and the report."""

    examples: list[Example]
    lines: list[int]
    report: ImportReport


def detect_kind(path: Path) -> FileKind:
    """Return the file kind from a path: a folder is a HF dataset, else by suffix."""
    if path.is_dir():
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            return "hf"
        raise ImportFormatError(f"{path}: a folder that is not a Hugging Face dataset "
                                "(no dataset_info.json or dataset_dict.json); pass a file, "
                                "or a folder written by datasets' save_to_disk")
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ImportFormatError(f"{path}: unknown file type '{path.suffix}'; use one of "
                                ".jsonl .json .csv .tsv .parquet .txt or a dataset folder")
    return kind  # type: ignore[return-value]


def read_dataset(path: str | Path, *, shape: str = "auto", kind: str = "auto",
                 max_chars: int = MAX_CHARS, display_name: str | None = None,
                 progress: Callable[[int], None] | None = None) -> ParsedFile:
    """Return the examples of a dataset file with an import report; raise if it is no dataset."""
    path = Path(path)
    name = display_name or path.name
    if shape != "auto" and shape not in SHAPES:
        raise ImportFormatError(f"unknown shape '{shape}'; use auto or one of {', '.join(SHAPES)}")
    if not path.exists():
        raise ImportFormatError(f"{path}: no such file or folder")
    kind = detect_kind(path) if kind == "auto" else kind
    report = ImportReport(file=name, kind=kind)
    parsed = ParsedFile([], [], report)
    for line, record, error in _records(path, kind, report):
        report.rows_read += 1
        if error is not None:
            report.rejected.append(Rejection(name, line, error.field, error.reason, error.fix,
                                             _excerpt(record)))
        else:
            _convert(record, line, shape, max_chars, parsed)
        if progress and report.rows_read % 10_000 == 0:
            progress(report.rows_read)
    report.imported = len(parsed.examples)
    _refuse_non_dataset(path, parsed)
    return parsed


def _convert(record: Any, line: int, shape: str, max_chars: int, parsed: ParsedFile) -> None:
    report = parsed.report
    try:
        record = _merge_metadata(record)
        found = detect_shape(record) if shape == "auto" else shape
        if found is None:
            raise RowError("(row)", "unknown shape: " + shape_hint(record),
                           "rename the fields, or pass the shape explicitly")
        example = to_example(record, found)  # type: ignore[arg-type]
        _check_size(example, max_chars)
    except RowError as e:
        report.rejected.append(Rejection(report.file, line, e.field, e.reason, e.fix,
                                         _excerpt(record)))
        return
    report.shapes[found] += 1
    parsed.examples.append(example)
    parsed.lines.append(line)


def _merge_metadata(record: Any) -> Any:
    # Our own Parquet / HF exports carry metadata as one JSON column: fold it back in.
    if isinstance(record, dict) and "metadata" in record:
        meta = record["metadata"]
        if isinstance(meta, str):
            try:
                meta = orjson.loads(meta)
            except orjson.JSONDecodeError:
                return record
        if isinstance(meta, dict):
            rest = {k: v for k, v in record.items() if k != "metadata"}
            return {**meta, **rest}
    return record


def _check_size(example: Example, max_chars: int) -> None:
    for i, m in enumerate(example.messages):
        if len(m["content"]) > max_chars:
            raise RowError(f"messages[{i}].content",
                           f"field too large ({len(m['content']):,} characters > {max_chars:,})",
                           "split the text, or raise the limit with max_chars / --max-chars")


def _refuse_non_dataset(path: Path, parsed: ParsedFile) -> None:
    report = parsed.report
    if report.rows_read == 0:
        raise ImportFormatError(f"{path}: the file is empty (no rows found)")
    if report.imported == 0:
        reasons = Counter(r.reason.split(":")[0] for r in report.rejected).most_common(3)
        first = report.rejected[0]
        raise ImportFormatError(
            f"{path}: no row could be imported ({report.rows_read} read); most common problems: "
            + "; ".join(f"{r} ({n}x)" for r, n in reasons)
            + f". First: line {first.line}, {first.field}: {first.reason} — {first.fix}")


def _excerpt(record: Any, limit: int = 200) -> str:
    if isinstance(record, (bytes, bytearray)):
        text = bytes(record[:limit]).decode("utf-8", "replace")
    elif isinstance(record, str):
        text = record
    else:
        try:
            text = orjson.dumps(record, default=str).decode()
        except TypeError:
            text = repr(record)
    return text if len(text) <= limit else text[:limit] + "…"


# --- record sources ---------------------------------------------------------------------------
Record = tuple[int, Any, RowError | None]


def _records(path: Path, kind: str, report: ImportReport) -> Iterator[Record]:
    if kind == "parquet":
        return _parquet_records(path)
    if kind == "hf":
        return _hf_records(path)
    data = path.read_bytes()
    if not data.strip():
        raise ImportFormatError(f"{path}: the file is empty")
    text_bom = _bom_text(data)
    if text_bom is None and b"\x00" in data[:8192]:
        raise ImportFormatError(f"{path}: looks like a binary file (NUL bytes), not a text "
                                "dataset; export it as JSONL, CSV or Parquet")
    if kind == "jsonl":
        return _jsonl_records(data, text_bom, report)
    if kind == "json":
        return _json_records(path, data, text_bom, report)
    if kind in ("csv", "tsv"):
        return _csv_records(path, data, text_bom, "\t" if kind == "tsv" else ",")
    return _txt_records(path, data, text_bom)


def _bom_text(data: bytes) -> str | None:
    """Decode files that announce a non-UTF-8 Unicode encoding with a byte-order mark."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(enc, errors="replace")
    return None


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ImportFormatError(f"{path}: line {line}: not valid UTF-8 (byte {raw[e.start]:#x} "
                                f"at offset {e.start}); re-save the file as UTF-8") from None


def _jsonl_records(data: bytes, text: str | None, report: ImportReport) -> Iterator[Record]:
    lines = text.encode("utf-8").split(b"\n") if text is not None else data.split(b"\n")
    if lines and lines[0].startswith(codecs.BOM_UTF8):
        lines[0] = lines[0][len(codecs.BOM_UTF8):]
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            report.blank_lines += 1
            continue
        yield _parse_json_line(n, raw)


def _parse_json_line(n: int, raw: bytes) -> Record:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return n, raw, RowError("(line)", f"not valid UTF-8 (byte {raw[e.start]:#x} at column "
                                f"{e.start + 1})", "re-save the file as UTF-8")
    try:
        return n, orjson.loads(raw), None
    except orjson.JSONDecodeError as e:
        return n, raw, RowError("(line)", f"bad JSON: {e}",
                                "fix the syntax: one complete JSON object per line")


def _json_records(path: Path, data: bytes, text: str | None, report: ImportReport
                  ) -> Iterator[Record]:
    body = text if text is not None else _decode(data, path)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if body.lstrip().startswith("{") and "\n{" in body:
            report.kind = "jsonl"  # a .json file that is really JSON Lines
            return _jsonl_records(body.encode("utf-8"), None, report)
        raise ImportFormatError(f"{path}: not valid JSON ({e}); a .json file must hold an "
                                "array of objects, or use .jsonl with one object per line"
                                ) from None
    items = _json_items(path, doc)
    return ((i, item, None) for i, item in enumerate(items, 1))


def _json_items(path: Path, doc: Any) -> list:
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if detect_shape(doc) is not None:
            return [doc]
        if len(lists) == 1:
            return doc[lists[0]]
    raise ImportFormatError(f"{path}: JSON top level is a {type(doc).__name__}; expected an "
                            "array of records (or an object with one array of records)")


def _csv_records(path: Path, data: bytes, text: str | None, delimiter: str
                 ) -> Iterator[Record]:
    body = text if text is not None else _decode(data, path)
    reader = csv.reader(_io.StringIO(body, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if not header or detect_shape(dict.fromkeys(header, "")) is None:
        raise ImportFormatError(f"{path}: CSV header {header!r} matches no dataset shape; "
                                "name the columns instruction/input/output, prompt/completion, "
                                "messages, conversations or text")
    return _csv_rows(reader, header)


def _csv_rows(reader: Any, header: list[str]) -> Iterator[Record]:
    start = reader.line_num
    for values in reader:
        line = start + 1
        start = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield line, ",".join(values), RowError(
                "(row)", f"{len(values)} columns, header has {len(header)}",
                "quote fields that contain the delimiter or line breaks")
            continue
        yield _csv_record(line, dict(zip(header, values)))


def _csv_record(line: int, row: dict[str, str]) -> Record:
    for key in _JSON_COLUMNS:
        if key in row and row[key].strip():
            try:
                row[key] = orjson.loads(row[key])
            except orjson.JSONDecodeError as e:
                return line, row, RowError(key, f"bad JSON in cell: {e}",
                                           f"'{key}' cells must hold JSON")
    return line, row, None


def _txt_records(path: Path, data: bytes, text: str | None) -> Iterator[Record]:
    body = text if text is not None else _decode(data, path)
    line = 1
    for block in body.replace("\r\n", "\n").split("\n\n"):
        if block.strip():
            yield line + len(block) - len(block.lstrip("\n")), {"text": block.strip("\n")}, None
        line += block.count("\n") + 2


def _parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ImportFormatError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in parquet.iter_batches(batch_size=50_000):
        for record in batch.to_pylist():
            n += 1
            yield n, record, None


def _hf_records(path: Path) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ...
        raise ImportFormatError(f"{path}: not a readable Hugging Face dataset folder ({e})"
                                ) from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    n = 0
    for split, ds in splits:
        for batch in ds.with_format("arrow").iter(batch_size=50_000):
            for record in batch.to_pylist():
                n += 1
                yield n, ({**record, "split": split} if split else record), None


# --- writers ----------------------------------------------------------------------------------
def user_metadata(metadata: dict) -> dict:
    """Return the metadata without the workbench's own bookkeeping keys."""
    return {k: v for k, v in metadata.items() if not k.startswith("_")}


def to_openai(example: Example) -> dict:
    """Return an OpenAI chat record: messages plus metadata as top-level keys."""
    return {**user_metadata(example.metadata), "messages": [dict(m) for m in example.messages]}


def to_alpaca(example: Example) -> dict:
    """Return an Alpaca record; earlier turns go to `history` and a system turn to `system`."""
    msgs = list(example.messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    if not msgs or msgs[-1]["role"] != "assistant" or len(msgs) % 2:
        raise ExportError(f"row {example.id}: Alpaca needs alternating user/assistant turns "
                          "ending with the assistant; export it as OpenAI chat or ShareGPT")
    pairs = [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs), 2)]
    if any(u["role"] != "user" or a["role"] != "assistant" for u, a in pairs):
        raise ExportError(f"row {example.id}: Alpaca needs alternating user/assistant turns; "
                          "export it as OpenAI chat or ShareGPT")
    instruction, inp = _alpaca_split(example.metadata, pairs[-1][0]["content"])
    record = {**user_metadata(example.metadata), "instruction": instruction, "input": inp,
              "output": pairs[-1][1]["content"]}
    if system is not None:
        record["system"] = system
    if len(pairs) > 1:
        record["history"] = [[u["content"], a["content"]] for u, a in pairs[:-1]]
    return record


def _alpaca_split(metadata: dict, user: str) -> tuple[str, str]:
    # Restore the original instruction/input split when the user turn is unchanged.
    src = metadata.get("_source") or {}
    if src.get("shape") == "alpaca":
        ins, inp = src.get("instruction", ""), src.get("input", "")
        if (f"{ins}{ALPACA_JOIN}{inp}" if inp.strip() else ins) == user:
            return ins, inp
    return user, ""


_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}


def to_sharegpt(example: Example) -> dict:
    """Return a ShareGPT record with human/gpt/system speakers."""
    turns = [{"from": _TO_SHAREGPT[m["role"]], "value": m["content"]} for m in example.messages]
    return {**user_metadata(example.metadata), "conversations": turns}


def write_dataset(examples: list[Example], path: str | Path, fmt: str) -> Path:
    """Write examples in an export format and return the path written."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("parquet", "hf"):
        return _write_columnar(examples, path, fmt)
    convert = {"openai": to_openai, "alpaca_json": to_alpaca, "alpaca_jsonl": to_alpaca,
               "sharegpt": to_sharegpt, "sharegpt_jsonl": to_sharegpt}[fmt]
    records = [convert(e) for e in examples]
    if fmt in ("alpaca_json", "sharegpt"):
        path.write_bytes(orjson.dumps(records, option=orjson.OPT_INDENT_2))
    else:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def _write_columnar(examples: list[Example], path: Path, fmt: str) -> Path:
    import pyarrow as pa

    table = pa.table({
        "messages": [list(e.messages) for e in examples],
        "metadata": [orjson.dumps(user_metadata(e.metadata)).decode() for e in examples],
    })
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        import datasets

        datasets.Dataset(table).save_to_disk(str(path))
    return path


def export_suffix(fmt: str) -> str:
    """Return the file suffix (or "" for a folder) an export format is written with."""
    return {"openai": ".jsonl", "alpaca_json": ".json", "alpaca_jsonl": ".jsonl",
            "sharegpt": ".json", "sharegpt_jsonl": ".jsonl", "parquet": ".parquet",
            "hf": ""}[fmt]
