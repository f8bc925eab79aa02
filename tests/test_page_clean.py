"""AppTest: the Clean page previews rules on the sample data and applies them as a version."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_app import APP, finish_jobs, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import curate, jobs
from workbench.sample import SAMPLE_DIR
from workbench.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"train": SAMPLE_DIR / "support_train.jsonl",
                                                  "eval": SAMPLE_DIR / "support_eval.jsonl"})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=90).run())
    return ok(at.switch_page("pages/clean.py").run())


def preview(at: AppTest) -> AppTest:
    return finish_jobs(ok(at.button(key="cl_preview").click().run()))


def metrics(at: AppTest) -> dict[str, int]:
    return {m.label: int(m.value.replace(",", "")) for m in at.metric}


def test_defaults_flag_for_review_and_a_rule_switched_to_drop_drops(store):
    at = open_page()
    at = preview(at)
    shown = metrics(at)
    # The measured defaults drop only placeholder inputs (none in the sample): the rest flag.
    assert shown["Rows"] == 400 and shown["Rows dropped"] == 0
    assert 40 <= shown["Rows flagged for review"] < 400
    summary = at.dataframe[0].value
    by_rule = dict(zip(summary["rule"], summary["rows"]))
    assert by_rule["placeholder"] >= 10 and by_rule["refusal"] >= 10 and by_rule["pii"] >= 10
    assert any("would be flagged for review" in e.label for e in at.expander)
    at = ok(at.radio(key="cl_ph_mode").set_value("drop").run())
    assert any("rules changed since this preview" in w.value for w in at.warning)
    at = preview(at)
    dropped = metrics(at)["Rows dropped"]
    assert 10 <= dropped < 400
    at = finish_jobs(ok(at.button(key="cl_apply").click().run()))
    latest = store.versions("train")[-1]
    assert latest.operation == "clean" and latest.parent_id == store.versions("train")[0].version_id
    assert latest.n_rows == 400 - dropped and latest.counts["placeholder"] == dropped
    removed = store.removed(latest.version_id)
    assert len(removed) == dropped and set(removed["reason"]) == {"placeholder"}
    assert any("Cleaned into train\\@2" in s.value for s in at.success)  # md-escaped
    assert len(store.flagged(latest.version_id)) >= 30  # the flags travel with the version


def test_flagged_rows_are_dropped_after_review_keeping_rows_labelled_good(store):
    from workbench import labelling

    at = finish_jobs(ok(open_page().button(key="cl_apply").click().run()))  # no preview: a job
    assert any("Cleaned into train\\@2" in s.value for s in at.success)
    latest = store.versions("train")[-1].version_id
    flagged = store.flagged(latest)
    refusals = flagged[flagged["reason"] == "refusal"]["row_key"].tolist()
    labelling.label_rows(store, latest, refusals[:2], "good")
    at = ok(open_page())
    assert at.dataframe[-1].value.set_index("reason").loc["refusal", "labelled_good"] == 2
    at = ok(at.selectbox(key="cl_flag_rule").set_value("refusal").run())
    at = ok(at.button(key="cl_flag_drop").click().run())
    newest = store.versions("train")[-1]
    assert newest.operation == "drop_flagged" and newest.counts["refusal"] == len(refusals) - 2
    assert set(refusals[:2]) <= set(store.frame(newest.version_id)["row_key"])


def test_with_labels_the_preview_shows_each_rules_precision(store):
    from workbench import labelling

    vid = store.active_version("train")
    frame = store.frame(vid)
    placeholders = frame[frame["response"].str.len() < 12]["row_key"].tolist()
    labelling.label_rows(store, vid, placeholders, "bad")
    labelling.label_rows(store, vid, frame["row_key"][:50].tolist(), "good")
    at = preview(open_page())
    table = at.dataframe[0].value.set_index("rule")
    assert {"labelled_bad", "labelled_good", "precision", "low", "high"} <= set(table.columns)
    assert table.loc["placeholder", "labelled_bad"] >= 5
    assert table.loc["placeholder", "precision"] > 0.8


def test_switching_a_rule_off_changes_the_preview(store):
    at = open_page()
    at = preview(at)
    before = metrics(at)["Rows flagged for review"]
    at = ok(at.checkbox(key="cl_ref_on").uncheck().run())
    at = preview(at)
    assert metrics(at)["Rows flagged for review"] < before


def test_contamination_against_the_eval_set(store):
    at = open_page()
    for key in [c.key for c in at.checkbox if c.key.endswith("_on") and c.value]:
        at.checkbox(key=key).uncheck()
    at = ok(at.checkbox(key="cl_cont_on").check().run())
    at = preview(at)
    assert metrics(at)["Rows dropped"] >= 8  # the planted copies of eval prompts (drop mode)
    at = finish_jobs(ok(at.button(key="cl_apply").click().run()))
    latest = store.versions("train")[-1]
    assert latest.params["eval_version"] == store.active_version("eval")


def test_no_rule_on_disables_the_buttons(store):
    at = open_page()
    for key in [c.key for c in at.checkbox if c.key.endswith("_on") and c.value]:
        at.checkbox(key=key).uncheck()
    at = ok(at.run())
    assert at.button(key="cl_preview").disabled and at.button(key="cl_apply").disabled


def test_apply_saves_the_fresh_preview_instead_of_running_the_rules_again(store):
    at = preview(open_page())
    vid = store.active_version("train")
    (shown,) = curate.clean_jobs(store, vid)
    flagged = metrics(at)["Rows flagged for review"]
    at = finish_jobs(ok(at.button(key="cl_apply").click().run()))
    applied = jobs.list_runs()[0]
    assert applied.config["params"]["from_run"] == shown.run_id  # the preview's scan
    assert not [e for e in jobs.events(applied.run_dir) if "rule" in e.get("phase", "")]
    latest = store.versions("train")[-1]
    assert latest.operation == "clean" and store.flagged(latest.version_id)[
        "row_key"].nunique() == flagged
    assert any("Cleaned into train\\@2" in s.value for s in at.success)
    at = ok(at.checkbox(key="cl_ref_on").uncheck().run())  # no preview of these rules yet
    at = finish_jobs(ok(at.button(key="cl_apply").click().run()))  # runs them in the job
    again = jobs.list_runs()[0]
    assert again.config["params"]["from_run"] == "" and len(jobs.list_runs()) == 3
    assert [e for e in jobs.events(again.run_dir) if "rule" in e.get("phase", "")]
    newest = store.versions("train")[-1]
    assert newest.parent_id == latest.version_id and "refusal" not in str(newest.params)
    assert any("Cleaned into train\\@3" in s.value for s in at.success)


def test_the_preview_survives_a_reload_and_a_changed_rule_marks_it_stale(store, monkeypatch):
    at = preview(open_page())
    shown = metrics(at)
    monkeypatch.setattr(Store, "frame", lambda *a: pytest.fail("showing it read every row"))
    again = open_page()  # a new session: the finished job's result shows, no rerun of rules
    assert metrics(again) == shown and not again.warning
    again = ok(again.number_input(key="cl_short_limit").set_value(5).run())
    assert any("rules changed since this preview" in w.value for w in again.warning)
    again = ok(again.number_input(key="cl_short_limit").set_value(2).run())
    assert not again.warning


def test_cancelling_an_apply_job_leaves_no_version(store):
    at = ok(open_page().button(key="cl_apply").click().run())  # no preview: a job
    running = jobs.list_runs()[0]
    assert running.active  # the worker is still starting (imports take seconds)
    at = at.button(key=f"cl_job_{running.run_id}_cancel").click().run()
    assert not at.exception
    # A worker that stops within the cancel's grace period is shown cancelled by that same
    # rerun, a slower one by the next: either way the page says so once, then forgets it.
    said = [e.value for e in at.error]
    assert jobs.wait(running.run_id, timeout=60).state == "cancelled"
    at = at.run()
    said += [e.value for e in at.error]
    assert said == ["clean cancelled\\: stopped"]
    at = ok(at.run())
    assert len(store.versions("train")) == 1 and not at.success
    assert not (running.run_dir / curate.CLEAN_RUN_FILE).exists()
