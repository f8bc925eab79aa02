"""AppTest: the Evaluate page runs an eval (tiny model) in the background, imports outside
predictions with a report of rejected lines, shows results per row, and compares two runs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
from helpers_app import APP, chat_file, open_on_empty_store, page_store, write_jsonl
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import evaluate as ev
from workbench import evaluation, jobs
from workbench.store import Store
from workbench.views import md_escape

PAGE = "pages/evaluate.py"


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job process: one thread on a shared CPU
    yield from page_store(tmp_path, monkeypatch, {"evalset": chat_file(tmp_path / "e.jsonl", 3)})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page(PAGE).run())


def table(at: AppTest, column: str):
    """Return the first dataframe shown with this column (plain tables carry no key in AppTest)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def predictions_file(path: Path) -> Path:
    """Perfect answers to the 3 eval rows, then a line whose prediction is a number."""
    rows = [{"prompt": f"question {i}: how do I reset item {i}?",
             "reference": f"answer {i}: press reset {i} times.",
             "prediction": f"answer {i}: press reset {i} times.", "model": "oracle"}
            for i in range(3)]
    return write_jsonl(path, [*rows, '{"prompt": "q", "reference": "r", "prediction": 7}'])


def tiny_run(store: Store) -> jobs.JobStatus:
    return evaluation.start_eval(store, "evalset", model="tiny", similarity=False, inline=True,
                                 generation=ev.GenerationConfig(max_new_tokens=2))


def test_page_without_dataset_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, PAGE)
    assert at.title[0].value == "Evaluate"
    assert any("Import a dataset first" in i.value for i in at.info)
    assert any("No finished eval runs" in i.value for i in at.info)


