"""Eval runs wired to the store and the runs folder: start (tiny model), list, read, import
outside predictions, compare two runs with their training data diff, and bad input."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from pathlib import Path

import orjson
import pandas as pd
import pytest
import torch
from helpers_app import chat_file, write_jsonl

from workbench import evaluate as ev
from workbench import evaluation, jobs, training
from workbench.exceptions import ConfigError, ImportFormatError, NotFoundError
from workbench.store import Store

FAST = ev.GenerationConfig(max_new_tokens=3, batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the machine is shared, and tiny matmuls only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "store.duckdb")
    store.import_file(chat_file(tmp_path / "eval.jsonl", 4), "evalset")
    return store


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def perfect_predictions(path: Path, n: int = 4, bad_lines: tuple = ()) -> Path:
    """Predictions equal to the references of chat_file's rows, plus bad lines."""
    rows = [{"prompt": f"question {i}: how do I reset item {i}?",
             "reference": f"answer {i}: press reset {i} times.",
             "prediction": f"answer {i}: press reset {i} times.", "model": "oracle",
             "topic": "billing" if i % 2 else "login"} for i in range(n)]
    return write_jsonl(path, [*rows, *bad_lines])


@pytest.fixture
def tiny_run(store, home) -> jobs.JobStatus:
    return evaluation.start_eval(store, "evalset", model="tiny", generation=FAST,
                                 similarity=False, home=home, inline=True)


def test_tiny_eval_run_is_listed_with_metric_intervals(tiny_run, store, home):
    assert tiny_run.state == "done" and tiny_run.result["rows"] == 4
    table = evaluation.runs_table(home=home, store=store)
    assert table[["run", "kind", "state", "model", "data", "rows"]].values.tolist() == [
        [tiny_run.run_id, "eval", "done", "tiny", "evalset@1", 4]]  # data as people name it
    assert "similarity" not in table.columns  # switched off
    mean, interval = table.at[0, "token_f1"].split(" ", 1)
    assert float(mean) >= 0 and interval.startswith("[")
    summary = evaluation.summary_table(tiny_run.run_id, home=home)
    assert {"exact_match", "token_f1", "rouge_l"} <= set(summary["metric"])
    assert (summary["lo"] <= summary["mean"]).all() and (summary["n"] == 4).all()


def test_run_outputs_and_row_detail(tiny_run, home):
    predictions = evaluation.run_predictions(tiny_run.run_id, home=home)
    table = evaluation.outputs_table(predictions)
    assert list(table.columns[:4]) == ["row_key", "prompt", "reference", "prediction"]
    assert table["reference"].tolist() == [f"answer {i}: press reset {i} times." for i in range(4)]
    detail = evaluation.row_detail(predictions, 1)
    assert detail["prompt_messages"] == [{"role": "user",
                                          "content": "question 1: how do I reset item 1?"}]
    assert detail["metadata"] == {"topic": "billing"} and detail["n_tokens"] <= 3
    assert set(detail["metrics"]) >= {"exact_match", "token_f1"}
    with pytest.raises(NotFoundError, match="position 9"):
        evaluation.row_detail(predictions, 9)


def test_background_eval_job_finishes_and_survives_a_reload(store, home):
    job = evaluation.start_eval(store, 1, model="tiny", generation=FAST, similarity=False,
                                limit=2, style={"min_words": 1}, home=home)
    assert evaluation.eval_runs(store, home=home, active=True)["run_id"].tolist() == [job.run_id]
    final = jobs.wait(job.run_id, home=home, timeout=120)
    assert final.state == "done", final.error + jobs.log_tail(final.run_dir, 30)
    # A new process finds it again from its run folder alone.
    found = evaluation.finished_runs(store, home=home)
    assert found["run_id"].tolist() == [job.run_id] and found["rows"].tolist() == [2]
    assert "fmt_min_words" in evaluation.run_predictions(job.run_id, home=home)


