"""Bad input: every rejected row is reported (file, line, field, reason) and nothing is lost;
a file that is no dataset gets one clear ImportFormatError and leaves the store unchanged."""

from __future__ import annotations

import codecs
import os
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.exceptions import ImportFormatError
from workbench.io import read_dataset

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
GOOD_LINE = orjson.dumps(GOOD)


def accounted(parsed) -> None:
    """Assert nothing is lost: imported + rejected == read, each rejected line listed once."""
    report = parsed.report
    lines = [r.line for r in report.rejected]
    assert report.imported + len(report.rejected) == report.rows_read
    assert len(set(lines)) == len(lines)
    assert not set(lines) & set(parsed.lines)
    assert all(r.file and r.field and r.reason and r.fix for r in report.rejected)


def rejected(parsed) -> dict[int, tuple[str, str]]:
    return {r.line: (r.field, r.reason) for r in parsed.report.rejected}


def test_malformed_lines_are_rejected_one_by_one(write_jsonl):
    parsed = read_dataset(write_jsonl([GOOD_LINE, b"{'single': 'quotes'}", b'{"messages": [',
                                       b"not json at all", GOOD_LINE, b"[1, 2]", b"42"]))
    accounted(parsed)
    assert parsed.lines == [1, 5]
    got = rejected(parsed)
    assert set(got) == {2, 3, 4, 6, 7}
    assert all(got[n][0] == "(line)" and got[n][1].startswith("bad JSON") for n in (2, 3, 4))
    assert got[6] == ("(row)", "expected a JSON object, got list")
    assert got[7] == ("(row)", "expected a JSON object, got int")
    assert parsed.report.rejected[0].raw == "{'single': 'quotes'}"
    assert str(parsed.report.rejected[0]).startswith("data.jsonl:2: (line): bad JSON")


def test_latin1_bytes_in_a_utf8_jsonl_reject_only_that_line(write_jsonl):
    bad = '{"text": "café"}'.encode("latin-1")
    parsed = read_dataset(write_jsonl([GOOD_LINE, bad, GOOD_LINE]))
    accounted(parsed)
    assert rejected(parsed) == {2: ("(line)", "not valid UTF-8 (byte 0xe9 at column 14)")}
    assert "caf" in parsed.report.rejected[0].raw


def test_latin1_bytes_in_a_utf8_csv_reject_only_that_row(write_bytes):
    data = b"text,src\nfine,a\n" + "café,b\n".encode("latin-1") + b"also fine,c\n"
    parsed = read_dataset(write_bytes("x.csv", data))
    accounted(parsed)
    assert parsed.lines == [2, 4]
    assert rejected(parsed) == {3: ("(row)", "not valid UTF-8")}


def test_latin1_bytes_in_a_json_array_reject_only_that_item(write_bytes):
    data = b'[\n{"text": "ok"},\n' + '{"text": "café"}\n, {"text": "fine"}]'.encode("latin-1")
    parsed = read_dataset(write_bytes("x.json", data))
    accounted(parsed)
    assert rejected(parsed) == {2: ("(item)", "not valid UTF-8")}
    assert parsed.lines == [1, 3]
    with pytest.raises(ImportFormatError, match=r"not valid JSON \(line 4: Expecting"):
        read_dataset(write_bytes("y.json", data.replace(b", {", b", {{")))


@pytest.mark.parametrize("encoding, bom", [("utf-16", b""), ("utf-16-be", codecs.BOM_UTF16_BE),
                                           ("utf-8", codecs.BOM_UTF8), ("utf-32", b"")])
@pytest.mark.parametrize("name", ["x.jsonl", "x.json", "x.csv"])
def test_byte_order_marks_are_honoured(write_bytes, encoding, bom, name):
    if name == "x.csv":
        text = "instruction,output\nCafé?,Oui ☕\n"
    elif name == "x.json":
        text = '[{"instruction": "Café?", "output": "Oui ☕"}]'
    else:
        text = '{"instruction": "Café?", "output": "Oui ☕"}\n'
    parsed = read_dataset(write_bytes(name, bom + text.encode(encoding)))
    accounted(parsed)
    assert parsed.examples[0].messages[1]["content"] == "Oui ☕"
    assert parsed.examples[0].messages[0]["content"] == "Café?"


