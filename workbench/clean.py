"""Cleaning rules: small typed configs that drop, flag or rewrite rows, previewed before applying.

Each rule is a frozen dataclass with a stable ``name`` (the drop, flag or change reason), the
``roles`` whose turns it reads and a ``mode``; a pure function next to it does the work on plain
strings. A rule in "flag" mode never drops: its rows stay and are listed for review.
``preview`` reports what every rule would do without changing anything; ``apply`` runs the
rules in order and returns a ``StepResult``; ``run`` gives both from one scan of the rows, so
applying what was just previewed costs nothing more. Every rule looks at one row at a time (only
``Contamination`` also needs the eval set it is given), so a frame slice at a time gives the
same result as the whole frame.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, NamedTuple

from workbench.exceptions import ConfigError
from workbench.schema import (
    DROP_COLUMNS,
    ROLES,
    Role,
    StepResult,
    alpaca_split,
    content_id,
    prompt_text,
    response_text,
)

ALL_ROLES: tuple[Role, ...] = ("system", "user", "assistant")
CHANGE_COLUMNS = ("row_key", "reason", "detail")  # also the columns of StepResult.flagged
Action = Literal["drop", "flag", "change"]


# --- the rule base and the per-turn engine ------------------------------------------------

@dataclass
class Hit:
    """What one rule found in one row: the first turn it hit, why, and new messages if any."""

    turn: int
    detail: str
    messages: list[dict] | None = None


@dataclass(frozen=True, kw_only=True)
class Rule:
    """Base of every rule: a frozen config with a stable ``name``, the ``roles`` it reads and
    its ``mode``: "drop" removes the rows it hits, "flag" keeps them and lists them for review."""

    name: ClassVar[str] = "rule"
    modes: ClassVar[tuple[str, ...]] = ("drop", "flag")
    roles: tuple[Role, ...] = ("assistant",)
    mode: Literal["drop", "flag"] = "drop"

    @property
    def action(self) -> Action:
        """Return "drop" (rows removed), "flag" (rows kept for review) or "change" (rewritten)."""
        return self.mode

    def __post_init__(self) -> None:
        self._check_choice("mode", self.modes)
        self._as_tuple("roles")
        if not self.roles:
            self._fail("roles", "needs at least one role")
        unknown = sorted(set(self.roles) - ROLES)
        if unknown:
            self._fail("roles", f"unknown role(s) {unknown}; use {sorted(ROLES)}")

    def check(self, texts: list[str]) -> list[str | None]:
        """Return, per text, why a drop rule drops (or flags) it (None keeps it)."""
        raise NotImplementedError(f"{type(self).__name__} does not drop")

    def fix(self, texts: list[str]) -> list[tuple[str, str] | None]:
        """Return, per text, (new text, what changed) for a change rule (None: unchanged)."""
        raise NotImplementedError(f"{type(self).__name__} does not change text")

    def scan(self, convs: list[list[dict]], metas: list[dict]) -> list[Hit | None]:
        """Return, per conversation, the first hit of this rule or None."""
        where, texts = _selected_turns(convs, self.roles)
        if self.action == "change":
            return _change_hits(convs, where, self.fix(texts))
        return _drop_hits(convs, where, self.check(texts))

    def params(self) -> dict[str, Any]:
        """Return the rule's options as a JSON-ready dict, to record next to its result."""
        out: dict[str, Any] = {"rule": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = repr(value) if callable(value) else _jsonable(value)
        return out

    def with_mode(self, mode: str) -> Rule:
        """Return a copy of this rule in another mode (checked like any option)."""
        import dataclasses

        return dataclasses.replace(self, mode=mode)

    def _fail(self, field_name: str, problem: str) -> None:
        raise ConfigError(f"{type(self).__name__}.{field_name}: {problem}")

    def _as_tuple(self, field_name: str) -> None:
        # Configs are frozen; accept lists from callers and store tuples so rules stay hashable.
        value = getattr(self, field_name)
        if isinstance(value, str) or not isinstance(value, Sequence):
            self._fail(field_name, f"expected a tuple or list, got {type(value).__name__}")
        object.__setattr__(self, field_name, tuple(value))

    def _check_range(self, field_name: str, low: float, high: float = math.inf) -> None:
        value = getattr(self, field_name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not low <= value <= high:
            self._fail(field_name, f"must be a number in [{low}, {high}], got {value!r}")

    def _check_choice(self, field_name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, field_name) not in choices:
            value = getattr(self, field_name)
            self._fail(field_name, f"must be one of {list(choices)}, got {value!r}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _selected_turns(convs: list[list[dict]], roles: tuple[str, ...]
                    ) -> tuple[list[tuple[int, int]], list[str]]:
    where, texts = [], []
    for r, conv in enumerate(convs):
        for t, message in enumerate(conv):
            if message["role"] in roles:
                where.append((r, t))
                texts.append(message["content"])
    return where, texts


def _turn_label(conv: list[dict], t: int) -> str:
    return f"turn {t + 1} ({conv[t]['role']})"


def _drop_hits(convs: list[list[dict]], where: list[tuple[int, int]],
               details: list[str | None]) -> list[Hit | None]:
    hits: list[Hit | None] = [None] * len(convs)
    for (r, t), detail in zip(where, details, strict=True):
        if detail is not None and hits[r] is None:
            hits[r] = Hit(t, f"{_turn_label(convs[r], t)}: {detail}")
    return hits


def _change_hits(convs: list[list[dict]], where: list[tuple[int, int]],
                 fixes: list[tuple[str, str] | None]) -> list[Hit | None]:
    hits: list[Hit | None] = [None] * len(convs)
    for (r, t), fixed in zip(where, fixes, strict=True):
        if fixed is None:
            continue
        note = f"{_turn_label(convs[r], t)}: {fixed[1]}"
        hit = hits[r]
        if hit is None:
            hit = hits[r] = Hit(t, note, list(convs[r]))
        else:
            hit.detail += f"; {note}"
        # A new dict: the caller's messages are never mutated.
        hit.messages[t] = {**convs[r][t], "content": fixed[0]}
    return hits


# --- normalize: unicode, mojibake, whitespace (changes) -------------------------------------

# Zero-width space, word joiner, BOM, soft hyphen: invisible and never meaningful in training
# text. ZWJ/ZWNJ (U+200C/D) and bidi marks stay: emoji sequences and Persian or Indic scripts
# need them.
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")
# Exotic spaces become plain spaces; U+3000 (ideographic space) is ordinary CJK text and stays.
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f]")
_LINE_BREAKS = re.compile("\r\n?|[\u2028\u2029\x85]")
# Possessive and anchored at the run's start: a long run of spaces is scanned once.
_TRAILING_SPACE = re.compile(r"(?<![ \t])[ \t]++(?=\n|\Z)")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"\A(?:[ \t]*\n)+")
# Anything in ASCII text that the substitutions below would change.
_WHITESPACE_WORK = re.compile(r"[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|[ \t]\n|\n\n\n|\A[ \t]*\n|\s\Z")


@functools.lru_cache(maxsize=1)
def _ftfy_config() -> Any:
    import ftfy

    # Keep what is meaningful: curly quotes, fullwidth CJK punctuation, a literal "&amp;" in
    # code. Line breaks, control characters and the normal form are separate steps below.
    return ftfy.TextFixerConfig(unescape_html=False, uncurl_quotes=False,
                                fix_character_width=False, fix_line_breaks=False,
                                remove_control_chars=False, normalization=None, explain=False)


def normalize_text(text: str, *, mojibake: bool = True, form: str | None = "NFC",
                   whitespace: bool = True) -> tuple[str, list[str]]:
    """Return the normalised text and the names of the steps that changed it."""
    fixers = _fixers(mojibake, form, whitespace)
    steps: dict[str, None] = {}  # ordered set
    # Each step can expose work for another (a removed control character joins the halves
    # of a mojibake sequence), so repeat until nothing changes: a second pass is a no-op.
    for _ in range(4):
        before = text
        for step, fixer in fixers:
            if step == "whitespace" or not text.isascii():  # the others never touch ASCII
                fixed = fixer(text)
                if fixed != text:
                    text, steps[step] = fixed, None
        if text == before:
            break
    return text, list(steps)


@functools.lru_cache(maxsize=16)
def _fixers(mojibake: bool, form: str | None, whitespace: bool
            ) -> tuple[tuple[str, Callable[[str], str]], ...]:
    fixers = [("mojibake", _repair)] if mojibake else []
    fixers += [(form, functools.partial(unicodedata.normalize, form))] if form else []
    return tuple(fixers + ([("whitespace", _normalize_whitespace)] if whitespace else []))


def _repair(text: str) -> str:
    import ftfy

    return ftfy.fix_text(text, _ftfy_config())


def _normalize_whitespace(text: str) -> str:
    if text.isascii() and not _WHITESPACE_WORK.search(text):
        return text  # the common case: one scan instead of six substitutions
    text = _LINE_BREAKS.sub("\n", text)
    if not text.isascii():
        text = _ODD_SPACES.sub(" ", _INVISIBLE.sub("", text))
    text = _CONTROL.sub("", text)
    text = _TRAILING_SPACE.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    # Leading blank lines go, but not the first line's indentation (code keeps its shape).
    return _LEADING_BLANK_LINES.sub("", text).rstrip()


@dataclass(frozen=True, kw_only=True)
class Normalize(Rule):
    """Repair mojibake (ftfy), apply a Unicode normal form, tidy whitespace; never drops."""

    name: ClassVar[str] = "normalize"
    modes: ClassVar[tuple[str, ...]] = ("change",)
    roles: tuple[Role, ...] = ALL_ROLES
    mode: Literal["change"] = "change"  # it only rewrites text
    mojibake: bool = True
    form: Literal["NFC", "NFKC", "none"] = "NFC"
    whitespace: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("form", ("NFC", "NFKC", "none"))

    def fix(self, texts: list[str]) -> list[tuple[str, str] | None]:
        form = None if self.form == "none" else self.form
        out: list[tuple[str, str] | None] = []
        for text in texts:
            new, steps = normalize_text(text, mojibake=self.mojibake, form=form,
                                        whitespace=self.whitespace)
            out.append((new, "normalized " + ", ".join(steps)) if steps else None)
        return out


# --- placeholder responses (drops) ----------------------------------------------------------

