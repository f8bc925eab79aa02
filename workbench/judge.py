"""LLM judge: a rubric prompt gives each row a 1-10 score and a one-line reason.

The judge runs on the local model (bundled default or any local folder) or on any
OpenAI-compatible chat endpoint (``{base_url}/chat/completions``; the key is read from the
environment variable ``api_key_env``, never stored). Remote requests run ``max_concurrency``
at a time, spaced to at most ``requests_per_minute``, and retried on 429 (honouring
Retry-After), 5xx, timeouts, refused and dropped connections. A row whose request or answer
fails gets a NaN score and the reason in ``judge_error``: it is never given a made-up score,
and the other rows go on.

The key goes only where the user pointed: a redirect is never followed (it could carry the
key to another host), ``timeout_s`` bounds each attempt from connect to last byte (a server
trickling bytes cannot hold a row forever), and an answer over ``MAX_RESPONSE_BYTES`` is
refused. Which environment variables may be sent as a key at all is the user's choice:
``WORKBENCH_JUDGE_KEY_VARS`` (comma-separated names, default ``OPENAI_API_KEY``), so a form
in the app cannot send any other secret of the server's environment.

Only the standard library is used for HTTP (http.client + a thread pool), so nothing is added
to the dependencies. Proxy variables are not used: requests go straight to ``base_url``.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd

from .exceptions import ConfigError

Backend = Literal["local", "openai"]
T = TypeVar("T")
JUDGE_COLUMNS = ("judge_score", "judge_reason", "judge_error")
MAX_RETRY_AFTER_S = 60.0  # a server asking for a longer pause gets retried after this
# A verdict is two short lines; even a verbose server's JSON around it is a few KB. A larger
# answer is a misbehaving server, and reading it all would only cost memory.
MAX_RESPONSE_BYTES = 1 << 20
KEY_VARS_ENV = "WORKBENCH_JUDGE_KEY_VARS"
DEFAULT_KEY_VARS = ("OPENAI_API_KEY",)
DEFAULT_RUBRIC = """\
You are grading one example from a dataset used to fine-tune an AI assistant.
Rate the RESPONSE to the INSTRUCTION for helpfulness, correctness and clarity, from 1 (useless, \
wrong or off-topic) to 10 (fully correct, helpful and clear). A placeholder, a refusal without \
reason, or text that repeats itself is a 1 or 2.

INSTRUCTION:
{prompt}

RESPONSE:
{response}

Answer in exactly two lines:
Score: <integer from 1 to 10>
Reason: <one short sentence>"""
# How the answer is asked for: the rubric's closing lines in text mode; in the JSON modes they
# are swapped for JSON_FORMAT (added at the end of a rubric that does not end with them).
TEXT_FORMAT = """Answer in exactly two lines:
Score: <integer from 1 to 10>
Reason: <one short sentence>"""
JSON_FORMAT = """Answer with a JSON object only, in this shape:
{"score": <integer from 1 to 10>, "reason": "<one short sentence>"}"""
# What the server is asked for, best first. "auto" tries them in this order on the first row
# and keeps the first one the server accepts (json_schema: OpenAI, vLLM; json_object+schema:
# llama.cpp's servers; json_object: any JSON mode, no schema; text: parse "Score: N").
RESPONSE_FORMATS = ("json_schema", "json_object+schema", "json_object", "text")
MODE_LABELS = {
    "json_schema": "structured output (response_format json_schema, strict)",
    "json_object+schema": "structured output (response_format json_object with a schema)",
    "json_object": "JSON mode (response_format json_object, no schema)",
    "text": "free text, parsed for 'Score: N'",
    "ignored": "free text: the server ignored response_format; parsed for 'Score: N'",
    "constrained": "local constrained decoding (only score tokens after 'Score: ')",
}
PROBE_ROWS = 3  # rows tried one at a time to learn the server's mode before going concurrent

_FENCED_JSON = re.compile(r"\{.*\}", re.S)
_SCORE = re.compile(r"score\W{0,6}?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?", re.I)
# The separator (":", "**:**", " - ", "=") is not part of the reason.
_REASON = re.compile(r"reason[\s*_]*[:=\-–]?[\s*_]*(.+)", re.I)


@dataclass(frozen=True)
class JudgeConfig:
    """Options of the LLM judge; ``rubric`` holds ``{prompt}`` and ``{response}`` fields."""

    backend: Backend = "local"
    model: str = "default"
    base_url: str | None = None
    api_key_env: str | None = None
    rubric: str = DEFAULT_RUBRIC
    max_concurrency: int = 4
    requests_per_minute: float = 60.0
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_s: float = 1.0
    max_tokens: int = 64
    temperature: float = 0.0
    response_format: str = "auto"

    def __post_init__(self) -> None:
        if self.backend not in ("local", "openai"):
            raise ConfigError(f"backend={self.backend!r}: use 'local' or 'openai'")
        if self.backend == "openai" and not str(self.base_url or "").startswith(
                ("http://", "https://")):
            raise ConfigError(f"base_url={self.base_url!r}: the openai backend needs an "
                              "http(s) URL such as http://127.0.0.1:8000/v1")
        if "{response}" not in self.rubric:
            raise ConfigError("rubric: must contain {response} (and usually {prompt})")
        if self.api_key_env and self.api_key_env not in allowed_key_vars():
            raise ConfigError(f"api_key_env={self.api_key_env!r}: not an allowed key variable "
                              f"({', '.join(allowed_key_vars()) or 'none'}); to send it, add its "
                              f"name to {KEY_VARS_ENV} (comma-separated) where the app or job "
                              "runs")
        for name in ("max_concurrency", "max_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries={self.max_retries!r}: must be an integer >= 0")
        for name in ("requests_per_minute", "timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: must be > 0")
        if self.response_format not in ("auto", *RESPONSE_FORMATS):
            raise ConfigError(f"response_format={self.response_format!r}: use 'auto' or one of "
                              f"{', '.join(RESPONSE_FORMATS)}")
        if self.backoff_s < 0 or self.temperature < 0:
            raise ConfigError("backoff_s and temperature must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-ready dict (the key itself is never part of it)."""
        return asdict(self)


