"""Readers and writers: every file kind and shape, the report, batches, and the writers."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import chat
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench.exceptions import ExportError, ImportFormatError
from workbench.io import (
    EXPORT_FORMATS,
    RowBatch,
    _fast_alpaca,
    batch_examples,
    detect_kind,
    encode_metadata,
    encode_row,
    export_suffix,
    hf_splits,
    read_batches,
    read_dataset,
    to_alpaca,
    to_openai,
    to_sharegpt,
    user_metadata,
    write_dataset,
)
from workbench.schema import Example, RowError, convert

ALPACA = [{"instruction": "Add", "input": "2 and 2", "output": "4"},
          {"instruction": "Greet", "input": "", "output": "Hello", "lang": "en"}]
OPENAI = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "topic": "t"}]


def accounted(parsed) -> None:
    """Assert the report's invariant: every row read was imported or listed as rejected."""
    report = parsed.report
    assert report.imported == len(parsed.examples) == len(parsed.lines)
    assert report.imported + len(report.rejected) == report.rows_read
    assert not set(parsed.lines) & {r.line for r in report.rejected}


def test_jsonl_alpaca_and_report(write_jsonl):
    parsed = read_dataset(write_jsonl(ALPACA + [b"", b"   "] + OPENAI))
    accounted(parsed)
    report = parsed.report
    assert (report.rows_read, report.imported, report.blank_lines) == (3, 3, 2)
    assert report.shapes == {"alpaca": 2, "openai": 1}
    assert parsed.lines == [1, 2, 5]
    assert parsed.examples[0].messages[0]["content"] == "Add\n\n2 and 2"
    assert parsed.examples[1].metadata["lang"] == "en"
    assert "imported 3" in report.summary() and report.unit == "line"


def test_json_array_object_and_single_record(write_bytes):
    parsed = read_dataset(write_bytes("a.json", orjson.dumps(ALPACA)))
    assert parsed.report.imported == 2 and parsed.report.unit == "item"
    wrapped = read_dataset(write_bytes("b.json", orjson.dumps({"data": ALPACA, "v": 1})))
    assert wrapped.report.imported == 2
    single = read_dataset(write_bytes("c.json", orjson.dumps(OPENAI[0])))
    assert single.report.imported == 1


def test_json_file_holding_json_lines(write_bytes):
    data = b"\n".join(orjson.dumps(r) for r in ALPACA)
    parsed = read_dataset(write_bytes("lines.json", data))
    assert parsed.report.kind == "jsonl" and parsed.report.imported == 2


def _write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_csv_and_tsv(tmp_path):
    rows = [["instruction", "input", "output", "source"], ["Add", "1+1", "2", "web"],
            ["Multi\nline", "", "yes, \"quoted\"", "x"]]
    parsed = read_dataset(_write_csv(tmp_path / "d.csv", rows))
    accounted(parsed)
    assert parsed.lines == [2, 3]
    assert parsed.examples[1].messages[0]["content"] == "Multi\nline"
    assert parsed.examples[1].messages[1]["content"] == 'yes, "quoted"'
    assert parsed.examples[0].metadata["source"] == "web"
    tsv = read_dataset(_write_csv(tmp_path / "d.tsv", rows, "\t"))
    assert tsv.report.imported == 2


def test_csv_messages_column_holds_json(tmp_path):
    messages = orjson.dumps(OPENAI[0]["messages"]).decode()
    parsed = read_dataset(_write_csv(tmp_path / "m.csv", [["messages", "tag"], [messages, "x"]]))
    assert parsed.examples[0].messages == tuple(OPENAI[0]["messages"])
    assert parsed.examples[0].metadata == {"tag": "x"}


def test_txt_blocks_become_text_rows(write_bytes):
    parsed = read_dataset(write_bytes("t.txt", b"first block\nstill first\n\n\nsecond\n"))
    accounted(parsed)
    assert [e.messages[0]["content"] for e in parsed.examples] == ["first block\nstill first",
                                                                  "second"]
    assert parsed.lines == [1, 5]


