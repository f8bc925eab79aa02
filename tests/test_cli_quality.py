"""The `workbench score` and `workbench select` commands over a temporary store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers_app import write_jsonl
from test_cli import assert_one_line_error, run

from workbench import models, quality
from workbench import score as S
from workbench.cache import StoreCache
from workbench.store import Store


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return path


@pytest.fixture
def imported(store_path, tmp_path) -> Store:
    records = [{"messages": [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": " ".join(["word"] * (i + 1)) +
                              (" {}" if i % 2 else "")}]} for i in range(6)]
    run("import", write_jsonl(tmp_path / "d.jsonl", records), "-d", "d")
    return Store(store_path)




# --- helpers ------------------------------------------------------------------------------------
HEURISTIC_COLUMNS = ["length_score", "lexical_diversity_score", "repetition_score",
                     "readability_score", "overlap_score"]


def scored_frame(store: Store, ref: str | int = "d"):
    """Return a version's frame with its cached scores, indexed by response text."""
    frame = quality.with_cached_scores(store, store.frame(store.resolve(ref)))
    return frame.set_index("response")


def response(i: int) -> str:
    """The assistant text of row i of the `imported` fixture."""
    return " ".join(["word"] * (i + 1)) + (" {}" if i % 2 else "")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    model, tokenizer = models.tiny_lm()
    folder = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- help ---------------------------------------------------------------------------------------
def test_score_and_select_help_list_their_options():
    out = " ".join(run("score", "--help").output.split())
    assert "Usage: workbench score [OPTIONS] REF" in out
    assert "Score a version's rows (cached by content)" in out
    for option in ("--scorers", "--model", "--max-length", "--format-regex", "--format-json",
                   "--format-prefix", "--progress / --no-progress"):
        assert option in out
    out = " ".join(run("select", "--help").output.split())
    assert "Usage: workbench select [OPTIONS] REF" in out
    assert "Select a subset of a scored version" in out
    for option in ("--method", "topk|diverse|quota|longest|threshold", "--k", "--score",
                   "--min SCORE=VALUE", "--max SCORE=VALUE", "--dry-run"):
        assert option in out


# --- score --------------------------------------------------------------------------------------
def test_score_default_heuristics_prints_stats_and_caches(imported, monkeypatch):
    result = run("score", "d")
    lines = result.stdout.splitlines()
    assert lines[0] == "d@1: 6 rows scored"
    assert lines[1].split() == ["score", "better", "scored", "missing", "mean", "std", "min",
                                "median", "max"]
    table = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(table) == HEURISTIC_COLUMNS
    assert table["length_score"][1:4] == ["higher", "6", "0"]
    assert table["repetition_score"][1] == "lower" and table["overlap_score"][1] == "lower"
    assert table["length_score"][6] == "1" and table["length_score"][8] == "7"  # min, max words

    frame = scored_frame(imported)
    assert set(HEURISTIC_COLUMNS) <= set(frame.columns)
    assert frame[HEURISTIC_COLUMNS].notna().all().all()
    assert frame.loc[response(5), "length_score"] == 7.0
    with imported.connect() as con:
        cached = con.execute("SELECT count(*) FROM scores").fetchall()[0][0]
    assert cached == 6 * len(HEURISTIC_COLUMNS)

    # A second run reads every value from the cache: no scorer function is called again.
    def boom(*_args, **_kwargs):
        raise AssertionError("scorer ran although its values are cached")

    for name in ("length", "lexical_diversity", "repetition", "readability", "overlap"):
        monkeypatch.setitem(S.SCORERS, name, dataclasses.replace(S.SCORERS[name], fn=boom))
    again = run("score", "d")
    assert again.stdout == result.stdout
    with imported.connect() as con:
        assert con.execute("SELECT count(*) FROM scores").fetchall()[0][0] == cached


def test_score_with_only_some_scorers_prints_only_those(imported):
    out = run("score", "d", "--scorers", "length, diversity").stdout
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["length_score", "lexical_diversity_score"]
    assert "repetition_score" not in scored_frame(imported).columns


def test_score_format_regex_adds_the_format_score(imported):
    out = run("score", "d", "--scorers", "length", "--format-regex", r"\{\}").stdout
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["length_score", "format_score"]
    frame = scored_frame(imported)
    for i in range(6):  # the odd rows end with "{}"
        assert frame.loc[response(i), "format_score"] == (1.0 if i % 2 else 0.0)


def test_score_format_json_and_prefix_give_the_share_of_checks_passed(store_path, tmp_path):
    records = [{"messages": [{"role": "user", "content": f"q{i}"},
                             {"role": "assistant", "content": text}]}
               for i, text in enumerate(['{"a": 1}', "[1, 2]", "not json", "Answer: {}"])]
    run("import", write_jsonl(tmp_path / "j.jsonl", records), "-d", "j")
    out = run("score", "j", "--scorers", "length", "--format-json").stdout
    assert "format_score" in out
    frame = scored_frame(Store(store_path), "j")
    assert frame["format_score"].to_dict() == {'{"a": 1}': 1.0, "[1, 2]": 1.0, "not json": 0.0,
                                               "Answer: {}": 0.0}
    # Two checks at once: the score is the share passed (and the newest parameters win).
    run("score", "j", "--scorers", "format", "--format-json", "--format-prefix", "Answer:")
    frame = scored_frame(Store(store_path), "j")
    assert frame["format_score"].to_dict() == {'{"a": 1}': 0.5, "[1, 2]": 0.5, "not json": 0.0,
                                               "Answer: {}": 0.5}