DEFAULT_PLACEHOLDERS: tuple[str, ...] = (
    "n/a", "na", "none", "null", "nil", "nan", "todo", "tbd", "tba", "noinput", "no input",
    "nooutput", "no output", "no response", "no answer", "not applicable", "placeholder",
    "empty", "undefined", "insert answer here", "your answer here", "no input required",
    "no input needed", "no input necessary", "no input provided", "no input given",
)
# Brackets, quotes and punctuation around a placeholder do not make it content: "<No output>".
_PLACEHOLDER_STRIP = " \t\r\n<>[](){}\"'`*_.,!?:;-…"
# A placeholder tag that opens a turn makes the rest a note about the row, not its content:
# "<nooutput> This type of instruction cannot be fulfilled", "<No output. Needs a poster.>".
_LEADING_TAG = re.compile(r"\A\s*<\s*([^<>\n]{1,40}?)\s*(?:>|[.,:;!](?=[^>\n]*>))")
# An answer of punctuation alone is empty, unless it is an emoticon someone asked for.
_EMOTICON = re.compile(r"[:;=][-'^]?[()\[\]/\\|*]+|[()\[\]][-'^]?[:;=]|<3|\^_*\^")


def _placeholder_key(text: str) -> str:
    return " ".join(text.strip(_PLACEHOLDER_STRIP).lower().split())


def placeholder_match(text: str, values: frozenset[str], *, punctuation: bool = True
                      ) -> str | None:
    """Return why a text is empty, a placeholder (one of ``values``), opens with a placeholder
    tag such as "<nooutput>", or (with ``punctuation``) is only punctuation; else None."""
    if not text or text.isspace():
        return "empty"
    if len(text) <= 64:  # no placeholder is long; skips lowercasing big texts
        shown = text.strip()
        key = _placeholder_key(shown)
        if key in values:
            return f"placeholder {shown!r}"
        if not key:
            keep = not punctuation or _EMOTICON.fullmatch(shown)
            return None if keep else f"only punctuation {shown!r}"
    tag = _LEADING_TAG.match(text)
    if tag and _placeholder_key(tag.group(1)) in values:
        return f"starts with placeholder {tag.group().strip()!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class Placeholder(Rule):
    """Drop turns that are empty, punctuation only, a placeholder such as "N/A", or open with
    a placeholder tag such as "<nooutput>"."""

    name: ClassVar[str] = "placeholder"
    roles: tuple[Role, ...] = ("assistant",)
    values: tuple[str, ...] = DEFAULT_PLACEHOLDERS

    def __post_init__(self) -> None:
        super().__post_init__()
        _normalize_values(self)

    def check(self, texts: list[str]) -> list[str | None]:
        values = frozenset(self.values)
        return [placeholder_match(t, values) for t in texts]


def _normalize_values(rule: Rule) -> None:
    """Store a placeholder rule's values as the keys they are matched by."""
    rule._as_tuple("values")
    object.__setattr__(rule, "values", tuple(_placeholder_key(v) for v in rule.values))


# --- the input part of a prompt: a placeholder, or only a link (drops) ----------------------

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# One or more links and nothing else, perhaps labelled ("Website: ...") or bracketed.
_LINK = r"[<\"'(\[]?(?:https?://|www\.)\S+?[>\"')\]]?\.?"
_LINK_ONLY = re.compile(rf"(?:[\w ]{{1,30}}:\s*)?{_LINK}(?:\s+{_LINK})*", re.IGNORECASE)


def prompt_input(text: str, metadata: Any = None) -> str:
    """Return the input part of a user turn: an imported Alpaca row's input, else the last
    paragraph of a turn of two or more ("" when the turn is one paragraph)."""
    if isinstance(metadata, dict):
        inp = alpaca_split(metadata, text)[1]
        if inp:
            return inp
    body, start = text.rstrip(), None
    for m in _PARAGRAPH_BREAK.finditer(body):
        start = m.end()
    return "" if start is None or not body[:start].strip() else body[start:]


@dataclass(frozen=True, kw_only=True)
class _InputRule(Rule):
    """Shared scan of the rules that judge the input part of user turns (see prompt_input)."""

    roles: tuple[Role, ...] = ("user",)

    def scan(self, convs: list[list[dict]], metas: list[dict]) -> list[Hit | None]:
        return [self._first(conv, meta) for conv, meta in zip(convs, metas, strict=True)]

    def _first(self, conv: list[dict], meta: Any) -> Hit | None:
        # An Alpaca input belongs to the last user turn; earlier turns have only paragraphs.
        last_user = max((t for t, m in enumerate(conv) if m["role"] == "user"), default=-1)
        for t, message in enumerate(conv):
            if message["role"] in self.roles:
                part = prompt_input(message["content"], meta if t == last_user else None)
                why = self.check([part])[0] if part else None
                if why:
                    return Hit(t, f"{_turn_label(conv, t)}: input {why}")
        return None


@dataclass(frozen=True, kw_only=True)
class PlaceholderInput(_InputRule):
    """Drop prompts whose input part is a placeholder ("No input", "<noinput>", "N/A"): the
    instruction then refers to an input that was never written."""

    name: ClassVar[str] = "placeholder_input"
    values: tuple[str, ...] = DEFAULT_PLACEHOLDERS

    def __post_init__(self) -> None:
        super().__post_init__()
        _normalize_values(self)

    def check(self, texts: list[str]) -> list[str | None]:
        values = frozenset(self.values)
        # Punctuation is real input here: Morse code, a star pattern to continue.
        return [placeholder_match(t, values, punctuation=False) if t.strip() else None
                for t in texts]


@dataclass(frozen=True, kw_only=True)
class UrlInput(_InputRule):
    """Drop prompts whose input part is only a link: the model cannot open it, so an answer
    about the page is made up (summaries of articles it never read)."""

    name: ClassVar[str] = "url_input"

    def check(self, texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for text in texts:
            link = text.strip()
            hit = len(link) <= 500 and _LINK_ONLY.fullmatch(link)
            out.append(f"is only a link {link[:80]!r}" if hit else None)
        return out


# --- length in characters or tokens (drops) -------------------------------------------------

_TOKEN_BATCH = 512  # texts per tokenizer call: fast tokenizers batch, memory stays flat


def count_tokens(texts: list[str], counter: Any) -> list[int]:
    """Return the token count of each text, from a ``count_tokens`` callable or HF tokenizer."""
    counts: list[int] = []
    for start in range(0, len(texts), _TOKEN_BATCH):
        batch = texts[start:start + _TOKEN_BATCH]
        try:
            got = _count_batch(batch, counter)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"count_tokens: failed on a batch of texts ({err})") from err
        if len(got) != len(batch):
            raise ConfigError(f"count_tokens: returned {len(got)} counts for {len(batch)} "
                              "texts; it must return one int per text")
        counts += got
    return counts


def _count_batch(texts: list[str], counter: Any) -> list[int]:
    if hasattr(counter, "model_input_names"):  # a transformers tokenizer
        ids = counter(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]
    if hasattr(counter, "encode_batch"):  # a bare `tokenizers.Tokenizer`
        return [len(e.ids) for e in counter.encode_batch(texts, add_special_tokens=False)]
    return [int(c) for c in counter(texts)]


@dataclass(frozen=True, kw_only=True)
class _Length(Rule):
    """Shared options of TooShort and TooLong."""

    unit: Literal["chars", "tokens"] = "chars"
    # count_tokens(list[str]) -> list[int], a transformers tokenizer or a tokenizers.Tokenizer
    count_tokens: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    scope: Literal["turn", "conversation"] = "turn"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("unit", ("chars", "tokens"))
        self._check_choice("scope", ("turn", "conversation"))
        if self.unit == "tokens" and self.count_tokens is None:
            self._fail("count_tokens", "unit='tokens' needs a tokenizer or a "
                       "count_tokens(list[str]) -> list[int] callable")
        if self.unit == "chars" and self.count_tokens is not None:
            self._fail("unit", "count_tokens is set, so unit must be 'tokens'")

    def lengths(self, texts: list[str]) -> list[int]:
        """Return the length of each text in this rule's unit (characters ignore outer spaces)."""
        if self.unit == "tokens":
            return count_tokens(texts, self.count_tokens)
        return [len(t.strip()) for t in texts]

    def _bad(self, length: int) -> bool:
        raise NotImplementedError

    def _why(self, length: int) -> str:
        raise NotImplementedError

    def check(self, texts: list[str]) -> list[str | None]:
        return [self._why(n) if self._bad(n) else None for n in self.lengths(texts)]

    def scan(self, convs: list[list[dict]], metas: list[dict]) -> list[Hit | None]:
        if self.scope == "turn":
            return super().scan(convs, metas)
        where, texts = _selected_turns(convs, self.roles)
        totals = [0] * len(convs)
        for (r, _), n in zip(where, self.lengths(texts), strict=True):
            totals[r] += n
        return [Hit(0, f"conversation: {self._why(n)}") if self._bad(n) else None
                for n in totals]


# A prompt that asks for a number, a letter or word, or a symbol: then a single one is a whole
# answer ("What is 12/3?" -> "4", "Output 1 for true" -> "1", "Pick an emoji" -> "😆").
_ASKS_NUMBER = re.compile(
    r"\d|\b(?:numbers?|numeric|numerical|count|how (?:many|much)|calculate|compute|sum|total"
    r"|average|mean|median|solve|evaluate|result|value|score|rate|rating|scale|grade|index"
    r"|digits?|odd|even|true|false|divisor|root|frequency|output)\b", re.IGNORECASE)
_ASKS_WORD = re.compile(
    r"(?i:\b(?:letters?|characters?|grade|options?|choices?|initials?|vowels?|consonants?"
    r"|words?)\b)|\([A-Ea-e]\)|\b[A-E] or [A-E]\b|^[A-E][.)] ", re.MULTILINE)
_ASKS_SYMBOL = re.compile(
    r"\b(?:emojis?|emoticons?|smiley|symbols?|icons?|unicode|characters?)\b", re.IGNORECASE)
_NUMBER_ANSWER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?%?")
_WORD_ANSWER = re.compile(r"[^\W\d_]+")


def short_answer_fits(answer: str, prompt: str) -> bool:
    """Return whether a one-token answer is what the prompt asks for: a number to a question
    about numbers, a letter or word to a choice, a symbol to a request for one."""
    answer = answer.strip()
    if not answer or len(answer.split()) > 1:
        return False
    if _NUMBER_ANSWER.fullmatch(answer):
        return _ASKS_NUMBER.search(prompt) is not None
    if _WORD_ANSWER.fullmatch(answer):
        return _ASKS_WORD.search(prompt) is not None
    symbol = not any(c.isalnum() for c in answer) and not all(c.isascii() for c in answer)
    return symbol and _ASKS_SYMBOL.search(prompt) is not None


