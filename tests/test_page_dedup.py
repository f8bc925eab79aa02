"""AppTest: the Deduplicate page finds the planted duplicates, reviews and applies them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_app import APP, finish_jobs, open_on_empty_store, page_store, write_jsonl
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import curate, jobs
from workbench.sample import SAMPLE_DIR
from workbench.store import Store
from workbench.views import md_escape

TRAIN = SAMPLE_DIR / "support_train.jsonl"


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"train": TRAIN})


def open_page(store: Store) -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page("pages/dedup.py").run())


def find(at: AppTest) -> AppTest:
    return finish_jobs(ok(at.button(key="dd_find").click().run()))


def apply(at: AppTest) -> AppTest:
    return finish_jobs(ok(at.button(key="dd_apply").click().run()))


def select(at: AppTest, row: int = 0, page: int = 1) -> AppTest:
    """Select a row of the cluster table on a page of the newest find, as a click does."""
    found = next(j for j in jobs.list_runs("dedup") if not j.config["params"].get("apply"))
    at.session_state[f"dd_clusters_{found.run_id}_{page}"] = {
        "selection": {"rows": [row], "columns": [], "cells": []}}
    return ok(at.run())


def planted_duplicates() -> int:
    manifest = json.loads((SAMPLE_DIR / "defects.json").read_text())
    counts = manifest["support_train.jsonl"]["counts"]
    return counts["exact_duplicate"] + counts["near_duplicate"]


def test_page_without_dataset_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, "pages/dedup.py")
    assert any("Import a dataset first" in i.value for i in at.info)


def test_finds_planted_duplicates_and_applies_a_new_version(store):
    at = open_page(store)
    at = find(at)
    clusters, to_drop = (int(m.value) for m in at.metric)
    assert to_drop == planted_duplicates() and clusters > 0
    at = apply(at)
    versions = store.versions("train")
    assert len(versions) == 2 and versions[-1].operation == "dedup"
    assert versions[-1].n_rows == 400 - to_drop
    removed = store.removed(versions[-1].version_id)
    assert set(removed["reason"]) == {"exact_duplicate", "near_duplicate"}
    assert removed["duplicate_of"].notna().all()


def test_review_a_cluster_and_keep_all_of_it(store):
    at = open_page(store)
    at = find(at)
    _, to_drop = (int(m.value) for m in at.metric)
    at = select(at)
    assert any(s.value.startswith("Cluster ") for s in at.subheader)
    keep = next(r for r in at.radio if r.key.startswith("dd_keep_"))
    at = ok(keep.set_value("all").run())
    at = apply(at)
    latest = store.versions("train")[-1]
    assert latest.n_rows > 400 - to_drop  # the overridden cluster kept all its members
    assert latest.params["overrides"]


def curve_jobs() -> list:
    return jobs.list_runs("dedup_curve")


def compute_curve(at: AppTest) -> AppTest:
    return finish_jobs(ok(at.button(key="dd_curve_start").click().run()))


def test_threshold_explorer_plots_a_curve(store):
    at = open_page(store)
    at = ok(at.toggle(key="dd_explore").set_value(True).run())
    at = ok(at.radio(key="dd_curve_method").set_value("near").run())
    at = compute_curve(at)
    assert len(at.get("plotly_chart")) == 1


def test_threshold_explorer_computes_only_when_open_and_once(store, monkeypatch):
    calls = []
    real = curate.duplicate_curve
    monkeypatch.setattr(curate, "duplicate_curve",  # the app process never computes it
                        lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    at = open_page(store)
    at = find(at)
    assert curve_jobs() == [] and not at.get("plotly_chart")  # closed: no MinHash pass per rerun
    at = ok(at.toggle(key="dd_explore").set_value(True).run())
    assert curve_jobs() == [] and not at.get("plotly_chart")  # open: a button starts the job
    at = compute_curve(at)
    at = ok(at.slider(key="dd_near_t").set_value(0.9).run())  # the curve does not depend on it
    assert [j.config["params"]["method"] for j in curve_jobs()] == ["near"]
    assert len(at.get("plotly_chart")) == 1
    assert not any("since this curve" in w.value for w in at.warning)  # only Find's clusters
    assert "dd_curve_start" not in [b.key for b in at.button]  # nothing to compute again
    assert calls == []


def test_the_curve_survives_a_reload_and_is_marked_stale_when_its_options_change(store):
    at = open_page(store)
    at = compute_curve(ok(at.toggle(key="dd_explore").set_value(True).run()))
    at = ok(open_page(store).toggle(key="dd_explore").set_value(True).run())  # a new session
    assert len(at.get("plotly_chart")) == 1 and not at.warning
    at = ok(at.number_input(key="dd_ngram").set_value(3).run())
    assert len(at.get("plotly_chart")) == 1  # the old curve, said to be old
    assert any("options changed since this curve" in w.value and "ngram 5 → 3" in w.value
               for w in at.warning)
    at = compute_curve(at)
    assert not at.warning and len(curve_jobs()) == 2
    at = ok(at.number_input(key="dd_ngram").set_value(5).run())  # back: that curve is kept
    assert not at.warning and len(curve_jobs()) == 2 and len(at.get("plotly_chart")) == 1


def test_a_curve_whose_file_is_gone_is_a_clear_error(store):
    compute_curve(ok(open_page(store).toggle(key="dd_explore").set_value(True).run()))
    job = curve_jobs()[0]
    (job.run_dir / curate.DEDUP_CURVE_FILE).unlink()
    at = open_page(store).toggle(key="dd_explore").set_value(True).run()  # a new session
    assert not at.exception and [e.value for e in at.error] == [
        f"dedup\\_curve run {md_escape(job.run_id)}\\: no saved curve "
        "\\(dedup\\_curve\\.parquet\\)\\; compute the curve again"]
    assert not at.button(key="dd_find").disabled  # the page keeps running
    at = finish_jobs(at.button(key="dd_curve_start").click().run())  # and computed again
    assert not at.error and len(at.get("plotly_chart")) == 1 and len(curve_jobs()) == 2


def test_clusters_of_old_options_are_marked_stale_and_not_applied(store):
    at = open_page(store)
    at = find(at)
    assert not at.warning and not at.button(key="dd_apply").disabled
    at = ok(at.slider(key="dd_near_t").set_value(0.6).run())
    assert any("options changed since Find" in w.value and "0\\.8" in w.value  # md-escaped
               for w in at.warning)
    assert at.button(key="dd_apply").disabled  # never applies clusters the widgets don't show
    at = find(at)
    assert not at.warning and not at.button(key="dd_apply").disabled


def test_semantic_needs_embeddings_first(store):
    at = open_page(store)
    at = ok(at.checkbox(key="dd_sem").check().run())
    assert any("need embeddings" in i.value for i in at.info)
    assert at.button(key="dd_find").disabled


def test_clusters_survive_a_reload_and_apply_says_what_it_made(store):
    at = find(open_page(store))
    shown = [m.value for m in at.metric]
    at = open_page(store)  # a new session: nothing in session_state, the job's result stays
    assert [m.value for m in at.metric] == shown and not at.warning
    assert len(at.dataframe[0].value) == int(shown[0])  # one page: every cluster
    at = apply(at)
    kept = store.versions("train")[-1].n_rows
    assert any(f"Deduplicated into train\\@2 \\({kept:,} rows kept\\)" in s.value
               for s in at.success)  # md-escaped


def test_a_find_whose_clusters_are_gone_is_a_clear_error(store):
    at = find(open_page(store))
    job = jobs.list_runs()[0]
    (job.run_dir / curate.DEDUP_CLUSTERS_FILE).unlink()
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    at = at.switch_page("pages/dedup.py").run()
    assert not at.exception and [e.value for e in at.error] == [
        f"dedup run {md_escape(job.run_id)}\\: no saved clusters "
        "\\(dedup\\_clusters\\.parquet\\)\\; press Find duplicates again"]
    assert not at.button(key="dd_find").disabled  # the page keeps running: Find again


@pytest.fixture
def pairs_store(tmp_path: Path, monkeypatch) -> Store:
    """130 exact pairs, no two pairs alike: 130 clusters, two pages of the cluster table."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    records = []
    for i in range(130):
        text = " ".join(rng.sample(words, 40))
        record = {"messages": [{"role": "user", "content": f"q {text}"},
                               {"role": "assistant", "content": f"a {i} {text}"}]}
        records += [record, {**record, "copy": 1}]
    yield from page_store(tmp_path, monkeypatch,
                          {"train": write_jsonl(tmp_path / "pairs.jsonl", records)})