def test_run_an_eval_in_the_background_and_see_its_results(store):
    at = open_page()
    at.selectbox(key="ev_model").set_value("tiny")
    at.number_input(key="ev_max_new").set_value(2)
    at.checkbox(key="ev_sim").uncheck()
    at.text_input(key="ev_starts").input("answer")
    at = ok(at.button(key="ev_run_start").click().run())
    assert any("Started eval run" in s.value for s in at.success)
    [run_id] = evaluation.eval_runs(store)["run_id"]  # the registry lists it at once
    job = jobs.status(run_id)
    final = jobs.wait(job.run_id, timeout=120)
    assert final.state == "done", final.error + jobs.log_tail(final.run_dir, 30)
    at = ok(open_page())  # a reload finds the run from its folder
    runs = table(at, "run")
    assert runs[["run", "kind", "state", "model", "rows"]].values.tolist() == [
        [job.run_id, "eval", "done", "tiny", 3]]
    assert runs.at[0, "format_ok"].startswith("0.000 [")  # the tiny model never says "answer"
    outputs = at.dataframe(key="ev_rows").value
    assert outputs["reference"].tolist() == [f"answer {i}: press reset {i} times."
                                             for i in range(3)]
    at.session_state["ev_rows"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at = ok(at.run())
    assert any(s.value == "Row 2" for s in at.subheader)
    assert "answer 1: press reset 1 times." in [t.value for t in at.text]
    assert job.config["params"]["style"] == {"starts_with": "answer"}


def test_import_predictions_shows_the_rejected_line(store, tmp_path):
    at = open_page()
    source = predictions_file(tmp_path / "outside.jsonl")
    job, report = evaluation.import_upload("outside.jsonl", source.read_bytes(),
                                           similarity=False)
    # AppTest cannot drive st.file_uploader: hand the page the same result an upload gives.
    at.session_state["ev_import_report"] = (job.run_id, report)
    at = ok(at.run())
    assert [m.value for m in at.metric][:3] == ["4", "3", "1"]
    rejects = table(at, "fix")
    assert rejects[["line", "field"]].values.tolist() == [[4, "prediction"]]
    assert "wrong type: int" in rejects.at[0, "reason"]
    runs = table(at, "run")
    assert runs[["kind", "model", "rows"]].values.tolist() == [["import", "oracle", 3]]


def test_import_button_is_off_until_a_file_is_chosen(store):
    at = open_page()
    assert at.button(key="ev_import").disabled


def test_compare_two_runs(store, tmp_path):
    tiny = tiny_run(store)
    imported, _ = evaluation.import_run(predictions_file(tmp_path / "p.jsonl"),
                                        similarity=False)
    at = open_page()
    assert at.selectbox(key="ev_cmp_b").value == imported.run_id  # newest is B
    at = ok(at.selectbox(key="ev_cmp_metric").set_value("exact_match").run())
    win, loss, tie = (int(m.value) for m in at.metric[:3])
    assert (win, loss, tie) == (3, 0, 0)
    assert len(table(at, "prediction_b")) == 0
    assert len(at.get("plotly_chart")) == 1
    assert any("no training data diff" in t.value for t in at.text)
    at.selectbox(key="ev_cmp_a").set_value(imported.run_id)
    at = ok(at.selectbox(key="ev_cmp_b").set_value(tiny.run_id).run())
    assert len(table(at, "prediction_b")) == 3


def test_compare_the_same_run_shows_an_error(store, tmp_path):
    tiny_run(store)
    evaluation.import_run(predictions_file(tmp_path / "p.jsonl"), similarity=False)
    at = open_page()
    at = at.selectbox(key="ev_cmp_a").set_value(at.selectbox(key="ev_cmp_b").value).run()
    assert not at.exception
    assert any("two different runs" in e.value for e in at.error)


def test_compare_runs_that_differ_in_length_shows_the_warning_and_the_controlled_view(
        store, tmp_path):
    from length_runs import write_runs

    runs = {system: evaluation.import_run(path, similarity=False)[0].run_id
            for system, path in write_runs(tmp_path / "files").items()}
    at = open_page()
    at.selectbox(key="ev_cmp_a").set_value(runs["flan-t5-small"])
    at.selectbox(key="ev_cmp_b").set_value(runs["flan-t5-xl"])
    at = ok(at.selectbox(key="ev_cmp_metric").set_value("token_f1").run())
    [warning] = [w.value for w in at.warning if w.value.startswith("Run A's answers")]
    assert "run B's 0.38×" in warning and "favour run A (the longer one)" in warning
    shown = {m.label: m.value for m in at.metric}
    raw, controlled = (float(shown[k]) for k in ("B win rate (ties ½)",
                                                  "Length-controlled B win rate"))
    assert raw < 0.2 and controlled > raw + 0.2
    pairs = table(at, "b_vs_a")
    assert "B 0.8–1.25× A" in pairs["b_vs_a"].tolist() and pairs["n"].sum() == 60
    buckets = table(at, "n_b")
    assert list(buckets.columns) == ["length", "n_a", "mean_a", "n_b", "mean_b"]
    # Runs of the same length: no warning, the view stays available (collapsed).
    at = ok(at.selectbox(key="ev_cmp_b").set_value(runs["flan-t5-base"]).run())
    assert not [w for w in at.warning if w.value.startswith("Run A's answers")]
    assert table(at, "b_vs_a")["n"].sum() == 60


def test_results_of_a_run_with_short_answers_carry_the_length_warning(store, tmp_path):
    from length_runs import write_runs

    paths = write_runs(tmp_path / "files")
    xl, _ = evaluation.import_run(paths["flan-t5-xl"], similarity=False)
    small, _ = evaluation.import_run(paths["flan-t5-small"], similarity=False)
    at = open_page()
    at = ok(at.selectbox(key="ev_result_run").set_value(xl.run_id).run())
    assert any(w.value.startswith("Answers are 0.38× the reference length") for w in at.warning)
    [by_length] = [d.value for d in at.dataframe if list(d.value.columns[:2]) == ["length", "n"]]
    assert by_length["n"].sum() == 60 and "token_f1" in by_length.columns
    at = ok(at.selectbox(key="ev_result_run").set_value(small.run_id).run())
    assert not any(w.value.startswith("Answers are") for w in at.warning)


def test_compare_offers_the_judge_comparison_once_a_judge_is_configured(store, tmp_path):
    from length_runs import write_runs

    paths = write_runs(tmp_path / "files", n=6)
    a, _ = evaluation.import_run(paths["flan-t5-small"], similarity=False)
    b, _ = evaluation.import_run(paths["flan-t5-xl"], similarity=False)
    at = open_page()
    assert any(i.value == evaluation.NO_JUDGE for i in at.info)
    assert not [x for x in at.button if x.key == "ev_pj_start"]
    config = {"backend": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1",
              "max_retries": 0, "requests_per_minute": 6000}
    jobs.run_inline("jobtasks.count", {"n": 1, "judge": config}, kind="judge")
    at = ok(open_page())
    label = "Judge: " + md_escape("openai · gpt-x at http://127.0.0.1:9/v1")
    assert any(c.value.startswith(label) for c in at.caption)
    at = ok(at.button(key="ev_pj_start").click().run())
    [job] = evaluation.pairwise_judge_runs(store, a.run_id, b.run_id)
    final = jobs.wait(job.run_id, timeout=120)  # nothing listens on port 9: rows fail, said
    assert final.state == "done", final.error + jobs.log_tail(final.run_dir, 20)
    assert final.result["failed"] == 6
    at = ok(open_page())
    assert any(t.value.startswith(f"judge comparison {job.run_id}: no pair judged (6 failed)")
               for t in at.text)


def test_the_eval_set_its_version_count_and_the_models_people_get(store, tmp_path,
                                                                  monkeypatch):
    """Evaluate preselects the dataset marked as the eval set (not the sidebar's training
    data), starts with a sample of rows and says how many there are, and offers the newest
    trained run first and never the tiny random model to people."""
    store.import_file(chat_file(tmp_path / "t.jsonl", 5), "train")

    def on_train_then_evaluate() -> AppTest:
        at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
        at.sidebar.selectbox(key="dataset").select("train").run()
        return ok(at.switch_page(PAGE).run())

    at = on_train_then_evaluate()
    assert at.selectbox(key="ev_dataset").value == "train"  # nothing marked: the sidebar's
    assert any("mark your eval set" in c.value for c in at.caption)
    store.set_role("evalset", "eval")
    monkeypatch.setenv("WORKBENCH_TEST_MODELS", "0")  # as people run the app
    at = on_train_then_evaluate()
    assert at.selectbox(key="ev_dataset").value == "evalset"
    assert at.selectbox(key="ev_version").format_func(at.selectbox(key="ev_version").value
                                                      ).startswith("evalset@1 · import")
    limit = next(n for n in at.number_input if n.label.startswith("Rows to evaluate"))
    assert limit.label.startswith("Rows to evaluate (of 3;") and limit.value == 3
    assert at.selectbox(key="ev_model").options == ["base model (SmolLM2-135M-Instruct)"]


def test_mostly_empty_predictions_warn_loudly(store, tmp_path):
    rows = [{"prompt": f"question {i}: how do I reset item {i}?",
             "reference": f"answer {i}: press reset {i} times.",
             "prediction": "" if i else "answer 0", "model": "silent"} for i in range(3)]
    evaluation.import_run(write_jsonl(tmp_path / "silent.jsonl", rows), similarity=False)
    at = open_page()
    warnings = [w.value for w in at.warning]
    assert any(w.startswith("2 of 3 predictions") and "are empty" in w for w in warnings)
    at.session_state["ev_rows"] = {"selection": {"rows": [1], "columns": [], "cells": []}}
    at = ok(at.run())
    assert any("answer is empty" in w.value for w in at.warning)