def test_model_names_runs_and_folders(tiny_run, store, home, tmp_path, monkeypatch):
    assert evaluation.model_spec("default") == "default"
    assert evaluation.model_spec("tiny") == "tiny"
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        evaluation.model_spec("nope", home=home)
    with pytest.raises(ConfigError, match="not a training run"):
        evaluation.model_spec(tiny_run.run_id, home=home)
    trained = fake_training_run(home, "20990101-000000-train", version_id=1)
    assert evaluation.model_spec(trained.name, home=home) == {"run_dir": str(trained.resolve())}
    assert evaluation.model_spec(str(trained), home=home) == {"run_dir": str(trained.resolve())}
    # Trained runs first (newest first), then the base model; the tiny test model is not
    # offered to people, though it still works by name.
    assert list(evaluation.model_choices(store, home=home)) == [trained.name, "default", "tiny"]
    monkeypatch.setenv("WORKBENCH_TEST_MODELS", "0")  # as people run the app
    assert list(evaluation.model_choices(store, home=home)) == [trained.name, "default"]


def test_bad_eval_input_names_the_value(store, home):
    with pytest.raises(NotFoundError):
        evaluation.start_eval(store, "missing", model="tiny", home=home)
    with pytest.raises(ConfigError, match="limit"):
        evaluation.start_eval(store, 1, model="tiny", limit=0, home=home)
    with pytest.raises(ConfigError, match="unknown style check"):
        evaluation.start_eval(store, 1, model="tiny", style={"shouty": True}, home=home)
    with pytest.raises(ConfigError, match="temperature"):
        ev.GenerationConfig(temperature=0.5)  # greedy takes no temperature
    assert evaluation.eval_runs(store, home=home).empty  # nothing was started


def test_import_reports_rejected_lines_and_becomes_a_run(tmp_path, home, store):
    path = perfect_predictions(tmp_path / "outside.jsonl",
                               bad_lines=["{oops", '{"prompt": "q", "reference": "r"}'])
    job, report = evaluation.import_run(path, store=store, similarity=False, home=home)
    assert (report.rows_read, report.imported) == (6, 4)
    assert [(r.line, r.field) for r in report.rejected] == [(5, "(line)"), (6, "prediction")]
    row = evaluation.runs_table(store, home=home).iloc[0]
    assert (row["kind"], row["model"], row["data"], row["rows"]) == \
        ("import", "oracle", "file outside.jsonl", 4)
    assert row["exact_match"].startswith("1.000")
    with pytest.raises(ImportFormatError, match="no predictions imported"):
        evaluation.import_run(write_jsonl(tmp_path / "bad.jsonl", ["{oops"]), home=home)


def test_import_upload_keeps_the_file_name(home):
    data = orjson.dumps({"prompt": "Q", "reference": "A", "prediction": "A"})
    job, report = evaluation.import_upload("../odd name.jsonl", data, model="m",
                                           similarity=False, home=home)
    assert report.imported == 1 and job.result["name"] == "odd name.jsonl"


def test_compare_an_eval_run_with_imported_predictions(tiny_run, tmp_path, home, store):
    imported, _ = evaluation.import_run(perfect_predictions(tmp_path / "p.jsonl"),
                                        similarity=False, home=home)
    metrics = evaluation.common_metrics(tiny_run.run_id, imported.run_id, home=home)
    assert metrics[0] == "token_f1" and "exact_match" in metrics  # exact match is not first
    assert evaluation.slice_options(tiny_run.run_id, home=home) == ["length", "tag", "topic"]
    result = evaluation.compare(tiny_run.run_id, imported.run_id, metric="token_f1",
                                by=("topic",), store=store, home=home)
    counts = result.comparison.counts
    assert sum(counts.values()) == 4 and counts["loss"] == 0 and counts["win"] >= 1
    deltas = evaluation.slice_deltas(result)
    assert deltas["slice"].tolist() == ["billing", "login"] and (deltas["delta"] >= 0).all()
    backwards = evaluation.compare(imported.run_id, tiny_run.run_id, metric="token_f1",
                                   home=home)
    regressions = evaluation.regressions_table(backwards)
    assert len(regressions) == counts["win"] and (regressions["delta"] < -0.1).all()
    assert "base model" in evaluation.training_summary(result)