def test_score_model_scorers_with_a_local_model_folder(imported, tiny_model_dir):
    result = run("score", "d", "--scorers", "perplexity,ifd", "--model", tiny_model_dir,
                 "--max-length", "64", "--no-progress")
    assert "model scores" not in result.stderr  # no progress bar of the scorers
    assert "Loading weights" not in result.stderr  # nor transformers' own
    lines = result.stdout.splitlines()
    assert lines[0] == "d@1: 6 rows scored"
    table = {line.split()[0]: line.split() for line in lines[2:]}
    assert list(table) == ["perplexity_score", "ifd_score"]
    assert table["perplexity_score"][1:4] == ["lower", "6", "0"]
    frame = scored_frame(imported)
    for column in ("perplexity_score", "ifd_score"):
        values = frame[column].to_numpy()
        assert np.isfinite(values).all() and (values > 0).all(), (column, values)
    # The values are cached per model folder: a second run prints the same statistics.
    again = run("score", "d", "--scorers", "perplexity,ifd", "--model", tiny_model_dir,
                "--max-length", "64", "--no-progress")
    assert again.stdout == result.stdout


# --- select -------------------------------------------------------------------------------------
def test_select_topk_makes_a_version_with_the_rule_and_reasons(imported):
    run("score", "d", "--scorers", "length")
    result = run("select", "d", "--method", "topk", "--k", "2", "--score", "length")
    assert result.stdout.splitlines() == ["2 of 6 rows selected; dropped: not_selected=4",
                                          "d@2: 2 rows"]
    version = imported.version(2)
    assert (version.parent_id, version.operation, version.n_rows) == (1, "select", 2)
    assert version.params["method"] == "top_k" and version.params["k"] == 2
    assert version.params["score"] == "length_score"
    assert version.params["options"]["method"] == "top_k"
    assert version.counts == {"not_selected": 4, "kept": 2}
    assert imported.active_version("d") == 2
    # The longest responses (7 words, then the first of the two 5-word ones) are kept.
    assert sorted(imported.frame(2)["response"]) == sorted([response(5), response(3)])
    removed = imported.removed(2)
    assert len(removed) == 4 and set(removed["reason"]) == {"not_selected"}
    assert removed["detail"].str.startswith("top_k: rank ").all()


def test_select_dry_run_makes_no_version(imported):
    run("score", "d", "--scorers", "length")
    result = run("select", "d", "--k", "3", "--score", "length_score", "--dry-run")
    assert result.stdout.splitlines() == ["3 of 6 rows selected; dropped: not_selected=3"]
    assert [v.version_id for v in imported.versions("d")] == [1]
    assert imported.active_version("d") == 1


def test_select_thresholds_drop_rows_with_the_threshold_reason(imported):
    run("score", "d", "--scorers", "length")
    # Lengths in words: 1, 3, 3, 5, 5, 7.
    out = run("select", "d", "--method", "threshold", "--min", "length=3",
              "--max", "length=6").stdout
    assert out.splitlines()[0] == ("4 of 6 rows selected; dropped: below_threshold=1 "
                                   "above_threshold=1")
    removed = imported.removed(2).set_index("reason")["detail"].to_dict()
    assert removed == {"below_threshold": "threshold: length_score = 1 < min 3",
                       "above_threshold": "threshold: length_score = 7 > max 6"}
    assert imported.version(2).params["bounds"] == {"length_score": [3.0, 6.0]}
    # Thresholds first, then top-k on what is left.
    out = run("select", "d@1", "--k", "1", "--score", "length", "--min", "length=4").stdout
    assert out.splitlines()[0] == "1 of 6 rows selected; dropped: below_threshold=3 not_selected=2"
    version = imported.version(3)
    assert version.params["thresholds"] == {"length_score": [4.0, None]}
    assert list(imported.frame(3)["response"]) == [response(5)]


def test_select_longest_works_without_scoring(imported):
    out = run("select", "d", "--method", "longest", "--k", "2").stdout
    assert out.splitlines() == ["2 of 6 rows selected; dropped: not_selected=4",
                                "d@2: 2 rows"]
    assert list(imported.frame(2)["response"]) == [response(4), response(5)]
    assert imported.version(2).params["method"] == "longest_k"
    assert imported.removed(2)["detail"].str.startswith("longest_k: rank ").all()
    ignored = run("select", "d", "--method", "longest", "--k", "1", "--score", "length",
                  "--dry-run")
    assert ignored.stderr.strip() == "note: --score does nothing with --method longest"


