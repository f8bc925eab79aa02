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
import json
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count, repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from .exceptions import ExportError, ImportFormatError
from .schema import (
    ALPACA_JOIN,
    INT64_MAX,
    INT64_MIN,
    MAX_CHARS,
    RESERVED_KEYS,
    SHAPES,
    Example,
    RowError,
    alpaca_split,
    check_messages,
    check_metadata_size,
    check_size,
    convert,
    detect_shape,
    encode_messages,
    shape_hint,
)

FileKind = Literal["jsonl", "json", "csv", "tsv", "parquet", "hf", "txt"]
ExportFormat = Literal["openai", "alpaca_json", "alpaca_jsonl", "sharegpt", "sharegpt_jsonl",
                       "parquet", "hf"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
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


@dataclass(frozen=True)
class Note:
    """A value imported in another form than the file had it (an integer kept as a string)."""

    file: str
    line: int
    field: str
    note: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.note}"


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
    notes: list[Note] = field(default_factory=list)
    split: str | None = None  # the split of a Hugging Face DatasetDict this came from

    @property
    def unit(self) -> str:
        """How a position in this file is counted: line, item (JSON array) or row."""
        return {"json": "item", "parquet": "row", "hf": "row"}.get(self.kind, "line")

    def summary(self) -> str:
        """Return one line: rows read, imported, rejected and the shapes found."""
        shapes = ", ".join(f"{k} {v}" for k, v in self.shapes.most_common()) or "none"
        split = f", split '{self.split}'" if self.split is not None else ""
        notes = (f"; {len(self.notes)} integers beyond 64 bits kept as strings"
                 if self.notes else "")
        return (f"{self.file}{split}: read {self.rows_read} rows, imported {self.imported}, "
                f"rejected {len(self.rejected)} (shapes: {shapes}){notes}")

    def reject(self, line: int, error: RowError, record: Any) -> None:
        """Record one rejected row."""
        self.rejected.append(Rejection(self.file, line, error.field, error.reason, error.fix,
                                       _excerpt(record)))

    def note(self, line: int, where: str, text: str) -> None:
        """Record one value imported in another form than the file had it."""
        self.notes.append(Note(self.file, line, where, text))


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
    """Return metadata as JSON bytes; raise RowError naming the problem if it cannot be (not
    an object, not JSON, or over MAX_METADATA_BYTES)."""
    if not isinstance(metadata, dict):
        raise RowError("metadata", f"wrong type: {type(metadata).__name__}",
                       "metadata must be an object")
    data = _dump_metadata(metadata)
    check_metadata_size(data, metadata)
    return data


def _dump_metadata(metadata: dict) -> bytes:
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
    """Yield Examples encoded in RowBatches of ``size`` rows; raise RowError for an invalid one
    (the same checks and size caps as an import, so an edit cannot bypass them)."""
    line_iter = iter(lines) if lines is not None else None
    batch = RowBatch()
    for example in examples:
        check_messages(list(example.messages))
        check_size(list(example.messages))
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
                 progress: Callable[[int], None] | None = None,
                 split: str | None = None) -> ParsedFile:
    """Return the examples of a dataset file with an import report; raise if it is no dataset.

    ``split`` picks one split of a Hugging Face DatasetDict folder (needed when it has several).
    """
    path, report, records, wanted = _open_records(path, shape, kind, display_name, split)
    parsed = ParsedFile([], [], report)
    for line, messages, metadata in _converted(path, records, report, wanted, max_chars,
                                               progress):
        parsed.examples.append(Example(tuple(messages), metadata))
        parsed.lines.append(line)
    return parsed


def read_batches(path: str | Path, *, shape: str = "auto", kind: str = "auto",
                 max_chars: int = MAX_CHARS, display_name: str | None = None,
                 progress: Callable[[int], None] | None = None, batch_rows: int = BATCH_ROWS,
                 split: str | None = None) -> tuple[ImportReport, Iterator[RowBatch]]:
    """Return the report and a stream of encoded row batches; the report is complete once
    the stream is exhausted. File-level problems raise ImportFormatError before any batch.
    The file is read block by block, so memory stays bounded whatever its size."""
    path, report, records, wanted = _open_records(path, shape, kind, display_name, split)
    return report, _batches(path, records, report, wanted, max_chars, progress, batch_rows)


