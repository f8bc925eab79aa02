"""Readers and writers: JSONL, JSON, CSV, Parquet, plain text and Hugging Face dataset folders.

A reader never drops a row silently: each record read either becomes an Example or a
Rejection naming the file, line (or item, or row), field, reason and fix, so that
``imported + rejected == rows_read`` always holds (blank lines are counted apart). A file
that is not a dataset at all raises ImportFormatError and returns nothing.

Two ways out of a reader share one conversion: ``read_dataset`` returns Examples (previews,
tests), ``read_batches`` streams rows already encoded for the store (imports of any size).
"""

from __future__ import annotations

import codecs
import csv
import io as _io
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from itertools import count, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, get_args

import orjson

from .exceptions import ExportError, ImportFormatError
from .schema import (ALPACA_JOIN, RESERVED_KEYS, SHAPES, Example, RowError, alpaca_split,
                     check_messages, convert, detect_shape, encode_messages, shape_hint)

FileKind = Literal["jsonl", "json", "csv", "tsv", "parquet", "hf", "txt"]
ExportFormat = Literal["openai", "alpaca_json", "alpaca_jsonl", "sharegpt", "sharegpt_jsonl",
                       "parquet", "hf"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
MAX_CHARS = 1_000_000
BATCH_ROWS = 16_384
PROGRESS_EVERY = 10_000
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
             ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet", ".txt": "txt"}
# Columns that hold JSON inside CSV cells.
_JSON_COLUMNS = ("messages", "conversations", "history", "metadata")
# Bytes that were not UTF-8, as decoded with errors="surrogateescape".
_BAD_BYTES = re.compile("[\udc80-\udcff]")
_JSON_OPTS = orjson.OPT_NON_STR_KEYS


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
        """Return one line: rows read, imported, rejected and the shapes found."""
        shapes = ", ".join(f"{k} {v}" for k, v in self.shapes.most_common()) or "none"
        return (f"{self.file}: read {self.rows_read} rows, imported {self.imported}, "
                f"rejected {len(self.rejected)} (shapes: {shapes})")

    def reject(self, line: int, error: RowError, record: Any) -> None:
        """Record one rejected row."""
        self.rejected.append(Rejection(self.file, line, error.field, error.reason, error.fix,
                                       _excerpt(record)))


@dataclass
class ParsedFile:
    """The examples read from a file, the line each came from, and the report."""

    examples: list[Example]
    lines: list[int]
    report: ImportReport


@dataclass
class RowBatch:
    """Rows encoded for the store, one tuple per row: canonical messages JSON (UTF-8 bytes;
    the store derives the content id from it), metadata JSON, turn count, characters,
    response characters and source line (see encode_row)."""

    rows: list[tuple] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, messages: list[dict], metadata_json: bytes, line: int | None) -> None:
        """Append one valid conversation (canonical role/content dicts) and its metadata."""
        self.rows.append(encode_row(messages, metadata_json, line))

    def columns(self) -> list[tuple]:
        """Return the six columns: messages, metadata, n_turns, n_chars, response_chars, lines."""
        return [list(map(itemgetter(i), self.rows)) for i in range(6)]  # C-speed loops

    @property
    def messages(self) -> list[bytes]:
        """Return the canonical messages JSON of each row."""
        return list(self.columns()[0])

    @property
    def metadata(self) -> list[bytes]:
        """Return the metadata JSON of each row."""
        return list(self.columns()[1])

    @property
    def n_turns(self) -> list[int]:
        """Return the number of turns of each row."""
        return list(self.columns()[2])

    @property
    def n_chars(self) -> list[int]:
        """Return the characters of all turns of each row."""
        return list(self.columns()[3])

    @property
    def response_chars(self) -> list[int]:
        """Return the characters of the last assistant turn of each row."""
        return list(self.columns()[4])

    @property
    def lines(self) -> list[int | None]:
        """Return the source line of each row."""
        return list(self.columns()[5])


def encode_metadata(metadata: Any) -> bytes:
    """Return metadata as JSON bytes; raise RowError naming the problem if it cannot be."""
    if not isinstance(metadata, dict):
        raise RowError("metadata", f"wrong type: {type(metadata).__name__}",
                       "metadata must be an object")
    try:
        return orjson.dumps(metadata, default=_json_default, option=_JSON_OPTS)
    except TypeError as e:  # integers beyond 64 bits, unpaired surrogates, ...
        raise RowError("metadata", f"cannot be stored as JSON ({e})",
                       "use strings or ordinary numbers in metadata") from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays from Parquet / HF columns
        return value.tolist()
    return str(value)