@dataclass
class Verdict:
    """One row's judgement: a score in [1, 10] and a reason, or NaN and an error."""

    score: float = math.nan
    reason: str = ""
    error: str = ""


class JudgeError(Exception):
    """A row's request or answer failed; the message says how."""


class _Retryable(JudgeError):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


# --- prompts and answers ----------------------------------------------------------------------

_FIELD = re.compile(r"\{(prompt|response)\}")


def render_rubric(rubric: str, prompt: str, response: str) -> str:
    """Return the rubric with {prompt} and {response} filled in (other braces left alone)."""
    # One pass over the rubric: a prompt that contains the text "{response}" stays as it is.
    values = {"prompt": prompt, "response": response}
    return _FIELD.sub(lambda m: values[m.group(1)], rubric)


def parse_verdict(text: str) -> tuple[float, str]:
    """Return (score, reason) from "Score: N / Reason: ..." or a JSON object; raise JudgeError.

    Accepts "**Score:** 8", "Score: 8/10", fenced JSON such as {"score": 8, "reason": "..."}.
    """
    parsed = _parse_json(text) or _parse_cut_json(text) or _parse_lines(text)
    if parsed is None:
        raise JudgeError(f"no score in the judge's answer: {_clip(text)!r}")
    score, reason = parsed
    if not 1.0 <= score <= 10.0:
        raise JudgeError(f"score {score:g} is outside 1-10 in: {_clip(text)!r}")
    return score, reason


def _parse_json(text: str) -> tuple[float, str] | None:
    found = _FENCED_JSON.search(text)
    try:
        value = json.loads(found.group(0)) if found else None
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    lower = {str(k).lower(): v for k, v in value.items()}
    score = lower.get("score", lower.get("rating"))
    try:
        number = float(score)
    except (TypeError, ValueError):
        return None
    reason = lower.get("reason", lower.get("explanation", ""))
    return (number, str(reason).strip()) if math.isfinite(number) else None


# A JSON answer cut off by max_tokens: the score comes first (the schema's order), so it is
# there even when the reason was cut.
_CUT_SCORE = re.compile(r'^\s*\{\s*"score"\s*:\s*"?(\d+(?:\.\d+)?)\b')
_CUT_REASON = re.compile(r'"reason"\s*:\s*"((?:[^"\\]|\\.)*)')