def test_compare_rejects_the_same_run_and_unrelated_runs(tiny_run, tmp_path, home):
    with pytest.raises(ConfigError, match="two different runs"):
        evaluation.compare(tiny_run.run_id, tiny_run.run_id, home=home)
    other, _ = evaluation.import_run(write_jsonl(tmp_path / "o.jsonl", [
        {"prompt": "unrelated", "reference": "x", "prediction": "x", "model": "m"}]),
        similarity=False, home=home)
    with pytest.raises(ConfigError, match="share no eval rows"):
        evaluation.compare(tiny_run.run_id, other.run_id, home=home)
    with pytest.raises(ConfigError, match="no metric column 'similarity'"):
        evaluation.compare(tiny_run.run_id, other.run_id, metric="similarity", home=home)


def test_compare_shows_the_diff_of_the_two_training_versions(tiny_run, home, store, tmp_path):
    train_v1 = store.active_version("evalset")
    train_v2 = store.import_file(chat_file(tmp_path / "more.jsonl", 6), "evalset")[0].version_id
    runs = []
    for name, version in (("a", train_v1), ("b", train_v2)):
        trained = fake_training_run(home, f"20990101-00000{name}-train", version_id=version)
        run_dir = home / f"20990102-00000{name}-eval"
        shutil.copytree(tiny_run.run_dir, run_dir)
        summary = ev.read_summary(run_dir) | {"model": {"run_dir": str(trained)}}
        (run_dir / ev.SUMMARY_FILE).write_bytes(orjson.dumps(summary))
        runs.append(run_dir.name)
    result = evaluation.compare(*runs, metric="token_f1", store=store, home=home)
    counts = store.diff(train_v1, train_v2).counts()
    assert result.training["counts"] == counts and counts["added"] >= 2
    assert evaluation.training_summary(result) == (
        f"training data evalset@1 → evalset@2: added {counts['added']}, "
        f"removed {counts['removed']}, changed {counts['changed']}")


def fake_training_run(home: Path, run_id: str, *, version_id: int) -> Path:
    """A finished training run folder as train_task leaves it (no adapter: never loaded here)."""
    run_dir = home / run_id
    (run_dir / "data").mkdir(parents=True)
    jobs._write_json(run_dir / "config.json", {"task": training.TASK, "kind": "train",
                                               "params": {"version_id": version_id,
                                                          "config": {"model": "tiny"}}})
    jobs._write_json(run_dir / "status.json", {"state": "done"})
    (run_dir / "train_config.json").write_text("{}")
    (run_dir / "data" / "versions.json").write_text(orjson.dumps(
        {"version_id": version_id, "val_version_id": None}).decode())
    return run_dir


# --- length-aware comparison (the Dolly-style fixture: four runs that differ in length) -------


@pytest.fixture
def length_runs(tmp_path, home) -> dict[str, str]:
    """{system: run id} of the four Dolly-style systems imported as the app imports a file."""
    from length_runs import write_runs

    return {system: evaluation.import_run(path, similarity=False, home=home)[0].run_id
            for system, path in write_runs(tmp_path / "files").items()}


