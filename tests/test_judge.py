"""Tests of workbench.judge: answer parsing, the HTTP path against a local scripted server
(retries, Retry-After, timeouts, malformed answers, rate limit, concurrency), and the local
backend. Every failure must surface as NaN + judge_error, never as a score."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from workbench import judge as J
from workbench.cache import StoreCache
from workbench.exceptions import ConfigError
from workbench.judge import JudgeConfig
from workbench.schema import Example, examples_frame
from workbench.score import score_frame
from workbench.store import Store

OK_ANSWER = "Score: 8\nReason: Correct and clear."


# --- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, score, reason", [
    ("Score: 8\nReason: Correct and clear.", 8.0, "Correct and clear."),
    ("**Score:** 7/10\n**Reason:** Mostly right.", 7.0, "Mostly right."),
    ("score = 3\nreason - vague", 3.0, "vague"),
    ('{"score": 9, "reason": "Excellent"}', 9.0, "Excellent"),
    ('```json\n{"Score": "6.5", "explanation": "ok"}\n```', 6.5, "ok"),
    ("Score: 10", 10.0, ""),
])
def test_parse_verdict_accepts_the_usual_shapes(text, score, reason):
    assert J.parse_verdict(text) == (score, reason)


@pytest.mark.parametrize("text, message", [
    ("Looks fine to me.", "no score"),
    ("Score: 0\nReason: bad", "outside 1-10"),
    ("Score: 42", "outside 1-10"),
    ('{"score": "high"}', "no score"),
])
def test_parse_verdict_refuses_rather_than_guessing(text, message):
    with pytest.raises(J.JudgeError, match=message):
        J.parse_verdict(text)


def test_a_json_answer_cut_off_by_max_tokens_keeps_its_score():
    assert J.parse_verdict('{"score": 7, "reason": "Mostly \\"right\\" but the') == (
        7.0, 'Mostly "right" but the (cut off)')
    assert J.parse_verdict('{"score": 3, "rea') == (3.0, "")
    with pytest.raises(J.JudgeError, match="outside 1-10"):
        J.parse_verdict('{"score": 11, "reason": "')


def test_json_modes_ask_for_json_in_the_prompt_and_the_request():
    prompt = J.render_rubric(J.DEFAULT_RUBRIC, "Q", "A")
    assert prompt.endswith(J.TEXT_FORMAT)
    assert J.VERDICT.prompt(prompt, "text") == prompt
    as_json = J.VERDICT.prompt(prompt, "json_schema")
    assert as_json.endswith(J.JSON_FORMAT) and "Score: <integer" not in as_json
    assert J.VERDICT.prompt("Rate {x}", "json_object").endswith("\n\n" + J.JSON_FORMAT)
    strict = J.VERDICT.response_format("json_schema")
    assert strict["type"] == "json_schema" and strict["json_schema"]["strict"] is True
    assert strict["json_schema"]["schema"]["properties"]["score"]["enum"] == list(range(1, 11))
    assert J.VERDICT.response_format("json_object+schema")["schema"]["required"] == [
        "score", "reason"]
    assert J.VERDICT.response_format("text") is None
    with pytest.raises(ConfigError, match="response_format"):
        JudgeConfig(response_format="xml")


def test_rubric_fills_prompt_and_response_and_keeps_other_braces():
    rubric = 'Q: {prompt}\nA: {response}\nReply as {"score": N}'
    assert J.render_rubric(rubric, "2+2?", "4") == 'Q: 2+2?\nA: 4\nReply as {"score": N}'
    assert "{prompt}" in J.DEFAULT_RUBRIC and "{response}" in J.DEFAULT_RUBRIC


@pytest.mark.parametrize("options, field", [
    ({"backend": "cloud"}, "backend"),
    ({"backend": "openai"}, "base_url"),
    ({"rubric": "Rate {prompt}"}, "rubric"),
    ({"max_concurrency": 0}, "max_concurrency"),
    ({"requests_per_minute": 0}, "requests_per_minute"),
    ({"max_retries": -1}, "max_retries"),
])
def test_config_rejects_bad_options_naming_the_field(options, field):
    with pytest.raises(ConfigError, match=field):
        JudgeConfig(**options)


# --- a scripted OpenAI-compatible server ----------------------------------------------------------

class Script:
    """What the test server answers, chosen by a "case=<name>" marker in the prompt."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: dict[str, list[float]] = defaultdict(list)
        self.headers: list[dict] = []
        self.in_flight = self.max_in_flight = 0

    def record(self, case: str, headers: dict) -> int:
        with self.lock:
            self.calls[case].append(time.monotonic())
            self.headers.append(headers)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return len(self.calls[case])

    def done(self) -> None:
        with self.lock:
            self.in_flight -= 1