def batch_examples(examples: Iterable[Example], lines: Iterable[int | None] | None = None,
                   size: int = BATCH_ROWS) -> Iterator[RowBatch]:
    """Yield Examples encoded in RowBatches of ``size`` rows; raise RowError for an invalid one."""
    line_iter = iter(lines) if lines is not None else None
    batch = RowBatch()
    for example in examples:
        check_messages(list(example.messages))
        messages = [{"role": m["role"], "content": m["content"]} for m in example.messages]
        batch.add(messages, encode_metadata(example.metadata),
                  next(line_iter) if line_iter is not None else None)
        if len(batch) >= size:
            yield batch
            batch = RowBatch()
    if len(batch):
        yield batch


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
    path, report, records, wanted = _open_records(path, shape, kind, display_name)
    parsed = ParsedFile([], [], report)
    for line, messages, metadata in _converted(path, records, report, wanted, max_chars,
                                               progress):
        parsed.examples.append(Example(tuple(messages), metadata))
        parsed.lines.append(line)
    return parsed


def read_batches(path: str | Path, *, shape: str = "auto", kind: str = "auto",
                 max_chars: int = MAX_CHARS, display_name: str | None = None,
                 progress: Callable[[int], None] | None = None, batch_rows: int = BATCH_ROWS
                 ) -> tuple[ImportReport, Iterator[RowBatch]]:
    """Return the report and a stream of encoded row batches; the report is complete once
    the stream is exhausted. File-level problems raise ImportFormatError before any batch."""
    path, report, records, wanted = _open_records(path, shape, kind, display_name)
    return report, _batches(path, records, report, wanted, max_chars, progress, batch_rows)


def _open_records(path: str | Path, shape: str, kind: str, display_name: str | None
                  ) -> tuple[Path, ImportReport, Iterator[Record], str | None]:
    path = Path(path)
    if shape != "auto" and shape not in SHAPES:
        raise ImportFormatError(f"unknown shape '{shape}'; use auto or one of {', '.join(SHAPES)}")
    if not path.exists():
        raise ImportFormatError(f"{path}: no such file or folder")
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in get_args(FileKind):
        raise ImportFormatError(f"unknown file kind '{kind}'; use one of "
                                f"{', '.join(get_args(FileKind))}")
    report = ImportReport(file=display_name or path.name, kind=kind)
    wanted = None if shape == "auto" else shape
    return path, report, _records(path, kind, report, wanted), wanted


def _converted(path: Path, records: Iterator[Record], report: ImportReport, shape: str | None,
               max_chars: int, progress: Callable[[int], None] | None
               ) -> Iterator[tuple[int, list[dict], dict]]:
    """Yield (line, messages, metadata) per good record and reject the others."""
    columnar = report.kind in ("parquet", "hf")
    for line, record, error in records:
        report.rows_read += 1
        if progress is not None and report.rows_read % PROGRESS_EVERY == 0:
            progress(report.rows_read)
        if error is None:
            try:
                found, messages, metadata = _convert(record, shape, max_chars, columnar)
                encode_metadata(metadata)  # the same check as an import into the store
            except RowError as e:
                error = e
            else:
                report.shapes[found] += 1
                report.imported += 1
                yield line, messages, metadata
                continue
        report.reject(line, error, record)
    _refuse_non_dataset(path, report)


def _batches(path: Path, records: Iterator[Record], report: ImportReport, shape: str | None,
             max_chars: int, progress: Callable[[int], None] | None, batch_rows: int
             ) -> Iterator[RowBatch]:
    """Yield RowBatches of the good records and reject the others: the hot loop of an import,
    so plain Alpaca rows take a fast path and counts are kept in locals."""
    columnar = report.kind in ("parquet", "hf")
    fast = _fast_alpaca if shape in (None, "alpaca") else _no_fast_path
    rows: list[tuple] = []
    read = fast_rows = 0
    for line, record, error in records:
        read += 1
        row = fast(record, max_chars, line) if error is None else None
        if row is not None:
            fast_rows += 1
            rows.append(row)
        elif error is None:
            row = _general_row(record, line, shape, max_chars, columnar, report)
            if row is not None:
                rows.append(row)
        else:
            report.reject(line, error, record)
        if progress is not None and read % PROGRESS_EVERY == 0:
            progress(read)
        if len(rows) >= batch_rows:
            fast_rows = _tally(report, read, fast_rows)
            yield RowBatch(rows)
            rows = []
    _tally(report, read, fast_rows)
    if rows:
        yield RowBatch(rows)
    _refuse_non_dataset(path, report)


