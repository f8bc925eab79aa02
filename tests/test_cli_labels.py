"""The `workbench label`, `labels` and `queue` commands, and `score --scorers learned`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_app import write_jsonl
from test_cli import assert_one_line_error, run

from workbench import labels as LB
from workbench.store import Store


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return path


@pytest.fixture
def keys(store_path, tmp_path) -> list[int]:
    """Import 40 rows (every fourth answers "Yes." to a 'No input' prompt); return row keys."""
    records = []
    for i in range(40):
        bad = i % 4 == 0
        records.append({"messages": [
            {"role": "user", "content": f"Describe topic {i} in detail." + ("\n\nNo input"
                                                                             if bad else "")},
            {"role": "assistant", "content": "Yes." if bad else f"Topic {i} is described "
                                                                 f"here at length, number {i}."}]})
    run("import", write_jsonl(tmp_path / "d.jsonl", records), "-d", "d")
    store = Store(store_path)
    return store.frame(store.resolve("d"))["row_key"].tolist()


def spans(keys: list[int]) -> str:
    return ",".join(str(k) for k in keys)


def test_label_by_keys_and_ranges_then_show_counts_and_undo(store_path, keys):
    out = run("label", "d", "--bad", f"{keys[0]},{keys[4]}", "--good",
              f"{keys[1]}-{keys[3]}", "--reason", "checked").output
    assert "-> good" in out and "-> bad" in out
    shown = run("labels", "d").output
    assert "3 good, 2 bad, 35 unlabelled" in shown and "newest actions" in shown
    as_json = json.loads(run("labels", "d", "--json").output)
    assert (as_json["good"], as_json["bad"], as_json["learned"]) == (3, 2, None)
    run("label", "d", "--undo")
    assert json.loads(run("labels", "d", "--json").output)["bad"] == 0


def test_bulk_label_by_search_shows_a_sample_until_confirmed(store_path, keys):
    out = run("label", "d", "--search", "No input", "--as-label", "bad").output
    assert "10 rows match search 'No input'" in out and "--yes" in out
    assert LB.current_labels(Store(store_path)).empty
    run("label", "d", "--search", "No input", "--as-label", "bad", "--yes")
    assert len(LB.current_labels(Store(store_path))) == 10


def test_bulk_label_a_cleaning_rules_hits(store_path, keys):
    run("label", "d", "--rule", "placeholder_input", "--as-label", "bad", "--yes")
    assert json.loads(run("labels", "d", "--json").output)["bad"] == 10


def test_label_file_import_and_export(store_path, keys, tmp_path):
    path = write_jsonl(tmp_path / "labels.jsonl", [{"row_key": keys[0], "label": "bad"},
                                                   {"row_key": keys[1], "label": "good"}])
    run("label", "d", "--file", path)
    out = tmp_path / "out.jsonl"
    run("labels", "d", "--export", out)
    assert len(out.read_text().splitlines()) == 2
    again = run("labels", "d", "--export", out, ok=False)
    assert_one_line_error(again, "exists")


def test_bad_label_input_is_a_one_line_error(store_path, keys, tmp_path):
    bad_file = write_jsonl(tmp_path / "bad.jsonl", [{"row_key": keys[0], "label": "meh"}])
    assert_one_line_error(run("label", "d", "--file", bad_file, ok=False),
                          "line 1, field 'label'")
    assert_one_line_error(run("label", "d", "--bad", "x-y", ok=False), "not a number")
    assert_one_line_error(run("label", "d", "--bad", "999999", ok=False), "not in version")
    assert_one_line_error(run("label", "d", ok=False), "give --good/--bad")
    assert_one_line_error(run("label", "d", "--search", "x", ok=False), "--as-label")
    assert_one_line_error(run("label", "d", "--undo", ok=False), "nothing to undo")
    assert_one_line_error(run("score", "d", "--scorers", "learned", ok=False),
                          "label at least 5 good and 5 bad")


def test_queue_then_learned_score(store_path, keys):
    first = json.loads(run("queue", "d", "--n", "5", "--json").output)
    assert first["stage"] == "seeds" and len(first["rows"]) == 5
    assert all(r["why"] for r in first["rows"])
    run("label", "d", "--bad", spans(keys[0:40:4]), "--good", spans(keys[1:20:2]))
    learned = json.loads(run("queue", "d", "--n", "5", "--json").output)
    assert learned["stage"] == "model" and learned["learned"]["n_bad"] == 10
    text = run("queue", "d", "--n", "3").output
    assert "cross-validated AUROC" in text and "workbench label d" in text
    scored = run("score", "d", "--scorers", "length,learned").output
    assert "learned score 'quality': 10 good + 10 bad labels" in scored
    assert "learned_score" in scored and "length_score" in scored