def test_parquet_from_another_tool(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", ""], "n": [1, 2]}), path)
    parsed = read_dataset(path)
    accounted(parsed)
    assert parsed.report.unit == "row"
    assert parsed.examples[0].metadata["n"] == 1
    assert parsed.report.rejected[0].line == 2
    assert parsed.report.rejected[0].field == "completion"


def test_hf_dataset_dict_splits_are_never_merged(tmp_path):
    import datasets

    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]),
        "test": datasets.Dataset.from_list([{"text": "c"}])})
    ds.save_to_disk(str(tmp_path / "hf"))
    assert hf_splits(tmp_path / "hf") == ["train", "test"]
    with pytest.raises(ImportFormatError, match=r"2 splits \(train, test\).*--split"):
        read_dataset(tmp_path / "hf")  # the old reader merged them: test rows became training
    parsed = read_dataset(tmp_path / "hf", split="test")
    accounted(parsed)
    assert [e.messages[0]["content"] for e in parsed.examples] == ["c"]
    assert parsed.report.split == "test" and "split 'test'" in parsed.report.summary()
    assert "split" not in parsed.examples[0].metadata
    with pytest.raises(ImportFormatError, match="no split 'dev'; the folder has train, test"):
        read_dataset(tmp_path / "hf", split="dev")
    datasets.DatasetDict({"train": ds["train"]}).save_to_disk(str(tmp_path / "one"))
    assert read_dataset(tmp_path / "one").report.split == "train"  # the only split
    with pytest.raises(ImportFormatError, match="Hugging Face dataset folders only"):
        read_dataset(_write_csv(tmp_path / "x.csv", [["text"], ["a"]]), split="train")


def test_shape_override(write_jsonl):
    record = {"text": "plain", "prompt": "p", "completion": "c"}
    assert read_dataset(write_jsonl([record])).report.shapes == {"prompt_completion": 1}
    forced = read_dataset(write_jsonl([record]), shape="text")
    assert forced.examples[0].messages[0]["content"] == "plain"
    with pytest.raises(ImportFormatError, match="unknown shape"):
        read_dataset(write_jsonl([record]), shape="csv")


def test_progress_and_display_name(write_jsonl):
    seen: list[int] = []
    path = write_jsonl([{"text": f"row {i}"} for i in range(20_001)])
    parsed = read_dataset(path, progress=seen.append, display_name="upload.jsonl")
    assert seen == [10_000, 20_000]
    assert parsed.report.file == "upload.jsonl"


def test_max_chars_rejects_huge_fields(write_jsonl):
    parsed = read_dataset(write_jsonl([{"text": "x" * 50}, {"text": "ok"}]), max_chars=10)
    accounted(parsed)
    assert parsed.report.rejected[0].reason.startswith("field too large (50 characters")
    assert parsed.report.rejected[0].field == "messages[0].content"


def test_nested_metadata_is_folded_in_unless_it_clashes(write_jsonl):
    rows = [{**OPENAI[0], "metadata": {"source": "s", "score": 2}},
            {**OPENAI[0], "metadata": {"topic": "clash"}},
            {**OPENAI[0], "metadata": "just a string"}]
    parsed = read_dataset(write_jsonl(rows))
    assert parsed.examples[0].metadata == {"topic": "t", "source": "s", "score": 2}
    assert parsed.examples[1].metadata == {"topic": "t", "metadata": {"topic": "clash"}}
    assert parsed.examples[2].metadata == {"topic": "t", "metadata": "just a string"}


