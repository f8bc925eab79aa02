"""Tests of workbench.select: top-k, diverse top-k, cluster quotas, longest-k, thresholds, map."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import select as SEL
from workbench.exceptions import ConfigError
from workbench.schema import DROP_COLUMNS, Example, examples_frame
from workbench.store import Store


def scored_frame(scores: list[float], *, column: str = "ifd_score", keys: list[int] | None = None,
                 responses: list[str] | None = None) -> pd.DataFrame:
    """Return a step frame with one exchange per score and the score column filled in."""
    responses = responses or [f"answer {i}" for i in range(len(scores))]
    examples = [Example(({"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": r})) for i, r in enumerate(responses)]
    frame = examples_frame(examples, keys if keys is not None else [10 + i for i in
                                                                     range(len(scores))])
    frame[column] = np.asarray(scores, dtype=np.float64)
    return frame


def check_partition(frame: pd.DataFrame, sel: SEL.Selection) -> None:
    """Assert kept + dropped = input, kept in input order, dropped with the store's columns."""
    kept, dropped = sel.kept["row_key"].tolist(), sel.dropped["row_key"].tolist()
    assert sorted(kept + dropped) == sorted(frame["row_key"].tolist())
    assert kept == [k for k in frame["row_key"] if k in set(kept)]
    assert list(sel.dropped.columns) == list(DROP_COLUMNS)
    assert sel.dropped["reason"].notna().all() and sel.dropped["detail"].str.len().gt(0).all()
    json.dumps(sel.rule)  # the rule goes into the version's params
    assert sel.rule["selected"] == len(kept) and sel.rule["rows_in"] == len(frame)


# --- top_k ------------------------------------------------------------------------------------

def test_top_k_keeps_the_best_in_input_order():
    frame = scored_frame([0.2, 0.9, 0.5, 0.7, 0.1])
    sel = SEL.top_k(frame, 2, score="ifd")
    check_partition(frame, sel)
    assert sel.kept["row_key"].tolist() == [11, 13]
    assert set(sel.dropped["reason"]) == {"not_selected"}
    detail = sel.dropped.set_index("row_key").at[12, "detail"]
    assert detail == "top_k: rank 3 by ifd_score (highest first), k=2"
    assert sel.rule == {"method": "top_k", "k": 2, "score": "ifd_score", "higher_is_better": True,
                        "rows_in": 5, "selected": 2}


def test_top_k_direction_comes_from_the_registry_unless_given():
    frame = scored_frame([30.0, 5.0, 12.0], column="perplexity_score")
    assert SEL.top_k(frame, 1, score="perplexity").kept["row_key"].tolist() == [11]
    assert SEL.top_k(frame, 1, score="perplexity_score", higher_is_better=True
                     ).kept["row_key"].tolist() == [10]
    frame["custom_score"] = [1.0, 3.0, 2.0]  # not registered: higher first
    assert SEL.top_k(frame, 1, score="custom_score").kept["row_key"].tolist() == [11]


def test_top_k_never_selects_a_row_without_a_score_and_breaks_ties_by_order():
    frame = scored_frame([np.nan, 0.5, 0.5, 0.5])
    sel = SEL.top_k(frame, 10, score="ifd")
    assert sel.kept["row_key"].tolist() == [11, 12, 13]
    assert sel.dropped["detail"].tolist() == ["top_k: no ifd_score"]
    assert SEL.top_k(frame, 2, score="ifd").kept["row_key"].tolist() == [11, 12]


def test_bad_options_name_the_field_and_the_columns():
    frame = scored_frame([0.1, 0.2])
    with pytest.raises(ConfigError, match="k=0"):
        SEL.top_k(frame, 0, score="ifd")
    with pytest.raises(ConfigError, match="score='judge'.*ifd_score"):
        SEL.top_k(frame, 1, score="judge")
    with pytest.raises(ConfigError, match="min is above max"):
        SEL.threshold_filter(frame, {"ifd": (0.5, 0.1)})
    with pytest.raises(ConfigError, match="vectors"):
        SEL.diverse_top_k(frame, 1, score="ifd", vectors=np.zeros((3, 4)))


# --- longest_k and thresholds -------------------------------------------------------------------

def test_longest_k_is_the_long_is_more_baseline():
    frame = scored_frame([0, 0, 0, 0], responses=["short", "a much longer answer here", "mid one",
                                                  "x" * 40])
    sel = SEL.longest_k(frame, 2)
    check_partition(frame, sel)
    assert sel.kept["row_key"].tolist() == [11, 13]
    assert SEL.longest_k(frame, 1, unit="words").kept["row_key"].tolist() == [11]
    assert "longest_k: rank 4 by response length (5 chars)" in sel.dropped["detail"].iloc[0]


def test_threshold_filter_names_which_bound_failed():
    frame = scored_frame([0.5, 1.2, 0.05, np.nan])
    frame["length_score"] = [50.0, 60.0, 70.0, 5.0]
    sel = SEL.threshold_filter(frame, {"ifd": (0.1, 1.0), "length_score": (10, None)})
    check_partition(frame, sel)
    assert sel.kept["row_key"].tolist() == [10]
    reasons = sel.dropped.set_index("row_key")["reason"].to_dict()
    assert reasons == {11: "above_threshold", 12: "below_threshold", 13: "no_score"}
    assert "ifd_score = 1.2 > max 1" in sel.dropped.set_index("row_key").at[11, "detail"]
    assert sel.rule["bounds"] == {"ifd_score": [0.1, 1.0], "length_score": [10, None]}


# --- diverse_top_k ------------------------------------------------------------------------------

