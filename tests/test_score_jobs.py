"""Score & select's background jobs: heuristic scoring and the learned score give what the
in-process calls give; longest-k on a score table keeps what it keeps on the texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import jobs, labelling
from workbench import quality as Q
from workbench.exceptions import ConfigError, NotFoundError
from workbench.sample import SAMPLE_DIR
from workbench.schema import Example
from workbench.store import Store

# Ties in length (chars and words), a duplicate answer, a multi-turn row, non-ASCII text.
ANSWERS = ["ok", "Reset the router.", "Reset the modem.", "yes yes yes yes", "ok",
           "Open Settings, choose Billing.", "Ça marche très bien 👍", "abc def ghi jkl",
           "I cannot help.", "First unplug it."]
NAMES = ["length", "lexical_diversity", "repetition", "overlap"]


def example(i: int, answer: str) -> Example:
    turns = [{"role": "user", "content": f"question {i}?"},
             {"role": "assistant", "content": answer}]
    if i % 3 == 0:  # a second exchange: the response is the last assistant turn
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                 *turns]
    return Example(tuple(turns))


def new_store(folder: Path) -> tuple[Store, int]:
    store = Store(folder / "q.duckdb")
    rows = [example(i, a) for i, a in enumerate(ANSWERS)]
    return store, store.add_examples("demo", [*rows, rows[1]])  # the last row: a duplicate


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, int]:
    return new_store(tmp_path)


def params(store: Store, vid: int, names=NAMES, **options) -> dict:
    return Q.heuristic_params(store, vid, Q.heuristic_specs(names, options))


# --- heuristic scoring ---------------------------------------------------------------------------

def test_the_heuristic_job_caches_what_score_heuristics_caches(setup, tmp_path):
    store, vid = setup
    job = jobs.run_inline("heuristic_score", params(store, vid), home=tmp_path / "runs")
    assert job.state == "done" and job.kind == "heuristics"
    assert job.result["message"] == (f"Scored 11 rows with {', '.join(NAMES)} "
                                     "(10 computed, 1 from the cache).")
    # Duplicate rows (same content id) are scored once.
    assert job.result["scored"] == 10 and job.result["cached"] == 1
    other, other_vid = new_store(tmp_path / "other")
    Q.score_heuristics(other, other.frame(other_vid), Q.heuristic_specs(NAMES))
    got, expected = Q.score_table(store, vid), Q.score_table(other, other_vid)
    columns = ["id", *Q.score_columns(expected)]
    assert len(columns) == 5
    pd.testing.assert_frame_equal(got[columns], expected[columns])
    last = jobs.events(job.run_dir)[-1]
    assert last["phase"] == "scoring rows" and last["step"] == last["total"] == 10
    assert Q.scoring_jobs(store, vid, home=tmp_path / "runs")[0].run_id == job.run_id


def test_score_version_reads_only_uncached_rows_in_chunks(setup, monkeypatch):
    store, vid = setup
    specs = Q.heuristic_specs(["length", "repetition"])
    seen = []
    out = Q.score_version(store, vid, specs, chunk_rows=4, progress=lambda *a: seen.append(a))
    assert seen == [(0, 10), (4, 10), (8, 10), (10, 10)]
    whole = Q.S.score_frame(store.frame(vid), specs)
    pd.testing.assert_frame_equal(out, whole[out.columns.tolist()].reset_index(drop=True))
    monkeypatch.setattr(Store, "frame_of", lambda *a, **k: pytest.fail("read rows again"))
    monkeypatch.setattr(Store, "frame", lambda *a, **k: pytest.fail("read rows again"))
    again = Q.score_version(store, vid, specs)  # every row cached: no text is read
    pd.testing.assert_frame_equal(again, out)


def test_a_scorer_cached_for_every_row_finishes_from_the_cache(setup, tmp_path, monkeypatch):
    store, vid = setup
    home = tmp_path / "runs"
    jobs.run_inline("heuristic_score", params(store, vid, ["length"]), home=home)
    monkeypatch.setattr(Store, "frame_of", lambda *a, **k: pytest.fail("read rows again"))
    job = jobs.run_inline("heuristic_score", params(store, vid, ["length"]), home=home)
    assert job.state == "done" and job.result["scored"] == 0 and job.result["rows"] == 11


def test_cancel_stops_the_heuristic_job(setup, tmp_path, monkeypatch):
    store, vid = setup
    monkeypatch.setattr(jobs.JobContext, "cancelled",
                        lambda self: self._phase == "scoring rows")
    job = jobs.run_inline("heuristic_score", params(store, vid), home=tmp_path / "runs")
    assert job.state == "cancelled"
    assert Q.score_columns(Q.score_table(store, vid)) == []  # nothing half-written


@pytest.mark.parametrize("names, options, error, message", [
    ([], {}, ConfigError, "choose at least one scorer"),
    (["perplexity"], {}, ConfigError, "uses a model"),
    (["format"], {"format": {"pattern": "("}}, ConfigError, "pattern"),
])
def test_bad_heuristic_options_fail_before_a_job_starts(setup, names, options, error, message):
    store, vid = setup
    with pytest.raises(error, match=message):
        params(store, vid, names, **options)


def test_an_unknown_version_or_bad_specs_are_named(setup, tmp_path):
    store, vid = setup
    with pytest.raises(NotFoundError):
        params(store, vid + 99, ["length"])
    with pytest.raises(ConfigError, match="specs: give a list"):
        Q.specs_of(["length"])
    job = jobs.run_inline("heuristic_score", {"store": str(store.path), "version_id": vid,
                                              "specs": [{"name": "nope"}]},
                          home=tmp_path / "runs")
    assert job.state == "failed" and "unknown scorer 'nope'" in job.error


# --- longest-k without the texts -----------------------------------------------------------------

@pytest.mark.parametrize("unit", ["chars", "words"])
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_longest_k_on_the_score_table_keeps_what_the_texts_keep(setup, unit, k):
    store, vid = setup
    child = store.edit_row(vid, int(store.row_keys(vid)[1]), messages=[
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "Reset the modem!"}])
    for version in (vid, child.version_id):
        full = Q.scored_version(store, version)
        table = Q.score_table(store, version)
        options = Q.SelectOptions("longest", k=k, unit=unit)
        expected = Q.preview_selection(store, full, options)
        got = Q.preview_selection(store, table, options)
        assert got.kept["row_key"].tolist() == expected.kept["row_key"].tolist()
        pd.testing.assert_frame_equal(got.dropped, expected.dropped)
        assert got.rule == expected.rule


def test_response_lengths_match_the_texts_and_name_a_missing_row(setup):
    store, vid = setup
    frame = store.frame(vid)
    keys = frame["row_key"].tolist()[::-1]
    texts = frame.set_index("row_key").loc[keys, "response"]
    assert store.response_lengths(keys).tolist() == [len(t) for t in texts]
    assert store.response_lengths(keys, "words").tolist() == [len(t.split()) for t in texts]
    with store.transaction() as con:  # a row without a stored count is measured
        con.execute("UPDATE rows SET response_chars = NULL WHERE row_key = ?", [keys[0]])
    assert store.response_lengths(keys, chunk_rows=2).tolist() == [len(t) for t in texts]
    with pytest.raises(NotFoundError, match="no row 999"):
        store.response_lengths([999])


def test_apply_longest_k_from_the_score_table_reads_no_row_text(setup, monkeypatch):
    store, vid = setup
    expected = Q.preview_selection(store, Q.scored_version(store, vid),
                                   Q.SelectOptions("longest", k=3))
    for name in ("frame", "frame_of", "examples"):
        monkeypatch.setattr(Store, name, lambda *a, **k: pytest.fail("read every text"))
    made = Q.apply_selection(store, vid, Q.score_table(store, vid),
                             Q.SelectOptions("longest", k=3))
    assert made.n_rows == 3 and made.params["method"] == "longest_k"
    monkeypatch.undo()
    assert store.frame(made.version_id)["row_key"].tolist() == \
        expected.kept["row_key"].tolist()


# --- the learned score ---------------------------------------------------------------------------

@pytest.fixture
def labelled(tmp_path: Path) -> tuple[Store, int]:
    store = Store(tmp_path / "wb.duckdb")
    store.import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    vid = store.active_version("train")
    frame = store.frame(vid)
    Q.score_heuristics(store, frame, Q.heuristic_specs(["length", "repetition"]))
    short = frame["response"].str.len() < 15
    labelling.label_rows(store, vid, frame["row_key"][short].tolist(), "bad")
    labelling.label_rows(store, vid, frame["row_key"][~short].tolist()[:60], "good")
    return store, vid


def test_the_learn_job_trains_what_train_learned_trains(labelled, tmp_path):
    store, vid = labelled
    home = tmp_path / "runs"
    job = jobs.run_inline("learn", {"store": str(store.path), "version_id": vid}, home=home)
    assert job.state == "done" and job.kind == "learn"
    by_job = Q.score_table(store, vid)["learned_score"].to_numpy()
    direct = labelling.train_learned(store, vid, Q.scored_version(store, vid))
    assert job.result["message"] == labelling.trained_message(direct)
    assert {k: job.result[k] for k in ("n_good", "n_bad", "auroc", "scored_rows")} == \
        {"n_good": direct.n_good, "n_bad": direct.n_bad, "auroc": direct.auroc,
         "scored_rows": 400}
    np.testing.assert_allclose(by_job, Q.score_table(store, vid)["learned_score"].to_numpy())
    assert labelling.last_result(store).n_bad == direct.n_bad
    phases = [e.get("phase") for e in jobs.events(job.run_dir)]
    assert phases[0] == "reading rows" and phases[-1].startswith("training")
    assert labelling.learn_jobs(store, vid, home=home)[0].run_id == job.run_id


def test_the_learn_job_stops_on_cancel(labelled, tmp_path, monkeypatch):
    store, vid = labelled
    monkeypatch.setattr(jobs.JobContext, "cancelled", lambda self: True)
    job = jobs.run_inline("learn", {"store": str(store.path), "version_id": vid},
                          home=tmp_path / "runs")
    assert job.state == "cancelled" and labelling.last_result(store) is None


def test_too_few_labels_fail_before_a_learn_job_starts(setup, monkeypatch):
    store, vid = setup
    monkeypatch.setattr(jobs, "start", lambda *a, **k: pytest.fail("a job started"))
    with pytest.raises(ConfigError, match="no labelled rows in this dataset"):
        labelling.start_learning(store, vid)
    labelling.label_rows(store, vid, store.row_keys(vid)[:6].tolist(), "good")
    with pytest.raises(ConfigError, match="6 good and 0 bad labels"):
        labelling.start_learning(store, vid)
    with pytest.raises(NotFoundError):
        labelling.start_learning(store, vid + 99)
