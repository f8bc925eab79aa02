"""AppTest: the Iterations page says what to do without eval runs and lists each iteration."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_app import APP, open_on_empty_store, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest
from test_loop import chat, write_eval_run

from workbench.store import Store


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    for store in page_store(tmp_path, monkeypatch, {}):
        evals = store.add_examples("eval", [chat(i) for i in range(4)])
        write_eval_run(tmp_path / "runs", store, evals, ["Press reset.", "", "Thanks!", "x"],
                       name="eval-1")
        write_eval_run(tmp_path / "runs", store, evals, ["Thanks! a", "Thanks! b", "Thanks!", ""],
                       name="eval-2")
        yield store


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page("pages/loop.py").run())


def test_page_without_eval_runs_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, "pages/loop.py")
    assert any("No eval runs yet" in i.value for i in at.info)


def test_overview_lists_each_iteration_and_plots_a_metric(store):
    at = open_page()
    # hand-made eval runs are in the registry too, so the all-runs table comes first
    table = next(d.value for d in at.dataframe if "eval_run" in d.value.columns)
    assert sorted(table["eval_run"]) == ["eval-1", "eval-2"]
    assert table["iteration"].tolist() == [1, 2] and "format_ok" in table.columns
    assert len(at.get("plotly_chart")) == 1
    at = ok(at.selectbox(key="it_metric").set_value("format_ok").run())
    assert len(at.get("plotly_chart")) == 1


def test_training_runs_not_evaluated_yet_are_listed_apart(store, tmp_path):
    from workbench import jobs

    for name in ("train-evaluated", "train-pending"):  # two finished training runs
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        jobs._write_json(run / "config.json", {
            "task": "workbench.train.train_task", "kind": "train", "created": 0.0,
            "params": {"version_id": 1, "config": {"model": "tiny", "max_steps": 2}}})
        jobs._write_json(run / "status.json", {"state": "done"})
    write_eval_run(tmp_path / "runs", store, 1, ["Thanks!"] * 4, name="eval-3",
                   model={"run_dir": str(tmp_path / "runs" / "train-evaluated")})
    at = open_page()
    pending = next(d.value for d in at.dataframe if "status" in d.value.columns)
    assert pending["run_id"].tolist() == ["train-pending"]
    assert pending["status"].tolist() == ["done"] and pending["data"].tolist() == ["eval@1"]
    overview = next(d.value for d in at.dataframe if "eval_run" in d.value.columns)
    assert overview.iloc[-1]["train_run"] == "train-evaluated"
    # Every run of the store is in the registry's table, with the data it read.
    def registry_table(at):  # tables without selection have no key in AppTest
        return next(d.value for d in at.dataframe if "parent" in d.value.columns)

    registry = registry_table(at).set_index("run_id")
    assert registry.loc[["train-evaluated", "train-pending"], "kind"].tolist() == ["train"] * 2
    assert registry.loc["train-pending", "data"] == "eval@1"
    at = ok(at.multiselect(key="it_run_kinds").set_value(["train"]).run())
    assert set(registry_table(at)["kind"]) == {"train"}
