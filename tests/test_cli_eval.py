"""`workbench eval`, `eval-import` and `compare` over a temporary store and runs folder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
from helpers_app import chat_file, write_jsonl
from test_cli import assert_one_line_error, run

from workbench import evaluate, jobs
from workbench.cli import main
from workbench.store import Store

EVAL_COMMANDS = ("eval", "eval-import", "compare")


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job process: one thread on a shared CPU
    Store(path).import_file(chat_file(tmp_path / "eval.jsonl", 3), "evalset")
    return path


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    """The references of the 3 eval rows as predictions, then a line without a prediction."""
    rows = [{"prompt": f"question {i}: how do I reset item {i}?",
             "reference": f"answer {i}: press reset {i} times.",
             "prediction": f"answer {i}: press reset {i} times."} for i in range(3)]
    return write_jsonl(tmp_path / "outside.jsonl", [*rows, '{"prompt": "q", "reference": "r"}'])




# --- help -------------------------------------------------------------------------------------
def test_every_eval_command_has_help():
    assert set(EVAL_COMMANDS) <= set(main.commands)
    for name in EVAL_COMMANDS:
        result = run(name, "--help")
        assert f"Usage: workbench {name}" in result.output
        summary = " ".join(main.commands[name].help.split("\n\n")[0].split())
        assert summary in " ".join(result.output.split())  # help text wraps lines
    eval_help = run("eval", "--help").output
    assert "--no-similarity" in eval_help and "--detach" in eval_help and "tiny" in eval_help
    assert "--metric" in run("compare", "--help").output


# --- eval -------------------------------------------------------------------------------------
def _run_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("started eval run "), stdout
    return first.removeprefix("started eval run ").strip()


def _metrics(stdout: str) -> dict[str, tuple[float, float, float, int]]:
    """The summary table the commands print: {metric: (mean, lo, hi, n)}."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["metric", "mean", "lo",
                                                                         "hi", "n"])
    table = {}
    for line in lines[start + 1:]:
        parts = line.split()
        if len(parts) != 5 or parts[0] not in evaluate.METRICS:
            break
        table[parts[0]] = (float(parts[1]), float(parts[2]), float(parts[3]), int(parts[4]))
    return table


def test_eval_runs_to_the_end_and_prints_metrics_with_intervals(store_path, tmp_path):
    result = run("eval", "evalset", "--model", "tiny", "--max-new-tokens", "2", "--no-similarity")
    run_id = _run_id(result.stdout)
    assert "generating" in result.stderr  # the progress bar goes to stderr
    metrics = _metrics(result.stdout)
    assert {"exact_match", "token_f1", "rouge_l"} <= set(metrics)
    assert "similarity" not in metrics  # --no-similarity: no embedder loaded
    for name, (mean, lo, hi, n) in metrics.items():
        assert lo <= mean <= hi and n == 3, name

    job = jobs.status(run_id, home=tmp_path / "runs")
    assert job.state == "done" and job.kind == "eval"
    assert job.config["params"]["model"] == "tiny" and job.config["params"]["embedder"] is None
    predictions = evaluate.read_predictions(job.run_dir)
    assert len(predictions) == 3 and set(predictions["model"]) == {"tiny"}
    assert (predictions["n_tokens"] <= 2).all()  # --max-new-tokens reached the job
    assert sorted(predictions["reference"]) == [f"answer {i}: press reset {i} times."
                                                for i in range(3)]
    summary = evaluate.read_summary(job.run_dir)
    assert summary["rows"] == 3 and summary["generation"]["max_new_tokens"] == 2


def test_eval_detach_prints_the_run_id_and_returns(store_path, tmp_path):
    result = run("eval", "evalset", "--model", "tiny", "--max-new-tokens", "2", "--no-similarity",
                 "--limit", "2", "--style", '{"max_words": 80}', "--detach")
    run_id = _run_id(result.stdout)
    assert f"workbench compare {run_id} OTHER_RUN" in result.stdout
    assert "metric" not in result.stdout  # it did not wait for the metrics
    job = jobs.wait(run_id, home=tmp_path / "runs", timeout=180)
    assert job.state == "done", job.error
    params = job.config["params"]
    assert params["limit"] == 2 and params["style"] == {"max_words": 80}
    predictions = evaluate.read_predictions(job.run_dir)
    assert len(predictions) == 2  # --limit
    assert predictions["fmt_max_words"].all()  # the style check ran on at most 2 new tokens