def test_utf16_without_bom_is_named(write_bytes):
    with pytest.raises(ImportFormatError, match="UTF-16 text without a byte-order mark"):
        read_dataset(write_bytes("x.jsonl", GOOD_LINE.decode().encode("utf-16-le")))


def test_huge_fields(write_jsonl, write_bytes):
    huge = "x" * 1_200_000
    parsed = read_dataset(write_jsonl([{"text": huge}, GOOD]))
    accounted(parsed)
    assert rejected(parsed)[1][1].startswith("field too large (1,200,000 characters")
    # A CSV cell beyond the csv module's default 128 KiB limit is read, then checked.
    data = b"text\n" + b"y" * 300_000 + b"\n" + b"short\n"
    parsed = read_dataset(write_bytes("big.csv", data))
    assert parsed.report.imported == 2


def test_missing_columns_and_fields(write_bytes, write_jsonl):
    with pytest.raises(ImportFormatError, match="CSV header .* matches no dataset shape"):
        read_dataset(write_bytes("x.csv", b"question_text,reply\na,b\n"))
    parsed = read_dataset(write_bytes("y.csv", b"instruction,input,output\nq,,a\nq2,,\n"))
    accounted(parsed)
    assert rejected(parsed) == {3: ("output", "empty content")}
    parsed = read_dataset(write_jsonl([{"instruction": "q"}, {"instruction": "q", "output": "a"}]))
    assert rejected(parsed) == {1: ("output", "missing field")}


def test_mixed_shapes_in_one_file(write_jsonl):
    rows = [GOOD, {"instruction": "i", "output": "o"}, {"conversations": [
        {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"prompt": "p", "completion": "c"}, {"text": "t"}, {"unrelated": 1}]
    parsed = read_dataset(write_jsonl(rows))
    accounted(parsed)
    assert parsed.report.shapes == {"openai": 1, "alpaca": 1, "sharegpt": 1,
                                    "prompt_completion": 1, "text": 1}
    assert rejected(parsed)[6][1].startswith("unknown shape: found unrelated")


@pytest.mark.parametrize("name, data, message", [
    ("x.jsonl", b"", "empty"),
    ("x.jsonl", b"  \n\n\t \n", "empty"),
    ("x.json", b"\n", "empty"),
    ("x.csv", b"", "empty"),
    ("x.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(200), "binary"),
    ("x.json", b"42", "JSON top level is a int"),
    ("x.json", b'"just a string"', "JSON top level is a str"),
    ("x.json", b"[1, 2, 3]", "no row could be imported .3 read"),
    ("x.json", b"[]", "empty"),
    ("x.json", b'{"a": 1', "not valid JSON"),
    ("x.jsonl", b'{"a": 1}\n{"b": 2}\n', "no row could be imported"),
    ("x.txt", b"\n\n\n", "empty"),
    ("x.xlsx", b"PK\x03\x04", "unknown file type"),
])
def test_files_that_are_no_dataset(write_bytes, name, data, message):
    with pytest.raises(ImportFormatError, match=message):
        read_dataset(write_bytes(name, data))


def test_csv_wrong_column_count_and_quoted_newlines(write_bytes):
    data = (b'instruction,output\n"two\nlines",ok\nq,a,extra\n"also\n\nmultiline","a"\n'
            b'q2,a2\n"unterminated,x\n')
    parsed = read_dataset(write_bytes("x.csv", data))
    accounted(parsed)
    assert parsed.lines == [2, 5, 8]
    got = rejected(parsed)
    assert got[4] == ("(row)", "3 columns, header has 2")
    assert got[9][0] == "(row)"  # the unterminated quote swallows the rest: one row, reported
    assert parsed.examples[1].messages[0]["content"] == "also\n\nmultiline"


def test_corrupt_parquet(write_bytes, tmp_path):
    with pytest.raises(ImportFormatError, match="not a readable Parquet file"):
        read_dataset(write_bytes("x.parquet", b"PAR1" + os.urandom(100) + b"PAR1"))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a" * 1000] * 100}), good)
    with pytest.raises(ImportFormatError, match="Parquet"):
        read_dataset(write_bytes("cut.parquet", good.read_bytes()[:-50]))
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1], "y": [2]}), other)
    with pytest.raises(ImportFormatError, match=r"columns \['x', 'y'\] match no dataset shape"):
        read_dataset(other)