def _parse_cut_json(text: str) -> tuple[float, str] | None:
    score = _CUT_SCORE.search(text)
    if score is None:
        return None
    reason = _CUT_REASON.search(text)
    cut = reason.group(1).replace('\\"', '"').strip() + " (cut off)" if reason else ""
    return float(score.group(1)), cut


def _parse_lines(text: str) -> tuple[float, str] | None:
    score = _SCORE.search(text)
    if score is None:
        return None
    reason = _REASON.search(text)
    return float(score.group(1)), (reason.group(1).strip(" *") if reason else "")


def _clip(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class AnswerShape:
    """What one judge answer holds: the JSON schema asked of a server, the lines a text-mode
    prompt asks for (and the JSON instruction that replaces them), and for constrained local
    decoding the fixed prefix and the answers allowed right after it."""

    name: str
    schema: Mapping[str, Any]
    text_format: str
    json_format: str
    prefix: str
    choices: tuple[str, ...]

    def prompt(self, prompt: str, mode: str) -> str:
        """Return the prompt as sent in this mode: JSON modes ask for the JSON object."""
        if mode not in ("json_schema", "json_object+schema", "json_object"):
            return prompt
        if prompt.endswith(self.text_format):
            return prompt[:-len(self.text_format)] + self.json_format
        return prompt.rstrip() + "\n\n" + self.json_format

    def response_format(self, mode: str) -> dict[str, Any] | None:
        """Return the request's response_format field in this mode (None: no such field)."""
        if mode == "json_schema":  # OpenAI, vLLM
            return {"type": "json_schema",
                    "json_schema": {"name": self.name, "schema": dict(self.schema),
                                    "strict": True}}
        if mode == "json_object+schema":  # llama.cpp's servers (llama-cpp-python, llama-server)
            return {"type": "json_object", "schema": dict(self.schema)}
        if mode == "json_object":
            return {"type": "json_object"}
        return None


def _schema(field: str, values: list) -> dict[str, Any]:
    kind = "integer" if isinstance(values[0], int) else "string"
    return {"type": "object", "additionalProperties": False, "required": [field, "reason"],
            "properties": {field: {"type": kind, "enum": values}, "reason": {"type": "string"}}}


VERDICT = AnswerShape("verdict", _schema("score", list(range(1, 11))), TEXT_FORMAT, JSON_FORMAT,
                      "Score: ", tuple(str(n) for n in range(1, 11)))


# --- rate limiting and HTTP ---------------------------------------------------------------------

class RateLimiter:
    """Spaces calls to ``wait`` at least 60/per_minute seconds apart, across threads."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until this caller's turn comes."""
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + self.interval
        if at > now:
            time.sleep(at - now)


def allowed_key_vars() -> tuple[str, ...]:
    """Return the environment variables the judge may send as a key ($WORKBENCH_JUDGE_KEY_VARS)."""
    value = os.environ.get(KEY_VARS_ENV)
    if value is None:
        return DEFAULT_KEY_VARS
    return tuple(name.strip() for name in value.split(",") if name.strip())


def _api_key(config: JudgeConfig) -> str | None:
    if not config.api_key_env:
        return None
    if config.api_key_env not in allowed_key_vars():  # the allow-list may change after a start
        raise ConfigError(f"api_key_env={config.api_key_env!r}: not in {KEY_VARS_ENV}")
    key = os.environ.get(config.api_key_env)
    if not key:
        raise ConfigError(f"api_key_env={config.api_key_env!r}: that environment variable is "
                          "not set; export it, or leave api_key_env empty for a server that "
                          "needs no key")
    return key


@dataclass(frozen=True)
class _Request:
    url: str
    body: bytes
    headers: dict[str, str]


def _request(config: JudgeConfig, key: str | None, prompt: str,
             response_format: Mapping[str, Any] | None = None) -> _Request:
    body = {"model": config.model, "messages": [{"role": "user", "content": prompt}],
            "temperature": config.temperature, "max_tokens": config.max_tokens}
    if response_format:
        body["response_format"] = dict(response_format)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    url = str(config.base_url).rstrip("/") + "/chat/completions"
    return _Request(url, json.dumps(body).encode(), headers)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class _Deadline:
    """Shuts a socket when the wall-clock limit passes, which ends any read blocked on it."""

    def __init__(self, seconds: float):
        self.expired, self.sock = False, None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Guard this socket (shut it at once if the time is already up)."""
        self.sock = sock
        if self.expired:
            self._fire()

    def _fire(self) -> None:
        self.expired = True
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed

    def cancel(self) -> None:
        """Stop the timer (the exchange is over)."""
        self._timer.cancel()


def _connection(url: str, timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout_s,
                                           context=ssl.create_default_context()), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s), target


def _post(request: _Request, timeout_s: float) -> bytes:
    """Return the body of a 200 answer; raise _Retryable for passing trouble, else JudgeError.

    ``timeout_s`` bounds the whole exchange, from connect to the last byte.
    """
    conn, target = _connection(request.url, timeout_s)
    deadline = _Deadline(timeout_s)
    try:
        conn.connect()  # bounded by the socket timeout; then the deadline guards the socket
        # The socket itself, not conn.sock: a response that closes the connection takes the
        # socket over and conn.sock becomes None.
        deadline.watch(conn.sock)
        conn.request("POST", target, body=request.body, headers=request.headers)
        answer = conn.getresponse()
        return _read_answer(answer, request.url)
    except TimeoutError:  # socket.timeout is TimeoutError
        raise _Retryable(f"timed out after {timeout_s:g} s") from None
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError,
            BrokenPipeError) as e:
        if deadline.expired:
            raise _Retryable(f"timed out after {timeout_s:g} s") from None
        raise _Retryable(f"the server dropped the connection ({type(e).__name__})") from None
    except http.client.HTTPException as e:
        if deadline.expired:
            raise _Retryable(f"timed out after {timeout_s:g} s") from None
        raise JudgeError(f"not a valid HTTP answer ({type(e).__name__}: {e})") from None
    except OSError as e:
        if deadline.expired:
            raise _Retryable(f"timed out after {timeout_s:g} s") from None
        raise _Retryable(f"cannot reach {request.url}: {e.strerror or e}") from None
    finally:
        deadline.cancel()
        conn.close()


def _read_answer(answer: http.client.HTTPResponse, url: str) -> bytes:
    if 300 <= answer.status < 400:
        # Following would send the request, key included, wherever the server says.
        raise JudgeError(f"HTTP {answer.status}: the server redirects to "
                         f"{answer.getheader('Location') or '?'}; redirects are not followed "
                         "(the key goes only to the base URL): set the base URL to the final "
                         "address")
    body = _read_capped(answer)
    if answer.status == 200:
        return body
    detail = _clip(body.decode("utf-8", "replace").strip(), 200)
    if answer.status == 429:
        raise _Retryable("HTTP 429 (rate limited)", _retry_after(answer.getheader("Retry-After")))
    if answer.status >= 500:
        raise _Retryable(f"HTTP {answer.status} {detail}".strip())
    raise JudgeError(f"HTTP {answer.status} {detail}".strip())


def _read_capped(answer: http.client.HTTPResponse) -> bytes:
    declared = answer.getheader("Content-Length")
    if declared and declared.strip().isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise JudgeError(f"the answer is {int(declared):,} bytes, over the "
                         f"{MAX_RESPONSE_BYTES:,}-byte limit; refused")
    body = answer.read(MAX_RESPONSE_BYTES + 1)
    if answer.length:  # a read of a set size stops quietly where the server hung up
        raise http.client.IncompleteRead(body, answer.length)
    if len(body) > MAX_RESPONSE_BYTES:
        raise JudgeError(f"the answer is over the {MAX_RESPONSE_BYTES:,}-byte limit; refused")
    return body


def _content(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        text = _clip(body.decode("utf-8", "replace"))
        raise JudgeError(f"malformed JSON from the server: {text!r}") from None
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise JudgeError("the server's answer has no choices[0].message.content") from None
    if not isinstance(content, str) or not content.strip():
        raise JudgeError("the server's answer has empty content")
    return content


def chat_completion(config: JudgeConfig, prompt: str, *, key: str | None = None,
                    limiter: RateLimiter | None = None,
                    response_format: Mapping[str, Any] | None = None) -> str:
    """Return the assistant text for one prompt, retrying passing failures; raise JudgeError."""
    request, last = _request(config, key, prompt, response_format), None
    for attempt in range(config.max_retries + 1):
        if limiter:
            limiter.wait()
        try:
            return _content(_post(request, config.timeout_s))
        except _Retryable as e:
            if _rejects_format(str(e)):  # not passing: asking again gets the same answer
                raise JudgeError(str(e)) from None
            last = e
            if attempt < config.max_retries:
                wait = e.retry_after if e.retry_after is not None \
                    else config.backoff_s * 2 ** attempt
                time.sleep(wait)
    raise JudgeError(f"{last} (gave up after {config.max_retries + 1} attempts)")


# --- backends ----------------------------------------------------------------------------------

# read(answer) -> a row's result (raising JudgeError when the answer says nothing usable);
# failed(message) -> the result of a row whose request or answer failed.
Read = Callable[[str], T]
Failed = Callable[[str], T]


class Answers(list):
    """One result per prompt, in input order, and ``mode``: how the answers were asked for (a
    key of MODE_LABELS; None when no answer came back to tell)."""

    def __init__(self, items: Sequence[Any], mode: str | None):
        super().__init__(items)
        self.mode = mode


def _verdict(text: str) -> Verdict:
    score, reason = parse_verdict(text)
    return Verdict(score, reason)


# Words by which a server's 400/422 says it does not take the response_format asked for (a 400
# about anything else, such as a wrong model name, is the row's error, not a cue to step down).
# llama-cpp-python's server answers such a request validation error with HTTP 500.
_FORMAT_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar")


def _rejects_format(error: JudgeError | str) -> bool:
    message = str(error)
    lower = message.lower()
    refused = message.startswith(("HTTP 400", "HTTP 422")) or (
        message.startswith("HTTP 500") and "validation error" in lower)
    return refused and any(word in lower for word in _FORMAT_WORDS)


def _looks_json(text: str) -> bool:
    return text.strip().strip("`").strip().removeprefix("json").lstrip().startswith("{")


class _Remote:
    """One pass over an OpenAI-compatible server: its key, its rate limiter, and how to ask."""

    def __init__(self, config: JudgeConfig, shape: AnswerShape, read: Read, failed: Failed):
        self.config, self.shape, self.read, self.failed = config, shape, read, failed
        self.key, self.limiter = _api_key(config), RateLimiter(config.requests_per_minute)
        self.modes = RESPONSE_FORMATS if config.response_format == "auto" \
            else (config.response_format,)

    def answer(self, prompt: str, mode: str | None) -> tuple[str | None, T]:
        """Return (mode, result) for one prompt: in ``mode``, or found by probing when None."""
        if mode is None:
            return self.probe(prompt)
        try:
            return mode, self.read(self._complete(prompt, mode))
        except JudgeError as e:
            return mode, self.failed(str(e))

    def probe(self, prompt: str) -> tuple[str | None, T]:
        """Ask in the best mode the server takes, stepping down each time it refuses the
        response_format; return (that mode, result), mode None when no answer told it."""
        for step, mode in enumerate(self.modes):
            try:
                text = self._complete(prompt, mode)
            except JudgeError as e:
                if _rejects_format(e) and step + 1 < len(self.modes):
                    continue
                return None, self.failed(str(e))
            if mode != "text" and not _looks_json(text):
                mode = "ignored"  # answered, but not in JSON: ask in plain text from now on
            try:
                return mode, self.read(text)
            except JudgeError as e:
                return mode, self.failed(str(e))
        raise AssertionError("unreachable: the last mode returns")

    def _complete(self, prompt: str, mode: str) -> str:
        sent = "text" if mode == "ignored" else mode
        return chat_completion(self.config, self.shape.prompt(prompt, sent), key=self.key,
                               limiter=self.limiter,
                               response_format=self.shape.response_format(sent))


def ask_openai(prompts: Sequence[str], config: JudgeConfig, read: Read, failed: Failed, *,
               shape: AnswerShape = VERDICT,
               progress: Callable[[int, int], None] | None = None) -> Answers:
    """Return read(answer) (failed(message) on failure) per prompt from an OpenAI-compatible
    endpoint, in input order, with the mode used.

    With response_format "auto" the first rows are asked one at a time until one answer shows
    which response_format the server takes (up to PROBE_ROWS rows: a row that fails for
    another reason tells nothing); the rest go ``max_concurrency`` at a time in that mode.
    """
    remote = _Remote(config, shape, read, failed)
    results: list[T] = [failed("not asked")] * len(prompts)
    mode, done, total = None, 0, len(prompts)
    while mode is None and done < min(PROBE_ROWS, total):
        mode, results[done] = remote.probe(prompts[done])
        done += 1
        if progress:
            progress(done, total)
    found: list[str] = [mode] if mode else []
    with ThreadPoolExecutor(max_workers=config.max_concurrency) as pool:
        futures = {pool.submit(remote.answer, prompts[i], mode): i for i in range(done, total)}
        try:
            for n, future in enumerate(as_completed(futures), done + 1):
                row_mode, results[futures[future]] = future.result()
                if row_mode and mode is None:
                    found.append(row_mode)
                if progress:
                    progress(n, total)
        except BaseException:  # a cancel from progress(): drop the requests not yet sent
            for future in futures:
                future.cancel()
            raise
    return Answers(results, Counter(found).most_common(1)[0][0] if found else None)


def ask_local(prompts: Sequence[str], config: JudgeConfig, read: Read, failed: Failed, *,
              shape: AnswerShape = VERDICT, lm: tuple[Any, Any] | None = None,
              batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> Answers:
    """Return read(answer) (failed(message) when unusable) per prompt from a local model
    (greedy, batched, left padded), with the mode used: constrained decoding (the answer
    starts with shape.prefix and one of shape.choices) unless response_format is "text"."""
    if lm is None:
        from .models import load_lm

        lm = load_lm(config.model)
    constrained = config.response_format != "text"
    results: list[T] = []
    for start in range(0, len(prompts), batch_size):
        part = prompts[start:start + batch_size]
        texts = generate_constrained(lm, part, shape, max_new_tokens=config.max_tokens) \
            if constrained else generate(lm, part, max_new_tokens=config.max_tokens)
        results += [_read_or_fail(t, read, failed) for t in texts]
        if progress:
            progress(len(results), len(prompts))
    return Answers(results, "constrained" if constrained else "text")


def _read_or_fail(text: str, read: Read, failed: Failed) -> T:
    try:
        return read(text)
    except JudgeError as e:
        return failed(str(e))


def ask(prompts: Sequence[str], config: JudgeConfig, read: Read, failed: Failed, *,
        shape: AnswerShape = VERDICT, lm: tuple[Any, Any] | None = None,
        progress: Callable[[int, int], None] | None = None) -> Answers:
    """Return one result per prompt from the configured backend (see ask_openai, ask_local)."""
    if not prompts:
        return Answers([], None)
    if config.backend == "openai":
        return ask_openai(prompts, config, read, failed, shape=shape, progress=progress)
    return ask_local(prompts, config, read, failed, shape=shape, lm=lm, progress=progress)


def _failed_verdict(message: str) -> Verdict:
    return Verdict(error=message)


def judge_openai(prompts: Sequence[str], config: JudgeConfig, *,
                 progress: Callable[[int, int], None] | None = None) -> Answers:
    """Return one Verdict per prompt from an OpenAI-compatible endpoint, in input order."""
    return ask_openai(prompts, config, _verdict, _failed_verdict, progress=progress)


def judge_local(prompts: Sequence[str], config: JudgeConfig, *,
                lm: tuple[Any, Any] | None = None, batch_size: int = 8,
                progress: Callable[[int, int], None] | None = None) -> Answers:
    """Return one Verdict per prompt from a local model (greedy, batched, left padded)."""
    return ask_local(prompts, config, _verdict, _failed_verdict, lm=lm, batch_size=batch_size,
                     progress=progress)


def generate(lm: tuple[Any, Any], prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
    """Return the model's greedy answers to user prompts, rendered with its chat template
    (generation.py's decoding loop, all prompts in one length-sorted pass)."""
    return [a.text for a in _answer(lm, prompts, max_new_tokens)]


def generate_constrained(lm: tuple[Any, Any], prompts: Sequence[str], shape: AnswerShape, *,
                         max_new_tokens: int) -> list[str]:
    """Return the model's greedy answers, each "<prefix> <choice>\nReason: ...".

    The assistant turn is started with shape.prefix ("Score:"); then only tokens that continue
    " <choice>\nReason:" for some choice ("1".."10") are allowed until one is complete
    (generation.choice_constraint), so even a model that never writes the format gives a
    parseable answer; after that it writes the reason freely (up to max_new_tokens).
    """
    from .generation import choice_constraint

    prefix = shape.prefix.rstrip()
    forced = [lm[1].encode(f" {c}\nReason:", add_special_tokens=False) for c in shape.choices]
    answers = _answer(lm, prompts, max(map(len, forced)) + max_new_tokens, prefill=prefix,
                      allowed=choice_constraint(forced))
    return [f"{prefix} {a.text}" for a in answers]


def _answer(lm: tuple[Any, Any], prompts: Sequence[str], max_new_tokens: int,
            **options: Any) -> list[Any]:
    """Return generation.Generation per prompt, each asked as one user turn, greedily, in one
    length-sorted pass (options: generate_batch's prefill and allowed)."""
    from .generation import GenerationConfig, generate_batch

    model, tokenizer = lm
    config = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=max(1, len(prompts)))
    return generate_batch(model, tokenizer, [[{"role": "user", "content": p}] for p in prompts],
                          config, **options)


def judge_frame(frame: pd.DataFrame, config: JudgeConfig, *, lm: tuple[Any, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return judge_score (1-10, higher = better; NaN on failure), judge_reason and judge_error
    columns aligned with the frame's rows; ``attrs["judge_mode"]`` says how the judge was
    asked (a key of MODE_LABELS)."""
    prompts = [render_rubric(config.rubric, str(p), str(r))
               for p, r in zip(frame["prompt"].tolist(), frame["response"].tolist())]
    verdicts = ask(prompts, config, _verdict, _failed_verdict, lm=lm, progress=progress)
    out = pd.DataFrame({"judge_score": np.array([v.score for v in verdicts], dtype=np.float64),
                        "judge_reason": [v.reason for v in verdicts],
                        "judge_error": [v.error for v in verdicts]}, index=frame.index)
    out.attrs["judge_mode"] = verdicts.mode
    return out


# --- reference-guided pairwise comparison -------------------------------------------------------

PAIRWISE_PROMPT = """\
You are comparing two answers to the same instruction. A reference answer written by a person \
is given: use it to decide which answer is correct and complete. Do not prefer an answer for \
being longer or shorter; judge what it says.

INSTRUCTION:
{prompt}

REFERENCE ANSWER:
{reference}

ANSWER 1:
{first}

ANSWER 2:
{second}

Which answer is better? Answer in exactly two lines:
Winner: <1, 2 or tie>
Reason: <one short sentence>"""
PAIRWISE_TEXT_FORMAT = """Answer in exactly two lines:
Winner: <1, 2 or tie>
Reason: <one short sentence>"""
PAIRWISE_JSON_FORMAT = """Answer with a JSON object only, in this shape:
{"winner": "<1, 2 or tie>", "reason": "<one short sentence>"}"""
PREFERENCE = AnswerShape("preference", _schema("winner", ["1", "2", "tie"]), PAIRWISE_TEXT_FORMAT,
                         PAIRWISE_JSON_FORMAT, "Winner: ", ("1", "2", "tie"))
_WINNER = re.compile(r"winner\W{0,6}?\s*(1|2|tie|one|two|answer\s*[12])\b", re.I)
PAIRWISE_COLUMNS = ("judge_b", "judge_consistent", "judge_error")


def render_pairwise(prompt: str, reference: str, first: str, second: str) -> str:
    """Return PAIRWISE_PROMPT filled in with the instruction, reference and both answers."""
    fields = {"{prompt}": prompt, "{reference}": reference, "{first}": first,
              "{second}": second}
    return re.sub(r"\{(?:prompt|reference|first|second)\}", lambda m: fields[m.group(0)],
                  PAIRWISE_PROMPT)


def parse_preference(text: str) -> float:
    """Return the share of the win the judge gives answer 2: 0.0 (answer 1), 0.5 (tie) or 1.0
    (answer 2), from "Winner: 1|2|tie" or {"winner": "1|2|tie", ...}; raise JudgeError when it
    names none."""
    found = _WINNER.search(text)
    if found is None:
        raise JudgeError(f"no winner in the judge's answer: {_clip(text)!r}")
    choice = found.group(1).lower()
    if choice == "tie":
        return 0.5
    return 0.0 if choice.endswith(("1", "one")) else 1.0


def _failed_preference(message: str) -> str:
    return message


def judge_pairs(pairs: pd.DataFrame, config: JudgeConfig, *,
                lm: tuple[Any, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return per row of pairs (prompt, reference, prediction = run a's answer, prediction_b)
    judge_b: b's share of the win given the reference, 0, 0.5 or 1 (NaN on failure);
    judge_consistent: both orders agree; judge_error.

    Each pair is asked twice, a's answer first and then b's, and the two verdicts are
    averaged, so a judge that always prefers the first position gives a tie, not a winner.
    The answer is asked for as the verdicts are (structured output, constrained decoding);
    ``attrs["judge_mode"]`` says which mode was used.
    """
    rows = list(zip(*(pairs[c].astype(str).tolist()
                      for c in ("prompt", "reference", "prediction", "prediction_b"))))
    prompts = [render_pairwise(p, r, first, second) for p, r, a, b in rows
               for first, second in ((a, b), (b, a))]
    answers = ask(prompts, config, parse_preference, _failed_preference, shape=PREFERENCE,
                  lm=lm, progress=progress)
    b_as_second, b_as_first = answers[0::2], answers[1::2]
    out = pd.DataFrame([_combine(x, y) for x, y in zip(b_as_second, b_as_first)],
                       columns=list(PAIRWISE_COLUMNS), index=pairs.index)
    out.attrs["judge_mode"] = answers.mode
    return out


def _combine(b_second: float | str, b_first: float | str) -> tuple[float, bool, str]:
    # b_second: b's share when b was answer 2; b_first: answer 2's share when b was answer 1.
    errors = [x for x in (b_second, b_first) if isinstance(x, str)]
    if errors:
        return math.nan, False, "; ".join(errors)
    b_share = (float(b_second) + 1.0 - float(b_first)) / 2
    return b_share, float(b_second) == 1.0 - float(b_first), ""


def settle_mode(config: JudgeConfig, mode: str | None) -> JudgeConfig:
    """Return the config that asks the way ``mode`` (found on the first rows) says, so later
    passes of the same job do not probe the server again."""
    if config.response_format != "auto" or mode not in RESPONSE_FORMATS + ("ignored",):
        return config  # set by the user, not found yet, or local (constrained already)
    return replace(config, response_format="text" if mode == "ignored" else mode)


def judge_label(config: Mapping[str, Any]) -> str:
    """Return a one-line description of a judge: backend, model and endpoint."""
    where = f" at {config['base_url']}" if config.get("backend") == "openai" else ""
    return f"{config.get('backend', 'local')} · {config.get('model', 'default')}{where}"


# --- saying when a run went badly ----------------------------------------------------------------

FAILURE_SHARE = 0.2  # more than this share of rows failing gets a prominent warning


def failure_warning(errors: Sequence[str], total: int, *, mode: str | None = None) -> str | None:
    """Return a warning when more than a fifth of ``total`` rows failed: how many, the most
    common error and what to try; None when fewer failed."""
    if total <= 0 or len(errors) <= FAILURE_SHARE * total:
        return None
    kinds = Counter(_error_kind(e) for e in errors)
    kind, count = kinds.most_common(1)[0]
    example = next(e for e in errors if _error_kind(e) == kind)
    used = f" This run asked for {MODE_LABELS[mode]}." if mode in MODE_LABELS else ""
    return (f"{len(errors):,} of {total:,} rows ({len(errors) / total:.0%}) were not judged. "
            f"Most common error ({count:,} rows): {_clip(example, 200)}.{used} "
            f"{_suggestion(kind)}")


def _error_kind(error: str) -> str:
    """The error without the row's own text (the quoted answer), to count alike errors."""
    return re.sub(r"""\s*:\s*['"].*$""", "", error, flags=re.S).strip()


def _suggestion(kind: str) -> str:
    if kind.startswith(("no score", "no winner", "score ")):
        return ("The judge model did not give its answer in the asked format: use a larger "
                "model, or a server with structured output (response_format with a JSON "
                "schema, as llama.cpp's server, vLLM and OpenAI take).")
    if "HTTP 429" in kind:
        return "The server is rate limiting: lower requests_per_minute or max_concurrency."
    if kind.startswith(("cannot reach", "the server dropped", "timed out")) or "HTTP 5" in kind:
        return ("Check that the server is running and reachable (a slow one needs a larger "
                "timeout_s); judging again asks only the rows that failed.")
    if kind.startswith("HTTP 4"):
        return "Check the model name, the key variable and the base URL."
    return "See the per-row errors."