def _open_records(path: str | Path, shape: str, kind: str, display_name: str | None,
                  split: str | None) -> tuple[Path, ImportReport, Iterator[Record], str | None]:
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
    return path, report, _records(path, kind, report, wanted, split), wanted


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
    check_size(messages, max_chars)
    if nested is not None:
        metadata = _merge_nested(metadata, nested)
    return found, messages, metadata


def _split_nested(record: dict, columnar: bool) -> tuple[dict, dict | None]:
    # A "metadata" object holds metadata (ours: the metadata column of a Parquet / HF export,
    # or keys that would clash with a format's own fields): fold it into the example's metadata.
    value = record["metadata"]
    if value is None and columnar:  # our export leaves it empty where every key has a column
        return {k: v for k, v in record.items() if k != "metadata"}, None
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
# Files are read in blocks, so an import holds one block and one row whatever the file's size.
READ_BLOCK = 1 << 20
# A line (or JSON array item, or text block) longer than this is rejected without keeping it.
MAX_LINE_BYTES = 64 << 20
# JSON arrays up to this size are parsed whole (orjson, fastest); bigger ones item by item.
JSON_WHOLE_BYTES = 32 << 20
_HEAD_BYTES = 8192
# A run of 19 digits may be an integer beyond 64 bits, which orjson would turn into a float.
_LONG_DIGITS = re.compile(rb"\d{19}")
_DIGIT_MASK = bytes(48 if 48 <= b <= 57 else 120 for b in range(256))  # digit -> "0", else "x"
_DIGIT_RUN = b"0" * 19
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_BINARY_MAGIC = (b"\x89PNG", b"GIF8", b"\xff\xd8\xff", b"%PDF", b"PK\x03\x04", b"\x1f\x8b",
                 b"BZh", b"\xfd7zXZ", b"7z\xbc\xaf", b"\x7fELF", b"SQLite format 3\x00",
                 b"PAR1")
_CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32)])


def _records(path: Path, kind: str, report: ImportReport, shape: str | None,
             split: str | None) -> Iterator[Record]:
    """Return the records of a file; file-level problems raise here, before the first one."""
    if split is not None and kind != "hf":
        raise ImportFormatError(f"{path}: --split applies to Hugging Face dataset folders only; "
                                "leave it out for a file")
    if kind == "parquet":
        return _parquet_records(path, shape)
    if kind == "hf":
        return _hf_records(path, shape, split, report)
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    if not head.strip() and len(head) < _HEAD_BYTES:
        raise ImportFormatError(f"{path}: the file is empty")
    encoding = _text_encoding(path, head)
    if kind == "jsonl":
        return _jsonl_records(path, encoding, report)
    if kind == "json":
        return _json_records(path, head, encoding, report)
    if kind in ("csv", "tsv"):
        return _csv_records(path, encoding, "\t" if kind == "tsv" else ",", report, shape)
    return _txt_records(path, encoding)


