"""Queries the pages run in DuckDB instead of over a whole version in pandas: each gives what
the pandas path over the full frame gives, on small data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import chat

from workbench import curate, labelling
from workbench.schema import StepResult
from workbench.store import RowFilter, Store


def version(store: Store, n: int = 40) -> int:
    rows = [chat(("user", f"question {i}"), ("assistant", f"answer {i} " + "x" * (i % 7)))
            for i in range(n)]
    return store.add_examples("d", rows)


def flag_and_drop(store: Store, vid: int) -> int:
    """A child of vid: rows 0-3 dropped, 4-11 flagged by rule a, 8-15 by rule b."""
    keys = store.frame(vid)["row_key"].tolist()
    flagged = pd.concat([pd.DataFrame({"row_key": keys[4:12], "reason": "a", "detail": "da"}),
                         pd.DataFrame({"row_key": keys[8:16], "reason": "b", "detail": "db"})])
    dropped = pd.DataFrame({"row_key": keys[:4], "reason": "short", "detail": "why"})
    kept = pd.DataFrame({"row_key": keys[4:]})
    return store.apply_step(vid, StepResult(kept, dropped, None, flagged),
                            operation="clean").version_id


@pytest.fixture
def flagged_version(store: Store) -> int:
    vid = version(store)
    child = flag_and_drop(store, vid)
    keys = store.frame(child)["row_key"].tolist()
    labelling.label_rows(store, child, keys[5:7], "bad")   # rows 9, 10: a and b
    labelling.label_rows(store, child, keys[0:2], "good")  # rows 4, 5: a only
    labelling.label_rows(store, child, keys[10:11], "bad")  # row 14: b only
    return child


def pandas_flagged_summary(store: Store, vid: int) -> pd.DataFrame:
    """What the Clean page computed before: every flagged row with its text, then pandas."""
    flagged = store.flagged(vid)
    labels = labelling.with_labels(store, flagged)["label"]
    return flagged.assign(label=labels.to_numpy()).groupby("reason").agg(
        rows=("row_key", "nunique"), labelled_bad=("label", lambda s: int((s == "bad").sum())),
        labelled_good=("label", lambda s: int((s == "good").sum()))).reset_index()


def test_flagged_summary_and_count_equal_the_pandas_path(store, flagged_version):
    got = store.flagged_summary(flagged_version)
    want = pandas_flagged_summary(store, flagged_version)
    assert got.astype({c: int for c in got.columns[1:]}).to_dict("list") == \
        want.to_dict("list")
    assert got.to_dict("list") == {"reason": ["a", "b"], "rows": [8, 8],
                                   "labelled_bad": [2, 3], "labelled_good": [2, 0]}
    assert store.flagged_count(flagged_version) == store.flagged(flagged_version)[
        "row_key"].nunique() == 12


def test_flagged_to_drop_reads_keys_and_labels_only(store, flagged_version):
    flagged = store.flagged(flagged_version)
    labels = labelling.with_labels(store, flagged)["label"].to_numpy()
    for rule in ("a", "b"):
        for keep_good in (True, False):
            want = flagged.assign(label=labels)
            want = want[(want["reason"] == rule) & ((not keep_good) | (want["label"] != "good"))]
            got = labelling.flagged_to_drop(store, flagged_version, rule, keep_good=keep_good)
            assert got[["row_key", "detail", "label"]].values.tolist() == \
                want[["row_key", "detail", "label"]].values.tolist()
    assert labelling.flagged_to_drop(store, flagged_version, "nothing").empty


def test_removed_with_a_limit_is_the_head_and_the_count_counts_all(store, flagged_version):
    everything = store.removed(flagged_version)
    head = store.removed(flagged_version, limit=3)
    assert len(everything) == store.removed_count(flagged_version) == 4
    pd.testing.assert_frame_equal(head, everything.head(3))


def test_diff_with_a_limit_keeps_every_count(store, flagged_version):
    parent = store.version(flagged_version).parent_id
    edited = store.edit_row(flagged_version, store.frame(flagged_version)["row_key"].iloc[0],
                            note="seen").version_id
    full, head = store.diff(parent, edited), store.diff(parent, edited, limit=2)
    assert head.counts() == full.counts() == {"added": 0, "removed": 4, "changed": 1}
    pd.testing.assert_frame_equal(head.removed, full.removed.head(2))
    pd.testing.assert_frame_equal(head.changed, full.changed)
    assert store.diff(edited, parent, limit=0).counts() == {"added": 4, "removed": 0,
                                                             "changed": 1}


def test_version_summary_equals_the_summary_of_the_frame(store, flagged_version):
    frame = store.frame(flagged_version)
    labelling.label_rows(store, flagged_version, frame["row_key"].tolist()[20:22], "bad")
    want, got = labelling.summary(store, frame), labelling.version_summary(store,
                                                                           flagged_version)
    assert (got.good, got.bad, got.unlabelled, got.total_good, got.total_bad) == \
        (want.good, want.bad, want.unlabelled, want.total_good, want.total_bad) == \
        (2, 5, 29, 2, 5)
    pd.testing.assert_frame_equal(got.actions, want.actions)


def test_version_labels_are_the_labelled_rows_of_the_frame(store, flagged_version):
    frame = labelling.with_labels(store, store.frame(flagged_version))
    want = frame[frame["label"] != ""]
    got = labelling.version_labels(store, flagged_version)
    assert got[["row_key", "id", "label"]].values.tolist() == \
        want[["row_key", "id", "label"]].values.tolist()
    assert labelling.labels_jsonl(store, got) == \
        labelling.labels_jsonl(store, store.frame(flagged_version))


def test_bulk_preview_reads_the_rows_pandas_would_sample(store, flagged_version):
    frame = store.frame(flagged_version)
    keys = frame["row_key"].tolist()[3:30:2]
    rows = frame[frame["row_key"].isin(set(keys))]
    for seed in (0, 3):
        want = rows.sample(8, random_state=seed)["row_key"].tolist()
        got = labelling.bulk_preview(store, flagged_version, keys[::-1], seed=seed)
        assert got["row_key"].tolist() == want
        assert got["response"].tolist() == frame.set_index("row_key").loc[want,
                                                                          "response"].tolist()
    assert labelling.bulk_preview(store, flagged_version, keys[:3])["row_key"].tolist() == \
        rows.head(3).sample(3, random_state=0)["row_key"].tolist()


def test_sample_frame_is_the_whole_version_up_to_n_and_a_fixed_sample_beyond(store):
    vid = version(store, 50)
    frame = store.frame(vid)
    pd.testing.assert_frame_equal(store.sample_frame(vid, 50), frame)
    sample = store.sample_frame(vid, 20, seed=1)
    assert len(sample) == 20 and sample["row_key"].is_monotonic_increasing
    assert sample["row_key"].tolist() == store.sample_frame(vid, 20, seed=1)["row_key"].tolist()
    pd.testing.assert_frame_equal(
        sample.reset_index(drop=True),
        frame.set_index("row_key").loc[sample["row_key"]].reset_index()[frame.columns])


def test_rows_of_reads_rows_by_key_in_version_order(store):
    vid = version(store, 10)
    frame = store.frame(vid)
    keys = frame["row_key"].tolist()
    got = store.rows_of(vid, [keys[7], keys[2]])
    assert got["row_key"].tolist() == [keys[2], keys[7]]
    assert got["response"].tolist() == frame["response"].iloc[[2, 7]].tolist()


def test_version_embedded_counts_in_the_store(store):
    from workbench.cache import put_embeddings

    vid = version(store, 6)
    ids = store.frame(vid)["id"].tolist()
    assert not labelling.version_embedded(store, vid, "user")
    put_embeddings(store, ids[:5], np.ones((5, 3), np.float32), "default", "user")
    assert labelling.version_embedded(store, vid, "user", "default") == \
        labelling.embedded(store, store.frame(vid), "user") is False
    assert curate.missing_embeddings(store, vid, field="user") == \
        curate.version_embeddings(store, store.frame(vid), field="user")[1] == 1
    put_embeddings(store, ids[5:], np.ones((1, 3), np.float32), "default", "user")
    assert curate.missing_embeddings(store, vid, field="user") == 0
    assert labelling.version_embedded(store, vid, "user") == \
        labelling.embedded(store, store.frame(vid), "user") is True


@pytest.mark.parametrize("filters", [RowFilter(search="answer 1"), RowFilter(min_chars=25),
                                     RowFilter(search="question", max_turns=2),
                                     RowFilter(search="nothing like this")])
def test_a_page_of_the_matches_is_the_filtered_page(store, filters):
    vid = version(store, 40)
    keys = store.matches(vid, filters)
    for offset, limit in ((0, 5), (5, 5), (0, 100), (38, 10)):
        want = store.page(vid, offset=offset, limit=limit, filters=filters)
        got = store.page_of(vid, keys, offset=offset, limit=limit)
        assert got.total == want.total and (got.offset, got.limit) == (want.offset, want.limit)
        pd.testing.assert_frame_equal(got.rows.reset_index(drop=True),
                                      want.rows.reset_index(drop=True), check_dtype=False)


def test_a_queue_over_a_sample_leaves_the_cached_learned_score_alone(store):
    from test_labelling import dataset

    vid, truth = dataset(store, n=200)
    frame = store.frame(vid)
    keys = frame["row_key"].tolist()
    labelling.label_rows(store, vid, [k for k, t in zip(keys, truth) if t][:6], "bad")
    labelling.label_rows(store, vid, [k for k, t in zip(keys, truth) if not t][:6], "good")

    def cached() -> int:
        with store.connect() as con:
            return con.execute("SELECT count(*) FROM scores WHERE scorer = 'learned'"
                               ).fetchall()[0][0]

    queue = labelling.next_rows(store, vid, store.sample_frame(vid, 50))
    assert queue.stage == "model" and len(queue.rows) == 20 and cached() == 0
    queue = labelling.next_rows(store, vid, frame)
    assert queue.stage == "model" and cached() == frame["id"].nunique()


def test_row_ids_and_frame_of_read_the_frame_s_keys_and_rows(store):
    vid = version(store, 10)
    frame = store.frame(vid)
    pd.testing.assert_frame_equal(store.row_ids(vid), frame[["row_key", "id"]])
    keys = frame["row_key"].tolist()
    some = store.frame_of(vid, [keys[7], keys[2], keys[4]])
    pd.testing.assert_frame_equal(some, frame.iloc[[2, 4, 7]].reset_index(drop=True))