@dataclass(frozen=True, kw_only=True)
class TooShort(_Length):
    """Drop turns (or conversations) shorter than ``min_length`` characters or tokens, except
    (``short_answers``) a one-token answer that is what the user turn before it asks for."""

    name: ClassVar[str] = "too_short"
    roles: tuple[Role, ...] = ("assistant",)
    min_length: int = 2
    short_answers: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("min_length", 0)

    def scan(self, convs: list[list[dict]], metas: list[dict]) -> list[Hit | None]:
        if self.scope != "turn" or not self.short_answers:
            return super().scan(convs, metas)
        where, texts = _selected_turns(convs, self.roles)
        details = self.check(texts)
        for k, ((r, t), detail) in enumerate(zip(where, details, strict=True)):
            asked = t > 0 and convs[r][t - 1]["role"] == "user"
            if detail and asked and short_answer_fits(texts[k], convs[r][t - 1]["content"]):
                details[k] = None  # "4" to "What is 12/3?" is complete, not too short
        return _drop_hits(convs, where, details)

    def _bad(self, length: int) -> bool:
        return length < self.min_length

    def _why(self, length: int) -> str:
        return f"{length} {self.unit} < {self.min_length}"


@dataclass(frozen=True, kw_only=True)
class TooLong(_Length):
    """Drop turns (or conversations) longer than ``max_length`` characters or tokens."""

    name: ClassVar[str] = "too_long"
    roles: tuple[Role, ...] = ALL_ROLES
    max_length: int = 20_000
    scope: Literal["turn", "conversation"] = "conversation"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("max_length", 1)

    def _bad(self, length: int) -> bool:
        return length > self.max_length

    def _why(self, length: int) -> str:
        return f"{length} {self.unit} > {self.max_length}"


# --- language (drops) -----------------------------------------------------------------------

# Code, URLs, e-mails and numbers say nothing about the language, and code reads as Latin.
_CODE_SPANS = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.DOTALL)
_LINKS = re.compile(r"https?://\S+|www\.\S+|\S+@\S+")
_NUMBERS = re.compile(r"\d+")
_ASCII_NON_LETTERS = bytes(c for c in range(128) if not chr(c).isalpha())
_LETTER = re.compile(r"[^\W\d_]")
_LATIN = re.compile(r"[A-Za-z\u00C0-\u024F\u1E00-\u1EFF]")
# Languages not written in the Latin script: when every allowed language is written in it,
# a text mostly in another script is out, however unsure the detector is between, say,
# Russian and Bulgarian.
NON_LATIN_LANGUAGES = frozenset({
    "am", "ar", "as", "be", "bg", "bn", "el", "fa", "gu", "he", "hi", "hy", "ja", "ka", "kk",
    "km", "kn", "ko", "ky", "lo", "mk", "ml", "mn", "mr", "my", "ne", "or", "pa", "ps", "ru",
    "sa", "si", "ta", "te", "th", "ug", "uk", "ur", "zh", "dz", "ba", "tt", "tg", "arz", "ary",
    "sdh", "yue", "wuu", "hbo", "grc", "gom"})
_LID_CHARS = 2000  # more text barely changes the answer and costs linear time
_LID_BATCH = 256
# py3langid 0.4 internals the batched path reads; tests check it against py3langid's classify.
_LID_INTERNALS = ("tk_nextmove", "_rowbase", "tk_output", "nb_ptc", "nb_pc", "nb_classes",
                  "_alias_pairs")


@functools.lru_cache(maxsize=1)
def _base_identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


@dataclass
class _Lid:
    """A py3langid identifier and its tables as numpy arrays, for batched classification."""

    ident: Any
    nextmove: Any = None
    rowbase: Any = None
    output: Any = None
    ptc: Any = None


@functools.lru_cache(maxsize=8)
def _identifier(candidates: tuple[str, ...] | None) -> _Lid:
    import numpy as np

    # A copy per candidate set: set_languages rebinds arrays, so the shared model is untouched.
    ident = copy.copy(_base_identifier())
    if candidates:
        ident.set_languages(list(candidates))
    if not all(hasattr(ident, a) for a in _LID_INTERNALS):
        return _Lid(ident)  # another py3langid layout: classify one text at a time
    return _Lid(ident, np.asarray(ident.tk_nextmove),  # array.array: shared, not copied
                np.asarray(ident._rowbase, dtype=np.int64),
                np.asarray(ident.tk_output, dtype=np.int64),
                # C order: set_languages leaves a strided view, which scipy copies per call.
                np.ascontiguousarray(ident.nb_ptc, dtype=np.float32))


def language_codes() -> list[str]:
    """Return the language codes the bundled py3langid model knows."""
    return list(_base_identifier().labels)


class LanguageGuess(NamedTuple):
    """The detector's answer for one text."""

    lang: str      # most likely language code; "und" when the text has no letters
    prob: float    # its probability
    letters: int   # letters the guess rests on (code, URLs and numbers removed)
    latin: float   # share of those letters in the Latin script


def detect_languages(texts: list[str], *, candidates: Sequence[str] | None = None
                     ) -> list[LanguageGuess]:
    """Return a LanguageGuess per text, choosing among ``candidates`` (default: all)."""
    lid = _identifier(tuple(sorted(candidates)) if candidates else None)
    prose = [_lid_prose(t) for t in texts]
    letters = [_letters(p) for p in prose]
    todo = [i for i, n in enumerate(letters) if n]
    out = [LanguageGuess("und", 0.0, 0, 0.0)] * len(texts)
    for i, (lang, prob) in zip(todo, _classify(lid, [prose[i] for i in todo]), strict=True):
        latin = 1.0 if prose[i].isascii() else len(_LATIN.findall(prose[i])) / letters[i]
        out[i] = LanguageGuess(lang, prob, letters[i], latin)
    return out


def _lid_prose(text: str) -> str:
    # Substring tests first: most texts have no code, links or numbers to remove.
    text = text[: _LID_CHARS * 2]
    if "`" in text:
        text = _CODE_SPANS.sub(" ", text)
    if "@" in text or "http" in text or "www." in text:
        text = _LINKS.sub(" ", text)
    return _NUMBERS.sub(" ", text)[:_LID_CHARS]


def _letters(text: str) -> int:
    if text.isascii():  # bytes.translate counts in C; a regex would build a list per letter
        return len(text.encode("ascii").translate(None, _ASCII_NON_LETTERS))
    return len(_LETTER.findall(text))


def _classify(lid: _Lid, texts: list[str]) -> list[tuple[str, float]]:
    if lid.nextmove is None:  # another py3langid layout: its own one-text-at-a-time API
        return [(lang, float(p)) for lang, p in map(lid.ident.classify, texts)]
    encoded = [_lid_bytes(t) for t in texts]
    # Longest first, so the texts still being read at byte k are always a prefix of the batch.
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    out: list[tuple[str, float]] = [("und", 0.0)] * len(texts)
    for start in range(0, len(order), _LID_BATCH):
        chunk = order[start:start + _LID_BATCH]
        probs, found = _lid_probs(lid, [encoded[i] for i in chunk])
        best = probs.argmax(axis=1)
        for r, i in enumerate(chunk):
            if found[r]:  # no byte feature at all: py3langid would guess uniformly
                out[i] = (lid.ident.nb_classes[best[r]], float(probs[r, best[r]]))
    return out


def _lid_bytes(text: str) -> bytes:
    # The preparation py3langid applies itself (LanguageIdentifier._encode).
    text = text.lower() if text.isupper() else text
    return unicodedata.normalize("NFC", text).encode("utf8", errors="surrogatepass")


def _lid_probs(lid: _Lid, encoded: list[bytes]) -> tuple[Any, Any]:
    """Return py3langid's class probabilities for many texts, and which had any feature."""
    import numpy as np

    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    rows, feats = _lid_walk(lid, encoded, lengths)
    return _lid_softmax(lid, rows, feats, lengths)


def _lid_walk(lid: _Lid, encoded: list[bytes], lengths: Any) -> tuple[Any, Any]:
    import numpy as np

    # The byte automaton of py3langid, stepped for all texts at once: state per text.
    buf = np.zeros((len(encoded), int(lengths.max(initial=0))), dtype=np.int64)
    for row, e in enumerate(encoded):
        buf[row, :len(e)] = np.frombuffer(e, dtype=np.uint8)
    live_at = np.searchsorted(-lengths, -np.arange(buf.shape[1]), side="right")
    state = np.zeros(len(encoded), dtype=np.int64)
    rows, feats = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for k in range(buf.shape[1]):
        live = int(live_at[k])  # texts with more than k bytes
        state[:live] = lid.nextmove[lid.rowbase[state[:live]] + buf[:live, k]]
        f = lid.output[state[:live]]
        hit = np.flatnonzero(f >= 0)
        rows.append(hit)
        feats.append(f[hit])
    return np.concatenate(rows), np.concatenate(feats)


def _lid_softmax(lid: _Lid, rows: Any, feats: Any, lengths: Any) -> tuple[Any, Any]:
    import numpy as np
    from scipy.sparse import csr_matrix

    n_feats = lid.ptc.shape[0]
    keys, counts = np.unique(rows * n_feats + feats, return_counts=True)
    visits = csr_matrix((np.log1p(counts.astype(np.float32)), (keys // n_feats, keys % n_feats)),
                        shape=(len(lengths), n_feats))
    scores = np.asarray(visits @ lid.ptc, dtype=np.float32) + lid.ident.nb_pc
    # py3langid's calibration: temperature sqrt(bytes), softmax, script aliases folded.
    scores *= (1.0 / np.sqrt(np.maximum(lengths, 1))).astype(np.float32)[:, None]
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for i, j in lid.ident._alias_pairs:
        probs[:, i] += probs[:, j]
        probs[:, j] = 0.0
    found = np.zeros(len(lengths), dtype=bool)
    found[keys // n_feats] = True
    return probs, found


# The model knows 140 languages, many rare; English lists and titles then read as Latin or
# Serbian. Restricting the guess to widely used languages removes most of those errors.
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "af", "am", "ar", "az", "be", "bg", "bn", "bs", "ca", "cs", "cy", "da", "de", "el", "en",
    "es", "et", "eu", "fa", "fi", "fr", "ga", "gl", "gu", "he", "hi", "hr", "hu", "hy", "id",
    "is", "it", "ja", "ka", "kk", "km", "kn", "ko", "lo", "lt", "lv", "mk", "ml", "mn", "mr",
    "ms", "my", "ne", "nl", "no", "pa", "pl", "ps", "pt", "ro", "ru", "si", "sk", "sl", "sq",
    "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "uz", "vi", "zh",
)


@dataclass(frozen=True, kw_only=True)
class Language(Rule):
    """Drop turns that py3langid confidently puts outside the ``allowed`` languages."""

    name: ClassVar[str] = "language"
    roles: tuple[Role, ...] = ("user", "assistant")
    allowed: tuple[str, ...] = ("en",)
    min_confidence: float = 0.9
    min_letters: int = 20
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("allowed", "candidates"):
            self._as_tuple(name)
            unknown = sorted(set(getattr(self, name)) - set(language_codes()))
            if unknown:
                self._fail(name, f"unknown language code(s) {unknown}; see language_codes()")
        if not self.allowed:
            self._fail("allowed", "needs at least one language")
        missing = sorted(set(self.allowed) - set(self.candidates or self.allowed))
        if missing:
            self._fail("candidates", f"must include the allowed language(s) {missing}")
        self._check_range("min_confidence", 0.0, 1.0)
        self._check_range("min_letters", 0)

    def check(self, texts: list[str]) -> list[str | None]:
        allowed = frozenset(self.allowed)
        latin_only = not allowed & NON_LATIN_LANGUAGES
        out: list[str | None] = []
        for g in detect_languages(texts, candidates=self.candidates):
            if g.letters < self.min_letters or g.lang in allowed or g.lang == "und":
                out.append(None)
            elif g.prob >= self.min_confidence:
                out.append(f"language {g.lang!r} (p={g.prob:.2f}), allowed {sorted(allowed)}")
            elif latin_only and g.latin < 0.5:
                out.append(f"{1 - g.latin:.0%} of letters not in the Latin script "
                           f"(likely {g.lang!r}), allowed {sorted(allowed)}")
            else:
                out.append(None)
        return out


# --- PII: find, then redact or drop ---------------------------------------------------------

PIIKind = Literal["email", "phone", "credit_card", "ip_address", "secret"]
PII_KINDS: tuple[PIIKind, ...] = ("email", "phone", "credit_card", "ip_address", "secret")
PII_PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "credit_card": "[CREDIT_CARD]",
                    "ip_address": "[IP_ADDRESS]", "secret": "[SECRET]"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
# North American numbers with separators. Any area code: real ones never start with 0 or 1,
# but "(123) 456-7890" in a row is written as a phone number, like "123-456-7890".
_PHONE_NANP = re.compile(r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])"
                         r"\d{3}[ .-]\d{4}(?![\w-]|\.\d)")