def _chat(content: object) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}
                      ).encode()


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][0]["content"]
            case = prompt.split("case=")[1].split()[0] if "case=" in prompt else "ok"
            attempt = script.record(case, dict(self.headers))
            try:
                self._answer(case, attempt, body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)
            finally:
                script.done()

        def do_GET(self):  # only a followed redirect (POST turned GET) would come here
            script.record("GET " + self.path, dict(self.headers))
            script.done()
            self._send(404, b'{"error": "not found"}')

        def _answer(self, case: str, attempt: int, body: dict) -> None:
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"error": "not found"}')
            if case.startswith("redirect"):  # e.g. redirect302: to the same server as "localhost"
                port = self.server.server_address[1]
                return self._send(int(case[8:]), b"", {
                    "Location": f"http://localhost:{port}/v1/chat/completions"})
            if case == "trickle":  # a byte every 50 ms: each read is quick, the whole is not
                payload = _chat(OK_ANSWER)
                self._send(200, b"", {"Content-Length": str(len(payload))}, length=False)
                for byte in payload:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
                return None
            if case == "huge":
                return self._send(200, _chat("Score: 8\nReason: " + "x" * (2 << 20)))
            if case == "hugestream":  # no Content-Length: the body ends when the server closes
                self._send(200, b"", length=False)
                self.wfile.write(_chat("Score: 8\nReason: " + "x" * (2 << 20)))
                return None
            if case == "drop" or (case == "dropfirst" and attempt == 1):
                self.close_connection = True  # hang up without a word
                return None
            if case == "truncate":  # promise 500 bytes, send 20, hang up
                self._send(200, b"", {"Content-Length": "500"}, length=False)
                self.wfile.write(_chat(OK_ANSWER)[:20])
                self.close_connection = True
                return None
            if case == "dropfirst":
                return self._send(200, _chat("Score: 5\nReason: Second try."))
            if case == "ok":
                time.sleep(0.05)  # long enough for concurrent requests to overlap
                return self._send(200, _chat(OK_ANSWER))
            if case == "flaky429":
                if attempt == 1:
                    return self._send(429, b'{"error": "slow down"}', {"Retry-After": "1"})
                return self._send(200, _chat("Score: 6\nReason: Fine after a wait."))
            if case == "e500":
                return self._send(500, b"internal error")
            if case == "e400":
                return self._send(400, b'{"error": "bad model name"}')
            if case == "slow":
                time.sleep(1.0)
                return self._send(200, _chat(OK_ANSWER))
            if case == "badjson":
                return self._send(200, b'{"choices": [ not json')
            if case == "nocontent":
                return self._send(200, b'{"choices": [{"message": {"role": "assistant"}}]}')
            if case == "garbled":
                return self._send(200, _chat("Looks fine to me."))
            if case in ("llamacpp", "strict", "winner"):
                return self._structured(case, body.get("response_format"))
            raise AssertionError(case)

        def _structured(self, case: str, wanted: dict | None) -> None:
            # llamacpp: like llama-cpp-python's server (0.3.36), which takes {"type":
            # "json_object", "schema": ...} and refuses the json_schema type with an HTTP 500
            # validation error (seen against the real server); strict/winner: like OpenAI.
            kind = (wanted or {}).get("type")
            takes = "json_object" if case == "llamacpp" else "json_schema"
            if kind != takes and case == "llamacpp":
                return self._send(500, json.dumps({"error": {"message": (
                    "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
                    "'response_format', 'type'), 'msg': \"Input should be 'text' or "
                    f"'json_object'\", 'input': {kind!r}}}"), "type": "internal_server_error"}}
                    ).encode())
            if kind != takes:
                return self._send(400, json.dumps(
                    {"detail": f"response_format.type: {kind!r} is not permitted"}).encode())
            if case == "winner":
                return self._send(200, _chat('{"winner": "1", "reason": "it comes first"}'))
            return self._send(200, _chat('{"score": 7, "reason": "Right, a bit terse."}'))

        def _send(self, code: int, payload: bytes, headers: dict | None = None, *,
                  length: bool = True) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            if length:
                self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@pytest.fixture