def _text_encoding(path: Path, head: bytes) -> str:
    """Return a text file's encoding from its byte-order mark (UTF-8 without one); refuse
    files that are binary, or UTF-16 without a mark."""
    for bom, enc in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                     (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return enc
    if head.count(b"\x00") * 3 > len(head):  # every other byte: UTF-16 text without a BOM
        raise ImportFormatError(f"{path}: looks like UTF-16 text without a byte-order mark; "
                                "re-save the file as UTF-8")
    # A few NUL bytes in text are bad rows, rejected one by one wherever they are; a file
    # that starts like an image or an archive, or is full of control bytes, is no text at all.
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    if head.startswith(_BINARY_MAGIC) or head[8:12] == b"DUCK" or controls * 10 > len(head):
        raise ImportFormatError(f"{path}: looks like a binary file, not a text dataset; export "
                                "it as JSONL, CSV or Parquet")
    return "utf-8"


class _Recoded:
    """A binary-like reader giving UTF-8 bytes of a file in another Unicode encoding."""

    def __init__(self, raw: Any, encoding: str):
        self._text = _io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")

    def read(self, n: int) -> bytes:
        return self._text.read(n).encode("utf-8")


def _line_blocks(path: Path, encoding: str) -> Iterator[bytes | int]:
    """Yield a file as UTF-8 blocks of whole lines (split them on b"\\n"). A line longer than
    MAX_LINE_BYTES is skipped without keeping it, and its length is yielded instead."""
    with open(path, "rb") as raw:
        f = raw if encoding == "utf-8" else _Recoded(raw, encoding)
        rest, skipped, first = b"", 0, True
        while chunk := f.read(READ_BLOCK):
            if first:
                chunk, first = chunk.removeprefix(codecs.BOM_UTF8), False
            if skipped:
                cut = chunk.find(b"\n")
                if cut < 0:
                    skipped += len(chunk)
                    continue
                yield skipped + cut
                skipped, chunk = 0, chunk[cut + 1:]
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                if len(rest) > MAX_LINE_BYTES:
                    skipped, rest = len(rest), b""
                continue
            yield data[:cut]
            rest = data[cut + 1:]
        if skipped:
            yield skipped
        elif rest:
            yield rest


def _too_long(n_bytes: int, unit: str = "line") -> RowError:
    return RowError(f"({unit})", f"{unit} too long ({n_bytes:,} bytes > {MAX_LINE_BYTES:,})",
                    "split the record: one row must stay under 64 MB")


def _jsonl_records(path: Path, encoding: str, report: ImportReport) -> Iterator[Record]:
    loads = orjson.loads
    n = 0
    for block in _line_blocks(path, encoding):
        if type(block) is int:
            n += 1
            yield n, b"", _too_long(block)
            continue
        long_lines = _long_digit_lines(block, n)
        for raw in block.split(b"\n"):
            n += 1
            try:
                record = loads(raw)
            except orjson.JSONDecodeError as e:
                if not raw.strip():
                    report.blank_lines += 1
                    continue
                yield n, raw.rstrip(b"\r"), _json_line_error(raw, e)
                continue
            if long_lines and n in long_lines:
                record = _exact_record(raw, record, n, report)
            yield n, record, None


def _long_digit_lines(block: bytes, before: int) -> set[int]:
    """Return the numbers of the lines of a block that hold a run of 19 digits. Digits are
    masked to "0" and the rest to "x" and the run searched with bytes.find: ~50 times faster
    than a regular expression over the block."""
    masked = block.translate(_DIGIT_MASK)
    found, line, pos = set(), before + 1, 0
    at = masked.find(_DIGIT_RUN)
    while at >= 0:
        line += block.count(b"\n", pos, at)
        found.add(line)
        pos = block.find(b"\n", at)  # the rest of this line is done
        if pos < 0:
            break
        at = masked.find(_DIGIT_RUN, pos)
    return found


def _json_line_error(raw: bytes, error: Exception) -> RowError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return RowError("(line)", f"not valid UTF-8 (byte {raw[e.start]:#x} at column "
                        f"{e.start + 1})", "re-save the file as UTF-8")
    if b"\x00" in raw:
        return _nul_error("line", raw.index(b"\x00") + 1)
    return RowError("(line)", f"bad JSON: {error}",
                    "fix the syntax: one complete JSON object per line")


def _nul_error(unit: str, column: int | None = None) -> RowError:
    where = f" at column {column}" if column else ""
    return RowError(f"({unit})", f"NUL byte{where} (binary data, not text)",
                    "remove the NUL bytes, or export the data again as UTF-8 text")


def _exact_json(raw: bytes | str) -> tuple[Any, list[str]]:
    """Return JSON parsed with every integer beyond 64 bits kept exactly, as its digits (a
    string), and the list of those strings."""
    wide: list[str] = []
    return json.loads(raw, parse_int=lambda text: _wide_int(text, wide)), wide


def _wide_int(text: str, wide: list[str]) -> int | str:
    """Return an integer literal as an int, or as its digits (appended to ``wide``) when it
    does not fit in 64 bits."""
    if len(text) < 19:
        return int(text)
    if len(text) <= 4000:  # int() refuses longer digit strings
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    wide.append(text)
    return text


def _exact_record(raw: bytes, record: Any, line: int, report: ImportReport) -> Any:
    exact, wide = _exact_json(raw)
    if not wide:
        return record
    _note_wide(report, line, exact, wide)
    return exact


def _note_wide(report: ImportReport, line: int, value: Any, wide: list[str]) -> None:
    for where in _paths_of(value, set(wide)):
        report.note(line, where, "integer beyond 64 bits: kept exactly, as a string")


def _paths_of(value: Any, targets: set[str], prefix: str = "") -> Iterator[str]:
    """Yield the paths (a.b[2]) of the string values of ``value`` that are in ``targets``."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths_of(v, targets, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths_of(v, targets, f"{prefix}[{i}]")
    elif isinstance(value, str) and value in targets:
        yield prefix or "(value)"


def _json_records(path: Path, head: bytes, encoding: str, report: ImportReport
                  ) -> Iterator[Record]:
    start = head.decode(encoding, errors="replace").lstrip("\ufeff \t\r\n")[:1]
    if path.stat().st_size > JSON_WHOLE_BYTES:
        if start == "[":
            return _array_items(path, encoding, report)
        if start == "{" and _first_lines_are_records(path, encoding):
            report.kind = "jsonl"
            return _jsonl_records(path, encoding, report)
    data = path.read_bytes()  # small, or one big object: parsed whole
    body = data if encoding == "utf-8" else data.decode(encoding, errors="replace").encode()
    body = body.removeprefix(codecs.BOM_UTF8)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if start == "{" and b"\n{" in body:
            report.kind = "jsonl"  # a .json file that is really JSON Lines
            return _jsonl_records(path, encoding, report)
        if start == "[":  # item by item: a NUL byte or bad UTF-8 is one item's problem
            return _array_items(path, encoding, report)
        raise ImportFormatError(f"{path}: not valid JSON ({_json_problem(body, e)}); a .json "
                                "file must hold an array of objects, or use .jsonl with one "
                                "object per line") from None
    wide: list[str] = []
    if _LONG_DIGITS.search(body):
        doc, wide = _exact_json(body)
    items = _json_items(path, doc)
    if wide:
        for n, item in enumerate(items, 1):
            _note_wide(report, n, item, wide)
    return zip(count(1), items, repeat(None))  # no Python frame per item


def _first_lines_are_records(path: Path, encoding: str) -> bool:
    """Return whether a big .json file starting with "{" is JSON Lines: its first line is a
    whole object and another line follows."""
    if encoding != "utf-8":
        return False
    with open(path, "rb") as f:
        first = f.readline(MAX_LINE_BYTES).removeprefix(codecs.BOM_UTF8)
        second = f.readline(MAX_LINE_BYTES)
        while second and not second.strip():
            second = f.readline(MAX_LINE_BYTES)
    try:
        return isinstance(orjson.loads(first), dict) and second.lstrip().startswith(b"{")
    except orjson.JSONDecodeError:
        return False


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


def _text_chunks(path: Path, encoding: str) -> Iterator[str]:
    """Yield a text file decoded block by block; bytes that are not UTF-8 become lone
    surrogates, so that the item holding them can be rejected on its own."""
    name, errors = ("utf-8-sig", "surrogateescape") if encoding == "utf-8" else (encoding,
                                                                                "replace")
    decoder = codecs.getincrementaldecoder(name)(errors=errors)
    with open(path, "rb") as f:
        while chunk := f.read(READ_BLOCK):
            if text := decoder.decode(chunk):
                yield text
    if tail := decoder.decode(b"", final=True):
        yield tail


class _ArrayReader:
    """Reads the items of a JSON array from text chunks, holding one chunk and one item."""

    def __init__(self, path: Path, chunks: Iterator[str]):
        self.path, self.chunks = path, chunks
        self.buf, self.pos, self.lines_before = "", 0, 0
        self.lossy = False  # some bytes were not UTF-8
        self.wide: list[str] = []
        self._decoder = json.JSONDecoder(strict=False, parse_int=self._int)

    def _int(self, text: str) -> int | str:
        return _wide_int(text, self.wide)

    def _fill(self) -> bool:
        chunk = next(self.chunks, None)
        if chunk is None:
            return False
        self.lossy = self.lossy or _BAD_BYTES.search(chunk) is not None
        self.lines_before += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def peek(self) -> str:
        """Return the next character that is not whitespace ("" at the end)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._fill():
                return ""

    def expect(self, char: str) -> None:
        """Consume ``char`` (after whitespace) or raise the file's syntax error."""
        if self.peek() != char:
            found = self.peek() or "the end of the file"
            raise self.error(f"expected '{char}', found {found!r}")
        self.pos += 1

    def item(self) -> tuple[Any, str]:
        """Return the next value and its text."""
        self.peek()
        while True:
            self.wide = []
            try:
                value, end = self._decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                if len(self.buf) - self.pos > MAX_LINE_BYTES:
                    raise self.error(f"an item longer than {MAX_LINE_BYTES:,} bytes") from None
                if self._fill():
                    continue
                raise self.error(e.msg, e.pos) from None
            if end == len(self.buf) and self._fill():  # a number cut at the end of a chunk
                continue
            text, self.pos = self.buf[self.pos:end], end
            return value, text

    def error(self, problem: str, pos: int | None = None) -> ImportFormatError:
        line = self.lines_before + self.buf.count("\n", 0, self.pos if pos is None else pos) + 1
        return ImportFormatError(f"{self.path}: not valid JSON (line {line}: {problem}); a .json "
                                 "file must hold an array of objects, or use .jsonl with one "
                                 "object per line")


def _array_items(path: Path, encoding: str, report: ImportReport) -> Iterator[Record]:
    """Yield the items of a JSON array file one at a time. A NUL byte, bad UTF-8 or an integer
    beyond 64 bits is one item's problem; broken syntax refuses the file (nothing after it can
    be found)."""
    reader = _ArrayReader(path, _text_chunks(path, encoding))
    reader.expect("[")  # file-level problems raise before the first item
    return _array_rows(reader, report)


def _array_rows(reader: _ArrayReader, report: ImportReport) -> Iterator[Record]:
    n = 0
    while reader.peek() != "]":
        if n:
            reader.expect(",")
        value, text = reader.item()
        n += 1
        if "\x00" in text:
            yield n, text, _nul_error("item")
        elif reader.lossy and _BAD_BYTES.search(text):
            yield n, text, RowError("(item)", "not valid UTF-8", "re-save the file as UTF-8")
        else:
            if reader.wide:
                _note_wide(report, n, value, reader.wide)
            yield n, value, None
    reader.expect("]")
    if reader.peek():
        raise reader.error("more content after the array")


def _csv_records(path: Path, encoding: str, delimiter: str, report: ImportReport,
                 shape: str | None) -> Iterator[Record]:
    csv.field_size_limit(sys.maxsize)  # huge cells are checked by max_chars, per row
    f = open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, newline="",
             errors="surrogateescape" if encoding == "utf-8" else "replace")
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as e:
        f.close()
        raise ImportFormatError(f"{path}: unreadable CSV header ({e})") from None
    if not header or (shape is None and detect_shape(dict.fromkeys(header, "")) is None):
        f.close()
        raise ImportFormatError(f"{path}: CSV header {header!r} matches no dataset shape; "
                                "name the columns instruction/input/output, prompt/completion, "
                                "messages, conversations or text")
    return _csv_rows(f, reader, header, report)