def _tally(report: ImportReport, read: int, fast_rows: int) -> int:
    report.rows_read = read
    report.imported = read - len(report.rejected)  # every row read is one or the other
    if fast_rows:
        report.shapes["alpaca"] += fast_rows
    return 0


def _general_row(record: Any, line: int, shape: str | None, max_chars: int, columnar: bool,
                 report: ImportReport) -> tuple | None:
    try:
        found, messages, metadata = _convert(record, shape, max_chars, columnar)
        row = encode_row(messages, encode_metadata(metadata), line)
    except RowError as e:
        report.reject(line, e, record)
        return None
    report.shapes[found] += 1
    return row


def _no_fast_path(record: Any, max_chars: int, line: int) -> None:
    return None


_ALPACA_ROW = b'[{"role":"user","content":%s},{"role":"assistant","content":%s}]'
_ALPACA_META = b'{"_source":{"shape":"alpaca"}}'
_ALPACA_META_AT = b'{"_source":{"shape":"alpaca","input_at":%d}}'


def _fast_alpaca(record: Any, max_chars: int, line: int | None) -> tuple | None:
    """Return the encoded row of a plain, valid Alpaca record (exactly instruction, input and
    output, all text); None sends anything else down the general path, which has the final
    word on validity. Byte for byte the same result as the general path (tested)."""
    try:
        if len(record) != 3:
            return None
        ins, inp, out = record["instruction"], record["input"], record["output"]
    except (KeyError, TypeError):
        return None
    if not (type(ins) is type(inp) is type(out) is str) or not ins or not out \
            or ins.isspace() or out.isspace():
        return None
    if inp and not inp.isspace():
        user, meta = f"{ins}{ALPACA_JOIN}{inp}", _ALPACA_META_AT % len(ins)
    else:
        user, meta = ins, _ALPACA_META
    n_user, n_out = len(user), len(out)
    if n_user > max_chars or n_out > max_chars:
        return None
    dumps = orjson.dumps
    return _ALPACA_ROW % (dumps(user), dumps(out)), meta, 2, n_user + n_out, n_out, line


def encode_row(messages: list[dict], metadata_json: bytes, line: int | None = None) -> tuple:
    """Return (messages JSON, metadata JSON, turns, characters, response characters, line) for
    one valid conversation of canonical {"role", "content"} dicts."""
    n = response = 0
    for m in messages:  # one pass for both lengths
        n += len(m["content"])
        if m["role"] == "assistant":
            response = len(m["content"])
    return orjson.dumps(messages), metadata_json, len(messages), n, response, line


def _convert(record: Any, shape: str | None, max_chars: int, columnar: bool
             ) -> tuple[str, list[dict], dict]:
    if type(record) is not dict:
        raise RowError("(row)", f"expected a JSON object, got {type(record).__name__}",
                       "each line or item must be an object such as {\"messages\": [...]}")
    nested = None
    if "metadata" in record:
        record, nested = _split_nested(record, columnar)
    found = shape or detect_shape(record)
    if found is None:
        raise RowError("(row)", "unknown shape: " + shape_hint(record),
                       "rename the fields, or pass the shape explicitly")
    messages, metadata = convert(record, found)
    for i, m in enumerate(messages):
        if len(m["content"]) > max_chars:
            raise RowError(f"messages[{i}].content",
                           f"field too large ({len(m['content']):,} characters > {max_chars:,})",
                           "split the text, or raise the limit with max_chars / --max-chars")
    if nested is not None:
        metadata = _merge_nested(metadata, nested)
    return found, messages, metadata


def _split_nested(record: dict, columnar: bool) -> tuple[dict, dict | None]:
    # A "metadata" object holds metadata (ours: the metadata column of a Parquet / HF export,
    # or keys that would clash with a format's own fields): fold it into the example's metadata.
    value = record["metadata"]
    if isinstance(value, str) and columnar:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return record, None
    if not isinstance(value, dict):
        return record, None
    return {k: v for k, v in record.items() if k != "metadata"}, value


def _merge_nested(metadata: dict, nested: dict) -> dict:
    if any(k in metadata for k in nested):
        return {**metadata, "metadata": nested}  # a clash: keep it nested rather than lose a key
    return {**metadata, **nested}