def server():
    """Yield (base_url, script) of a scripted chat-completions server on 127.0.0.1."""
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def cases_frame(cases: list[str]):
    """Return a step frame whose rows ask the server for the given cases."""
    examples = [Example(({"role": "user", "content": f"Question {i}"},
                         {"role": "assistant", "content": f"Answer case={c} row {i}"}))
                for i, c in enumerate(cases)]
    return examples_frame(examples)


def remote(url: str, **options) -> JudgeConfig:
    base = {"backend": "openai", "base_url": url, "model": "judge-model",
            "requests_per_minute": 6000, "timeout_s": 5, "max_retries": 2, "backoff_s": 0.01}
    return JudgeConfig(**{**base, **options})


# --- the HTTP path ------------------------------------------------------------------------------

def test_ok_rows_get_score_and_reason_and_the_request_is_openai_shaped(server, monkeypatch):
    url, script = server
    monkeypatch.setenv("WORKBENCH_JUDGE_KEY_VARS", "JUDGE_TEST_KEY")
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    out = J.judge_frame(cases_frame(["ok", "ok"]), remote(url, api_key_env="JUDGE_TEST_KEY"))
    assert out["judge_score"].tolist() == [8.0, 8.0]
    assert out["judge_reason"].tolist() == ["Correct and clear."] * 2
    assert out["judge_error"].tolist() == ["", ""]
    assert all(h["Authorization"] == "Bearer sk-test" for h in script.headers)


def test_429_waits_for_retry_after_then_succeeds(server):
    url, script = server
    out = J.judge_frame(cases_frame(["flaky429"]), remote(url))
    assert out["judge_score"].tolist() == [6.0] and out["judge_error"].tolist() == [""]
    first, second = script.calls["flaky429"]
    assert second - first >= 0.95  # Retry-After: 1 honoured


def test_server_errors_are_retried_then_reported_per_row(server):
    url, script = server
    out = J.judge_frame(cases_frame(["ok", "e500", "ok"]), remote(url, max_retries=2))
    assert out["judge_score"].iloc[[0, 2]].tolist() == [8.0, 8.0]
    assert np.isnan(out["judge_score"].iloc[1])
    assert out["judge_error"].iloc[1] == "HTTP 500 internal error (gave up after 3 attempts)"
    assert len(script.calls["e500"]) == 3


def test_timeouts_are_retried_then_reported(server):
    url, script = server
    out = J.judge_frame(cases_frame(["slow"]), remote(url, timeout_s=0.3, max_retries=1))
    assert np.isnan(out["judge_score"].iloc[0])
    assert out["judge_error"].iloc[0] == "timed out after 0.3 s (gave up after 2 attempts)"
    assert len(script.calls["slow"]) == 2


@pytest.mark.parametrize("case, message", [
    ("badjson", "malformed JSON from the server"),
    ("nocontent", "no choices[0].message.content"),
    ("garbled", "no score in the judge's answer: 'Looks fine to me.'"),
    ("e400", 'HTTP 400 {"error": "bad model name"}'),
])
def test_bad_answers_fail_the_row_without_retrying(server, case, message):
    url, script = server
    out = J.judge_frame(cases_frame([case]), remote(url))
    assert np.isnan(out["judge_score"].iloc[0]) and out["judge_reason"].iloc[0] == ""
    assert message in out["judge_error"].iloc[0]
    assert len(script.calls[case]) == 1


def test_unreachable_server_is_a_row_error():
    closed = remote("http://127.0.0.1:9/v1", max_retries=1)  # port 9 (discard): nothing listens
    out = J.judge_frame(cases_frame(["ok"]), closed)
    assert np.isnan(out["judge_score"].iloc[0])
    assert out["judge_error"].iloc[0].startswith("cannot reach http://127.0.0.1:9/v1")