def _csv_rows(f: Any, reader: Any, header: list[str], report: ImportReport
              ) -> Iterator[Record]:
    with f:
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
            yield _csv_record(line, header, values)


def _csv_record(line: int, header: list[str], values: list[str]) -> Record:
    joined = "\x1f".join(values)  # one scan of the row for bad bytes and NULs
    if _BAD_BYTES.search(joined):
        return line, ",".join(values), RowError("(row)", "not valid UTF-8",
                                                "re-save the file as UTF-8")
    if "\x00" in joined:
        return line, ",".join(values), _nul_error("row")
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


def _txt_records(path: Path, encoding: str) -> Iterator[Record]:
    """Yield one record per block of text between blank lines."""
    block: list[str] = []
    size = first = line = 0
    for chunk in _line_blocks(path, encoding):
        for raw in [chunk] if type(chunk) is int else chunk.split(b"\n"):
            line += 1
            long = type(raw) is int  # a line too long to keep: its block is rejected
            text = "" if long else raw.decode("utf-8", "surrogateescape").removesuffix("\r")
            if long or text:
                first = first or line
                size += raw if long else len(raw) + 1
                if size <= MAX_LINE_BYTES:
                    block.append(text)
            elif first:
                if (record := _txt_block(first, block, size)) is not None:
                    yield record
                block, size, first = [], 0, 0
    if first and (record := _txt_block(first, block, size)) is not None:
        yield record


