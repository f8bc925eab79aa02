"""Export then import gives back the same examples, in every format: random conversations
with unicode, emoji, newlines, quotes, multi-turn and system turns, and random metadata."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench.io import EXPORT_FORMATS, export_suffix, read_dataset, user_metadata, write_dataset
from workbench.schema import RESERVED_KEYS, Example
from workbench.store import Store

TRICKY = ["\n", "\r\n", "\t", '"', "'", "\\", "\\n", "%", "_", "😀", "👩‍💻", "é", "ß", "中文",
          "\u2028", "\x00", "{", "}", "[", "]", ",", "\n\n", "null"]
chars = st.characters(exclude_categories=("Cs",))  # lone surrogates cannot be UTF-8
content = st.lists(st.one_of(st.text(chars, min_size=1, max_size=12), st.sampled_from(TRICKY)),
                   min_size=1, max_size=6).map("".join).filter(lambda s: s.strip() != "")
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(chars, max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(chars, max_size=5), inner, max_size=3)),
    max_leaves=6)
metadata_key = st.one_of(st.text(chars, max_size=8), st.sampled_from(sorted(RESERVED_KEYS)),
                         st.sampled_from(["_source", "_private", "split", "id"]))
metadata = st.dictionaries(metadata_key, json_value, max_size=5)


def turn(role: str) -> st.SearchStrategy:
    return content.map(lambda c: {"role": role, "content": c})


@st.composite
def any_conversation(draw) -> Example:
    """Any order of system/user/assistant turns with at least one assistant turn."""
    roles = draw(st.lists(st.sampled_from(["system", "user", "assistant"]), min_size=1,
                          max_size=6).filter(lambda r: "assistant" in r))
    return Example(tuple(draw(turn(r)) for r in roles), draw(metadata))


@st.composite
def alpaca_conversation(draw) -> Example:
    """What Alpaca can hold: an optional system turn, then user/assistant pairs."""
    turns = [draw(turn("system"))] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        turns += [draw(turn("user")), draw(turn("assistant"))]
    return Example(tuple(turns), draw(metadata))


def same(a: list[Example], b: list[Example]) -> None:
    assert [e.messages for e in a] == [e.messages for e in b]
    assert [user_metadata(e.metadata) for e in a] == [user_metadata(e.metadata) for e in b]


def round_trip(examples: list[Example], fmt: str) -> list[Example]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"out{export_suffix(fmt)}"
        write_dataset(examples, path, fmt)
        parsed = read_dataset(path)
        assert parsed.report.rejected == []
        return parsed.examples


def strategy_for(fmt: str) -> st.SearchStrategy:
    one = alpaca_conversation() if fmt.startswith("alpaca") else any_conversation()
    return st.lists(one, min_size=1, max_size=4)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_then_import_gives_back_the_examples(fmt):
    @settings(max_examples=15 if fmt == "hf" else 60, deadline=None)
    @given(strategy_for(fmt))
    def check(examples):
        same(round_trip(examples, fmt), examples)
    check()


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_through_the_store(fmt):
    @settings(max_examples=8, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(strategy_for(fmt))
    def check(examples):
        store = Store(":memory:")
        vid = store.add_examples("src", examples)
        with tempfile.TemporaryDirectory() as tmp:
            path = store.export(vid, Path(tmp) / f"out{export_suffix(fmt)}", fmt)
            version, report = store.import_file(path, "back")
        assert report.rejected == [] and version.n_rows == len(examples)
        back = store.examples(version.version_id)
        same(back, examples)
        assert store.frame(version.version_id)["id"].tolist() == [e.id for e in examples]
    check()


def test_alpaca_keeps_the_instruction_input_split(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"instruction": "Sum", "input": "1 2", "output": "3", "k": 1}\n')
    first = read_dataset(path).examples
    for fmt in ("alpaca_json", "alpaca_jsonl"):
        out = write_dataset(first, tmp_path / f"x{export_suffix(fmt)}", fmt)
        text = out.read_text()
        assert '"instruction": "Sum"' in text or '"instruction":"Sum"' in text
        assert '"input": "1 2"' in text or '"input":"1 2"' in text
        same(read_dataset(out).examples, first)