def test_diverse_top_k_skips_a_near_copy_of_a_chosen_row():
    frame = scored_frame([0.9, 0.8, 0.7, 0.6])
    vectors = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    sel = SEL.diverse_top_k(frame, 3, score="ifd", vectors=vectors, threshold=0.9)
    check_partition(frame, sel)
    assert sel.kept["row_key"].tolist() == [10, 12, 13]
    skipped = sel.dropped.iloc[0]
    assert (skipped["row_key"], skipped["reason"], skipped["duplicate_of"]) == (11, "too_similar", 10)
    assert "cosine 0.99" in skipped["detail"] and "to selected row 10" in skipped["detail"]
    plain = SEL.top_k(frame, 3, score="ifd")
    assert plain.kept["row_key"].tolist() == [10, 11, 12]


def _greedy_reference(vectors: np.ndarray, order: np.ndarray, k: int, threshold: float) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    chosen: list[int] = []
    for row in order:
        if len(chosen) == k:
            break
        if not chosen or (unit[chosen] @ unit[row]).max() < threshold:
            chosen.append(int(row))
    return chosen


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.integers(1, 30), st.floats(0.0, 0.9), st.integers(0, 10_000))
def test_blocked_greedy_equals_one_by_one_greedy(n, k, threshold, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 4)).astype(np.float32)
    frame = scored_frame(rng.random(n).tolist())
    sel = SEL.diverse_top_k(frame, k, score="ifd", vectors=vectors, threshold=threshold, block=7)
    order = np.argsort(-frame["ifd_score"].to_numpy(), kind="stable")
    expected = sorted(_greedy_reference(vectors, order, k, threshold))
    assert sorted(frame["row_key"].to_numpy()[expected].tolist()) == sel.kept["row_key"].tolist()
    check_partition(frame, sel)


# --- cluster quotas -----------------------------------------------------------------------------

def three_blobs(sizes: tuple[int, ...] = (6, 3, 3), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.eye(len(sizes), 8) * 10
    return np.concatenate([c + rng.normal(scale=0.1, size=(n, 8)) for c, n in zip(centres, sizes)])


def test_cluster_quota_spreads_the_selection_over_clusters():
    vectors = three_blobs()
    # The best scores all sit in the first cluster: plain top-k would take only from it.
    frame = scored_frame([9, 8, 7, 6, 5, 4, 1, 0.9, 0.8, 0.3, 0.2, 0.1])
    sel = SEL.cluster_quota(frame, 4, score="ifd", vectors=vectors, n_clusters=3)
    check_partition(frame, sel)
    assert sel.kept["row_key"].tolist() == [10, 11, 16, 19]  # 6:3:3 sizes -> quotas 2, 1, 1
    equal = SEL.cluster_quota(frame, 6, score="ifd", vectors=vectors, n_clusters=3, quota="equal")
    assert equal.kept["row_key"].tolist() == [10, 11, 16, 17, 19, 20]
    assert equal.rule["quota"] == "equal" and equal.rule["n_clusters"] == 3


def test_cluster_quota_reuses_given_labels():
    frame = scored_frame([1, 2, 3, 4])
    sel = SEL.cluster_quota(frame, 2, score="ifd", labels=[0, 0, 1, 1])
    assert sel.kept["row_key"].tolist() == [11, 13]
    assert "quota 1 of 2" in sel.dropped["detail"].iloc[0]


@given(st.lists(st.integers(0, 20), min_size=1, max_size=8), st.integers(0, 100),
       st.sampled_from(["proportional", "equal"]))
def test_allocate_fills_k_without_overfilling_a_cluster(sizes, k, quota):
    take = SEL.allocate(np.array(sizes), k, quota)
    assert take.sum() == min(k, sum(sizes))
    assert (take <= np.array(sizes)).all() and (take >= 0).all()


def test_kmeans_is_deterministic_and_finds_blobs():
    vectors = three_blobs()
    labels = SEL.kmeans(vectors, 3, seed=1)
    assert np.array_equal(labels, SEL.kmeans(vectors, 3, seed=1))
    assert len(set(labels[:6])) == 1 and len(set(labels)) == 3


# --- embedding map -------------------------------------------------------------------------------

def test_embedding_map_projects_along_the_main_spread():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)) * np.r_[10.0, 5.0, np.full(14, 0.1)]
    result = SEL.embedding_map(vectors, k=4)
    assert result.coords.shape == (300, 2) and result.labels.shape == (300,)
    assert result.method == "pca" and result.explained > 0.95
    assert abs(np.corrcoef(result.coords[:, 0], vectors[:, 0])[0, 1]) > 0.99
    assert np.array_equal(result.coords, SEL.embedding_map(vectors, k=4).coords)


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn installed")
def test_umap_without_umap_learn_says_how_to_get_it():
    with pytest.raises(ConfigError, match="pip install umap-learn"):
        SEL.embedding_map(np.eye(4), method="umap")


# --- a selection becomes a version ---------------------------------------------------------------

def test_apply_makes_a_version_that_records_the_rule():
    store = Store(":memory:")
    examples = [Example(({"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": "a" * (i + 1)})) for i in range(5)]
    version = store.add_examples("demo", examples)
    frame = store.frame(version)
    sel = SEL.longest_k(frame, 2)
    child = store.apply_step(version, sel, operation="select", params=sel.rule)
    assert child.n_rows == 2 and child.params["method"] == "longest_k"
    assert child.counts == {"not_selected": 3, "kept": 2}
    assert store.frame(child.version_id)["response"].tolist() == ["aaaa", "aaaaa"]