def _txt_block(line: int, block: list[str], size: int) -> Record | None:
    if size > MAX_LINE_BYTES:
        return line, "", _too_long(size, "text")
    text = "\n".join(block)
    if not text.strip():
        return None  # whitespace between blocks
    if _BAD_BYTES.search(text):
        return line, text, RowError("(text)", "not valid UTF-8", "re-save the file as UTF-8")
    if "\x00" in text:
        return line, text, _nul_error("text")
    return line, {"text": text}, None


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
    return _arrow_rows(path, parquet.iter_batches(batch_size=BATCH_ROWS))


def _arrow_rows(path: Path, batches: Iterable[Any]) -> Iterator[Record]:
    n = 0
    try:
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield n, record, None
    except (OSError, ValueError) as e:  # a damaged page or column chunk
        raise ImportFormatError(f"{path}: unreadable after row {n} ({e})") from None


def hf_splits(path: str | Path) -> list[str] | None:
    """Return the split names of a Hugging Face DatasetDict folder (None for anything else)."""
    info = Path(path) / "dataset_dict.json"
    if not info.is_file():
        return None
    try:
        splits = orjson.loads(info.read_bytes()).get("splits")
    except (orjson.JSONDecodeError, AttributeError, OSError):
        return None
    return [str(s) for s in splits] if isinstance(splits, list) else None


