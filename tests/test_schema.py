"""The data model: shape detection, conversion of every shape, validation, ids, derived text."""

from __future__ import annotations

import orjson
import pytest
import xxhash
from conftest import chat

from workbench.schema import (
    FRAME_COLUMNS,
    RESERVED_KEYS,
    SHAPES,
    Example,
    RowError,
    StepResult,
    alpaca_split,
    check_messages,
    content_id,
    convert,
    detect_shape,
    encode_messages,
    examples_frame,
    prompt_text,
    response_text,
    shape_hint,
    to_example,
)


@pytest.mark.parametrize("record, shape", [
    ({"messages": []}, "openai"),
    ({"conversations": [], "messages": 1}, "openai"),
    ({"conversations": []}, "sharegpt"),
    ({"instruction": "a", "output": "b"}, "alpaca"),
    ({"instruction": "a"}, "alpaca"),  # so that the missing output is what gets reported
    ({"prompt": "a", "completion": "b"}, "prompt_completion"),
    ({"question": "a", "answer": "b"}, "prompt_completion"),
    ({"query": "a", "response": "b"}, "prompt_completion"),
    ({"text": "a"}, "text"),
    ({"foo": 1}, None),
    ([1, 2], None),
    ("text", None),
])
def test_detect_shape(record, shape):
    assert detect_shape(record) == shape


def test_shape_hint_names_found_keys():
    assert "found a, b" in shape_hint({"b": 1, "a": 2})
    assert "found list" in shape_hint([])


def test_alpaca_with_input_history_and_system():
    record = {"instruction": "Translate", "input": "chat", "output": "cat", "system": "Be exact",
              "history": [["hi", "hello"]], "source": "x"}
    ex = to_example(record, "alpaca")
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "user",
                                                "assistant"]
    assert ex.messages[3]["content"] == "Translate\n\nchat"
    assert ex.metadata == {"source": "x", "_source": {"shape": "alpaca", "input_at": 9}}
    assert alpaca_split(ex.metadata, ex.messages[3]["content"]) == ("Translate", "chat")


def test_alpaca_blank_input_is_not_joined():
    ex = to_example({"instruction": "Do it", "input": "  ", "output": "ok"}, "alpaca")
    assert ex.messages[0]["content"] == "Do it"
    assert ex.metadata == {"_source": {"shape": "alpaca"}}


def test_alpaca_split_falls_back_when_the_turn_was_edited():
    meta = {"_source": {"shape": "alpaca", "input_at": 3}}
    assert alpaca_split(meta, "abc\n\ndef") == ("abc", "def")
    assert alpaca_split(meta, "abcdef") == ("abcdef", "")
    assert alpaca_split({}, "abc\n\ndef") == ("abc\n\ndef", "")


def test_openai_keeps_extra_keys_and_text_parts():
    record = {"messages": [{"role": "User", "content": [{"type": "text", "text": "a"},
                                                        {"type": "image_url"},
                                                        {"type": "text", "text": "b"}]},
                           {"role": "assistant", "content": "c"}], "id": 7}
    ex = to_example(record, "openai")
    assert ex.messages == ({"role": "user", "content": "ab"}, {"role": "assistant",
                                                              "content": "c"})
    assert ex.metadata == {"id": 7}


def test_sharegpt_maps_speakers():
    record = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}]}
    ex = to_example(record, "sharegpt")
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant"]
    assert ex.metadata["_source"] == {"shape": "sharegpt"}


def test_prompt_completion_and_text():
    ex = to_example({"question": "q", "answer": 42, "lang": "en"}, "prompt_completion")
    assert ex.messages[1]["content"] == "42"
    assert ex.metadata["lang"] == "en"
    assert ex.metadata["_source"]["prompt_key"] == "question"
    text = to_example({"text": "just text"}, "text")
    assert text.messages == ({"role": "assistant", "content": "just text"},)


