"""AppTest: the Label page's review queue, bulk labels, undo, and label files."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_app import APP, open_on_empty_store, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import labelling
from workbench import labels as LB
from workbench.sample import SAMPLE_DIR
from workbench.store import Store

PAGE = "pages/label.py"


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"train": SAMPLE_DIR / "support_train.jsonl"})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=120).run())
    return ok(at.switch_page(PAGE).run())


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def current_row(at: AppTest) -> int:
    header = next(m.value for m in at.markdown if m.value.startswith("**Row "))
    return int(header.split("**Row ")[1].split("**")[0])


def test_page_without_dataset_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, PAGE)
    assert any("Import a dataset first" in i.value for i in at.info)


def test_queue_shows_a_row_with_why_and_labels_advance_it(store):
    at = open_page()
    assert metrics(at)["Good"] == "0" and metrics(at)["Learned score AUROC"] == "–"
    first = current_row(at)
    assert any("why:" in m.value for m in at.markdown)
    assert len(at.chat_message) >= 2  # the row is rendered as the chat it is
    at = ok(at.button(key="lb_bad").click().run())
    assert current_row(at) != first
    version = store.active_version("train")
    frame = labelling.with_labels(store, store.frame(version))
    assert frame.loc[frame["row_key"] == first, "label"].tolist() == ["bad"]
    assert metrics(at)["Bad"] == "1"


def test_a_big_versions_queue_opens_before_its_rule_scan_and_rule_rows_join_after(
        store, monkeypatch):
    from workbench import jobs

    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)  # 400 rows: the scan is a job
    at = open_page()
    current_row(at)  # a row to label, before the scan
    batch = at.session_state["lb_batch"]
    assert batch["rules_pending"] and len(batch["rows"]) == 20
    assert not any(r["source"].startswith("rule:") for r in batch["rows"])
    assert any("rule scan" in c.value for c in at.caption)
    version = store.active_version("train")
    scans = labelling.rule_scan_jobs(store, version)
    assert len(scans) == 1
    assert jobs.wait(scans[0].run_id, timeout=120).state == "done"
    at = ok(at.run())  # what the job panel's rerun does when the job ends
    batch = at.session_state["lb_batch"]
    assert not batch["rules_pending"] and not any("rule scan" in c.value for c in at.caption)
    assert any(r["source"].startswith("rule:") for r in batch["rows"])
    assert len(labelling.rule_scan_jobs(store, version)) == 1  # started once


def embed_job_started_elsewhere(store: Store, home: Path) -> str:
    """Write the run folder of an embedding job of the prompts and responses, as another
    browser tab starting one makes it (queued: no worker is launched); return its run id."""
    run = home / "runs" / "20990101-000000-000-tab2"
    run.mkdir(parents=True)
    params = {"store": str(store.path), "version_id": store.active_version("train"),
              "field": "user", "fields": ["user", "assistant"], "model": "default",
              "device": "auto"}
    (run / "config.json").write_text(json.dumps({"task": "embed", "kind": "embed",
                                                 "params": params, "created": time.time()}))
    return run.name


def test_the_embeddings_panel_reads_the_run_registry_only_when_a_run_starts(
        store, tmp_path, monkeypatch):
    from workbench import curate, jobs

    monkeypatch.setattr(jobs, "SETTLE_S", 0.0)  # trust the runs folder's time at once
    looked_up, lookup = [], curate.embedding_jobs
    monkeypatch.setattr(curate, "embedding_jobs",
                        lambda *a, **k: looked_up.append(a[2]) or lookup(*a, **k))
    at = open_page()
    assert not at.button(key="lb_embed").disabled and looked_up == ["user", "assistant"]
    at = ok(at.button(key="lb_good").click().run())
    assert looked_up == ["user", "assistant"]  # a rerun with no new run: no registry read
    time.sleep(0.05)  # past the clock tick of the folder times
    run_id = embed_job_started_elsewhere(store, tmp_path)
    at = ok(at.run())
    assert len(looked_up) == 4  # a run started somewhere: looked up again, and found
    assert at.button(key="lb_embed").disabled  # one embedding job at a time
    assert at.button(key=f"lb_embed_{run_id}_cancel")  # its panel, with its cancel
    at = ok(at.run())
    assert len(looked_up) == 4 and at.button(key="lb_embed").disabled


def test_once_both_classes_have_labels_the_learned_score_takes_over(store):
    version = store.active_version("train")
    frame = store.frame(version)
    short = frame[frame["response"].str.len() < 15]["row_key"].tolist()
    labelling.label_rows(store, version, short[:6], "bad")
    others = [k for k in frame["row_key"] if k not in short]
    labelling.label_rows(store, version, others[:40], "good")
    at = open_page()
    assert metrics(at)["Learned score AUROC"] != "–"
    assert any("Active learning" in c.value for c in at.caption)
    assert labelling.last_result(store).n_bad == 6


def test_bulk_label_a_search_previews_then_labels_and_undo_reverts(store):
    at = open_page()
    at = ok(at.tabs[1].radio(key="lb_bulk_source").set_value("search").run())
    at = ok(at.text_input(key="lb_bulk_search").input("refund").run())
    rows = int(next(m.value for m in at.metric if m.label == "Rows").replace(",", ""))
    assert rows > 5 and len(at.dataframe[0].value) == 8  # a sample, not every row
    at = ok(at.radio(key="lb_bulk_label").set_value("good").run())
    at = ok(at.button(key="lb_bulk_apply").click().run())
    assert len(LB.current_labels(store)) > 0
    assert int(metrics(at)["Good"].replace(",", "")) == rows
    at = ok(at.button(key="lb_undo").click().run())
    assert LB.current_labels(store).empty and any("Undid" in s.value for s in at.success)


def test_bulk_label_a_cleaning_rules_hits(store):
    at = open_page()
    at = ok(at.radio(key="lb_bulk_source").set_value("rule").run())
    at = ok(at.selectbox(key="lb_bulk_rule").set_value("placeholder").run())
    at = ok(at.button(key="lb_bulk_apply").click().run())
    assert metrics(at)["Bad"] == "10"


def test_bulk_label_by_rule_on_a_big_version_waits_for_its_scan_job(store, monkeypatch):
    from workbench import jobs

    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)  # 400 rows: the scan is a job
    at = open_page()
    at = ok(at.radio(key="lb_bulk_source").set_value("rule").run())
    assert any("Finding the rows each cleaning rule hits" in c.value for c in at.caption)
    assert not [s for s in at.selectbox if s.key == "lb_bulk_rule"]
    version = store.active_version("train")
    scans = labelling.rule_scan_jobs(store, version, "version")
    assert len(scans) == 1
    assert jobs.wait(scans[0].run_id, timeout=120).state == "done"
    at = ok(at.run())
    at = ok(at.selectbox(key="lb_bulk_rule").set_value("placeholder").run())
    at = ok(at.button(key="lb_bulk_apply").click().run())
    assert metrics(at)["Bad"] == "10"
    assert len(labelling.rule_scan_jobs(store, version, "version")) == 1


def test_skip_moves_on_without_labelling(store):
    at = open_page()
    first = current_row(at)
    at = ok(at.button(key="lb_skip").click().run())
    assert current_row(at) != first and LB.current_labels(store).empty
