"""AppTest: the Clean page previews rules on the sample data and applies them as a version."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers_app import APP, page_ok as ok, page_store
from workbench.sample import SAMPLE_DIR
from workbench.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"train": SAMPLE_DIR / "support_train.jsonl",
                                                  "eval": SAMPLE_DIR / "support_eval.jsonl"})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=90).run())
    return ok(at.switch_page("pages/clean.py").run())


def metrics(at: AppTest) -> dict[str, int]:
    return {m.label: int(m.value.replace(",", "")) for m in at.metric}


def test_preview_counts_then_apply_makes_a_version_with_reasons(store):
    at = open_page()
    at = ok(at.button(key="cl_preview").click().run())
    shown = metrics(at)
    assert shown["Rows"] == 400 and 0 < shown["Rows dropped"] < 400
    summary = at.dataframe[0].value
    by_rule = dict(zip(summary["rule"], summary["rows"]))
    assert by_rule["placeholder"] >= 10 and by_rule["refusal"] >= 10 and by_rule["pii"] >= 10
    at = ok(at.button(key="cl_apply").click().run())
    latest = store.versions("train")[-1]
    assert latest.operation == "clean" and latest.parent_id == store.versions("train")[0].version_id
    assert latest.n_rows == 400 - shown["Rows dropped"]
    removed = store.removed(latest.version_id)
    assert len(removed) == shown["Rows dropped"] and removed["reason"].notna().all()
    assert any("Cleaned into version" in s.value for s in at.success)


def test_switching_a_rule_off_changes_the_preview(store):
    at = open_page()
    at = ok(at.button(key="cl_preview").click().run())
    before = metrics(at)["Rows dropped"]
    at = ok(at.checkbox(key="cl_ref_on").uncheck().run())
    at = ok(at.button(key="cl_preview").click().run())
    assert metrics(at)["Rows dropped"] < before


def test_contamination_against_the_eval_set(store):
    at = open_page()
    for key in [c.key for c in at.checkbox if c.key.endswith("_on") and c.value]:
        at.checkbox(key=key).uncheck()
    at = ok(at.checkbox(key="cl_cont_on").check().run())
    at = ok(at.button(key="cl_preview").click().run())
    assert metrics(at)["Rows dropped"] >= 8  # the planted copies of eval prompts
    at = ok(at.button(key="cl_apply").click().run())
    latest = store.versions("train")[-1]
    assert latest.params["eval_version"] == store.active_version("eval")


def test_no_rule_on_disables_the_buttons(store):
    at = open_page()
    for key in [c.key for c in at.checkbox if c.key.endswith("_on") and c.value]:
        at.checkbox(key=key).uncheck()
    at = ok(at.run())
    assert at.button(key="cl_preview").disabled and at.button(key="cl_apply").disabled
