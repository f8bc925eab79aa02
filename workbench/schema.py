"""The one data model (Example: messages + metadata) and detection of record shapes.

Every input shape becomes ``Example(id, messages, metadata)``. ``id`` is a hash of the
conversation only (roles and contents), so scores and embeddings cached by it survive
re-imports and metadata edits. The "prompt" is every turn before the last assistant turn and
the "response" is that turn; both are derived, never stored as the source of truth.

Metadata keys that start with "_" are the workbench's own bookkeeping (``_source`` remembers
the input shape, so an export back to Alpaca restores the instruction/input split); every
other key is the user's and survives export and re-import unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import orjson
from xxhash import xxh3_64_hexdigest  # installed with `datasets`

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
_OPENAI_ROLES: dict[str, str] = {r: r for r in ROLES}
# Keys a record may use for prompt/completion data, in order of preference.
PROMPT_KEYS = ("prompt", "question", "query")
COMPLETION_KEYS = ("completion", "response", "answer", "chosen")
ALPACA_JOIN = "\n\n"
_ALPACA_KEYS = frozenset({"instruction", "input", "output", "system", "history"})
# Every key that decides or feeds a shape; writers never put user metadata under these names.
RESERVED_KEYS: frozenset[str] = frozenset(
    {"messages", "conversations", "text", "metadata", *_ALPACA_KEYS, *PROMPT_KEYS,
     *COMPLETION_KEYS})

# Size caps of one row, checked on import and on every edit, so that no single row can make
# the store, a page or a training batch unusable (a 50 MB metadata value, 50,000 turns).
MAX_CHARS = 1_000_000  # characters of one turn's content
MAX_TURNS = 1_000  # turns of one conversation
MAX_METADATA_BYTES = 1_000_000  # bytes of one row's metadata as JSON
# Integers a 64-bit column (DuckDB, Parquet, Arrow) holds exactly; wider ones become strings.
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


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
        """Return the content hash of the conversation."""
        return content_id(self.messages)

    @property
    def prompt(self) -> str:
        """Return the turns before the last assistant turn."""
        return prompt_text(self.messages)

    @property
    def response(self) -> str:
        """Return the last assistant turn."""
        return response_text(self.messages)


def encode_messages(messages: Any) -> bytes:
    """Return the canonical JSON of a conversation: [{"role", "content"}, ...], compact."""
    return orjson.dumps([{"role": m["role"], "content": m["content"]} for m in messages])


def id_of_encoded(encoded: bytes) -> str:
    """Return the content id of a conversation already in canonical JSON (encode_messages)."""
    # XXH3-64: a fixed, specified algorithm (stable ids), ~8x cheaper than md5 on an import.
    return xxh3_64_hexdigest(encoded)


def content_id(messages: Any) -> str:
    """Return a 16-hex-digit stable hash (XXH3-64) of the roles and contents of a
    conversation, as the canonical JSON of encode_messages."""
    return id_of_encoded(encode_messages(messages))


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
    if "instruction" in record:
        return "alpaca"  # an Alpaca row without its output: say that, not "unknown shape"
    return None


def shape_hint(record: Any) -> str:
    """Return a one-line description of what keys each shape needs, for error messages."""
    keys = (", ".join(sorted(map(str, record))) if isinstance(record, dict)
            else type(record).__name__)
    return (f"found {keys or 'no keys'}; expected 'messages' (OpenAI chat), 'conversations' "
            "(ShareGPT), 'instruction'+'output' (Alpaca), 'prompt'+'completion', or 'text'")


def to_example(record: Any, shape: Shape) -> Example:
    """Return the Example for one record of a known shape; raise RowError naming the field."""
    messages, metadata = convert(record, shape)
    return Example(tuple(messages), metadata)


def convert(record: Any, shape: str) -> tuple[list[dict], dict]:
    """Return (messages, metadata) for one record of a known shape; raise RowError if invalid."""
    if type(record) is not dict and not isinstance(record, dict):
        raise RowError("(row)", f"expected a JSON object, got {type(record).__name__}",
                       "each line or item must be an object such as {\"messages\": [...]}")
    messages, metadata = _CONVERTERS[shape](record)
    check_messages(messages)
    return messages, metadata


def _text(record: dict, key: str, *, required: bool = True, allow_empty: bool = False) -> str:
    value = record.get(key)
    if type(value) is str:  # the common case, checked first because this runs per field
        if allow_empty or (value and not value.isspace()):
            return value
        raise RowError(key, "empty content", f"give '{key}' some text or remove the row")
    if value is None:
        if required:
            raise RowError(key, "missing field", f"add a non-empty '{key}' string")
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(key, f"wrong type: {type(value).__name__}", f"'{key}' must be a string")
    return _text({key: str(value)}, key, allow_empty=allow_empty)


def _rest(record: dict, used: frozenset[str] | set[str]) -> dict[str, Any]:
    if record.keys() <= used:
        return {}
    return {k: v for k, v in record.items() if k not in used}


def _from_alpaca(record: dict) -> tuple[list[dict], dict]:
    instruction = _text(record, "instruction")
    inp = _text(record, "input", required=False, allow_empty=True)
    output = _text(record, "output")
    messages: list[dict] = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record, "system")})
    if record.get("history"):
        messages += _alpaca_history(record["history"])
    source: dict[str, Any] = {"shape": "alpaca"}
    if inp and not inp.isspace():
        # Remember where the input starts instead of copying both texts into metadata.
        source["input_at"] = len(instruction)
        user = f"{instruction}{ALPACA_JOIN}{inp}"
    else:
        user = instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    meta = _rest(record, _ALPACA_KEYS)
    meta["_source"] = source
    return messages, meta


def _alpaca_history(history: Any) -> list[dict]:
    if not isinstance(history, list):
        raise RowError("history", f"wrong type: {type(history).__name__}",
                       "write history as [[\"q\", \"a\"], ...]")
    messages = []
    for i, turn in enumerate(history):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2
                and all(isinstance(t, str) and t.strip() for t in turn)):
            raise RowError(f"history[{i}]", "expected a [question, answer] pair of strings",
                           "write history as [[\"q\", \"a\"], ...]")
        messages += [{"role": "user", "content": turn[0]},
                     {"role": "assistant", "content": turn[1]}]
    return messages


def alpaca_split(metadata: dict, user: str) -> tuple[str, str]:
    """Return (instruction, input) for a user turn, restoring an imported Alpaca split."""
    src = metadata.get("_source")
    at = src.get("input_at") if isinstance(src, dict) and src.get("shape") == "alpaca" else None
    if isinstance(at, int) and 0 < at and user[at:at + len(ALPACA_JOIN)] == ALPACA_JOIN:
        instruction, inp = user[:at], user[at + len(ALPACA_JOIN):]
        if instruction.strip() and inp.strip():
            return instruction, inp
    return user, ""


def _turns(raw: Any, key: str, role_key: str, text_key: str, roles: dict[str, str]
           ) -> list[dict]:
    if not isinstance(raw, list):
        raise RowError(key, f"wrong type: {type(raw).__name__}", f"'{key}' must be a list of turns")
    if not raw:
        raise RowError(key, "empty conversation", f"'{key}' needs at least one turn")
    return [_turn(turn, f"{key}[{i}]", role_key, text_key, roles) for i, turn in enumerate(raw)]


def _turn(turn: Any, where: str, role_key: str, text_key: str, roles: dict[str, str]) -> dict:
    if not isinstance(turn, dict):
        raise RowError(where, f"wrong type: {type(turn).__name__}",
                       f"each turn must be an object with '{role_key}' and '{text_key}'")
    role = turn.get(role_key)
    mapped = (roles.get(role) or roles.get(role.lower())) if isinstance(role, str) else None
    if mapped is None:
        if role is None:
            raise RowError(f"{where}.{role_key}", "missing field",
                           f"give every turn a '{role_key}'")
        raise RowError(f"{where}.{role_key}", f"unknown role {role!r}",
                       "use one of system, user, assistant"
                       + (" (or human, gpt)" if roles is SHAREGPT_ROLES else ""))
    content = turn.get(text_key)
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        content = "".join(p["text"] for p in content
                          if isinstance(p, dict) and isinstance(p.get("text"), str))
    if type(content) is not str:
        if content is None:
            raise RowError(f"{where}.{text_key}", "missing field",
                           f"give every turn a '{text_key}' string")
        raise RowError(f"{where}.{text_key}", f"wrong type: {type(content).__name__}",
                       f"'{text_key}' must be a string")
    return {"role": mapped, "content": content}


def _from_openai(record: dict) -> tuple[list[dict], dict]:
    messages = _turns(record.get("messages"), "messages", "role", "content", _OPENAI_ROLES)
    return messages, _rest(record, {"messages"})


def _from_sharegpt(record: dict) -> tuple[list[dict], dict]:
    messages = _turns(record.get("conversations"), "conversations", "from", "value",
                      SHAREGPT_ROLES)
    meta = _rest(record, {"conversations"})
    meta["_source"] = {"shape": "sharegpt"}
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


def check_size(messages: list[dict], max_chars: int = MAX_CHARS) -> None:
    """Raise RowError if a conversation has more turns, or a turn more characters, than allowed."""
    if len(messages) > MAX_TURNS:
        raise RowError("messages", f"too many turns ({len(messages):,} > {MAX_TURNS:,})",
                       "split the conversation into several rows")
    for i, m in enumerate(messages):
        if len(m["content"]) > max_chars:
            raise RowError(f"messages[{i}].content",
                           f"field too large ({len(m['content']):,} characters > {max_chars:,})",
                           "split the text, or raise the limit with max_chars / --max-chars")


def check_metadata_size(encoded: bytes, metadata: dict) -> None:
    """Raise RowError naming the biggest key if metadata JSON is over MAX_METADATA_BYTES."""
    if len(encoded) <= MAX_METADATA_BYTES:
        return
    sizes = {k: len(orjson.dumps(v, default=str, option=orjson.OPT_NON_STR_KEYS))
             for k, v in metadata.items()}
    key = max(sizes, key=sizes.__getitem__)
    raise RowError(f"metadata.{key}", f"metadata too large ({len(encoded):,} bytes of JSON > "
                   f"{MAX_METADATA_BYTES:,}; '{key}' alone is {sizes[key]:,})",
                   "keep large payloads out of metadata (store a path or id instead)")


def check_messages(messages: list[dict]) -> None:
    """Raise RowError unless every turn has a known role and text, and one turn is the answer."""
    has_answer = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError(f"messages[{i}]", f"wrong type: {type(m).__name__}",
                           "each turn must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise RowError(f"messages[{i}].role", f"unknown role {role!r}",
                           "use one of system, user, assistant")
        if type(content) is not str:
            raise RowError(f"messages[{i}].content", f"wrong type: {type(content).__name__}",
                           "'content' must be a string")
        if not content or content.isspace():
            raise RowError(f"messages[{i}].content", f"empty content in the {role} turn",
                           "fill in the turn or drop it")
        has_answer = has_answer or role == "assistant"
    if not has_answer:
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
    ``flagged``: kept rows that a rule marked for review instead of dropping, one row per
    (row, rule) with ``row_key``, ``reason`` (the rule) and ``detail``; None from steps that
    never flag. kept + dropped always equals the input.
    """

    kept: Any
    dropped: Any
    changed: Any = None
    flagged: Any = None


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