# International numbers need the leading "+", which versions, dates and totals never have.
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}"
                         r"(?:[ .-]?\d{1,4}){1,5}(?![\w]|[.-]\d)")
# Any number introduced as a phone number.
_PHONE_KEYWORD = re.compile(r"\b(?:phone|tel|telephone|mobile|cell|fax|call|whatsapp)\b"
                            r"(?:\s*(?:no\.?|number|#))?\s*[:.]?\s*(?:me\s+|us\s+)?(?:at\s+|on\s+)?"
                            r"(\+?\(?\d[\d ().-]{5,18}\d)(?![\w]|[.-]\d)", re.IGNORECASE)
_DATE_LIKE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")
_CARD = re.compile(r"(?<![\d.-])(?:\d{4}([ -]?)\d{4}\1\d{4}\1\d{1,7}|\d{4}([ -]?)\d{6}\2\d{4,5})"
                   r"(?![\d-]|\.\d)")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                   r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Numbers that are labelled as something else (order, version, ISBN...) are not PII.
_NOT_PII_CONTEXT = re.compile(
    r"(?:order|invoice|ref|reference|account|acct|isbn|issn|serial|sku|tracking|version|ver"
    r"|build|patent|case|ticket|transaction|confirmation|policy|item|product|part|model)"
    r"\W{0,3}(?:number|no|num|id|#)?\W{0,3}$", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"\bsk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}")
_SECRET_PATTERNS = (
    re.compile(r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?:.*?-----END[A-Z ]*PRIVATE KEY-----|.*\Z)",
               re.DOTALL),
    _OPENAI_KEY,
    re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"),
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b"
               r"|\bgithub_pat_[A-Za-z0-9_]{22,255}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![\w-])"),
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
)
# A long value assigned to a name that says key/secret/token/password; only the value goes.
# The match starts at the keyword, not the name's start: fewer places to try on long words.
_SECRET_ASSIGNMENT = re.compile(
    r"(?:key|secret|token|passw(?:or)?d|pwd|credential|auth)[\w-]{0,40}[\"']?\s{0,5}"
    r"(?::|=>|=)\s{0,5}[\"']?([A-Za-z0-9+/_\-.=~]{16,})", re.IGNORECASE)
# Cheap substring tests (on the lowercased text) that every secret pattern needs.
_SECRET_HINTS = ("sk-", "sk_", "rk_", "akia", "asia", "agpa", "aida", "aroa", "anpa", "anva",
                 "aipa", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox", "aiza",
                 "eyj", "private key", "key", "secret", "token", "passw", "pwd", "credential",
                 "auth")
# Phones and cards hold a run of 7+ characters of digits and separators; IPs have their dots
# or colons.
_NUMBERISH = re.compile(r"\d[\d ().+-]{5,}\d")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


@dataclass(frozen=True)
class Span:
    """One PII match: where it is, what kind, and the text."""

    start: int
    end: int
    kind: str
    text: str


def luhn_valid(number: str) -> bool:
    """Return whether the digits of ``number`` pass the Luhn checksum (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    return (sum(digits[-1::-2]) + sum(_DOUBLED[d] for d in digits[-2::-2])) % 10 == 0


def shannon_entropy(text: str) -> float:
    """Return the Shannon entropy of the text's characters in bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def _labelled_other(text: str, start: int) -> bool:
    return _NOT_PII_CONTEXT.search(text[max(0, start - 30):start]) is not None


def _emails(text: str, ignore_domains: tuple[str, ...]) -> list[Span]:
    if "@" not in text:
        return []
    spans = []
    for m in _EMAIL.finditer(text):
        domain = m.group().rsplit("@", 1)[1].lower()
        if not any(domain == d or domain.endswith("." + d) for d in ignore_domains):
            spans.append(Span(m.start(), m.end(), "email", m.group()))
    return spans


def _phones(text: str) -> list[Span]:
    found = [(m.start(), m.end()) for rx in (_PHONE_NANP, _PHONE_INTL) for m in rx.finditer(text)]
    found += [(m.start(1), m.end(1)) for m in _PHONE_KEYWORD.finditer(text)]
    spans = []
    for start, end in found:
        value = text[start:end]
        digits = sum(c.isdigit() for c in value)
        if (7 <= digits <= 15 and not _DATE_LIKE.fullmatch(value)
                and not _labelled_other(text, start)):
            spans.append(Span(start, end, "phone", value))
    return spans


def _cards(text: str) -> list[Span]:
    spans = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        # Major networks start with 2-6; one repeated digit is filler, not a card.
        plausible = 13 <= len(digits) <= 19 and digits[0] in "23456" and len(set(digits)) > 1
        if plausible and luhn_valid(digits) and not _labelled_other(text, m.start()):
            spans.append(Span(m.start(), m.end(), "credit_card", m.group()))
    return spans


def _ips(text: str, public_only: bool) -> list[Span]:
    spans = []
    v6 = [m for m in _IPV6.finditer(text) if sum(c.isdigit() for c in m.group()) >= 2]
    for m in [*_IPV4.finditer(text), *v6]:  # "a::b" in C++ has no digits, addresses do
        try:
            address = ipaddress.ip_address(m.group())
        except ValueError:
            continue
        if public_only and not address.is_global or _labelled_other(text, m.start()):
            continue
        spans.append(Span(m.start(), m.end(), "ip_address", m.group()))
    return spans


def _secrets(text: str, min_entropy: float) -> list[Span]:
    if not any(map(text.lower().__contains__, _SECRET_HINTS)):
        return []
    spans = []
    for rx in _SECRET_PATTERNS:
        for m in rx.finditer(text):
            if _looks_random(m.group(), rx):
                spans.append(Span(m.start(), m.end(), "secret", m.group()))
    for m in _SECRET_ASSIGNMENT.finditer(text):
        value = m.group(1)
        if _mixed(value) and shannon_entropy(value) >= min_entropy:
            spans.append(Span(m.start(1), m.end(1), "secret", value))
    return spans


def _mixed(value: str) -> bool:
    return any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def _looks_random(value: str, rx: re.Pattern) -> bool:
    # "sk-" also starts hyphenated words ("sk-learn-tutorial-part-2"); real keys mix cases.
    mixed_case = value != value.lower() and value != value.upper()
    return rx is not _OPENAI_KEY or (_mixed(value) and mixed_case)


def find_pii(text: str, *, kinds: Sequence[str] = PII_KINDS,
             ignore_email_domains: Sequence[str] = (), public_ips_only: bool = True,
             secret_min_entropy: float = 3.0) -> list[Span]:
    """Return the non-overlapping PII spans in the text, sorted by position."""
    found: list[Span] = []
    # Priority order: a secret or an e-mail wins over the digits inside it.
    if "secret" in kinds:
        found += _secrets(text, secret_min_entropy)
    if "email" in kinds:
        found += _emails(text, tuple(d.lower() for d in ignore_email_domains))
    numberish = ("credit_card" in kinds or "phone" in kinds) and _NUMBERISH.search(text)
    if numberish and "credit_card" in kinds:
        found += _cards(text)
    maybe_ip = "::" in text or text.count(":") >= 3 or ("." in text and _IPV4_HINT.search(text))
    if "ip_address" in kinds and maybe_ip:
        found += _ips(text, public_ips_only)
    if numberish and "phone" in kinds:
        found += _phones(text)
    return _without_overlaps(found)


def _without_overlaps(spans: list[Span]) -> list[Span]:
    taken: list[Span] = []
    for span in spans:  # already in priority order
        if all(span.end <= t.start or span.start >= t.end for t in taken):
            taken.append(span)
    return sorted(taken, key=lambda s: s.start)


def redact_pii(text: str, spans: list[Span]) -> str:
    """Return the text with each span replaced by its typed placeholder, e.g. "[EMAIL]"."""
    parts, last = [], 0
    for span in spans:
        parts += [text[last:span.start], PII_PLACEHOLDERS[span.kind]]
        last = span.end
    return "".join(parts) + text[last:]


def _kinds_summary(spans: list[Span]) -> str:
    counts = Counter(s.kind for s in spans)
    return ", ".join(f"{n} {PII_PLACEHOLDERS[k][1:-1]}" for k, n in counts.items())


