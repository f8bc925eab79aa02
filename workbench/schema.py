"""The one data model (Example: messages + metadata) and detection of record shapes.

Every input shape becomes ``Example(id, messages, metadata)``. ``id`` is a hash of the
conversation only (roles and contents), so scores and embeddings cached by it survive
re-imports and metadata edits. The "prompt" is every turn before the last assistant turn and
the "response" is that turn; both are derived, never stored as the source of truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson

Role = Literal["system", "user", "assistant"]
ROLES: frozenset[str] = frozenset(get_args(Role))
Shape = Literal["alpaca", "openai", "sharegpt", "prompt_completion", "text"]
SHAPES: tuple[str, ...] = get_args(Shape)

# ShareGPT speakers seen in the wild, mapped to our three roles.
SHAREGPT_ROLES: dict[str, str] = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system",
}
# Keys a record may use for prompt/completion data, in order of preference.
PROMPT_KEYS = ("prompt", "question", "query")
COMPLETION_KEYS = ("completion", "response", "answer", "chosen")
ALPACA_JOIN = "\n\n"


@dataclass(frozen=True)
class RowError(Exception):
    """Why one input record cannot become an Example: the field, the reason and the fix."""

    field: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason} ({self.fix})"


@dataclass(frozen=True)
class Example:
    """A conversation with metadata; ``id`` is derived from the conversation."""

    messages: tuple[dict[str, str], ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return content_id(self.messages)

    @property
    def prompt(self) -> str:
        return prompt_text(self.messages)

    @property
    def response(self) -> str:
        return response_text(self.messages)


def content_id(messages: Any) -> str:
    """Return a 16-hex-digit stable hash of the roles and contents of a conversation."""
    canonical = orjson.dumps([[m["role"], m["content"]] for m in messages])
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def _last_assistant(messages: Any) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "assistant":
            return i
    return -1


def prompt_text(messages: Any) -> str:
    """Return the turns before the last assistant turn, one "role: content" block each."""
    end = _last_assistant(messages)
    turns = messages[:end] if end >= 0 else messages
    if len(turns) == 1 and turns[0]["role"] == "user":
        return turns[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in turns)


def response_text(messages: Any) -> str:
    """Return the content of the last assistant turn ("" when there is none)."""
    end = _last_assistant(messages)
    return messages[end]["content"] if end >= 0 else ""


def detect_shape(record: Any) -> Shape | None:
    """Return the shape a record looks like, or None when it matches none."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "openai"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if any(k in record for k in PROMPT_KEYS) and any(k in record for k in COMPLETION_KEYS):
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def shape_hint(record: Any) -> str:
    """Return a one-line description of what keys each shape needs, for error messages."""
    keys = ", ".join(sorted(map(str, record))) if isinstance(record, dict) else type(record).__name__
    return (f"found {keys or 'no keys'}; expected 'messages' (OpenAI chat), 'conversations' "
            "(ShareGPT), 'instruction'+'output' (Alpaca), 'prompt'+'completion', or 'text'")


def to_example(record: Any, shape: Shape) -> Example:
    """Return the Example for one record of a known shape; raise RowError naming the field."""
    if not isinstance(record, dict):
        raise RowError("(row)", f"expected a JSON object, got {type(record).__name__}",
                       "each line or item must be an object such as {\"messages\": [...]}")
    converter = _CONVERTERS[shape]
    messages, metadata = converter(record)
    _check_messages(messages)
    return Example(tuple(messages), metadata)


def _text(record: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str:
    if key not in record or record[key] is None:
        if required:
            raise RowError(key, "missing field", f"add a non-empty '{key}' string")
        return ""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(key, f"wrong type: {type(value).__name__}",
                       f"'{key}' must be a string")
    value = value if isinstance(value, str) else str(value)
    if not allow_empty and not value.strip():
        raise RowError(key, "empty content", f"give '{key}' some text or remove the row")
    return value


def _rest(record: dict, used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used}


def _from_alpaca(record: dict) -> tuple[list[dict], dict]:
    instruction = _text(record, "instruction")
    inp = _text(record, "input", required=False, allow_empty=True)
    output = _text(record, "output")
    messages: list[dict] = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record, "system")})
    for i, turn in enumerate(record.get("history") or []):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2
                and all(isinstance(t, str) and t.strip() for t in turn)):
            raise RowError(f"history[{i}]", "expected a [question, answer] pair of strings",
                           "write history as [[\"q\", \"a\"], ...]")
        messages += [{"role": "user", "content": turn[0]},
                     {"role": "assistant", "content": turn[1]}]
    user = f"{instruction}{ALPACA_JOIN}{inp}" if inp.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    meta = _rest(record, {"instruction", "input", "output", "system", "history"})
    meta["_source"] = {"shape": "alpaca", "instruction": instruction, "input": inp}
    return messages, meta