def _refuse_non_dataset(path: Path, report: ImportReport) -> None:
    if report.rows_read == 0:
        raise ImportFormatError(f"{path}: the file is empty (no rows found)")
    if report.imported == 0:
        reasons = Counter(r.reason.split(":")[0] for r in report.rejected).most_common(3)
        first = report.rejected[0]
        raise ImportFormatError(
            f"{path}: no row could be imported ({report.rows_read} read); most common problems: "
            + "; ".join(f"{r} ({n}x)" for r, n in reasons)
            + f". First: {report.unit} {first.line}, {first.field}: {first.reason} — {first.fix}")


def _excerpt(record: Any, limit: int = 200) -> str:
    if isinstance(record, (bytes, bytearray)):
        text = bytes(record[:limit * 4]).decode("utf-8", "replace")
    elif isinstance(record, str):
        text = record
    else:
        try:
            text = orjson.dumps(record, default=str, option=_JSON_OPTS).decode()
        except TypeError:
            text = repr(record)
    text = _BAD_BYTES.sub("\ufffd", text)
    return text if len(text) <= limit else text[:limit] + "…"


# --- record sources ---------------------------------------------------------------------------
Record = tuple[int, Any, "RowError | None"]


def _records(path: Path, kind: str, report: ImportReport, shape: str | None
             ) -> Iterator[Record]:
    """Return the records of a file; file-level problems raise here, before the first one."""
    if kind == "parquet":
        return _parquet_records(path, shape)
    if kind == "hf":
        return _hf_records(path, shape)
    data = path.read_bytes()
    if not data or data.isspace():
        raise ImportFormatError(f"{path}: the file is empty")
    text = _bom_text(path, data)
    if kind == "jsonl":
        return _jsonl_records(data, text, report)
    if kind == "json":
        return _json_records(path, data, text, report)
    body, lossy = (text, False) if text is not None else _decode(data)
    if kind in ("csv", "tsv"):
        return _csv_records(path, body, lossy, "\t" if kind == "tsv" else ",", report, shape)
    return _txt_records(body, report)