@dataclass(frozen=True, kw_only=True)
class PII(Rule):
    """Redact (typed placeholders) or drop e-mails, phones, cards, IPs and secrets."""

    name: ClassVar[str] = "pii"
    modes: ClassVar[tuple[str, ...]] = ("redact", "drop", "flag")
    roles: tuple[Role, ...] = ALL_ROLES
    mode: Literal["redact", "drop", "flag"] = "redact"
    kinds: tuple[PIIKind, ...] = PII_KINDS
    # Reserved documentation domains (RFC 2606) and their subdomains belong to nobody.
    ignore_email_domains: tuple[str, ...] = ("example.com", "example.org", "example.net",
                                             "example", "test", "invalid", "localhost")
    # Private, loopback and documentation addresses (192.168.x.x, 127.0.0.1) identify nobody.
    public_ips_only: bool = True
    secret_min_entropy: float = 3.0

    @property
    def action(self) -> Action:
        return "change" if self.mode == "redact" else self.mode

    def __post_init__(self) -> None:
        super().__post_init__()
        self._as_tuple("kinds")
        self._as_tuple("ignore_email_domains")
        unknown = sorted(set(self.kinds) - set(PII_KINDS))
        if unknown or not self.kinds:
            self._fail("kinds", f"choose from {list(PII_KINDS)}, got {list(self.kinds)}")
        self._check_range("secret_min_entropy", 0.0, 8.0)

    def spans(self, text: str) -> list[Span]:
        """Return the PII spans this rule finds in one text."""
        return find_pii(text, kinds=self.kinds, ignore_email_domains=self.ignore_email_domains,
                        public_ips_only=self.public_ips_only,
                        secret_min_entropy=self.secret_min_entropy)

    def check(self, texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for text in texts:
            spans = self.spans(text)
            out.append(f"contains {_kinds_summary(spans)}" if spans else None)
        return out

    def fix(self, texts: list[str]) -> list[tuple[str, str] | None]:
        out: list[tuple[str, str] | None] = []
        for text in texts:
            spans = self.spans(text)
            out.append((redact_pii(text, spans), f"redacted {_kinds_summary(spans)}")
                       if spans else None)
        return out


# --- refusals and AI disclaimers (drops) ----------------------------------------------------

# Disclaimers that only a model writes about itself: matched anywhere.
_DISCLAIMER = re.compile(
    r"\bas an ai language model\b"
    r"|(?:\A|[.!?]\s+|\n)\W{0,5}as an? (?:ai|artificial intelligence|(?:large )?language model)"
    r"(?: (?:language )?model| assistant| chatbot| system)?(?=,|\s+I\b)"
    r"|\bI(?: am|'m|’m) (?:just |only |merely )?an? "
    r"(?:ai|artificial intelligence|language model)\b"
    r"|\bI (?:do not|don't|don’t) have (?:personal )?(?:opinions|feelings|emotions|beliefs"
    r"|preferences|personal experiences)\b|\bmy (?:knowledge cutoff|training data)\b"
    r"|\bas of my (?:last )?(?:knowledge )?(?:update|cutoff)\b"
    r"|\b(?:openai|anthropic)(?:'s|’s)? (?:use case |content )?polic(?:y|ies)\b"
    r"|\bI (?:cannot|can't|can’t|am unable to) (?:browse|access) the (?:internet|web)\b",
    re.IGNORECASE)
# Every disclaimer above contains one of these.
_DISCLAIMER_KEYS = ("an ai", "artificial intelligence", "language model", "i don't have",
                    "i do not have", "i don’t have", "my knowledge", "my training", "as of my",
                    "openai", "anthropic", "browse the", "access the")
# Refusals: only at the start, so a letter the model was asked to write ("Dear Sam, I'm
# sorry, but I cannot attend") is not one.
_REFUSAL_START = re.compile(
    r"\A\W*(?:(?:I(?: am|'m|’m) (?:so |very |truly )?sorry|I apologi[sz]e|sorry|unfortunately)"
    r"[^.!?\n]{0,40}?\b(?:but )?I(?: (?:cannot|can't|can’t|can not|am unable to|am not able to"
    r"|(?:do not|don't|don’t) have (?:access|the ability))|(?:'m|’m) (?:unable|not able) to)\b"
    r"|I(?: cannot| can't| can’t| can not| am unable to| am not able to| won't| will not"
    r"|(?:'m|’m) (?:unable|not able) to) "
    r"(?:fulfill|fulfil|comply|assist|help|provide|answer|generate|create|complete|perform"
    r"|do that|engage|write|produce|support)\b"
    r"|(?:this|the) (?:instruction|task|request|question) (?:cannot|can't|can not) be "
    r"(?:completed|fulfilled|performed|answered|done)\b)",
    re.IGNORECASE)


def refusal_match(text: str) -> str | None:
    """Return the refusal or AI-disclaimer phrase found in the text, or None."""
    m = _REFUSAL_START.search(text[:300])
    if m is None:
        if any(map(text.lower().__contains__, _DISCLAIMER_KEYS)):  # cheap scans spare the regex
            m = _DISCLAIMER.search(text)
    return m.group().strip() if m else None


@dataclass(frozen=True, kw_only=True)
class Refusal(Rule):
    """Drop responses that refuse ("I'm sorry, but I cannot") or disclaim being an AI."""

    name: ClassVar[str] = "refusal"
    roles: tuple[Role, ...] = ("assistant",)

    def check(self, texts: list[str]) -> list[str | None]:
        out: list[str | None] = []
        for text in texts:
            phrase = refusal_match(text)
            out.append(f"refusal {phrase[:80]!r}" if phrase else None)
        return out


# --- instructions that refer to content the row lacks (drops) -------------------------------

_SP = r"[ \t]+"  # words of one line: a reference never spans a paragraph break
# Things that only a URL or an attachment can supply.
_MEDIA = (r"(?:image|picture|photo|photograph|screenshot|video|audio|recording|clip"
          r"|diagram|map)s?")
# Things the row itself can supply, as text after the reference.
_TEXTUAL = (r"(?:text|sentence|passage|paragraph|article|document|file|attachment|code"
            r"|snippet|essay|story|poem|e-?mail|letter|list|table|data|dataset|chart|graph"
            r"|figure|statement|question|words?|phrase|quote|excerpt|review|tweet|recipe"
            r"|report|song|lyrics|input|information|context|number|equation|program|function"
            r"|script|summary|content|conversation|dialogue|paper|book|product|description"
            r"|item|argument|speech|news|link|url|website|webpage|web page|string|array)s?")
_DEICTIC = (r"(?:attached|enclosed|accompanying|uploaded|linked|following|above|below|given"
            r"|provided|shown)")
_MEDIA_REF = re.compile(
    rf"\b(?:the|this|these|an?){_SP}(?:{_DEICTIC}{_SP})?(?:[\w-]+{_SP})?{_MEDIA}{_SP}"
    rf"(?:above|below|attached|provided|shown|linked)\b"
    rf"|\b(?:the|this|these){_SP}{_DEICTIC}{_SP}(?:[\w-]+{_SP})?{_MEDIA}\b"
    rf"|\bsee{_SP}(?:the{_SP})?attach(?:ed|ment)\b", re.IGNORECASE)
# "In the photo" points at one photo when a user writes it; an answer says it of images in
# general ("objects in the image"), so assistants are held to the references above. A video
# game, call or conference is no video.
_MEDIA_IN = re.compile(
    rf"\b(?:in|from|on){_SP}(?:the|this){_SP}(?:image|picture|photo|photograph|screenshot"
    rf"|video)s?\b(?!{_SP}(?:games?|calls?|conferences?|editors?|editing|processing"
    rf"|recognition)\b)", re.IGNORECASE)
_TEXT_REF = re.compile(
    rf"\b(?:the|this|these|those){_SP}{_DEICTIC}{_SP}(?:[\w-]+{_SP}){{0,2}}?{_TEXTUAL}\b"
    rf"|\b(?:the|this){_SP}{_TEXTUAL}{_SP}(?:below|above|provided|given|attached)\b",
    re.IGNORECASE)
# Content follows a reference when a colon, line break, dash, bracket or quote leads to more
# text, when another sentence follows, or when a formula does ("the equation 3x+2=8").
_CONTENT_AFTER = re.compile(r"[:\n(]\s*\S|\s[-–—]\s*\S|[.?!]\s+\S{3,}|(?<=\s)[\"“'«]\s*\S"
                            r"|\d\s*[=+*/^<>]|[=+*/^<>]\s*\d")
_FIRST_PARAGRAPH = re.compile(r"\n\s*\n")
# A URL, or a bare domain such as "example.com", gives the row its link.
_URL = re.compile(r"\bhttps?://\S|\bwww\.\S|\b[\w-]{1,63}\.(?:com|org|net|io|edu|gov|co|ai|dev"
                  r"|app|info|uk|de|fr)\b", re.IGNORECASE)
ATTACHMENT_KEYS = ("image", "images", "attachment", "attachments", "file", "files", "url",
                   "urls", "media", "audio", "video")


def _instruction_end(text: str) -> int:
    # Only the instruction (first paragraph) is read: later paragraphs are the content, and
    # "the following article is about..." there describes it.
    m = _FIRST_PARAGRAPH.search(text)
    return m.start() if m else len(text)


def _media_ref(text: str, end: int, user: bool) -> re.Match | None:
    found = [_MEDIA_REF.search(text, 0, end), _MEDIA_IN.search(text, 0, end) if user else None]
    return min((m for m in found if m), key=lambda m: m.start(), default=None)


def _refers(text: str, user: bool = True) -> bool:
    end = _instruction_end(text)
    return bool(_media_ref(text, end, user) or _TEXT_REF.search(text, 0, end)
                or _ATTACH_CLAIM.search(text))


# Claims that something was attached, uploaded or placed below: only a real attachment, a URL,
# or a block that follows can back them, whatever turns came before.
_ATTACH_CLAIM = re.compile(
    r"\b(?:I|we)(?:'ve|’ve| have)? (?:just |also )?(?:attached|uploaded|enclosed)\b"
    r"|\bI (?:attached|uploaded|enclosed)\b"
    r"|\((?:[\w-]+ ){0,3}(?:attached|enclosed|uploaded)\)"
    r"|\b(?:screenshots?|screen recordings?|recordings?|videos?|pdfs?|logs?|articles?|tables?"
    r"|links?)(?: is| are)? (?:attached|enclosed|uploaded|linked|pasted|shown)(?: below| above"
    r"| here| to this (?:message|reply|email))?\b"
    r"|\b(?:linked|pasted) (?:below|above)\b"
    r"|\bthe (?:table|link|article|screenshot|attachment|log) (?:below|above)\b", re.IGNORECASE)
# A block right after the claim ("pasted below:\n<log>") backs it.
_BLOCK_AFTER = re.compile(r"[.:]?[ \t]*\n\s*\S|[ \t]*:\s*\S")
# Text said to be below ("Summarize the article below in 5 sentences.\n\n<article>") is
# backed by five words or more after a paragraph break; a sign-off ("— Northwind Support") is
# no article, and a link or screenshot below needs a URL or attachment, not prose.
_TEXT_BELOW = re.compile(r"\b(?:table|article|log|text|passage|list)s?(?: is| are)?"
                         r"(?: pasted)? below\b|\bpasted below\b", re.IGNORECASE)
_LATER_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*(?![-–—])(?:\S+\s+){4}\S")


def _claim_backed(text: str, m: re.Match) -> bool:
    if _BLOCK_AFTER.match(text, m.end()):
        return True
    return bool(_TEXT_BELOW.search(m.group()) and _LATER_PARAGRAPH.search(text, m.end()))


def missing_context_match(text: str, *, has_source: bool, has_earlier_turn: bool,
                          user: bool = True) -> str | None:
    """Return the reference to content that the row does not contain, or None (``user``: the
    text is a user turn, where "in the photo" already points at a photo)."""
    end = _instruction_end(text)
    if not has_source:
        m = _media_ref(text, end, user)
        if m:
            return f"refers to {m.group().strip()!r} but the row has no URL or attachment"
        m = _ATTACH_CLAIM.search(text)
        if m and not _claim_backed(text, m):
            return f"refers to {m.group().strip()!r} but the row has no attachment, URL or block"
    if has_source or has_earlier_turn:
        return None
    for m in _TEXT_REF.finditer(text, 0, end):
        if not _CONTENT_AFTER.search(text, m.end()) and not _introduced(text, m):
            return f"refers to {m.group().strip()!r} but nothing follows it"
    return None


def _introduced(text: str, m: re.Match) -> bool:
    # "Given a string, reverse the given string": the reference names a parameter that the
    # instruction introduced with "a", not content that should be present.
    noun = m.group().split()[-1].lower().rstrip("s")
    return re.search(rf"\b(?:a|an|any|some)\s+(?:[\w-]+\s+)?{re.escape(noun)}",
                     text[:m.start()], re.IGNORECASE) is not None


def _has_source(conv: list[dict], meta: Any) -> bool:
    if isinstance(meta, dict) and any(meta.get(k) for k in ATTACHMENT_KEYS):
        return True
    return any(_URL.search(m["content"]) for m in conv)


@dataclass(frozen=True, kw_only=True)
class MissingContext(Rule):
    """Drop instructions about an image, link, attachment or text that the row lacks."""

    name: ClassVar[str] = "missing_context"
    # Assistants point at missing content too ("see the table below" with no table).
    roles: tuple[Role, ...] = ("user", "assistant")

    def scan(self, convs: list[list[dict]], metas: list[dict]) -> list[Hit | None]:
        return [self._first(conv, meta) for conv, meta in zip(convs, metas, strict=True)]

    def _first(self, conv: list[dict], meta: Any) -> Hit | None:
        for t, message in enumerate(conv):
            text, user = message["content"], message["role"] == "user"
            if message["role"] not in self.roles or not _refers(text, user):
                continue  # most turns refer to nothing: skip the scan of the row for URLs
            why = missing_context_match(text, has_source=_has_source(conv, meta),
                                        has_earlier_turn=t > 0, user=user)
            if why:
                return Hit(t, f"{_turn_label(conv, t)}: {why}")
        return None


# --- repetition, Gopher style (drops) -------------------------------------------------------

_PARAGRAPHS = re.compile(r"\n{2,}")
# Words and punctuation apart, as Gopher's tokenizer: "York," and "York" are the same word.
_TOKENS = re.compile(r"\w+|[^\w\s]+")
_LINES = re.compile(r"\n+")
# Gopher (Rae et al. 2021, table A1) thresholds.
GOPHER_TOP_NGRAMS: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
GOPHER_DUP_NGRAMS: tuple[tuple[int, float], ...] = (
    (5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
# Gopher's limits were set for web pages; an answer's list, table, code, refrain or a phrase
# the question asks it to reuse repeats by design ("Two advantages of X are ... Two
# disadvantages of X are" is top_4_gram 0.19 in 52 words). Half the answer repeated is a
# loop: on the 25,966 Alpaca dev rows these limits hit 9 (tables, forms, lists and lyrics that
# repeat most of themselves, an answer trailing off in dots), Gopher's hit 234, and the
# planted loops of the sample data are over 0.5 in repeated 5-grams.
ANSWER_TOP_NGRAMS: tuple[tuple[int, float], ...] = ((2, 0.5), (3, 0.5), (4, 0.5))
ANSWER_DUP_NGRAMS: tuple[tuple[int, float], ...] = tuple((n, 0.5) for n in range(5, 11))


def _duplicates(items: list[str]) -> tuple[int, int]:
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count, chars = count + 1, chars + len(item)
        else:
            seen.add(item)
    return count, chars


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n)), strict=False))