def test_length_controlled_comparison_of_runs_that_differ_in_length(length_runs, home):
    small, xl = length_runs["flan-t5-small"], length_runs["flan-t5-xl"]
    result = evaluation.compare(small, xl, metric="token_f1", home=home)
    lc = result.length
    assert lc.ratio_b < 0.45 < 0.7 < lc.ratio_a  # xl answers in under half the words
    assert "favour run A (the longer one)" in lc.warning
    # Raw, xl loses almost every row; at equal length (the fixture's truth) it is even.
    assert lc.win_rate["mean"] < 0.2
    assert lc.lc_win_rate["lo"] < 0.5 < lc.lc_win_rate["hi"]
    assert lc.lc_win_rate["mean"] > lc.win_rate["mean"] + 0.2
    similar = lc.by_pair.set_index("b_vs_a").loc["B 0.8–1.25× A"]
    # Where the two answers are about as long, xl wins about as often as it loses.
    assert similar["win_rate"] > 2 * lc.win_rate["mean"] and similar["win"] >= 3
    line = evaluation.length_summary(result)
    assert line.startswith(f"length: A {lc.ratio_a:.2f}× and B {lc.ratio_b:.2f}×")
    even = evaluation.compare(small, length_runs["flan-t5-base"], metric="token_f1", home=home)
    assert even.length.warning == ""  # 0.82x against 0.82x


def test_length_check_of_one_run(length_runs, home):
    warning, table = evaluation.length_check(
        evaluation.run_predictions(length_runs["flan-t5-xl"], home=home))
    assert warning.startswith("Answers are 0.38× the reference length on average")
    assert list(table.columns) == ["length", "n", "exact_match", "token_f1", "rouge_l"]
    assert table["n"].sum() == 60
    assert table["token_f1"].is_monotonic_increasing  # longer answers, higher overlap
    small = evaluation.run_predictions(length_runs["flan-t5-small"], home=home)
    assert evaluation.length_check(small)[0] == ""


def test_judge_comparison_needs_a_configured_judge_and_runs_as_a_job(length_runs, home, store,
                                                                      monkeypatch):
    from workbench import judge, models

    small, xl = length_runs["flan-t5-small"], length_runs["flan-t5-xl"]
    assert evaluation.judge_config(store, home=home) is None
    with pytest.raises(ConfigError, match="No judge is configured"):
        evaluation.start_pairwise_judge(store, small, xl, home=home)
    # A judge set up on Score & select is a judge job; the newest one's options are used.
    # (Asked in plain text: the fake model below writes "Winner: N", not constrained tokens.)
    judge_options = {"backend": "local", "model": "m", "response_format": "text"}
    jobs.run_inline("jobtasks.count", {"n": 1, "judge": judge_options}, kind="judge", home=home)
    assert evaluation.judge_config(store, home=home) == judge_options
    # The fake judge prefers the answer with more words from the reference, in either order.
    monkeypatch.setattr(models, "load_lm", lambda name: (None, None))

    def prefer_reference_words(lm, prompts, *, max_new_tokens):
        def hits(p, n):
            ref = set(p.split("REFERENCE ANSWER:\n")[1].split("\n\n")[0].split())
            return len(ref & set(p.split(f"ANSWER {n}:\n")[1].split("\n\n")[0].split()))
        return [f"Winner: {1 if hits(p, 1) >= hits(p, 2) else 2}" for p in prompts]

    monkeypatch.setattr(judge, "generate", prefer_reference_words)
    job = evaluation.start_pairwise_judge(store, small, xl, limit=10, home=home, inline=True)
    assert job.state == "done", job.error + jobs.log_tail(job.run_dir, 20)
    assert job.result["pairs"] == 10 and job.result["failed"] == 0
    assert job.result["win"] + job.result["loss"] + job.result["tie"] == 10
    table = pd.read_parquet(job.run_dir / evaluation.PAIRWISE_FILE)
    assert table.columns.tolist() == ["row_key", "prompt", "reference", "prediction",
                                      "prediction_b", "judge_b", "judge_consistent",
                                      "judge_error"]
    assert [j.run_id for j in evaluation.pairwise_judge_runs(store, small, xl, home=home)] == \
        [job.run_id]
    assert evaluation.pairwise_judge_runs(store, xl, small, home=home) == []
    assert evaluation.pairwise_summary(job).startswith("judge (reference-guided, both orders)"
                                                       ": B win rate ")