def test_batches_encode_the_same_rows_as_examples(write_jsonl, examples):
    records = [to_openai(e) for e in examples] + ALPACA + [{"text": "t"}]
    path = write_jsonl(records)
    parsed = read_dataset(path)
    report, batches = read_batches(path, batch_rows=3)
    batches = list(batches)
    assert [len(b) for b in batches] == [3, 3, 2]
    assert report.imported == parsed.report.imported == 8
    flat = [m for b in batches for m in b.messages]
    assert flat == [orjson.dumps(list(e.messages)) for e in parsed.examples]
    meta = [orjson.loads(m) for b in batches for m in b.metadata]
    assert meta == [e.metadata for e in parsed.examples]
    assert [n for b in batches for n in b.n_chars] == [
        sum(len(m["content"]) for m in e.messages) for e in parsed.examples]
    assert [n for b in batches for n in b.response_chars] == [len(e.response)
                                                               for e in parsed.examples]


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={"instruction": st.one_of(text, st.integers()),
                                           "input": st.one_of(text, st.none()),
                                           "output": text, "extra": text}))
def test_fast_alpaca_path_agrees_with_the_general_path(record):
    fast = _fast_alpaca(record, 1000, 7)
    try:
        messages, metadata = convert(record, "alpaca")
    except RowError:
        assert fast is None
        return
    if fast is not None:
        assert fast == encode_row(messages, orjson.dumps(metadata), 7)