def _top_ngram_chars(words: list[str], n: int) -> int:
    grams = _ngrams(words, n)
    if not grams:
        return 0
    gram, count = Counter(grams).most_common(1)[0]
    # A top n-gram seen once is no repetition; counting it would drop every short answer.
    return (sum(map(len, gram)) + n - 1) * count if count > 1 else 0


def _dup_ngram_chars(words: list[str], n: int) -> int:
    # Gopher's count: characters in n-grams that repeat an earlier one, without overlaps.
    grams = _ngrams(words, n)
    if len(set(grams)) == len(grams):
        return 0  # nothing repeats: skip the walk
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i < len(grams):
        if grams[i] in seen:
            chars, i = chars + sum(map(len, grams[i])), i + n
        else:
            seen.add(grams[i])
            i += 1
    return chars


def _iter_repetition(text: str, top_ngrams: Sequence[int], dup_ngrams: Sequence[int]
                     ) -> Iterator[tuple[str, float]]:
    # Lazy, cheapest first, so a rule can stop at the first statistic over its limit.
    size = max(len(text), 1)
    paragraphs = _PARAGRAPHS.split(text.strip())
    para_dups, para_chars = _duplicates(paragraphs)
    yield "dup_para_frac", para_dups / len(paragraphs)
    yield "dup_para_char_frac", para_chars / size
    lines = [line for line in _LINES.split(text) if line.strip()] or [""]
    line_dups, line_chars = _duplicates(lines)
    yield "dup_line_frac", line_dups / len(lines)
    yield "dup_line_char_frac", line_chars / size
    words = _TOKENS.findall(text)
    for n in top_ngrams:
        yield f"top_{n}_gram", _top_ngram_chars(words, n) / size
    shortest = _ngrams(words, min(dup_ngrams, default=1))
    # A repeated n-gram contains a repeated shorter one: none at the shortest n, none at all.
    repeats = len(set(shortest)) < len(shortest)
    for n in dup_ngrams:
        yield f"dup_{n}_gram", _dup_ngram_chars(words, n) / size if repeats else 0.0


def repetition_stats(text: str, *, top_ngrams: Sequence[int] = (2, 3, 4),
                     dup_ngrams: Sequence[int] = (5, 6, 7, 8, 9, 10)) -> dict[str, float]:
    """Return Gopher's repetition fractions of a text (keys like "dup_line_frac", "top_2_gram")."""
    return dict(_iter_repetition(text, top_ngrams, dup_ngrams))


@dataclass(frozen=True, kw_only=True)
class Repetition(Rule):
    """Drop turns whose repeated lines, paragraphs or n-grams exceed the thresholds (Gopher's
    statistics; limits for answers by default, ``GOPHER_*`` for web pages)."""

    name: ClassVar[str] = "repetition"
    roles: tuple[Role, ...] = ("assistant",)
    # Gopher's line and paragraph limits are 0.30 / 0.20; a song with a chorus reaches them.
    dup_line_frac: float = 0.5
    dup_para_frac: float = 0.5
    dup_line_char_frac: float = 0.4
    dup_para_char_frac: float = 0.4
    top_ngram_frac: tuple[tuple[int, float], ...] = ANSWER_TOP_NGRAMS
    dup_ngram_frac: tuple[tuple[int, float], ...] = ANSWER_DUP_NGRAMS
    # Gopher scored web pages of 50+ words; in a short answer one repeated phrase is already
    # a large fraction, so shorter turns are left alone.
    min_words: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac"):
            self._check_range(name, 0.0, 1.0)
        for name in ("top_ngram_frac", "dup_ngram_frac"):
            self._as_tuple(name)
            pairs = getattr(self, name)
            if not all(isinstance(p, Sequence) and len(p) == 2 and int(p[0]) >= 1
                       and 0.0 <= float(p[1]) <= 1.0 for p in pairs):
                self._fail(name, "expected (n, fraction) pairs with n >= 1 and 0 <= fraction <= 1")
            object.__setattr__(self, name, tuple((int(n), float(f)) for n, f in pairs))
        self._check_range("min_words", 0)

    def thresholds(self) -> dict[str, float]:
        """Return the fraction each statistic of ``repetition_stats`` may reach."""
        limits = {"dup_para_frac": self.dup_para_frac,
                  "dup_para_char_frac": self.dup_para_char_frac,
                  "dup_line_frac": self.dup_line_frac,
                  "dup_line_char_frac": self.dup_line_char_frac}
        limits |= {f"top_{n}_gram": f for n, f in self.top_ngram_frac}
        return limits | {f"dup_{n}_gram": f for n, f in self.dup_ngram_frac}

    def check(self, texts: list[str]) -> list[str | None]:
        return [self._first_over(t) if len(t.split()) >= self.min_words else None for t in texts]

    def _first_over(self, text: str) -> str | None:
        limits = self.thresholds()
        stats = _iter_repetition(text, [n for n, _ in self.top_ngram_frac],
                                 [n for n, _ in self.dup_ngram_frac])
        for name, value in stats:
            if value > limits[name]:  # three digits: "0.16 > 0.16" read as a bug
                return f"{name} {value:.3f} > {limits[name]:g}"
        return None


# --- responses cut off mid-sentence (drops) -------------------------------------------------