@pytest.mark.parametrize("record, shape, field, reason", [
    ({"instruction": "", "output": "b"}, "alpaca", "instruction", "empty content"),
    ({"instruction": "a"}, "alpaca", "output", "missing field"),
    ({"instruction": "a", "output": ["x"]}, "alpaca", "output", "wrong type: list"),
    ({"instruction": "a", "output": True}, "alpaca", "output", "wrong type: bool"),
    ({"instruction": "a", "output": "b", "history": [["q"]]}, "alpaca", "history[0]",
     "expected a [question, answer] pair"),
    ({"instruction": "a", "output": "b", "history": "no"}, "alpaca", "history", "wrong type"),
    ({"messages": "hi"}, "openai", "messages", "wrong type: str"),
    ({"messages": []}, "openai", "messages", "empty conversation"),
    ({"messages": ["hi"]}, "openai", "messages[0]", "wrong type: str"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "openai", "messages[0].role",
     "unknown role 'robot'"),
    ({"messages": [{"role": ["user"], "content": "x"}]}, "openai", "messages[0].role",
     "unknown role"),
    ({"messages": [{"content": "x"}]}, "openai", "messages[0].role", "missing field"),
    ({"messages": [{"role": "user"}]}, "openai", "messages[0].content", "missing field"),
    ({"messages": [{"role": "user", "content": 5}]}, "openai", "messages[0].content",
     "wrong type: int"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \n"}]},
     "openai", "messages[1].content", "empty content in the assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}]}, "openai", "messages", "no assistant turn"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "sharegpt", "conversations[0].from",
     "unknown role"),
    ({"prompt": "q", "completion": ""}, "prompt_completion", "completion", "empty content"),
    ({"text": None}, "text", "text", "missing field"),
    ([1], "openai", "(row)", "expected a JSON object, got list"),
])
def test_conversion_errors_name_the_field(record, shape, field, reason):
    with pytest.raises(RowError) as info:
        convert(record, shape)
    assert info.value.field == field
    assert info.value.reason.startswith(reason)
    assert info.value.fix  # every error says how to fix it
    assert field in str(info.value)


def test_check_messages_rejects_unknown_role_and_non_dicts():
    with pytest.raises(RowError, match="unknown role"):
        check_messages([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(RowError, match="wrong type"):
        check_messages(["x"])
    check_messages([{"role": "assistant", "content": "ok"}])


def test_content_id_is_stable_and_ignores_metadata_and_extra_keys():
    a = chat(("user", "q"), ("assistant", "a"), x=1)
    b = Example(({"content": "q", "role": "user", "name": "n"},
                 {"role": "assistant", "content": "a"}), {"y": 2})
    assert a.id == b.id == content_id(list(a.messages))
    assert len(a.id) == 16 and int(a.id, 16) >= 0
    assert a.id != chat(("user", "q"), ("assistant", "b")).id
    assert a.id != chat(("system", "q"), ("assistant", "a")).id
    # The definition: XXH3-64 of the canonical JSON, 16 hex digits; a known value pins it.
    assert a.id == xxhash.xxh3_64_hexdigest(encode_messages(a.messages))
    assert chat(("user", "hi"), ("assistant", "hello")).id == "819d3234fcce1227"
    assert encode_messages(b.messages) == orjson.dumps(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])


def test_prompt_and_response_text():
    single = chat(("user", "q"), ("assistant", "a"))
    assert (single.prompt, single.response) == ("q", "a")
    multi = chat(("system", "s"), ("user", "q1"), ("assistant", "a1"), ("user", "q2"),
                 ("assistant", "a2"))
    assert multi.response == "a2"
    assert multi.prompt == "system: s\n\nuser: q1\n\nassistant: a1\n\nuser: q2"
    no_answer = [{"role": "user", "content": "q"}]
    assert response_text(no_answer) == "" and prompt_text(no_answer) == "q"


def test_examples_frame_has_the_step_columns(examples):
    df = examples_frame(examples, row_keys=[10, 11, 12, 13, 14])
    assert tuple(df.columns) == FRAME_COLUMNS
    assert df["row_key"].tolist() == [10, 11, 12, 13, 14]
    assert df["id"].tolist() == [e.id for e in examples]
    assert StepResult(kept=df, dropped=df.iloc[:0]).changed is None


def test_reserved_keys_cover_every_detected_field():
    for shape in SHAPES:
        assert shape in ("alpaca", "openai", "sharegpt", "prompt_completion", "text")
    for key in ("messages", "conversations", "instruction", "output", "input", "prompt",
                "completion", "question", "answer", "text", "metadata", "system", "history"):
        assert key in RESERVED_KEYS