def test_missing_key_variable_stops_before_any_request(server, monkeypatch):
    url, script = server
    monkeypatch.setenv("WORKBENCH_JUDGE_KEY_VARS", "JUDGE_TEST_KEY")
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="JUDGE_TEST_KEY"):
        J.judge_frame(cases_frame(["ok"]), remote(url, api_key_env="JUDGE_TEST_KEY"))
    assert not script.calls


def test_requests_per_minute_spaces_requests(server):
    url, script = server
    started = time.monotonic()
    out = J.judge_frame(cases_frame(["ok"] * 6), remote(url, requests_per_minute=600,
                                                        max_concurrency=4))
    assert out["judge_score"].notna().all()
    times = sorted(script.calls["ok"])
    assert min(np.diff(times)) >= 0.09  # 600/min = one request per 0.1 s
    assert time.monotonic() - started >= 0.5


def test_concurrency_is_bounded_and_used(server):
    url, script = server
    J.judge_frame(cases_frame(["ok"] * 8), remote(url, max_concurrency=3))
    assert script.max_in_flight == 3


def test_rate_limiter_spaces_calls_across_threads():
    limiter = J.RateLimiter(per_minute=1200)  # 0.05 s apart
    stamps: list[float] = []
    threads = [threading.Thread(target=lambda: (limiter.wait(), stamps.append(time.monotonic())))
               for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert min(np.diff(sorted(stamps))) >= 0.045


def test_retry_after_accepts_seconds_and_dates_and_is_capped():
    assert J._retry_after("2") == 2.0
    assert J._retry_after("100000") == J.MAX_RETRY_AFTER_S
    assert J._retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert J._retry_after("soon") is None and J._retry_after(None) is None


def test_score_frame_caches_judged_rows_but_retries_failed_ones(server):
    url, script = server
    store = Store(":memory:")
    frame = cases_frame(["ok", "e500"])
    spec = ("judge", remote(url, max_retries=0).to_dict())
    first = score_frame(frame, [spec], cache=StoreCache(store))
    assert first["judge_score"].iloc[0] == 8.0 and np.isnan(first["judge_score"].iloc[1])
    assert first["judge_error"].iloc[1].startswith("HTTP 500")
    second = score_frame(frame, [spec], cache=StoreCache(store))
    assert second["judge_score"].iloc[0] == 8.0  # from the cache: not asked again
    with store.connect() as con:  # the reason is cached with the score
        assert con.execute("SELECT detail FROM scores WHERE scorer = 'judge'").fetchall() == [
            ("Correct and clear.",)]
    assert len(script.calls["ok"]) == 1 and len(script.calls["e500"]) == 2


# --- structured output: found once per run ---------------------------------------------------------

def test_a_llamacpp_style_server_is_asked_with_json_object_and_a_schema(server):
    url, script = server
    out = J.judge_frame(cases_frame(["llamacpp"] * 5), remote(url, max_concurrency=2))
    assert out["judge_score"].tolist() == [7.0] * 5 and (out["judge_error"] == "").all()
    assert out["judge_reason"].tolist() == ["Right, a bit terse."] * 5
    assert out.attrs["judge_mode"] == "json_object+schema"
    # The first row learned the mode (json_schema refused with the server's HTTP 500 validation
    # error, not retried; then json_object with a schema); the other four were asked that way
    # at once: 6 requests, not 10.
    assert len(script.calls["llamacpp"]) == 6


def test_an_openai_style_server_gets_a_strict_json_schema(server):
    url, script = server
    out = J.judge_frame(cases_frame(["strict"] * 3), remote(url))
    assert out["judge_score"].tolist() == [7.0] * 3
    assert out.attrs["judge_mode"] == "json_schema" and len(script.calls["strict"]) == 3


def test_a_server_ignoring_response_format_is_parsed_as_text_and_said_so(server):
    url, script = server
    out = J.judge_frame(cases_frame(["ok"] * 3), remote(url))
    assert out["judge_score"].tolist() == [8.0] * 3
    assert out.attrs["judge_mode"] == "ignored" and len(script.calls["ok"]) == 3
    assert J.settle_mode(remote(url), "ignored").response_format == "text"
    assert J.settle_mode(remote(url), "json_schema").response_format == "json_schema"
    assert J.settle_mode(remote(url), None).response_format == "auto"


def test_a_chosen_mode_the_server_refuses_is_each_rows_error(server):
    url, script = server
    out = J.judge_frame(cases_frame(["llamacpp"] * 2), remote(url, response_format="json_schema"))
    assert out["judge_score"].isna().all() and len(script.calls["llamacpp"]) == 2
    assert out["judge_error"].str.startswith("HTTP 500").all()  # once per row: not retried
    assert not out["judge_error"].str.contains("gave up").any()


def test_when_no_answer_tells_the_mode_the_rest_probe_for_themselves(server):
    url, script = server
    out = J.judge_frame(cases_frame(["e500"] * 3 + ["llamacpp"] * 2), remote(url, max_retries=0))
    assert out["judge_score"].isna().sum() == 3 and out["judge_score"].iloc[3:].tolist() == [
        7.0, 7.0]
    assert out.attrs["judge_mode"] == "json_object+schema"


def test_pairwise_comparison_uses_structured_output(server):
    url, script = server
    pairs = pd.DataFrame({"prompt": ["Q"], "reference": ["R"],
                          "prediction": ["Answer case=winner a"], "prediction_b": ["b"]})
    out = J.judge_pairs(pairs, remote(url))
    # Always "1": the position bias becomes a tie, read from the JSON answers.
    assert out["judge_b"].tolist() == [0.5] and out.attrs["judge_mode"] == "json_schema"
    assert J.PREFERENCE.response_format("json_schema")["json_schema"]["schema"]["properties"][
        "winner"]["enum"] == ["1", "2", "tie"]
    assert J.parse_preference('{"winner": "2", "reason": "x"}') == 1.0


def test_failure_warning_names_the_common_error_and_a_way_out():
    errors = ["no score in the judge's answer: 'It is 9.8 N'"] * 3 + ["HTTP 500 (gave up)"]
    warning = J.failure_warning(errors, 10, mode="json_object")
    assert warning.startswith("4 of 10 rows (40%) were not judged. Most common error (3 rows): "
                              "no score in the judge's answer: 'It is 9.8 N'.")
    assert "JSON mode" in warning and "larger model" in warning
    assert J.failure_warning(errors[:2], 10) is None  # a fifth or less: no warning
    down = J.failure_warning(["cannot reach http://x/v1: Connection refused (gave up after "
                              "4 attempts)"] * 3, 3)
    assert "Check that the server is running" in down


# --- the local backend ---------------------------------------------------------------------------

def test_local_judge_reports_unparseable_answers_instead_of_scoring(tiny_lm_pair):
    config = JudgeConfig(max_tokens=6, response_format="text")  # free text, unconstrained
    out = J.judge_frame(cases_frame(["a", "b"]), config, lm=tiny_lm_pair)
    # A random tiny model writes no "Score:": every row must be NaN with a reason why.
    assert out["judge_score"].isna().all()
    assert out["judge_error"].str.startswith("no score in the judge's answer").all()


def test_local_judge_scores_what_the_model_says(tiny_lm_pair, monkeypatch):
    seen: list[str] = []

    def fake_generate(lm, prompts, *, max_new_tokens):
        seen.extend(prompts)
        return ["Score: 9\nReason: Great."] * len(prompts)

    monkeypatch.setattr(J, "generate", fake_generate)
    out = J.judge_frame(cases_frame(["a"]), JudgeConfig(response_format="text"), lm=tiny_lm_pair)
    assert out["judge_score"].tolist() == [9.0] and out["judge_reason"].tolist() == ["Great."]
    assert "Question 0" in seen[0] and "Answer case=a row 0" in seen[0]


def test_constrained_local_judge_gets_a_score_even_from_a_random_model(tiny_lm_pair):
    # The tiny random model never writes the format on its own (test above); constrained, it
    # can only continue "Score:" with " 1".." 10" and "\nReason:".
    out = J.judge_frame(cases_frame(["a", "b", "c"]), JudgeConfig(max_tokens=4),
                        lm=tiny_lm_pair)
    assert out["judge_score"].between(1, 10).all() and (out["judge_error"] == "").all()
    assert out.attrs["judge_mode"] == "constrained"
    pairs = J.judge_pairs(pairs_frame(), JudgeConfig(max_tokens=2), lm=tiny_lm_pair)
    assert pairs["judge_b"].isin([0.0, 0.25, 0.5, 0.75, 1.0]).all()
    assert (pairs["judge_error"] == "").all()


def test_choice_constraint_keeps_only_continuations_then_lets_go():
    import torch

    from workbench.generation import _constrain, choice_constraint

    allowed = choice_constraint([(5, 9), (5, 6, 9), (7, 9)])
    assert allowed(()) == [5, 7] and allowed((5,)) == [6, 9]
    assert allowed((5, 9)) == [] and allowed((7, 9)) == []
    out = _constrain(torch.zeros(2, 10), [[], [5]], allowed)
    assert torch.isfinite(out).sum(dim=1).tolist() == [2, 2]
    assert torch.isfinite(out[1]).nonzero().squeeze(1).tolist() == [6, 9]
    free = _constrain(torch.zeros(1, 10), [[7, 9]], allowed)
    assert torch.isfinite(free).all()


@pytest.fixture(scope="module")
def tiny_lm_pair():
    from workbench.models import tiny_lm

    return tiny_lm()


# --- hardening: where the key goes, how long a row may take, how much is read ---------------------

def test_a_prompt_holding_the_text_response_field_is_not_filled_twice():
    rubric = "Q: {prompt}\nA: {response}"
    assert J.render_rubric(rubric, "Explain {response} in Python", "It is a field.") == (
        "Q: Explain {response} in Python\nA: It is a field.")
    assert J.render_rubric(rubric, "{prompt}?", "{prompt}!") == "Q: {prompt}?\nA: {prompt}!"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_host_is_refused_and_never_gets_the_key(server, monkeypatch, code):
    url, script = server
    monkeypatch.setenv("WORKBENCH_JUDGE_KEY_VARS", "JUDGE_TEST_KEY")
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret")
    out = J.judge_frame(cases_frame([f"redirect{code}", "ok"]),
                        remote(url, api_key_env="JUDGE_TEST_KEY"))
    assert np.isnan(out["judge_score"].iloc[0]) and out["judge_score"].iloc[1] == 8.0
    assert f"HTTP {code}: the server redirects to http://localhost:" in out["judge_error"].iloc[0]
    assert "not followed" in out["judge_error"].iloc[0]
    to_localhost = [h for h in script.headers if h.get("Host", "").startswith("localhost")]
    assert not to_localhost, to_localhost  # nothing, key or not, went to the other host
    assert len(script.calls[f"redirect{code}"]) == 1  # refused, not retried


def test_a_server_trickling_bytes_hits_the_overall_deadline(server):
    url, _ = server
    started = time.monotonic()
    out = J.judge_frame(cases_frame(["trickle"]), remote(url, timeout_s=0.5, max_retries=0))
    elapsed = time.monotonic() - started
    assert np.isnan(out["judge_score"].iloc[0])
    assert out["judge_error"].iloc[0] == "timed out after 0.5 s (gave up after 1 attempts)"
    assert elapsed < 2.0, elapsed  # the whole answer would take about 4 s


@pytest.mark.parametrize("case", ["huge", "hugestream"])
def test_an_oversized_answer_is_refused(server, case):
    url, script = server
    out = J.judge_frame(cases_frame([case, "ok"]), remote(url))
    assert np.isnan(out["judge_score"].iloc[0]) and out["judge_score"].iloc[1] == 8.0
    assert "byte limit; refused" in out["judge_error"].iloc[0]
    assert len(script.calls[case]) == 1


def test_dropped_connections_are_retried_then_fail_only_their_row(server):
    url, script = server
    out = J.judge_frame(cases_frame(["ok", "drop", "dropfirst", "truncate", "ok"]),
                        remote(url, max_retries=2))
    assert out["judge_score"].iloc[[0, 2, 4]].tolist() == [8.0, 5.0, 8.0]
    assert out["judge_error"].iloc[1] == (
        "the server dropped the connection (RemoteDisconnected) (gave up after 3 attempts)")
    assert out["judge_error"].iloc[3] == (
        "the server dropped the connection (IncompleteRead) (gave up after 3 attempts)")
    assert len(script.calls["drop"]) == 3 and len(script.calls["dropfirst"]) == 2


def test_only_allowed_variables_can_be_sent_as_a_key(monkeypatch):
    monkeypatch.delenv("WORKBENCH_JUDGE_KEY_VARS", raising=False)
    assert J.allowed_key_vars() == ("OPENAI_API_KEY",)
    JudgeConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="OPENAI_API_KEY")
    with pytest.raises(ConfigError, match="WORKBENCH_JUDGE_KEY_VARS"):
        JudgeConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="HOME")
    monkeypatch.setenv("WORKBENCH_JUDGE_KEY_VARS", " MY_KEY , OTHER_KEY ")
    assert J.allowed_key_vars() == ("MY_KEY", "OTHER_KEY")
    JudgeConfig(backend="openai", base_url="http://127.0.0.1:1/v1", api_key_env="MY_KEY")
    with pytest.raises(ConfigError, match="api_key_env='OPENAI_API_KEY'"):
        JudgeConfig(backend="openai", base_url="http://127.0.0.1:1/v1",
                    api_key_env="OPENAI_API_KEY")