def _pick_split(path: Path, names: list[str], split: str | None) -> str:
    # Splits are never merged: a test split silently imported as training data is a leak.
    if split is not None:
        if split not in names:
            raise ImportFormatError(f"{path}: no split '{split}'; the folder has "
                                    f"{', '.join(names)}")
        return split
    if len(names) == 1:
        return names[0]
    raise ImportFormatError(f"{path}: a dataset with {len(names)} splits ({', '.join(names)}); "
                            "import one with --split NAME, or each as its own dataset "
                            "(`workbench import` without --split makes DATASET-SPLIT for each)")


def _hf_records(path: Path, shape: str | None, split: str | None, report: ImportReport
                ) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, ...
        raise ImportFormatError(f"{path}: not a readable Hugging Face dataset folder ({e})"
                                ) from None
    if isinstance(loaded, datasets.DatasetDict):
        name = _pick_split(path, list(loaded), split)
        loaded, report.split = loaded[name], name
    elif split is not None:
        raise ImportFormatError(f"{path}: a dataset without splits; leave out --split")
    _check_columns(path, list(loaded.column_names), shape, "dataset")
    return _arrow_rows(path, loaded.with_format("arrow").iter(batch_size=BATCH_ROWS))


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


def write_dataset(examples: Iterable[Example], path: str | Path, fmt: str, *,
                  overwrite: bool = False) -> Path:
    """Write examples in an export format and return the path written.

    An existing target is refused unless ``overwrite`` (and a folder that is no Hugging Face
    dataset is never replaced). The data goes to a temporary file (or folder) next to the
    target and is renamed into place, so a failed export leaves the old file as it was.
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    _check_target(path, fmt, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "hf":
        return _write_hf_folder(list(examples), path)
    _replace_file(path, export_data(examples, fmt))
    return path


def export_data(examples: Iterable[Example], fmt: str) -> bytes:
    """Return the bytes of a one-file export format (every format but "hf", a folder)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        buffer = _io.BytesIO()
        pq.write_table(_columnar_table(list(examples)), buffer)
        return buffer.getvalue()
    convert_one = {"openai": to_openai, "alpaca_json": to_alpaca, "alpaca_jsonl": to_alpaca,
                   "sharegpt": to_sharegpt, "sharegpt_jsonl": to_sharegpt}[fmt]
    records = [convert_one(e) for e in examples]
    try:
        if fmt in ("alpaca_json", "sharegpt"):
            return orjson.dumps(records, default=_json_default,
                                option=orjson.OPT_INDENT_2 | _JSON_OPTS)
        return b"".join(orjson.dumps(r, default=_json_default, option=_JSON_OPTS) + b"\n"
                        for r in records)
    except TypeError as e:
        raise ExportError(f"a row cannot be written as JSON ({e})") from None


