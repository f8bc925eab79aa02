"""AppTest: the Errors page lists a hand-made eval run's failures, tags one, slices, clusters,
makes a targeted version and retrains (tiny model, 2 steps) to show before/after."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_app import APP, open_on_empty_store, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest
from test_loop import chat, write_eval_run

from workbench import jobs, loop, models
from workbench.store import Store

PREDICTIONS = ["Press reset.", "", "no idea no idea no idea no idea no idea no idea",
               "Thanks for asking! Press reset twice and wait."] * 2


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    encoder = models.tiny_embedder()  # no MiniLM load: clusters and provenance use a tiny one
    monkeypatch.setattr(models, "load_embedder", lambda *a, **k: encoder)
    for store in page_store(tmp_path, monkeypatch, {}):
        train = store.add_examples("train", [chat(i) for i in range(100, 106)])
        evals = store.add_examples("eval", [chat(i) for i in range(8)])
        store.add_examples("pool", [chat(i) for i in range(200, 210)])
        write_eval_run(tmp_path / "runs", store, evals, PREDICTIONS, name="eval-1")
        store.train_version = train
        yield store


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=120).run())
    return ok(at.switch_page("pages/errors.py").run())


def select_rows(at: AppTest, rows: list[int]) -> AppTest:
    at.session_state["er_table"] = {"selection": {"rows": rows, "columns": [], "cells": []}}
    return ok(at.run())


def test_page_without_eval_runs_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, "pages/errors.py")
    assert any("No eval runs yet" in i.value for i in at.info)


def test_failures_table_sorted_by_severity_with_tags(store):
    at = open_page()
    rows, failures, _ = (m.value for m in at.metric)
    assert (rows, failures) == ("8", "6")
    table = at.dataframe[0].value
    assert table["severity"].is_monotonic_decreasing and table["tags"].iloc[0] == "empty"
    assert any(t.value == table["prompt"].iloc[0] for t in at.text)  # the worst, as text


def test_tag_a_failure_with_a_manual_tag_and_note(store):
    at = open_page()
    key = at.selectbox(key="er_row").value
    at.text_input(key=f"er_manual_tags_{key}").set_value("tone, policy")
    at.text_input(key=f"er_note_{key}").set_value("too curt")
    submit = next(b for b in at.button if "Save tags" in b.label)
    at = ok(submit.click().run())
    assert any("Saved the tags" in s.value for s in at.success)
    table = loop.failures("eval-1").set_index("row_key")
    assert table.at[key, "manual_tags"] == ["tone", "policy"]
    assert table.at[key, "note"] == "too curt"


def test_provenance_against_chosen_training_data(store):
    at = open_page()
    at = ok(at.selectbox(key="er_train_dataset").set_value("train").run())
    assert any("Not contaminated" in c.value for c in at.caption)
    assert any("Nearest training rows" in c.value for c in at.caption)


def test_slice_plot_and_clusters(store):
    at = open_page()
    at.selectbox(key="er_metric").set_value("format_ok")
    at = ok(at.selectbox(key="er_by").set_value("metadata.topic").run())
    assert len(at.get("plotly_chart")) == 1
    at = ok(at.button(key="er_cluster").click().run())
    assert at.selectbox(key="er_cluster_pick") is not None
    at = ok(at.selectbox(key="er_cluster_pick").set_value(
        at.selectbox(key="er_cluster_pick").options[1]).run())
    assert any("failures chosen" in c.value for c in at.caption)


def test_make_targeted_version_then_retrain_and_see_before_after(store):
    at = select_rows(open_page(), [0, 1])
    assert at.radio(key="er_mode").value == "correct the answers"
    at = ok(at.selectbox(key="er_extend").set_value("train").run())
    at = ok(at.button(key="er_make").click().run())
    latest = store.versions("train")[-1]
    assert latest.operation == "targeted" and latest.params["eval_run"] == "eval-1"
    assert latest.parent_id == store.train_version and latest.n_rows == 8
    assert any("Made targeted version" in s.value for s in at.success)
    at.text_input(key="er_model").set_value("tiny")
    at.number_input(key="er_steps").set_value(2)
    at = ok(at.button(key="er_retrain").click().run())
    (job,) = loop.retrain_jobs(store, "eval-1")
    done = jobs.wait(job.run_id, timeout=300)
    assert done.state == "done", done.error + jobs.log_tail(done.run_dir, 40)
    at = ok(at.run())
    assert any(s.value == "Before / after" for s in at.subheader)
    assert any("2 rows left out" in c.value for c in at.caption)


def test_pull_similar_pool_rows_into_a_targeted_version(store):
    at = select_rows(open_page(), [0, 1, 2])
    at = ok(at.radio(key="er_mode").set_value("pull similar rows from a pool").run())
    at.selectbox(key="er_pool").set_value("pool")
    at.number_input(key="er_k").set_value(1)
    at = ok(at.selectbox(key="er_extend").set_value("train").run())
    at = ok(at.button(key="er_make").click().run())
    latest = store.versions("train")[-1]
    assert latest.operation == "targeted" and 1 <= latest.params["pool"] <= 3
    assert at.selectbox(key="er_targeted").value == latest.version_id