def test_many_clusters_are_paged_and_a_later_page_reviews_its_own(pairs_store):
    at = find(open_page(pairs_store))
    assert [m.value for m in at.metric] == ["130", "130"]
    assert len(at.dataframe[0].value) == 100
    at = ok(at.number_input(key="dd_page").set_value(2).run())
    page = at.dataframe[0].value
    assert len(page) == 30 and page["kept_text"].str.startswith("a ").all()
    at = select(at, page=2)
    assert at.subheader[0].value == f"Cluster {page['cluster_id'].iloc[0]}: 2 rows"


def test_a_selection_does_not_follow_to_another_page(pairs_store):
    at = find(open_page(pairs_store))
    first = at.dataframe[0].value
    at = select(at, row=3)
    assert at.subheader[0].value == f"Cluster {first['cluster_id'].iloc[3]}: 2 rows"
    at = ok(at.number_input(key="dd_page").set_value(2).run())
    assert not at.subheader  # row 3 of page 2 is another cluster: nothing is selected there
    at = ok(at.number_input(key="dd_page").set_value(1).run())
    assert not at.subheader  # and coming back starts afresh too


def test_a_keep_choice_survives_a_reload_and_apply_uses_it(store):
    at = find(open_page(store))
    _, to_drop = (int(m.value) for m in at.metric)
    at = select(at)
    keep = next(r for r in at.radio if r.key.startswith("dd_keep_"))
    cluster_id = int(keep.key.removeprefix("dd_keep_"))
    members = [c for c in keep.options if c.startswith("row ")]
    other = int(members[1].removeprefix("row "))  # a member the policy drops
    at = ok(keep.set_value(other).run())
    assert at.metric[1].value == f"{to_drop:,}"  # one kept for another: as many dropped
    at = select(open_page(store))  # a reload: a new session, nothing in session_state
    keep = at.radio(key=f"dd_keep_{cluster_id}")
    assert keep.value == other
    at = ok(keep.set_value("all").run())
    dropped = int(at.metric[1].value)
    assert dropped < to_drop
    at = select(open_page(store))
    assert at.radio(key=f"dd_keep_{cluster_id}").value == "all"
    assert int(at.metric[1].value) == dropped and f"drop {dropped:,} rows" in \
        at.button(key="dd_apply").label
    at = apply(at)
    latest = store.versions("train")[-1]
    assert latest.params["overrides"] == {str(cluster_id): "all"}
    assert latest.n_rows == 400 - dropped


