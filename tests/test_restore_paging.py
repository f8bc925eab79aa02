"""Restoring dropped rows at size: the store pages, filters and searches them, and the Datasets
page reaches and restores a dropped row beyond its first page."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from helpers_app import APP, chat_file, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench.schema import StepResult
from workbench.store import Store

ROWS = 2_600  # more dropped rows than one page (pages/datasets.py SHOWN_ROWS = 1000)


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    """2,600 rows; all but the first 100 dropped, 'too_short' for odd ones, 'pii' for even."""
    stores = page_store(tmp_path, monkeypatch, {"support": chat_file(tmp_path / "rows.jsonl",
                                                                     ROWS)})
    s = next(stores)
    frame = s.frame(1)
    gone = frame.iloc[100:]
    dropped = pd.DataFrame({"row_key": gone["row_key"].astype(int).tolist(),
                            "reason": ["too_short" if i % 2 else "pii"
                                       for i in range(100, ROWS)],
                            "duplicate_of": pd.array([None] * len(gone), dtype="Int64"),
                            "detail": ["planted"] * len(gone)})
    s.apply_step(1, StepResult(kept=frame.iloc[:100], dropped=dropped), operation="filter")
    yield s
    next(stores, None)  # page_store's clean-up


def question(frame: pd.DataFrame) -> list[int]:
    return [int(re.search(r"question (\d+):", p).group(1)) for p in frame["prompt"]]


def test_the_store_pages_filters_and_searches_dropped_rows(store):
    vid = store.active_version("support")
    everything = store.removed(vid)
    assert len(everything) == store.removed_count(vid) == ROWS - 100
    page = store.removed(vid, limit=1000, offset=2000)
    assert page["row_key"].tolist() == everything["row_key"].iloc[2000:3000].tolist()
    assert len(page) == ROWS - 100 - 2000
    odd = store.removed(vid, reason="too_short", limit=5, offset=1000)
    assert set(odd["reason"]) == {"too_short"} and question(odd) == [2101, 2103, 2105, 2107,
                                                                    2109]
    assert store.removed_count(vid, reason="pii") == (ROWS - 100) // 2
    found = store.removed(vid, search="QUESTION 2417:")  # case-insensitive, literal
    assert question(found) == [2417] and store.removed_count(vid, search="question 2417:") == 1
    assert store.removed_count(vid, reason="pii", search="question 2417:") == 0
    assert store.removed_count(vid, search="100%") == 0  # % is a plain character
    assert store.removed_reasons(vid).to_dict("list") == {"reason": ["pii", "too_short"],
                                                          "rows": [1250, 1250]}


def open_history() -> AppTest:
    return ok(AppTest.from_file(str(APP), default_timeout=60).run())


def history(at: AppTest):
    return next(t for t in at.tabs if t.label == "History")


def dropped_table(at: AppTest) -> pd.DataFrame:
    table = history(at).dataframe[-1].value  # tables without selection have no key
    assert "dropped_in" in table.columns  # the dropped rows, not the diff above
    return table


def test_a_dropped_row_beyond_the_first_page_is_found_and_restored(store):
    at = open_history()
    assert any("Dropped rows (2,500)" in s.value for s in at.subheader)
    assert len(dropped_table(at)) == 1000
    at = ok(at.number_input(key="removed_page").set_value(3).run())
    assert question(dropped_table(at))[0] == 2100 and len(dropped_table(at)) == 500
    at = ok(at.selectbox(key="removed_reason").set_value("too_short").run())
    assert at.number_input(key="removed_page").value == 1  # a new filter starts on page 1
    at = ok(at.number_input(key="removed_page").set_value(2).run())
    assert question(dropped_table(at))[:2] == [2101, 2103]
    at = ok(at.text_input(key="removed_search").input("question 2417:").run())
    table = dropped_table(at)
    assert question(table) == [2417]
    at = ok(at.multiselect(key="restore_keys").select(int(table["row_key"].iloc[0])).run())
    at = ok(at.button(key="restore").click().run())
    latest = store.versions("support")[-1]
    assert latest.operation == "restore" and latest.n_rows == 101
    assert 2417 in question(store.page(latest.version_id, limit=200).rows)
    assert any("Dropped rows (2,499)" in s.value for s in at.subheader)


def test_a_search_that_matches_nothing_says_so(store):
    at = ok(open_history().text_input(key="removed_search").input("no such text").run())
    assert "dropped_in" not in history(at).dataframe[-1].value.columns
    assert any("No dropped row matches." in c.value for c in at.caption)