# --- bad eval input: one line on stderr, exit 1, no run -----------------------------------------
def _no_runs(tmp_path: Path) -> bool:
    return not any((tmp_path / "runs").glob("*"))


def test_eval_of_an_unknown_dataset_fails(store_path, tmp_path):
    result = run("eval", "nosuch", "--model", "tiny", "--no-similarity", ok=False)
    assert_one_line_error(result, "nosuch")
    assert _no_runs(tmp_path)


def test_eval_of_an_unknown_model_fails(store_path, tmp_path):
    result = run("eval", "evalset", "--model", "bogus-model", "--no-similarity", ok=False)
    assert_one_line_error(result, "unknown model 'bogus-model'", "tiny")
    assert _no_runs(tmp_path)


@pytest.mark.parametrize("options, fragments", [
    (["--temperature", "0"], ["temperature must be a number > 0"]),
    (["--temperature", "nan"], ["temperature must be a number > 0"]),
    (["--temperature", "warm"], ["--temperature", "not a valid float"]),
    (["--top-p", "1.5"], ["top_p must be in (0, 1]"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens", "x>=1"]),
    (["--max-new-tokens", "many"], ["--max-new-tokens", "not a valid integer"]),
    (["--limit", "0"], ["--limit", "x>=1"]),
])
def test_eval_rejects_bad_generation_options(store_path, tmp_path, options, fragments):
    result = run("eval", "evalset", "--model", "tiny", "--no-similarity", *options, ok=False)
    assert_one_line_error(result, *fragments)
    assert _no_runs(tmp_path)


@pytest.mark.parametrize("style, fragments", [
    ("{bad", ["--style is not valid JSON"]),
    ('{"shout": true}', ["unknown style check(s) shout", "max_words"]),
    ('{"max_words": -1}', ["style.max_words must be an integer >= 0"]),
])
def test_eval_rejects_a_bad_style(store_path, tmp_path, style, fragments):
    result = run("eval", "evalset", "--model", "tiny", "--no-similarity", "--style", style,
                 ok=False)
    assert_one_line_error(result, *fragments)
    assert _no_runs(tmp_path)


@pytest.mark.parametrize("style", ["5", "[1]", '"abc"'])
def test_eval_rejects_a_style_that_is_not_an_object(store_path, style):
    result = run("eval", "evalset", "--model", "tiny", "--no-similarity", "--style", style,
                 ok=False)
    assert_one_line_error(result, "style")


# --- eval-import ------------------------------------------------------------------------------
def test_eval_import_reports_rejects_and_makes_a_run(store_path, tmp_path, predictions):
    result = run("eval-import", predictions, "--model", "outside-model", "--no-similarity")
    out = result.stdout
    assert "outside.jsonl: read 4 rows, imported 3, rejected 1" in out
    assert "  rejected outside.jsonl:4: prediction: missing field" in out  # line and field
    run_id = next(line for line in out.splitlines() if line.startswith("eval run ")).split()[-1]
    metrics = _metrics(out)
    assert metrics["exact_match"] == (1.0, 1.0, 1.0, 3)  # predictions equal the references
    assert "similarity" not in metrics

    job = jobs.status(run_id, home=tmp_path / "runs")
    assert job.state == "done" and job.kind == "import"
    frame = evaluate.read_predictions(job.run_dir)
    assert len(frame) == 3 and set(frame["model"]) == {"outside-model"}
    assert sorted(frame["row_key"]) == [1, 2, 3]  # the lines they came from
    assert evaluate.read_summary(job.run_dir)["rejected"][0].startswith("outside.jsonl:4:")


def test_eval_import_without_a_model_name_imports_nothing(store_path, tmp_path, predictions):
    result = run("eval-import", predictions, "--no-similarity", ok=False)
    assert_one_line_error(result, "no predictions imported from 4 rows",
                          "outside.jsonl:1: model: missing field")
    assert _no_runs(tmp_path)


def test_eval_import_of_a_missing_file_fails(store_path, tmp_path):
    result = run("eval-import", tmp_path / "nowhere.jsonl", "--model", "m", "--no-similarity",
                 ok=False)
    assert_one_line_error(result, "nowhere.jsonl: no such file")
    assert _no_runs(tmp_path)


def test_eval_import_of_a_file_without_a_valid_line_fails(store_path, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "q"}', "{oops"])
    result = run("eval-import", bad, "--model", "m", "--no-similarity", ok=False)
    assert_one_line_error(result, "bad.jsonl: no predictions imported from 2 rows",
                          "bad.jsonl:1: reference: missing field",
                          "bad.jsonl:2: (line): not valid JSON")
    assert _no_runs(tmp_path)


def test_eval_import_rejects_an_unknown_file_type_and_bad_style(store_path, tmp_path,
                                                                predictions):
    text = tmp_path / "preds.txt"
    text.write_text("prompt,reference,prediction\n", encoding="utf-8")
    assert_one_line_error(run("eval-import", text, "--model", "m", ok=False),
                          "preds.txt: unknown file type .txt")
    assert_one_line_error(run("eval-import", predictions, "--model", "m", "--style", "[1",
                              "--no-similarity", ok=False), "--style is not valid JSON")
    assert _no_runs(tmp_path)


# --- compare ----------------------------------------------------------------------------------
def _import(path: Path) -> str:
    out = run("eval-import", path, "--model", "outside", "--no-similarity").stdout
    return next(line for line in out.splitlines() if line.startswith("eval run ")).split()[-1]


def test_compare_prints_wins_losses_and_regressions(store_path, tmp_path, predictions):
    perfect = _import(predictions)  # the references themselves: every metric 1
    tiny = _run_id(run("eval", "evalset", "--model", "tiny", "--max-new-tokens", "2",
                       "--no-similarity").stdout)  # a random model: far worse

    worse = run("compare", perfect, tiny).stdout.splitlines()
    assert worse[0].startswith("token_f1: B vs A win 0, loss 3, tie 0; mean delta -")
    assert "3 regressions" in worse
    listed = [line for line in worse if line.startswith("  [")]
    assert len(listed) == 3 and all("question" in line for line in listed)
    assert any(line.split()[:2] == ["length", "words"] for line in worse)  # the slice table
    assert worse[-1].startswith("no training data diff")

    better = run("compare", tiny, perfect).stdout.splitlines()
    assert better[0].startswith("token_f1: B vs A win 3, loss 0, tie 0; mean delta +")
    assert "0 regressions" in better and not any(line.startswith("  [") for line in better)

    limited = run("compare", perfect, tiny, "--limit", "1", "--metric", "rouge_l").stdout
    assert limited.startswith("rouge_l: B vs A win 0, loss 3")
    assert "3 regressions" in limited
    assert sum(line.startswith("  [") for line in limited.splitlines()) == 1  # --limit


def test_compare_of_two_equal_runs_is_all_ties(store_path, tmp_path, predictions):
    a, b = _import(predictions), _import(predictions)
    assert a != b
    out = run("compare", a, b).stdout
    assert out.startswith("token_f1: B vs A win 0, loss 0, tie 3; mean delta +0.000")
    assert "0 regressions" in out.splitlines()


def test_compare_fails_on_the_same_run_unknown_run_or_metric(store_path, tmp_path, predictions):
    a = _import(predictions)
    assert_one_line_error(run("compare", a, a, ok=False), "pick two different runs", a)
    assert_one_line_error(run("compare", a, "no-such-run", ok=False), "no run 'no-such-run'")
    assert_one_line_error(run("compare", "no-such-run", a, ok=False), "no run 'no-such-run'")
    b = _import(predictions)
    assert_one_line_error(run("compare", a, b, "--metric", "nope", ok=False),
                          "no metric column 'nope'")
    assert_one_line_error(run("compare", a, b, "--by", "nokey", ok=False),
                          "cannot slice by 'nokey'")


def test_compare_runs_that_differ_in_length_prints_the_warning_and_controlled_rate(
        store_path, tmp_path):
    from length_runs import write_runs

    paths = write_runs(tmp_path / "files")
    small, xl = _import(paths["flan-t5-small"]), _import(paths["flan-t5-xl"])
    lines = run("compare", small, xl).stdout.splitlines()
    [length] = [line for line in lines if line.startswith("length: ")]
    assert length.startswith("length: A 0.82× and B 0.38× the reference; B win rate 0.133")
    assert "length-controlled (7 of 60 pairs of similar length)" in length
    [warning] = [line for line in lines if line.startswith("warning: ")]
    assert "favour run A (the longer one)" in warning
    assert any(line.split()[:3] == ["B", "0.8–1.25×", "A"] for line in lines)  # bucket table
    assert lines[-1].startswith("no training data diff")
    even = run("compare", small, _import(paths["flan-t5-base"])).stdout
    assert "warning: " not in even and "length: A 0.82× and B 0.82×" in even