def test_folders_that_are_no_dataset(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(ImportFormatError, match="not a Hugging Face dataset"):
        read_dataset(tmp_path / "plain")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "dataset_info.json").write_text("{}")
    with pytest.raises(ImportFormatError, match="not a readable Hugging Face dataset folder"):
        read_dataset(tmp_path / "fake")
    with pytest.raises(ImportFormatError, match="no such file"):
        read_dataset(tmp_path / "missing.jsonl")


def test_a_refused_file_changes_nothing_in_the_store(file_store, write_bytes, write_jsonl):
    file_store.import_file(write_jsonl([GOOD]), "kept")
    before = (file_store.datasets().to_dict(), file_store.versions("kept"))
    for name, data in [("a.jsonl", b""), ("b.jsonl", b"\x00\x01binary"), ("c.json", b"7"),
                       ("d.jsonl", b'{"x": 1}\n'), ("e.parquet", b"junk")]:
        with pytest.raises(ImportFormatError):
            file_store.import_file(write_bytes(name, data), "new")
        with pytest.raises(ImportFormatError):
            file_store.import_file(write_bytes(name, data), "kept")
    assert (file_store.datasets().to_dict(), file_store.versions("kept")) == before
    with file_store.connect() as con:
        assert con.execute("SELECT count(*) FROM rows").fetchall() == [(1,)]
        assert con.execute("SELECT count(*) FROM import_rejects").fetchall() == [(0,)]


def test_rejects_are_stored_with_the_version(store, write_jsonl):
    version, report = store.import_file(write_jsonl([GOOD, b"{bad", {"text": ""}]), "d")
    df = store.import_rejects(version.version_id)
    assert df[["line", "field"]].values.tolist() == [[2, "(line)"], [3, "text"]]
    assert version.counts == {"rows_read": 3, "imported": 1, "rejected": 2}
    assert version.n_rows == 1


@pytest.mark.skipif(not (SAMPLE / "messy_import.jsonl").exists(), reason="no sample data yet")
def test_messy_sample_matches_its_defect_manifest(store):
    manifest = orjson.loads((SAMPLE / "defects.json").read_bytes())["messy_import.jsonl"]
    version, report = store.import_file(SAMPLE / "messy_import.jsonl", "messy")
    assert report.rows_read + report.blank_lines == manifest["lines"]
    assert report.blank_lines == len(manifest["blank_lines"])
    assert version.n_rows == report.imported == len(manifest["valid_lines"])
    reasons = {"bad_json": "bad JSON", "no_assistant": "no assistant turn",
               "wrong_type": "wrong type", "empty_content": "empty content",
               "unknown_role": "unknown role", "not_object": "expected a JSON object",
               "missing_field": "missing field"}
    got = {r.line: r for r in report.rejected}
    assert set(got) == {d["line"] for d in manifest["rejected"]}
    for defect in manifest["rejected"]:
        row = got[defect["line"]]
        assert row.reason.startswith(reasons[defect["reason"]]), (defect, row)
        assert row.field == (defect["field"] or "(line)"), (defect, row)
    lines = store.frame(version.version_id)
    assert len(lines) == len(manifest["valid_lines"])
    with store.connect() as con:
        stored = [r[0] for r in con.execute("SELECT source_line FROM rows ORDER BY row_key")
                  .fetchall()]
    assert stored == manifest["valid_lines"]