def test_batch_examples_checks_and_normalises(examples):
    batches = list(batch_examples(examples, lines=range(5), size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert batches[0].lines == [0, 1]
    with pytest.raises(RowError, match="no assistant turn"):
        list(batch_examples([chat(("user", "q"))]))


def test_encode_metadata_refuses_what_json_cannot_hold():
    assert encode_metadata({"b": b"x", "t": (1, 2)}) == b'{"b":"x","t":[1,2]}'
    with pytest.raises(RowError, match="cannot be stored as JSON"):
        encode_metadata({"n": 2 ** 70})
    with pytest.raises(RowError, match="metadata must be an object"):
        encode_metadata([1])


def test_detect_kind(tmp_path):
    assert detect_kind(tmp_path / "a.NDJSON") == "jsonl"
    assert detect_kind(tmp_path / "a.pq") == "parquet"
    with pytest.raises(ImportFormatError, match="unknown file type"):
        detect_kind(tmp_path / "a.xlsx")


def test_to_alpaca_multi_turn_with_system():
    ex = chat(("system", "s"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
              ("assistant", "a2"), src="x", _private=1)
    assert to_alpaca(ex) == {"src": "x", "instruction": "q2", "input": "", "output": "a2",
                             "system": "s", "history": [["q1", "a1"]]}


@pytest.mark.parametrize("turns", [
    (("user", "q"),),
    (("assistant", "a"),),
    (("user", "q"), ("user", "q2"), ("assistant", "a")),
    (("user", "q"), ("system", "s"), ("assistant", "a")),
])
def test_to_alpaca_refuses_what_alpaca_cannot_hold(turns):
    with pytest.raises(ExportError, match="alternating"):
        to_alpaca(chat(*turns))


def test_writers_move_clashing_metadata_keys_aside():
    ex = chat(("user", "q"), ("assistant", "a"), text="t", messages=1, keep="k")
    record = to_sharegpt(ex)
    assert record["metadata"] == {"text": "t", "messages": 1}
    assert record["keep"] == "k" and record["conversations"][0] == {"from": "human", "value": "q"}
    assert to_openai(ex)["messages"] == [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "a"}]


def test_write_dataset_formats_and_suffixes(tmp_path, examples):
    for fmt in EXPORT_FORMATS:
        rows = examples if fmt not in ("alpaca_json", "alpaca_jsonl") else examples[:2]
        target = tmp_path / f"out-{fmt}{export_suffix(fmt)}"
        assert write_dataset(rows, target, fmt) == target
        assert target.exists()
        back = read_dataset(target)
        assert [e.messages for e in back.examples] == [e.messages for e in rows]
    with pytest.raises(ExportError, match="unknown export format"):
        write_dataset(examples, tmp_path / "x", "xml")


def test_user_metadata_drops_bookkeeping():
    assert user_metadata({"_source": 1, "a": 2}) == {"a": 2}


def test_row_batch_add():
    batch = RowBatch()
    batch.add([{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cde"}],
              b"{}", 7)
    assert (len(batch), batch.n_turns, batch.n_chars, batch.response_chars, batch.lines) == (
        1, [2], [5], [3], [7])


def test_example_is_hashable_data():
    ex = Example(({"role": "assistant", "content": "x"},))
    assert ex.metadata == {} and ex.response == "x"


# --- hardening (issue 12) -------------------------------------------------------------------------

def _meta_examples() -> list[Example]:
    return [Example(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}),
                    {"source": "x", "n": i, "tags": ["t"], "only_some": 1} if i else
                    {"source": "x", "n": i, "tags": ["t"]}) for i in range(3)]


@pytest.mark.parametrize("fmt", ["hf", "parquet"])
def test_columnar_exports_write_metadata_as_native_columns(tmp_path, fmt):
    import datasets
    import pyarrow.parquet as pq

    path = write_dataset(_meta_examples(), tmp_path / ("out" + export_suffix(fmt)), fmt)
    table = (datasets.load_from_disk(str(path)).data.table if fmt == "hf"
             else pq.read_table(path))
    assert table.column("source").to_pylist() == ["x", "x", "x"]  # not '{"source": "x"}'
    assert table.column("n").type == "int64" and table.column("tags").to_pylist()[0] == ["t"]
    # a key missing in some rows cannot be a column without inventing values: kept in JSON
    assert table.column("metadata").to_pylist() == [None, '{"only_some":1}', '{"only_some":1}']
    assert read_dataset(path).examples == _meta_examples()  # and it reads back the same


def test_export_refuses_an_existing_file_and_replaces_it_only_when_asked(tmp_path):
    out = tmp_path / "mine.jsonl"
    out.write_bytes(b"precious")
    with pytest.raises(ExportError, match="already exists"):
        write_dataset(_meta_examples(), out, "openai")
    assert out.read_bytes() == b"precious"
    with pytest.raises(ExportError, match="is a folder"):
        write_dataset(_meta_examples(), tmp_path, "openai", overwrite=True)
    write_dataset(_meta_examples(), out, "openai", overwrite=True)
    assert len(out.read_bytes().splitlines()) == 3 and sorted(p.name for p in tmp_path.iterdir()) \
        == ["mine.jsonl"]  # no temporary file left beside it


def test_integers_beyond_64_bits_stay_exact_and_are_noted(tmp_path):
    path = tmp_path / "wide.jsonl"
    path.write_bytes(b'{"text": "a", "id": 123456789012345678901234567890, "small": 7}\n')
    parsed = read_dataset(path)
    accounted(parsed)
    assert user_metadata(parsed.examples[0].metadata) == {"id": "123456789012345678901234567890",
                                                          "small": 7}
    assert [n.field for n in parsed.report.notes] == ["id"]
    assert "1 integers beyond 64 bits kept as strings" in parsed.report.summary()


def test_a_nul_byte_rejects_its_row_wherever_it_is(tmp_path):
    good = b'{"text": "fine"}\n'
    path = tmp_path / "nul.jsonl"
    path.write_bytes(b'{"text": "a\x00b"}\n' + good * 1000 + b'{"text": "c\x00d"}\n' + good)
    parsed = read_dataset(path)
    accounted(parsed)
    assert [(r.line, r.field) for r in parsed.report.rejected] == [(1, "(line)"), (1002, "(line)")]
    assert all("NUL" in r.reason for r in parsed.report.rejected)
    assert len(parsed.examples) == 1001


def test_oversized_rows_are_rejected_one_by_one(write_jsonl):
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 600
    parsed = read_dataset(write_jsonl([{"text": "ok"}, {"messages": turns},
                                       {"text": "m", "blob": "x" * 1_100_000}]))
    accounted(parsed)
    assert {r.line: r.field for r in parsed.report.rejected} == {2: "messages",
                                                                  3: "metadata.blob"}