def _bom_text(path: Path, data: bytes) -> str | None:
    """Decode files that announce a non-UTF-8 Unicode encoding; refuse binary files."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if data.startswith(bom):
            return data.decode(enc, errors="replace")
    head = data[:8192]
    if b"\x00" in head:
        if head.count(b"\x00") * 3 > len(head):  # every other byte: UTF-16 text without a BOM
            raise ImportFormatError(f"{path}: looks like UTF-16 text without a byte-order mark; "
                                    "re-save the file as UTF-8")
        raise ImportFormatError(f"{path}: looks like a binary file (NUL bytes), not a text "
                                "dataset; export it as JSONL, CSV or Parquet")
    return None


def _decode(data: bytes) -> tuple[str, bool]:
    """Return the text and whether some bytes were not UTF-8."""
    try:
        return data.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        # Undecodable bytes become lone surrogates, so a bad row can be rejected on its own.
        return data.decode("utf-8-sig", errors="surrogateescape"), True


def _jsonl_records(data: bytes, text: str | None, report: ImportReport) -> Iterator[Record]:
    if text is not None:
        data = text.encode("utf-8", errors="surrogateescape")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline that ends the last line does not start another
    return _jsonl_lines(lines, report)


def _jsonl_lines(lines: list[bytes], report: ImportReport) -> Iterator[Record]:
    loads = orjson.loads
    for n, raw in enumerate(lines, 1):
        try:
            yield n, loads(raw), None
        except orjson.JSONDecodeError as e:
            if not raw.strip():
                report.blank_lines += 1
                continue
            yield n, raw, _json_line_error(raw, e)


def _json_line_error(raw: bytes, error: Exception) -> RowError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowError("(line)", f"not valid UTF-8 (byte {raw[e.start]:#x} at column "
                        f"{e.start + 1})", "re-save the file as UTF-8")
    return RowError("(line)", f"bad JSON: {error}",
                    "fix the syntax: one complete JSON object per line")


def _json_records(path: Path, data: bytes, text: str | None, report: ImportReport
                  ) -> Iterator[Record]:
    body: str | bytes = text if text is not None else data
    if isinstance(body, bytes) and body.startswith(codecs.BOM_UTF8):
        body = body[len(codecs.BOM_UTF8):]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        head = body.lstrip()[:1]
        if head in ("{", b"{") and ("\n{" in body if isinstance(body, str) else b"\n{" in body):
            report.kind = "jsonl"  # a .json file that is really JSON Lines
            return _jsonl_records(data, text, report)
        raise ImportFormatError(f"{path}: not valid JSON ({_json_problem(body, e)}); a .json "
                                "file must hold an array of objects, or use .jsonl with one "
                                "object per line") from None
    items = _json_items(path, doc)
    return zip(count(1), items, repeat(None))  # no Python frame per item


def _json_problem(body: str | bytes, error: orjson.JSONDecodeError) -> str:
    if isinstance(body, bytes):
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            line = body[:e.start].count(b"\n") + 1
            return (f"line {line}: not valid UTF-8 (byte {body[e.start]:#x}); re-save the file "
                    "as UTF-8")
    return str(error)


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


def _csv_records(path: Path, body: str, lossy: bool, delimiter: str, report: ImportReport,
                 shape: str | None) -> Iterator[Record]:
    csv.field_size_limit(sys.maxsize)  # huge cells are checked by max_chars, per row
    reader = csv.reader(_io.StringIO(body, newline=""), delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise ImportFormatError(f"{path}: unreadable CSV header ({e})") from None
    if not header or (shape is None and detect_shape(dict.fromkeys(header, "")) is None):
        raise ImportFormatError(f"{path}: CSV header {header!r} matches no dataset shape; "
                                "name the columns instruction/input/output, prompt/completion, "
                                "messages, conversations or text")
    return _csv_rows(reader, header, lossy, report)


def _csv_rows(reader: Any, header: list[str], lossy: bool, report: ImportReport
              ) -> Iterator[Record]:
    start = reader.line_num
    while True:
        line = start + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start = reader.line_num
            yield line, "", RowError("(row)", f"bad CSV: {e}", "fix the quoting of this row")
            continue
        start = reader.line_num
        if not any(v.strip() for v in values):
            report.blank_lines += 1
            continue
        yield _csv_record(line, header, values, lossy)


def _csv_record(line: int, header: list[str], values: list[str], lossy: bool) -> Record:
    if lossy and any(_BAD_BYTES.search(v) for v in values):
        return line, ",".join(values), RowError("(row)", "not valid UTF-8",
                                                "re-save the file as UTF-8")
    if len(values) != len(header):
        return line, ",".join(values), RowError(
            "(row)", f"{len(values)} columns, header has {len(header)}",
            "quote fields that contain the delimiter or line breaks")
    row = dict(zip(header, values))
    for key in _JSON_COLUMNS:
        if key in row and row[key].strip():
            try:
                row[key] = orjson.loads(row[key])
            except orjson.JSONDecodeError as e:
                return line, row, RowError(key, f"bad JSON in cell: {e}",
                                           f"'{key}' cells must hold JSON")
    return line, row, None


def _txt_records(body: str, report: ImportReport) -> Iterator[Record]:
    line = 1
    for block in body.replace("\r\n", "\n").split("\n\n"):
        first = line + len(block) - len(block.lstrip("\n"))
        line += block.count("\n") + 2
        if not block.strip():
            continue
        if _BAD_BYTES.search(block):
            yield first, block, RowError("(text)", "not valid UTF-8", "re-save the file as UTF-8")
        else:
            yield first, {"text": block.strip("\n")}, None


def _check_columns(path: Path, names: list[str], shape: str | None, what: str) -> None:
    if shape is None and detect_shape(dict.fromkeys(names, "")) is None:
        raise ImportFormatError(f"{path}: {what} columns {names} match no dataset shape; "
                                "expected messages, conversations, instruction+output, "
                                "prompt+completion or text")


def _parquet_records(path: Path, shape: str | None) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise ImportFormatError(f"{path}: not a readable Parquet file ({e})") from None
    _check_columns(path, parquet.schema_arrow.names, shape, "Parquet")
    return _arrow_rows(path, parquet.iter_batches(batch_size=BATCH_ROWS), None)


def _arrow_rows(path: Path, batches: Iterable[Any], split: str | None, start: int = 0
                ) -> Iterator[Record]:
    n = start
    try:
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield n, ({**record, "split": split} if split else record), None
    except (OSError, ValueError) as e:  # a damaged page or column chunk
        raise ImportFormatError(f"{path}: unreadable after row {n} ({e})") from None


def _hf_records(path: Path, shape: str | None) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ...
        raise ImportFormatError(f"{path}: not a readable Hugging Face dataset folder ({e})"
                                ) from None
    is_dict = isinstance(loaded, datasets.DatasetDict)
    splits = list(loaded.items()) if is_dict else [(None, loaded)]
    for _, ds in splits:
        _check_columns(path, list(ds.column_names), shape, "dataset")
    return _hf_rows(path, splits)


def _hf_rows(path: Path, splits: list[tuple[str | None, Any]]) -> Iterator[Record]:
    n = 0
    for split, ds in splits:
        batches = ds.with_format("arrow").iter(batch_size=BATCH_ROWS)
        yield from _arrow_rows(path, batches, split, n)
        n += len(ds)


# --- writers ----------------------------------------------------------------------------------
def user_metadata(metadata: dict) -> dict:
    """Return the metadata without the workbench's own bookkeeping keys."""
    return {k: v for k, v in metadata.items() if not k.startswith("_")}