@pytest.fixture
def copies_store(tmp_path: Path, monkeypatch) -> Store:
    """One cluster of twelve copies of a row, and four rows alike to none."""
    record = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris is the capital of France."}]}
    records = [{**record, "copy": i} for i in range(12)] + [
        {"messages": [{"role": "user", "content": f"question {i} " * 5},
                      {"role": "assistant", "content": f"answer {i} " * 5}]} for i in range(4)]
    yield from page_store(tmp_path, monkeypatch,
                          {"train": write_jsonl(tmp_path / "copies.jsonl", records)})


def test_a_large_clusters_members_beyond_four_can_be_read_and_kept(copies_store):
    at = select(find(open_page(copies_store)))
    assert at.subheader[0].value.endswith(": 12 rows")
    said = [c.value for c in at.caption if c.value.startswith("row ")]
    assert len(said) == 4 and "kept · first in input order" in said[0]
    assert all("drop · similarity 1" in c and "first" not in c for c in said[1:])  # no reason
    rest = at.dataframe[1].value  # the eight members not shown side by side
    assert len(rest) == 8 and rest["response"].str.startswith("Paris").all()
    keep = next(s for s in at.selectbox if s.key.startswith("dd_keep_"))  # 14 choices: a list
    assert not [r for r in at.radio if r.key.startswith("dd_keep_")]
    assert set(rest["row_key"].map(lambda k: f"row {k}")) <= set(keep.options)
    last = int(rest["row_key"].iloc[-1])
    at = ok(keep.set_value(last).run())
    at = select(open_page(copies_store))  # a reload keeps the choice
    assert at.selectbox(key=keep.key).value == last
    at = apply(at)
    assert last in set(copies_store.frame(copies_store.versions("train")[-1].version_id)
                       ["row_key"])