_FENCE_LINE = re.compile(r"^[ \t]*(?:```|~~~)", re.MULTILINE)
_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]*`", re.DOTALL)
_LIST_OR_HEADING = re.compile(r"^\s*(?:[-*+•]\s|\d{1,3}[.)]\s|[a-zA-Z][.)]\s|#{1,6}\s|\|)")
# Words a sentence cannot end on; pronouns and modals can ("I agree to that", "Yes, I can").
_DANGLING_WORDS = frozenset({
    "the", "a", "an", "and", "or", "of", "to", "with", "for", "but", "by", "from", "into",
    "than", "because", "whether", "their", "its", "our", "your", "my", "is", "are", "was",
    "were"})
# A sentence end after a word of two or more letters: "v." and "E." are abbreviations, and a
# colon ends a label ("Day 2: ..."), not a sentence.
_TERMINAL_SPLIT = re.compile(r"(?<=\w\w)[.!?…。！？][\"'”’)\]]*\s")
_CODE_HINT = re.compile(r"^[ \t]*(?:def |class |return\b|import |from \S+ import|#include"
                        r"|function\b|public |var |let |const |if __name__)|[;{}][ \t]*$| = ",
                        re.MULTILINE)
_CLAUSE_SPLIT = re.compile(r"[,;]\s")
_DASH_SPLIT = re.compile(r"\s[-–—]\s")
_NOT_PROSE = re.compile(r"[^\w\s]|[\d_]")


def truncation_reason(text: str, *, min_words: int = 8) -> str | None:
    """Return why a response looks cut off mid-sentence, or None when it ends cleanly."""
    body = text.rstrip()
    if not body:
        return None
    if ("```" in body or "~~~" in body) and len(_FENCE_LINE.findall(body)) % 2:
        return "unclosed code fence"
    last_line = body.rsplit("\n", 1)[-1].strip()
    opened = _unclosed_bracket(_CODE.sub(" ", last_line))
    if opened and len(last_line.split()) >= 3:  # a one-token "X9[h1" is a password, not prose
        return f"unclosed {opened!r}"
    if _LIST_OR_HEADING.match(last_line) and last_line[-1:].isalpha():
        words = last_line.split()
        if len(words) >= 3 and words[-1] in _DANGLING_WORDS:
            return f"last list item ends with {words[-1]!r}"
        if len(words) >= 4 and _items_end_in_punctuation(body):
            return f"last list item stops mid-sentence at {' '.join(words[-3:])!r}"
    if (body.endswith(("```", "~~~")) or _LIST_OR_HEADING.match(last_line)
            or last_line.count("|") >= 2):
        return None  # a closed code block, list item, heading or table row may end bare
    # Only prose can be judged by its ending: code, formulas and ASCII art end anyhow.
    if len(_NOT_PROSE.findall(last_line)) > 0.2 * len(last_line) or _CODE_HINT.search(body):
        return None
    return _dangling_end(last_line, min_words)


def _items_end_in_punctuation(body: str) -> bool:
    # Earlier items of the same list all end a sentence: then a bare last item was cut off.
    items = [ln.strip() for ln in body.split("\n")[:-1] if _LIST_OR_HEADING.match(ln)
             and not ln.lstrip().startswith(("#", "|"))]
    return len(items) >= 1 and all(i[-1:] in ".!?)" for i in items)


def _unclosed_bracket(line: str) -> str | None:
    # Round and square brackets only: braces are code, and a bracket opened in the last line
    # and never closed is a sentence that stopped.
    if line.count("(") <= line.count(")") and line.count("[") <= line.count("]"):
        return None  # the common case, without a loop over characters
    depth = {"(": 0, "[": 0}
    for ch in line:
        if ch in depth:
            depth[ch] += 1
        elif ch == ")" and depth["("]:
            depth["("] -= 1
        elif ch == "]" and depth["["]:
            depth["["] -= 1
    return next((k for k, v in depth.items() if v), None)