def _record(metadata: dict, fields: dict) -> dict:
    # User keys sit next to the format's fields, except names a reader would take for a field
    # ("text", "prompt", ...): those go into a "metadata" object, which readers fold back.
    user = user_metadata(metadata)
    clash = {k: v for k, v in user.items() if k in RESERVED_KEYS}
    record = {k: v for k, v in user.items() if k not in RESERVED_KEYS} if clash else user
    record = {**record, **fields}
    if clash:
        record["metadata"] = clash
    return record


def to_openai(example: Example) -> dict:
    """Return an OpenAI chat record: messages plus metadata as top-level keys."""
    return _record(example.metadata, {"messages": [
        {"role": m["role"], "content": m["content"]} for m in example.messages]})


def to_alpaca(example: Example) -> dict:
    """Return an Alpaca record; earlier turns go to `history` and a system turn to `system`."""
    msgs = list(example.messages)
    system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
    pairs = [(msgs[i], msgs[i + 1]) for i in range(0, len(msgs) - 1, 2)]
    if not msgs or len(msgs) % 2 or any(u["role"] != "user" or a["role"] != "assistant"
                                        for u, a in pairs):
        raise ExportError(f"row {example.id}: Alpaca needs alternating user/assistant turns "
                          "(after an optional system turn) ending with the assistant; export "
                          "it as OpenAI chat or ShareGPT")
    instruction, inp = alpaca_split(example.metadata, pairs[-1][0]["content"])
    fields: dict[str, Any] = {"instruction": instruction, "input": inp,
                              "output": pairs[-1][1]["content"]}
    if system is not None:
        fields["system"] = system
    if len(pairs) > 1:
        fields["history"] = [[u["content"], a["content"]] for u, a in pairs[:-1]]
    return _record(example.metadata, fields)


_TO_SHAREGPT = {"user": "human", "assistant": "gpt", "system": "system"}


def to_sharegpt(example: Example) -> dict:
    """Return a ShareGPT record with human/gpt/system speakers."""
    turns = [{"from": _TO_SHAREGPT[m["role"]], "value": m["content"]} for m in example.messages]
    return _record(example.metadata, {"conversations": turns})


def write_dataset(examples: Iterable[Example], path: str | Path, fmt: str) -> Path:
    """Write examples in an export format and return the path written."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("parquet", "hf"):
        return _write_columnar(list(examples), path, fmt)
    convert_one = {"openai": to_openai, "alpaca_json": to_alpaca, "alpaca_jsonl": to_alpaca,
                   "sharegpt": to_sharegpt, "sharegpt_jsonl": to_sharegpt}[fmt]
    records = [convert_one(e) for e in examples]
    try:
        if fmt in ("alpaca_json", "sharegpt"):
            data = orjson.dumps(records, default=_json_default,
                                option=orjson.OPT_INDENT_2 | _JSON_OPTS)
        else:
            data = b"".join(orjson.dumps(r, default=_json_default, option=_JSON_OPTS) + b"\n"
                            for r in records)
    except TypeError as e:
        raise ExportError(f"a row cannot be written as JSON ({e})") from None
    path.write_bytes(data)
    return path


def _write_columnar(examples: list[Example], path: Path, fmt: str) -> Path:
    import pyarrow as pa

    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = pa.table({
        "messages": pa.array([[{"role": m["role"], "content": m["content"]}
                               for m in e.messages] for e in examples], message_type),
        "metadata": pa.array([encode_metadata(user_metadata(e.metadata)).decode()
                              for e in examples], pa.string()),
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


__all__ = ["EXPORT_FORMATS", "ImportReport", "ParsedFile", "Rejection", "RowBatch",
           "batch_examples", "detect_kind", "encode_messages", "encode_metadata",
           "export_suffix", "read_batches", "read_dataset", "to_alpaca", "to_openai",
           "to_sharegpt", "user_metadata", "write_dataset"]