# --- bad input ----------------------------------------------------------------------------------
def test_score_bad_input_is_a_one_line_error(imported):
    assert_one_line_error(run("score", "nope", ok=False), "no dataset named 'nope'")
    assert_one_line_error(run("score", "d", "--scorers", "length,bogus", ok=False),
                          "unknown scorer 'bogus'")
    assert_one_line_error(run("score", "d", "--format-regex", "([", ok=False),
                          "not a valid regular expression")
    assert_one_line_error(run("score", "d", "--scorers", "judge", ok=False), "judge")
    assert_one_line_error(run("score", "d", "--max-length", "1", ok=False), "--max-length")
    with imported.connect() as con:  # nothing was cached by the failed runs
        assert con.execute("SELECT count(*) FROM scores WHERE scorer = 'format'"
                           ).fetchall()[0][0] == 0


def test_select_bad_input_is_a_one_line_error(imported):
    assert_one_line_error(run("select", "nope", "--k", "2", "--score", "length", ok=False),
                          "no dataset named 'nope'")
    assert_one_line_error(run("select", "d", "--k", "2", "--score", "length", ok=False),
                          "score='length': no such column", "run a scorer first")
    run("score", "d", "--scorers", "length")
    assert_one_line_error(run("select", "d", "--k", "0", "--score", "length", ok=False),
                          "k=0", ">= 1")
    assert_one_line_error(run("select", "d", "--score", "length", ok=False), "k=None")
    assert_one_line_error(run("select", "d", "--k", "2", ok=False), "name the score")
    assert_one_line_error(run("select", "d", "--k", "2", "--score", "nope", ok=False),
                          "score='nope': no such column", "length_score")
    assert_one_line_error(run("select", "d", "--k", "2", "--score", "length", "--min",
                              "length", ok=False), "--min 'length'", "SCORE=NUMBER")
    assert_one_line_error(run("select", "d", "--method", "threshold", "--max", "length=abc",
                              ok=False), "--max 'length=abc'", "SCORE=NUMBER")
    assert_one_line_error(run("select", "d", "--method", "threshold", ok=False),
                          "at least one bound")
    assert_one_line_error(run("select", "d", "--method", "threshold", "--min", "length=5",
                              "--max", "length=2", ok=False), "min is above max")
    assert_one_line_error(run("select", "d", "--method", "best", "--k", "2", ok=False),
                          "--method")
    assert [v.version_id for v in imported.versions("d")] == [1]  # no version was made


@pytest.fixture
def json_judge():
    """Yield the base URL of a chat server that answers every structured request with a JSON
    verdict (score 6) and refuses requests without a response_format."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body)
            ok = body.get("response_format", {}).get("type") == "json_schema"
            content = '{"score": 6, "reason": "ok"}'
            payload = json.dumps({"choices": [{"message": {"content": content}}]} if ok else
                                 {"error": "response_format json_schema required"}).encode()
            self.send_response(200 if ok else 400)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", asked
    httpd.shutdown()
    httpd.server_close()


def test_score_runs_the_judge_into_the_pages_cache(imported, json_judge, tmp_path):
    url, asked = json_judge
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade {response} for {prompt}", encoding="utf-8")
    args = ("score", "d", "--scorers", "judge", "--judge-url", url, "--judge-model", "m",
            "--rubric", str(rubric), "--no-progress")
    first = run(*args)
    n = len(imported.frame(imported.resolve("d")))
    assert f"judge: {n} rows asked, 0 from the cache, 0 not scored; answers: structured output " \
        "(response_format json_schema, strict)" in first.stdout
    assert asked[0]["messages"][0]["content"].startswith("Grade ")
    assert run(*args).stdout.count(f"judge: 0 rows asked, {n} from the cache") == 1
    assert len(asked) == n  # the second run asked nothing
    # The page's job with the same options reads the same cache entries.
    config = {"backend": "openai", "model": "m", "base_url": url, "api_key_env": None,
              "rubric": rubric.read_text(encoding="utf-8")}
    frame = quality.with_cached_scores(imported, imported.frame(imported.resolve("d")))
    assert (frame["judge_score"] == 6.0).all()
    key = S.SCORERS["judge"].cache_params(quality.judge_params(imported, 1, config)["judge"])
    assert len(StoreCache(imported).get_scores(frame["id"].tolist(), "judge", key)) == n


def test_score_says_loudly_when_the_judge_mostly_failed(imported):
    dead = run("score", "d", "--scorers", "judge", "--judge-url", "http://127.0.0.1:9/v1",
               "--judge-model", "m", "--judge-retries", "0", "--no-progress")
    assert "WARNING: " in dead.stderr and "were not judged" in dead.stderr
    assert "Check that the server is running" in dead.stderr
    assert "cannot reach http://127.0.0.1:9/v1" in dead.stderr  # the per-row errors
    assert_one_line_error(run("score", "d", "--scorers", "judge", "--judge-url", "http://x/v1",
                              ok=False), "--judge-model")