def test_a_judge_job_cannot_name_a_variable_outside_the_allow_list(monkeypatch):
    from workbench import quality

    monkeypatch.delenv("WORKBENCH_JUDGE_KEY_VARS", raising=False)
    store = Store(":memory:")
    vid = store.add_examples("d", [Example(({"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}))])
    with pytest.raises(ConfigError, match="api_key_env='AWS_SECRET_ACCESS_KEY'"):
        quality.judge_params(store, vid, {"backend": "openai", "base_url": "http://x.test/v1",
                                          "api_key_env": "AWS_SECRET_ACCESS_KEY"})


# --- reference-guided pairwise comparison --------------------------------------------------------

TEXT = JudgeConfig(response_format="text")  # the faked generate() is the free-text path


def pairs_frame(n: int = 2) -> pd.DataFrame:
    return pd.DataFrame({"prompt": [f"Question {i}" for i in range(n)],
                         "reference": ["the right answer {reference}"] * n,
                         "prediction": ["a wrong answer"] * n,
                         "prediction_b": ["the right answer"] * n})


def fake_judge(monkeypatch, decide) -> list[str]:
    """Make the local judge answer decide(prompt) for every prompt; return the prompts seen."""
    seen: list[str] = []

    def fake_generate(lm, prompts, *, max_new_tokens):
        seen.extend(prompts)
        return [decide(p) for p in prompts]

    monkeypatch.setattr(J, "generate", fake_generate)
    return seen


def answer_text(prompt: str, number: int) -> str:
    return prompt.split(f"ANSWER {number}:\n", 1)[1].split("\n\n", 1)[0]


def test_pairwise_judge_asks_both_orders_and_keeps_the_winner(monkeypatch):
    seen = fake_judge(monkeypatch, lambda p: "Winner: 1" if "right" in answer_text(p, 1)
                      else "Winner: 2\nReason: it says what the reference says")
    out = J.judge_pairs(pairs_frame(), TEXT, lm=(None, None))
    assert out["judge_b"].tolist() == [1.0, 1.0] and out["judge_consistent"].all()
    assert len(seen) == 4  # two pairs, two orders each
    assert answer_text(seen[0], 2) == answer_text(seen[1], 1) == "the right answer"
    # The user's text is filled in once: braces in it are left alone.
    assert "REFERENCE ANSWER:\nthe right answer {reference}\n" in seen[0]


def test_pairwise_judge_turns_a_position_bias_into_ties(monkeypatch):
    fake_judge(monkeypatch, lambda p: "**Winner:** 1")  # always the first answer
    out = J.judge_pairs(pairs_frame(), TEXT, lm=(None, None))
    assert out["judge_b"].tolist() == [0.5, 0.5] and not out["judge_consistent"].any()


def test_pairwise_judge_reports_unusable_answers(monkeypatch):
    fake_judge(monkeypatch, lambda p: "Both are fine." if "Question 1" in p else "Winner: tie")
    out = J.judge_pairs(pairs_frame(), TEXT, lm=(None, None))
    assert out.loc[0, "judge_b"] == 0.5 and bool(out.loc[0, "judge_consistent"])
    assert np.isnan(out.loc[1, "judge_b"])
    assert out.loc[1, "judge_error"].startswith("no winner in the judge's answer")