def _turns(raw: Any, key: str, role_key: str, text_key: str, roles: dict[str, str] | None
           ) -> list[dict]:
    if not isinstance(raw, list):
        raise RowError(key, f"wrong type: {type(raw).__name__}", f"'{key}' must be a list of turns")
    if not raw:
        raise RowError(key, "empty conversation", f"'{key}' needs at least one turn")
    messages = []
    for i, turn in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(where, f"wrong type: {type(turn).__name__}",
                           f"each turn must be an object with '{role_key}' and '{text_key}'")
        role = turn.get(role_key)
        mapped = (roles or {r: r for r in ROLES}).get(str(role).lower() if role else "")
        if mapped is None:
            raise RowError(f"{where}.{role_key}", f"unknown role {role!r}",
                           "use one of system, user, assistant"
                           + (" (or human, gpt)" if roles else ""))
        content = turn.get(text_key)
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise RowError(f"{where}.{text_key}", f"wrong type: {type(content).__name__}",
                           f"'{text_key}' must be a string")
        messages.append({"role": mapped, "content": content})
    return messages


def _from_openai(record: dict) -> tuple[list[dict], dict]:
    messages = _turns(record.get("messages"), "messages", "role", "content", None)
    return messages, _rest(record, {"messages"})


def _from_sharegpt(record: dict) -> tuple[list[dict], dict]:
    messages = _turns(record.get("conversations"), "conversations", "from", "value",
                      SHAREGPT_ROLES)
    meta = _rest(record, {"conversations"})
    meta["_source"] = {"shape": "sharegpt",
                       "speakers": [str(t.get("from")) for t in record["conversations"]]}
    return messages, meta


def _from_prompt_completion(record: dict) -> tuple[list[dict], dict]:
    pkey = next(k for k in PROMPT_KEYS if k in record)
    ckey = next(k for k in COMPLETION_KEYS if k in record)
    messages = [{"role": "user", "content": _text(record, pkey)},
                {"role": "assistant", "content": _text(record, ckey)}]
    meta = _rest(record, {pkey, ckey})
    meta["_source"] = {"shape": "prompt_completion", "prompt_key": pkey, "completion_key": ckey}
    return messages, meta


def _from_text(record: dict) -> tuple[list[dict], dict]:
    messages = [{"role": "assistant", "content": _text(record, "text")}]
    meta = _rest(record, {"text"})
    meta["_source"] = {"shape": "text"}
    return messages, meta


_CONVERTERS = {"alpaca": _from_alpaca, "openai": _from_openai, "sharegpt": _from_sharegpt,
               "prompt_completion": _from_prompt_completion, "text": _from_text}


def _check_messages(messages: list[dict]) -> None:
    for i, m in enumerate(messages):
        if not m["content"].strip():
            raise RowError(f"messages[{i}].content", f"empty content in a {m['role']} turn",
                           "fill in the turn or drop it")
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("messages", "no assistant turn", "add the answer the model should learn")


# --- curation steps -------------------------------------------------------------------------
# Steps (clean, dedup, score, select) take a DataFrame with one row per example and these
# columns, and never touch the store: `row_key` (int, the store's identity of this row in this
# version), `id` (content_id), `messages` (list of {"role", "content"} dicts), `metadata` (dict),
# `prompt` and `response` (derived text). Extra columns are kept.
FRAME_COLUMNS = ("row_key", "id", "messages", "metadata", "prompt", "response")
DROP_COLUMNS = ("row_key", "reason", "duplicate_of", "detail")


@dataclass
class StepResult:
    """What a filter, cleaner or dedup step keeps, changes and drops.

    ``kept``: the rows that stay, in input order, with their (possibly new) messages; rows
    whose content changed are listed by row_key in ``changed`` with a reason. ``dropped``: one
    row per removed row with ``row_key``, a stable ``reason`` (for example ``exact_duplicate``),
    ``duplicate_of`` (row_key of the kept row, or None) and a human ``detail``.
    kept + dropped always equals the input.
    """

    kept: Any
    dropped: Any
    changed: Any = None


def examples_frame(examples: list[Example], row_keys: list[int] | None = None) -> Any:
    """Return the step DataFrame for a list of Examples (row_key defaults to 0..n-1)."""
    import pandas as pd

    keys = row_keys if row_keys is not None else list(range(len(examples)))
    return pd.DataFrame({
        "row_key": keys,
        "id": [e.id for e in examples],
        "messages": [list(e.messages) for e in examples],
        "metadata": [e.metadata for e in examples],
        "prompt": [e.prompt for e in examples],
        "response": [e.response for e in examples],
    })