def _check_target(path: Path, fmt: str, overwrite: bool) -> None:
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_dir() and fmt != "hf":
        raise ExportError(f"{path}: is a folder; name a file to write, such as "
                          f"{path / ('dataset' + export_suffix(fmt))}")
    if fmt == "hf" and path.exists() and not _is_hf_folder(path):
        raise ExportError(f"{path}: exists and is not a Hugging Face dataset folder; name a "
                          "new folder to write")
    if not overwrite:
        raise ExportError(f"{path}: already exists; choose another name, or pass --force to "
                          "replace it")


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in
                                 ("dataset_info.json", "dataset_dict.json", "state.json"))


def _replace_file(path: Path, data: bytes) -> None:
    """Write data to a temporary file beside ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".workbench-export-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private; give it the mode the old file (or a new one) has.
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_hf_folder(examples: list[Example], path: Path) -> Path:
    import datasets

    work = Path(tempfile.mkdtemp(dir=path.parent, prefix=".workbench-export-"))
    try:
        datasets.Dataset(_columnar_table(examples)).save_to_disk(str(work / "new"))
        if path.exists():  # replacing (overwrite was checked): keep the old one until done
            os.replace(path, work / "old")
        os.replace(work / "new", path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _columnar_table(examples: list[Example]) -> Any:
    """Return a table of messages plus the user's metadata as native columns; keys that no
    column can hold exactly (mixed types, nested objects, missing in some rows, reserved
    names) go into a "metadata" JSON column that readers fold back."""
    import pyarrow as pa

    message_type = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    metadata = [user_metadata(e.metadata) for e in examples]
    columns = {"messages": pa.array([[{"role": m["role"], "content": m["content"]}
                                      for m in e.messages] for e in examples], message_type)}
    native = _native_columns(metadata)
    columns.update(native)
    rest = [{k: v for k, v in m.items() if k not in native} for m in metadata]
    if any(rest):
        columns["metadata"] = pa.array([_dump_metadata(r).decode() if r else None
                                        for r in rest], pa.string())
    return pa.table(columns)


def _native_columns(metadata: list[dict]) -> dict[str, Any]:
    if not metadata:
        return {}
    shared = [k for k in metadata[0] if all(k in m for m in metadata)]
    columns = {}
    for key in shared:
        if isinstance(key, str) and key and key not in RESERVED_KEYS:
            array = _native_array([m[key] for m in metadata])
            if array is not None:
                columns[key] = array
    return columns


def _native_array(values: list) -> Any:
    """Return an Arrow array holding values exactly (nulls allowed), or None if none can."""
    import pyarrow as pa

    kinds = {_value_kind(v) for v in values if v is not None}
    if len(kinds) != 1 or "other" in kinds:
        return None
    arrow_type = {"str": pa.string(), "bool": pa.bool_(), "int": pa.int64(),
                  "float": pa.float64(), "list[str]": pa.list_(pa.string())}[kinds.pop()]
    try:
        return pa.array(values, arrow_type)
    except (pa.ArrowException, OverflowError, TypeError):
        return None


def _value_kind(value: Any) -> str:
    kind = type(value)
    if kind is str or kind is bool or kind is float:
        return kind.__name__
    if kind is int:
        return "int" if INT64_MIN <= value <= INT64_MAX else "other"
    if kind is list and all(type(v) is str for v in value):
        return "list[str]"
    return "other"


def export_suffix(fmt: str) -> str:
    """Return the file suffix (or "" for a folder) an export format is written with."""
    return {"openai": ".jsonl", "alpaca_json": ".json", "alpaca_jsonl": ".jsonl",
            "sharegpt": ".json", "sharegpt_jsonl": ".jsonl", "parquet": ".parquet",
            "hf": ""}[fmt]


__all__ = ["EXPORT_FORMATS", "MAX_CHARS", "ImportReport", "Note", "ParsedFile", "Rejection",
           "RowBatch", "batch_examples", "detect_kind", "encode_messages", "encode_metadata",
           "export_data", "export_suffix", "hf_splits", "read_batches", "read_dataset",
           "to_alpaca", "to_openai", "to_sharegpt", "user_metadata", "write_dataset"]