def _dangling_end(line: str, min_words: int) -> str | None:
    words = line.split()
    # Lists of words ("apple, banana, for") and sign-offs ("Sincerely,") end anyhow.
    clause = _CLAUSE_SPLIT.split(line)[-1].split()
    if len(words) < 4 or len(clause) < 2 or words[-1].startswith(("#", "@", "http")):
        return None
    if len(_DASH_SPLIT.split(line)[-1].split()) <= 4:
        return None  # an attribution ('"..." - Steve Jobs') or a key ("Y - Yourself")
    if line[-1] in ",:(" and len(words) >= 5:
        return f"ends with {line[-1]!r}"
    if words[-1] in _DANGLING_WORDS:  # lowercase only: "Let it Be" is a title
        return f"ends with {words[-1]!r}"
    # A long run of prose that stops on a letter stopped mid-sentence; a line without any
    # sentence end is a title, a verse or a list unless it is very long.
    tail = _TERMINAL_SPLIT.split(line)
    run = tail[-1].split()
    # After finished sentences a short unfinished one is already telling.
    long_enough = len(run) >= (max(4, min_words // 2) if len(tail) > 1 else 3 * min_words)
    if line[-1].isalpha() and long_enough and not _title_case(run):
        return f"no closing punctuation after {' '.join(run[-3:])!r}"
    return None


def _title_case(words: list[str]) -> bool:
    return sum(w[0].isupper() for w in words) >= 0.7 * len(words)


@dataclass(frozen=True, kw_only=True)
class Truncated(Rule):
    """Drop responses cut off mid-sentence: dangling ends, open brackets or code fences."""

    name: ClassVar[str] = "truncated"
    roles: tuple[Role, ...] = ("assistant",)
    min_words: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_range("min_words", 1)

    def check(self, texts: list[str]) -> list[str | None]:
        return [truncation_reason(t, min_words=self.min_words) for t in texts]


# --- overlap with an evaluation set (drops) -------------------------------------------------

_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class _EvalIndex:
    long: dict[int, int]   # hash of an n-gram of a long eval text -> eval row
    short: dict[int, tuple[int, bool]]  # hash of a short_n-gram -> (eval row, eval is short)


def _gram_hashes(words: list[str], n: int) -> list[int]:
    # Python's tuple hash: 64-bit, stable within the process that built the index.
    return [hash(g) for g in zip(*(words[i:] for i in range(n)), strict=False)]


def build_eval_index(eval_texts: Sequence[str], *, n: int, short_n: int) -> _EvalIndex:
    """Return an index of the eval texts' n-grams (and short_n-grams) to their row numbers."""
    index = _EvalIndex({}, {})
    for row, text in enumerate(eval_texts):
        words = _words(text)
        for h in _gram_hashes(words, n):
            index.long.setdefault(h, row)
        for h in _gram_hashes(words, short_n):
            index.short.setdefault(h, (row, len(words) < n))
    return index


@dataclass(frozen=True, kw_only=True)
class Contamination(Rule):
    """Drop turns sharing an n-gram with an eval text (``short_n`` when either text is short)."""

    name: ClassVar[str] = "contamination"
    roles: tuple[Role, ...] = ("user", "assistant")
    eval_texts: tuple[str, ...]
    eval_ids: tuple[str, ...] = ()
    n: int = 13
    short_n: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        self._as_tuple("eval_texts")
        self._as_tuple("eval_ids")
        if not all(isinstance(t, str) for t in self.eval_texts):
            self._fail("eval_texts", "must be strings")
        if self.eval_ids and len(self.eval_ids) != len(self.eval_texts):
            self._fail("eval_ids", f"has {len(self.eval_ids)} ids for {len(self.eval_texts)} texts")
        self._check_range("short_n", 1)
        self._check_range("n", self.short_n)

    @functools.cached_property
    def index(self) -> _EvalIndex:
        """Return the n-gram index of the eval texts, built once per rule."""
        return build_eval_index(self.eval_texts, n=self.n, short_n=self.short_n)

    def params(self) -> dict[str, Any]:
        out = super().params()
        out["eval_texts"] = f"{len(self.eval_texts)} texts"
        return out

    def check(self, texts: list[str]) -> list[str | None]:
        return [self._match(_words(t)) for t in texts]

    def _match(self, words: list[str]) -> str | None:
        if len(words) >= self.n:
            for i, h in enumerate(_gram_hashes(words, self.n)):
                if h in self.index.long:
                    return self._why(self.index.long[h], words[i:i + self.n])
        for i, h in enumerate(_gram_hashes(words, self.short_n)):
            row, eval_short = self.index.short.get(h, (-1, False))
            # The short n-gram counts when either side has fewer than n words.
            if row >= 0 and (eval_short or len(words) < self.n):
                return self._why(row, words[i:i + self.short_n])
        return None

    def _why(self, row: int, gram: list[str]) -> str:
        name = f"eval row {row}" + (f" ({self.eval_ids[row]})" if self.eval_ids else "")
        return f"shares {len(gram)}-gram {' '.join(gram)!r} with {name}"


# --- preview and apply ----------------------------------------------------------------------

@dataclass
class RuleReport:
    """What one rule would do: rows it would drop, flag or change, a few examples, and the
    row_key of every row it hits (to measure the rule against labels)."""

    name: str
    action: Action
    rows: int
    samples: list[dict[str, Any]]
    row_keys: list[Any] = field(default_factory=list)


@dataclass
class CleanPreview:
    """Per-rule counts and samples, plus the distinct rows that ``apply`` would drop or flag."""

    total_rows: int
    dropped_rows: int
    rules: list[RuleReport]
    flagged_rows: int = 0  # flagged and not dropped: the rows ``apply`` lists in ``flagged``

    def to_frame(self) -> Any:
        """Return one row per rule: name, action (drop, flag, change), rows, share of rows."""
        import pandas as pd

        return pd.DataFrame({
            "rule": [r.name for r in self.rules], "action": [r.action for r in self.rules],
            "rows": [r.rows for r in self.rules],
            "share": [r.rows / self.total_rows if self.total_rows else 0.0 for r in self.rules]})


def rule_classes() -> dict[str, type[Rule]]:
    """Return every rule that needs no inputs, by name (Contamination needs an eval set)."""
    return {cls.name: cls for cls in (Normalize, PII, Placeholder, PlaceholderInput, TooShort,
                                      TooLong, Language, Refusal, MissingContext, UrlInput,
                                      Truncated, Repetition)}


def rules_by_name(names: Sequence[str]) -> list[Rule]:
    """Return the named rules in that order, each as the default set has it (mode included),
    or with its class defaults when the default set leaves it out."""
    classes, defaults = rule_classes(), {r.name: r for r in default_rules()}
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise ConfigError(f"unknown rule {', '.join(unknown)}; use {', '.join(classes)}")
    return [defaults.get(n) or classes[n]() for n in names]


def rule_table() -> Any:
    """Return one row per rule: name, on by default, default action, what it checks."""
    import pandas as pd

    defaults = {r.name: r for r in default_rules()}
    return pd.DataFrame([{"rule": name, "default": "on" if name in defaults else "off",
                          "action": (defaults.get(name) or cls()).action,
                          "checks": (cls.__doc__ or "").strip().split("\n")[0]}
                         for name, cls in rule_classes().items()])


def default_rules() -> list[Rule]:
    """Return the default rule set: the rules that need no inputs, changes first, each in the
    mode its measured precision earns (benchmarks/bench_clean.py prints the measurement)."""
    # A rule drops by default only when, on real Alpaca cleaning labels, at least 80% of the
    # rows it hits are rows people fixed (lower end of the 95% interval). Every other rule
    # flags its rows for review: rows people kept dominate what it hits.
    return [Normalize(), PII(), Placeholder(mode="flag"), PlaceholderInput(),
            TooShort(mode="flag"), TooLong(mode="flag"), Refusal(mode="flag"),
            MissingContext(mode="flag"), UrlInput(mode="flag"), Truncated(mode="flag"),
            Repetition(mode="flag")]


def check_inputs(frame: Any, rules: Sequence[Rule], samples: int = 0) -> None:
    """Raise ConfigError unless frame has row_key and messages, rules are Rules, samples >= 0.

    `run` checks these; an engine that runs the rules elsewhere checks them first too.
    """
    if not hasattr(frame, "columns"):
        raise ConfigError(f"frame: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in ("row_key", "messages") if c not in frame.columns]
    if missing:
        raise ConfigError(f"frame: missing column(s) {missing}; build it with examples_frame()")
    for i, rule in enumerate(rules):
        if not isinstance(rule, Rule):
            raise ConfigError(f"rules[{i}]: expected a Rule such as Placeholder(), "
                              f"got {type(rule).__name__}")
    if samples < 0:
        raise ConfigError(f"samples: must be >= 0, got {samples}")


def _conversations(frame: Any) -> tuple[list[list[dict]], list[dict]]:
    convs = [list(m) for m in frame["messages"].tolist()]
    metas = frame["metadata"].tolist() if "metadata" in frame.columns else [{}] * len(convs)
    return convs, metas


@dataclass
class CleanRun:
    """One pass of the rules over every row: what the preview reports and what apply saves."""

    preview: CleanPreview
    result: StepResult


Progress = Callable[[int, int, str], None]


def run(frame: Any, rules: Sequence[Rule], *, samples: int = 5,
        progress: Progress | None = None, row_progress: Progress | None = None) -> CleanRun:
    """Return the preview and the apply result of the rules from one scan of every row.

    Rules look at one row at a time, so scanning the rows an earlier rule dropped changes
    nothing for the others: the preview counts every row a rule hits, the result skips the
    dropped ones. ``progress(rules_done, rules, rule_name)`` is called after each rule;
    ``row_progress(checks_done, rows * rules, "rule i/n · name")`` every few thousand rows
    (one rule can take many seconds on 50k rows: a bar that moves per rule stands still).
    """
    check_inputs(frame, rules, samples)
    convs, metas = _conversations(frame)
    keys = frame["row_key"].tolist()
    reports, hit_by = [], {"drop": set(), "flag": set(), "change": set()}
    alive, notes = [True] * len(convs), {"drop": [], "flag": [], "change": []}
    for done, rule in enumerate(rules, 1):
        hits = scan_rule(rule, convs, metas, (done, len(rules)), row_progress)
        reports.append(_report(rule, hits, convs, keys, samples))
        hit_by[rule.action] |= {i for i, h in enumerate(hits) if h is not None}
        _record(rule, hits, alive, notes[rule.action])
        if rule.action == "change":
            # Later rules see the changed text; drops and flags stay independent.
            convs = [h.messages if h else c for h, c in zip(hits, convs, strict=True)]
        if progress:
            progress(done, len(rules), rule.name)
    preview = CleanPreview(len(convs), len(hit_by["drop"]), reports,
                           len(hit_by["flag"] - hit_by["drop"]))
    kept = [i for i, ok in enumerate(alive) if ok]
    result = step_result(frame, kept, convs, {i for i, _, _ in notes["change"]},
                         notes["drop"], notes["change"], notes["flag"])
    return CleanRun(preview, result)


def run_record(run: CleanRun) -> dict[str, Any]:
    """Return a CleanRun as JSON-ready lists: the preview, the kept row keys, the new messages
    of the rows a rule changed, and the dropped, changed and flagged tables. With the frame it
    was computed on, ``run_from_record`` gives the same CleanRun back (what a preview job saves
    in its run folder, so Apply needs no second scan)."""
    from dataclasses import asdict

    result = run.result
    kept = result.kept
    changed_keys = set() if result.changed is None else {int(k) for k in result.changed["row_key"]}
    new = kept[kept["row_key"].isin(changed_keys)]
    tables = {name: None if frame is None else frame.to_dict("list") for name, frame in
              (("dropped", result.dropped), ("changed", result.changed),
               ("flagged", result.flagged))}
    return {"preview": asdict(run.preview), "kept": [int(k) for k in kept["row_key"]],
            "messages": {str(int(k)): [dict(m) for m in msgs]
                         for k, msgs in zip(new["row_key"], new["messages"])}, **tables}


def run_from_record(frame: Any, record: dict[str, Any]) -> CleanRun:
    """Return the CleanRun that ``run_record`` wrote, its kept rows taken from ``frame`` (the
    version it was computed on) with the changed rows' new messages."""
    import pandas as pd

    position = {int(k): i for i, k in enumerate(frame["row_key"].tolist())}
    try:
        alive = [position[k] for k in record["kept"]]
    except KeyError as e:
        raise ConfigError(f"saved clean result: row_key {e.args[0]} is not in this version; "
                          "preview the rules again") from None
    convs = {position[int(k)]: v for k, v in record["messages"].items()}  # _kept reads these
    tables = {name: None if record.get(name) is None else pd.DataFrame(
        record[name], columns=list(DROP_COLUMNS if name == "dropped" else CHANGE_COLUMNS))
        for name in ("dropped", "changed", "flagged")}
    result = StepResult(_kept(frame, alive, convs, set(convs)), tables["dropped"],
                        tables["changed"], tables["flagged"])
    return CleanRun(preview_from_record(record), result)


def preview_from_record(record: dict[str, Any]) -> CleanPreview:
    """Return the CleanPreview that ``run_record`` wrote (it needs no rows)."""
    p = record["preview"]
    return CleanPreview(p["total_rows"], p["dropped_rows"],
                        [RuleReport(**r) for r in p["rules"]], p.get("flagged_rows", 0))


ROW_CHUNK = 2_000  # rows a rule scans between two row_progress calls, at least


def scan_rule(rule: Rule, convs: list[list[dict]], metas: list[dict],
              place: tuple[int, int], row_progress: Progress | None) -> list[Hit | None]:
    """``rule.scan`` over every row; in chunks (about 20 per rule) when someone follows the
    rows, reported as rule ``place`` = (number, of n rules). A rule looks at one row at a time,
    so the hits are the same either way."""
    if row_progress is None or not convs:
        return rule.scan(convs, metas)
    (number, n_rules), n = place, len(convs)
    step, hits = max(ROW_CHUNK, -(-n // 20)), []
    for start in range(0, n, step):
        hits += rule.scan(convs[start:start + step], metas[start:start + step])
        row_progress((number - 1) * n + min(start + step, n), n * n_rules,
                     f"rule {number}/{n_rules} · {rule.name}")
    return hits


def _record(rule: Rule, hits: list[Hit | None], alive: list[bool], notes: list[tuple]) -> None:
    # Rule after rule over the rows still alive: a dropped row is not checked by later rules.
    for i, hit in enumerate(hits):
        if hit is not None and alive[i]:
            notes.append((i, rule.name, hit.detail))
            if rule.action == "drop":
                alive[i] = False


def preview(frame: Any, rules: Sequence[Rule], *, samples: int = 5) -> CleanPreview:
    """Return what each rule would drop or change, computed without applying anything."""
    return run(frame, rules, samples=samples).preview


def _report(rule: Rule, hits: list[Hit | None], convs: list[list[dict]], keys: list,
            samples: int) -> RuleReport:
    rows = [i for i, h in enumerate(hits) if h is not None]
    examples = []
    for i in rows[:samples]:
        hit = hits[i]
        example = {"row_key": keys[i], "turn": hit.turn + 1, "detail": hit.detail,
                   "before": convs[i][hit.turn]["content"], "after": None}
        if hit.messages is not None:
            example["after"] = hit.messages[hit.turn]["content"]
        examples.append(example)
    return RuleReport(rule.name, rule.action, len(rows), examples, [keys[i] for i in rows])


def apply(frame: Any, rules: Sequence[Rule]) -> StepResult:
    """Return a StepResult: kept rows (rewritten where rules change them), dropped, changed and
    flagged (kept rows that a flag-mode rule hit, for review)."""
    return run(frame, rules, samples=0).result


def step_result(frame: Any, alive: list[int], convs: list, changed: set[int],
                dropped: list[tuple], changes: list[tuple], flags: list[tuple]) -> StepResult:
    """Return the StepResult of one clean pass over frame from its per-row outcomes.

    ``alive``: positions of the kept rows, in input order; ``convs[i]``: row i's messages
    after the change rules (read only for i in ``changed``, the rows a rule rewrote);
    ``dropped``, ``changes``, ``flags``: (position, reason, detail) tuples. Changes and flags
    of a dropped row are reported as the drop only. `run` and ray_steps.clean_result share it.
    """
    keys = frame["row_key"].tolist()
    return StepResult(_kept(frame, alive, convs, changed),
                      *outcome_frames(keys, dropped, changes, flags, set(alive)))


def outcome_frames(keys: Any, dropped: list[tuple], changes: list[tuple], flags: list[tuple],
                   survivors: set[int]) -> tuple[Any, Any, Any]:
    """Return the dropped, changed and flagged frames of a StepResult from (position, reason,
    detail) tuples, ``keys[position]`` being the row's key. Changes and flags count only for
    positions in ``survivors`` (a dropped row is reported as the drop only). Shared by
    `step_result` and ray_steps, which rebuilds a result from what Ray workers sent back."""
    return (_dropped_frame(dropped, keys), _notes_frame(changes, keys, survivors),
            _notes_frame(flags, keys, survivors))


def _kept(frame: Any, alive: list[int], convs: list[list[dict]], changed: set[int]) -> Any:
    kept = frame.iloc[alive].reset_index(drop=True)
    touched = [pos for pos, i in enumerate(alive) if i in changed]
    if not touched:
        return kept
    columns = {"messages": lambda m: m, "prompt": prompt_text, "response": response_text,
               "id": content_id}
    for column, derive in columns.items():
        if column in kept.columns:
            values = kept[column].tolist()
            for pos in touched:
                values[pos] = derive(convs[alive[pos]])
            kept[column] = values
    return kept


def _dropped_frame(dropped: list[tuple], keys: list) -> Any:
    import pandas as pd

    dropped.sort(key=lambda d: d[0])  # input order, whichever rule dropped the row
    return pd.DataFrame({"row_key": [keys[i] for i, _, _ in dropped],
                         "reason": [r for _, r, _ in dropped],
                         "duplicate_of": pd.Series([None] * len(dropped), dtype=object),
                         "detail": [d for _, _, d in dropped]}, columns=list(DROP_COLUMNS))


def _notes_frame(notes: list[tuple], keys: list, alive: set[int]) -> Any:
    import pandas as pd

    # Changes and flags of a row that a later rule dropped are reported as the drop only.
    rows = sorted((n for n in notes if n[0] in alive), key=lambda n: n[0])
    return pd.DataFrame({"row_key": [keys[i] for i, _, _ in rows],
                         "reason": [r for _, r, _ in rows], "detail": [d for _, _, d in rows]},
                        columns=list(CHANGE_COLUMNS))
