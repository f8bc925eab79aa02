"""Tests of workbench.dedup: exact, near and semantic duplicates, keep policies, overrides."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workbench import dedup
from workbench.dedup import MinHashConfig
from workbench.exceptions import ConfigError
from workbench.schema import DROP_COLUMNS, Example, examples_frame

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch "
    "and wonders whether the fence needs painting before the long winter arrives this year.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and "
    "oxygen; the light reactions happen in the thylakoid membranes of the chloroplast.",
    "To reverse a linked list, walk it once while keeping three pointers: the previous node, "
    "the current node and the next node, and flip each link as you go along the list.",
    "Inflation measures how fast prices rise across an economy; central banks raise interest "
    "rates to cool demand when inflation runs well above their stated target for long.",
]


def texts_frame(texts: list[str], keys: list[int] | None = None) -> pd.DataFrame:
    """Return a step frame with one assistant turn per text."""
    return examples_frame([Example(({"role": "assistant", "content": t},)) for t in texts], keys)


def chat_frame(pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """Return a step frame with one user + assistant exchange per pair."""
    examples = [Example(({"role": "user", "content": u}, {"role": "assistant", "content": a}))
                for u, a in pairs]
    return examples_frame(examples)


def groups(clusters: pd.DataFrame) -> set[frozenset[int]]:
    """Return the clusters as a set of sets of row_keys."""
    return {frozenset(g["row_key"].tolist()) for _, g in clusters.groupby("cluster_id")}


def edit(text: str, i: int, word: str = "purple") -> str:
    words = text.split()
    words[i] = word
    return " ".join(words)


# --- normalization and exact duplicates -----------------------------------------------------

def test_normalize_text_folds_unicode_case_and_whitespace():
    assert dedup.normalize_text("  Stra\u00dfe\t\tＡＢＣ \u3000 ﬁne\n") == "strasse abc fine"
    assert dedup.normalize_text("Hello, «world»!", strip_punctuation=True) == "hello world"
    assert dedup.normalize_text("Hello, world!") == "hello, world!"


def test_exact_duplicates_ignore_case_and_whitespace():
    frame = texts_frame(["Hello World", "  hello\t\nWORLD ", "HELLO   world", "Goodbye"])
    clusters = dedup.exact_duplicates(frame)
    assert groups(clusters) == {frozenset({0, 1, 2})}
    assert clusters.loc[clusters["kept"], "row_key"].tolist() == [0]
    assert set(clusters["method"]) == {"exact"}
    result = dedup.apply_clusters(frame, clusters)
    assert result.kept["row_key"].tolist() == [0, 3]
    assert list(result.dropped.columns) == list(DROP_COLUMNS)
    assert set(result.dropped["reason"]) == {"exact_duplicate"}
    assert result.dropped["duplicate_of"].tolist() == [0, 0]


def test_strip_punctuation_is_optional():
    frame = texts_frame(["Hello, world!", "hello world"])
    assert dedup.exact_duplicates(frame).empty
    assert groups(dedup.exact_duplicates(frame, strip_punctuation=True)) == {frozenset({0, 1})}


# --- near duplicates ------------------------------------------------------------------------

def test_near_duplicates_found_and_unrelated_texts_not():
    texts = PARAGRAPHS + [edit(PARAGRAPHS[0], 5), PARAGRAPHS[2] + " Done."]
    clusters = dedup.near_duplicates(texts_frame(texts))
    assert groups(clusters) == {frozenset({0, 4}), frozenset({2, 5})}
    assert set(clusters["method"]) == {"near"}
    near = clusters[~clusters["kept"]]
    assert (near["similarity"] >= 0.8).all() and (near["similarity"] < 1).all()
    result = dedup.apply_clusters(texts_frame(texts), clusters)
    assert set(result.dropped["reason"]) == {"near_duplicate"}
    assert "estimated Jaccard" in result.dropped["detail"].iloc[0]


def test_near_duplicates_threshold_controls_what_counts():
    texts = [PARAGRAPHS[1], edit(edit(edit(PARAGRAPHS[1], 2), 9), 16)]
    assert dedup.near_duplicates(texts_frame(texts), config=MinHashConfig(threshold=0.95)).empty
    assert len(dedup.near_duplicates(texts_frame(texts), config=MinHashConfig(threshold=0.5)))


def test_field_choice_matters():
    frame = chat_frame([("Explain photosynthesis to a child, please.", PARAGRAPHS[1]),
                        ("Explain photosynthesis to a child, please.", PARAGRAPHS[3]),
                        ("What is the capital of France?", PARAGRAPHS[3])])
    assert groups(dedup.near_duplicates(frame, field="user")) == {frozenset({0, 1})}
    assert groups(dedup.near_duplicates(frame, field="assistant")) == {frozenset({1, 2})}
    assert dedup.near_duplicates(frame, field="conversation").empty
    assert groups(dedup.exact_duplicates(frame, field="user")) == {frozenset({0, 1})}


def test_word_shingles_work_too():
    config = MinHashConfig(shingle="word", ngram=3, threshold=0.7)
    texts = PARAGRAPHS + [edit(PARAGRAPHS[3], 10)]
    assert groups(dedup.near_duplicates(texts_frame(texts), config=config)) == {
        frozenset({3, 4})}


def test_shingle_hashes_do_not_depend_on_position_or_batch():
    hashes, offsets = dedup.shingle_hashes(["ab cd ef", "zz ab cd ef"], ngram=2,
                                           shingle="word")
    assert offsets.tolist() == [0, 2, 5]
    assert set(hashes[:2]) < set(hashes[2:])
    texts = PARAGRAPHS + [""] + [p.upper() for p in PARAGRAPHS]
    whole = dedup.minhash_signatures(texts)
    batched = dedup.minhash_signatures(texts, MinHashConfig(batch_size=2))
    alone = np.vstack([dedup.minhash_signatures([t]) for t in texts])
    assert np.array_equal(whole, batched) and np.array_equal(whole, alone)
    assert not np.array_equal(whole, dedup.minhash_signatures(texts, MinHashConfig(seed=7)))


def test_jaccard_estimate_is_close_to_the_true_jaccard():
    a, b = PARAGRAPHS[0], edit(edit(PARAGRAPHS[0], 3), 12)
    sets = [set(dedup.shingle_hashes([dedup.normalize_text(t)], ngram=5)[0]) for t in (a, b)]
    true = len(sets[0] & sets[1]) / len(sets[0] | sets[1])
    sig = dedup.minhash_signatures([a, b], MinHashConfig(num_perm=256))
    assert abs(dedup.jaccard_estimate(sig, np.array([0]), np.array([1]))[0] - true) < 0.1


def test_given_signatures_are_used_and_checked():
    frame = texts_frame(PARAGRAPHS + [PARAGRAPHS[0]])
    sig = dedup.minhash_signatures(dedup.field_texts(frame))
    assert groups(dedup.near_duplicates(frame, signatures=sig)) == {frozenset({0, 4})}
    with pytest.raises(ConfigError, match="signatures"):
        dedup.near_duplicates(frame, signatures=sig[:2])


def test_lsh_params_match_datasketch_at_equal_weights():
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.5, 0.8, 0.9):
        assert dedup.optimal_lsh_params(threshold, 128, fn_weight=0.5) == \
            lsh._optimal_param(threshold, 128, 0.5, 0.5)


# --- keep policies and overrides ------------------------------------------------------------

def test_keep_policies():
    texts = ["Same text here.", "same text here!", "SAME TEXT HERE."]
    frame = chat_frame([(t, r) for t, r in zip(texts, ["short", "a much longer reply", "mid"])])
    frame["quality"] = [0.2, float("nan"), 0.9]

    def kept(**kw):
        clusters = dedup.exact_duplicates(frame, field="user", strip_punctuation=True, **kw)
        return clusters.loc[clusters["kept"], ["row_key", "keep_reason"]].iloc[0].tolist()

    assert kept() == [0, "first in input order"]
    assert kept(keep="longest") == [1, "longest response (19 chars)"]
    assert kept(keep="highest_score", score_column="quality") == [2, "highest quality (0.9)"]
    frame["quality"] = [0.5, 0.5, 0.1]  # ties go to the first
    assert kept(keep="highest_score", score_column="quality")[0] == 0


def test_keep_policy_errors_name_the_field():
    frame = texts_frame(["a", "a"])
    with pytest.raises(ConfigError, match="score_column"):
        dedup.exact_duplicates(frame, keep="highest_score")
    with pytest.raises(ConfigError, match="score_column='nope'"):
        dedup.exact_duplicates(frame, keep="highest_score", score_column="nope")
    with pytest.raises(ConfigError, match="keep='best'"):
        dedup.exact_duplicates(frame, keep="best")


def test_overrides_pick_a_member_or_keep_all():
    frame = texts_frame(["x y z", "X Y Z", "x  y z", "p q", "P Q"], keys=[10, 11, 12, 13, 14])
    clusters = dedup.exact_duplicates(frame)
    assert groups(clusters) == {frozenset({10, 11, 12}), frozenset({13, 14})}
    result = dedup.apply_clusters(frame, clusters, overrides={0: 12, 1: dedup.KEEP_ALL})
    assert result.kept["row_key"].tolist() == [12, 13, 14]
    assert result.dropped["row_key"].tolist() == [10, 11]
    assert result.dropped["duplicate_of"].tolist() == [12, 12]
    assert "chosen by hand" in result.dropped["detail"].iloc[0]
    with pytest.raises(ConfigError, match="cluster 9"):
        dedup.apply_clusters(frame, clusters, overrides={9: 10})
    with pytest.raises(ConfigError, match=r"overrides\[0\]: row_key 13"):
        dedup.apply_clusters(frame, clusters, overrides={0: 13})


def test_near_cluster_keeps_exact_reason_for_identical_copies():
    texts = [PARAGRAPHS[0], PARAGRAPHS[0].upper(), edit(PARAGRAPHS[0], 4), PARAGRAPHS[1]]
    frame = texts_frame(texts)
    clusters = dedup.near_duplicates(frame)
    assert groups(clusters) == {frozenset({0, 1, 2})}
    dropped = dedup.apply_clusters(frame, clusters).dropped.set_index("row_key")
    assert dropped.loc[1, "reason"] == "exact_duplicate"
    assert dropped.loc[2, "reason"] == "near_duplicate"
    # keeping the edited copy by hand: both others become its near duplicates
    dropped = dedup.apply_clusters(frame, clusters, overrides={0: 2}).dropped
    assert set(dropped["reason"]) == {"near_duplicate"}
    assert dropped["duplicate_of"].tolist() == [2, 2]


# --- semantic duplicates --------------------------------------------------------------------

VECTORS = np.array([[1, 0, 0], [0.99, 0.1, 0], [0, 1, 0], [0, 0.1, 0.99], [0, 0, 1],
                    [0, 0, 0]], dtype=np.float32)


def test_semantic_duplicates_from_vectors():
    frame = texts_frame([f"text {i}" for i in range(6)])
    clusters = dedup.semantic_duplicates(frame, embeddings=VECTORS, threshold=0.95)
    assert groups(clusters) == {frozenset({0, 1}), frozenset({3, 4})}
    sim = clusters.set_index("row_key")["similarity"]
    assert sim[1] == pytest.approx(0.99 / np.hypot(0.99, 0.1), abs=1e-6)
    dropped = dedup.apply_clusters(frame, clusters).dropped
    assert set(dropped["reason"]) == {"semantic_duplicate"} and "cosine" in dropped["detail"][0]
    assert dedup.semantic_duplicates(frame, embeddings=VECTORS, threshold=0.999).empty


def test_semantic_duplicates_with_embed_skips_empty_rows():
    frame = texts_frame(["a", "b", " ", "c"])
    seen: list[list[str]] = []

    def embed(texts):
        seen.append(texts)
        return np.ones((len(texts), 4))

    clusters = dedup.semantic_duplicates(frame, embed=embed)
    assert seen == [["a", "b", "c"]]
    assert groups(clusters) == {frozenset({0, 1, 3})}


def test_semantic_input_errors():
    frame = texts_frame(["a", "b"])
    with pytest.raises(ConfigError, match="exactly one"):
        dedup.semantic_duplicates(frame)
    with pytest.raises(ConfigError, match="2 rows"):
        dedup.semantic_duplicates(frame, embeddings=np.ones((3, 2)))
    with pytest.raises(ConfigError, match="finite"):
        dedup.semantic_duplicates(frame, embeddings=np.array([[1.0, np.nan], [1, 0]]))
    with pytest.raises(ConfigError, match="threshold"):
        dedup.semantic_duplicates(frame, embeddings=np.ones((2, 2)), threshold=1.5)


def test_cosine_pairs_blocks_agree_with_one_product():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((300, 8)).astype(np.float32)
    v[150:] = v[:150] + 0.05 * rng.standard_normal((150, 8)).astype(np.float32)
    whole = dedup.cosine_pairs(v, 0.9, block_size=1000)
    blocked = dedup.cosine_pairs(v, 0.9, block_size=7)
    pd.testing.assert_frame_equal(whole, blocked)
    assert len(whole) >= 150


# --- threshold explorer ---------------------------------------------------------------------

def test_threshold_curve_semantic_counts():
    frame = texts_frame([f"text {i}" for i in range(6)])
    curve = dedup.threshold_curve(frame, "semantic", [0.999, 0.95, 0.05], embeddings=VECTORS)
    assert curve.columns.tolist() == ["threshold", "rows_removed", "clusters"]
    assert curve.values.tolist() == [[0.999, 0, 0], [0.95, 2, 2], [0.05, 4, 1]]


def test_threshold_curve_near_is_monotone_and_matches_a_run():
    texts = PARAGRAPHS + [edit(PARAGRAPHS[0], 3), edit(edit(PARAGRAPHS[0], 3), 14),
                          PARAGRAPHS[2].lower(), edit(PARAGRAPHS[1], 8)]
    frame = texts_frame(texts)
    curve = dedup.threshold_curve(frame, "near", [0.5, 0.7, 0.8, 0.9, 1.0])
    assert curve["rows_removed"].is_monotonic_decreasing
    run = dedup.apply_clusters(frame, dedup.near_duplicates(
        frame, config=MinHashConfig(threshold=0.5)))
    assert curve["rows_removed"].iloc[0] == len(run.dropped)
    assert curve["rows_removed"].iloc[-1] == 1  # only the lower-cased copy
    with pytest.raises(ConfigError, match="method"):
        dedup.threshold_curve(frame, "exact", [0.5])


def test_progress_counts_rows_hashed_up_to_all_of_them():
    texts = PARAGRAPHS + [edit(PARAGRAPHS[0], 3)]
    frame = texts_frame(texts)
    seen: list[tuple[int, int]] = []
    config = MinHashConfig(batch_size=3)
    found = dedup.find_duplicates(frame, near=config, progress=lambda *a: seen.append(a))
    assert seen[-1] == (len(texts), len(texts)) and len(seen) >= 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    pd.testing.assert_frame_equal(found, dedup.find_duplicates(frame, near=config))
    curve_seen: list[tuple[int, int]] = []
    dedup.threshold_curve(frame, "near", [0.5, 0.9], progress=lambda *a: curve_seen.append(a))
    assert curve_seen[-1] == (len(texts), len(texts))


# --- options and inputs ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 0}, "threshold"), ({"threshold": 1.5}, "threshold"),
    ({"ngram": 0}, "ngram"), ({"shingle": "byte"}, "shingle"),
    ({"bands": 4}, "bands and rows"), ({"bands": 20, "rows": 10}, "bands=20, rows=10"),
    ({"recall_weight": 2}, "recall_weight"), ({"num_perm": 0}, "num_perm")])
def test_minhash_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MinHashConfig(**kwargs)


def test_config_round_trips_as_a_dict():
    config = MinHashConfig(threshold=0.7)
    options = config.to_dict()
    assert (options["bands"], options["rows"]) == config.lsh_params()
    assert MinHashConfig(**options).lsh_params() == config.lsh_params()


def test_bad_frames_and_clusters_are_named():
    frame = texts_frame(["a", "a"])
    with pytest.raises(ConfigError, match="field='system'"):
        dedup.exact_duplicates(frame, field="system")
    with pytest.raises(ConfigError, match="messages"):
        dedup.exact_duplicates(frame.drop(columns="messages"))
    with pytest.raises(ConfigError, match="row_key: value 0"):
        dedup.exact_duplicates(texts_frame(["a", "a"], keys=[0, 0]))
    clusters = dedup.exact_duplicates(frame)
    with pytest.raises(ConfigError, match="not a row"):
        dedup.apply_clusters(frame.iloc[:1], clusters)


def test_empty_frame_and_no_duplicates():
    empty = texts_frame([])
    assert dedup.find_duplicates(empty, near=MinHashConfig()).empty
    result = dedup.apply_clusters(empty, dedup.exact_duplicates(empty))
    assert result.kept.empty and result.dropped.empty
    assert list(result.dropped.columns) == list(DROP_COLUMNS)
    frame = texts_frame(PARAGRAPHS)
    result = dedup.apply_clusters(frame, dedup.near_duplicates(frame))
    assert len(result.kept) == 4 and result.dropped.empty


# --- adversarial inputs ---------------------------------------------------------------------

def test_empty_and_whitespace_rows_are_never_duplicates():
    frame = texts_frame(["", "   ", "\n\t", "", "real text"])
    assert dedup.find_duplicates(frame, near=MinHashConfig()).empty
    assert (dedup.minhash_signatures(["", "  "]) == dedup.EMPTY_SIGNATURE).all()


def test_texts_shorter_than_a_shingle():
    frame = texts_frame(["hi", "HI", "ho", "a", "b"])
    assert groups(dedup.near_duplicates(frame)) == {frozenset({0, 1})}


def test_a_one_megabyte_string():
    rng = np.random.default_rng(1)
    words = rng.choice(["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau"], 170_000)
    big = " ".join(words)[:1_000_000]
    frame = texts_frame([big, big[:-50] + " changed at the end", PARAGRAPHS[0]])
    clusters = dedup.find_duplicates(frame, near=MinHashConfig())
    assert groups(clusters) == {frozenset({0, 1})}


def test_emoji_and_mixed_scripts():
    chinese = ("我们今天去公园散步，天气很好，阳光明媚，"
               "孩子们在草地上奔跑玩耍，老人们在树下下棋聊天。")
    texts = ["😀 party time 🎉🎉", "😀 PARTY   time 🎉🎉", "🎉",
             chinese, chinese.replace("公园", "花园"), "مرحبا بالعالم hello мир",
             "مرحبا بالعالم HELLO МИР"]
    clusters = dedup.find_duplicates(texts_frame(texts), near=MinHashConfig(threshold=0.7))
    assert groups(clusters) == {frozenset({0, 1}), frozenset({3, 4}), frozenset({5, 6})}


def test_lone_surrogates_do_not_break_hashing():
    # A frame cannot hold them (pyarrow strings), but the row-wise functions may see them.
    texts = ["lone \ud800 surrogate", "LONE \ud800 surrogate", "other"]
    keys = dedup.exact_keys(texts)
    sig = dedup.minhash_signatures(texts)
    assert keys[0] == keys[1] != keys[2] and np.array_equal(sig[0], sig[1])


# --- properties -----------------------------------------------------------------------------

def _variant(base: int, kind: int) -> str:
    text = PARAGRAPHS[base]
    return [text, text.upper(), "  " + text.replace(" ", "\n "), edit(text, 6),
            edit(edit(text, 6), 11, "green"), ""][kind]


row_texts = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), min_size=0, max_size=14)
SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _letters(texts: list[str]) -> np.ndarray:
    # A bag-of-letters embedding: deterministic and a function of the text alone.
    return np.array([[t.lower().count(c) for c in "etaoinsh"] for t in texts])


def _find(frame: pd.DataFrame, method: str, keep: str = "first") -> pd.DataFrame:
    if method == "exact":
        return dedup.exact_duplicates(frame, keep=keep)
    if method == "semantic":
        return dedup.semantic_duplicates(frame, embed=_letters, threshold=0.999, keep=keep)
    return dedup.near_duplicates(frame, config=MinHashConfig(threshold=0.75), keep=keep)


@SETTINGS
@given(rows=row_texts, method=st.sampled_from(["exact", "near", "semantic"]),
       keep=st.sampled_from(["first", "longest"]))
def test_dedup_partitions_points_to_kept_rows_and_is_idempotent(rows, method, keep):
    frame = texts_frame([_variant(b, k) for b, k in rows])
    result = dedup.apply_clusters(frame, _find(frame, method, keep))
    kept, dropped = set(result.kept["row_key"]), set(result.dropped["row_key"])
    assert kept | dropped == set(frame["row_key"]) and not kept & dropped
    assert set(result.dropped["duplicate_of"]) <= kept
    assert _find(result.kept, method).empty


@SETTINGS
@given(rows=row_texts, method=st.sampled_from(["exact", "near", "semantic"]),
       order=st.randoms(use_true_random=False))
def test_clusters_do_not_depend_on_input_order(rows, method, order):
    frame = texts_frame([_variant(b, k) for b, k in rows])
    shuffled = frame.sample(frac=1.0, random_state=order.randrange(2**31))
    first, second = _find(frame, method), _find(shuffled, method)
    assert groups(first) == groups(second)
    position = {k: i for i, k in enumerate(shuffled["row_key"])}
    for _, members in second.groupby("cluster_id"):  # "first" keeps the earliest row
        keys = members["row_key"].tolist()
        assert members.loc[members["kept"], "row_key"].item() == min(keys, key=position.get)


@SETTINGS
@given(st.text(max_size=40), st.lists(st.text(max_size=30), max_size=8))
def test_any_text_is_handled(first, rest):
    frame = texts_frame([first, *rest, first])
    result = dedup.apply_clusters(frame, dedup.find_duplicates(frame, near=MinHashConfig()))
    assert len(result.kept) + len(result.dropped) == len(frame)
    if dedup.normalize_text(first):
        assert len(frame) - 1 in set(result.dropped["row_key"])


@SETTINGS
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                         max_size=40))))
def test_connected_components_match_a_plain_union_find(case):
    n, edges = case
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    left = np.array([a for a, _ in edges], dtype=np.int64)
    right = np.array([b for _, b in edges], dtype=np.int64)
    labels = dedup.connected_components(n, left, right)
    expected = [min(y for y in range(n) if find(y) == find(x)) for x in range(n)]
    assert labels.tolist() == expected


def _random_clusters(seed: int) -> tuple[pd.DataFrame, dict]:
    """Clusters of 2-6 rows in shuffled order, one kept each, some members identical (an exact
    group), and overrides choosing 'all' or another member for some clusters."""
    rng = np.random.default_rng(seed)
    rows, key, overrides = [], 0, {}
    for cid in range(int(rng.integers(0, 25))):
        size = int(rng.integers(2, 7))
        keys = rng.permutation(np.arange(key, key + size)).tolist()
        key += size
        kept, group = int(rng.integers(size)), int(rng.choice([-1, cid]))
        for i, k in enumerate(keys):
            rows.append({"cluster_id": cid, "row_key": k, "kept": i == kept,
                         "keep_reason": "first in input order" if i == kept else "",
                         "method": str(rng.choice(["near", "semantic", "exact"])),
                         "similarity": float(rng.random()), "size": size,
                         "exact_group": group if rng.random() < 0.6 else -1})
        pick = rng.random()
        if pick < 0.2:
            overrides[cid] = dedup.KEEP_ALL
        elif pick < 0.4:
            overrides[cid] = int(rng.choice(keys))
    columns = ["cluster_id", "row_key", "kept", "keep_reason", "method", "similarity", "size",
               "exact_group"]
    clusters = pd.DataFrame(rows, columns=columns)
    return clusters.sample(frac=1, random_state=seed).reset_index(drop=True), overrides


def _dropped_by_hand(clusters: pd.DataFrame, overrides: dict) -> list[tuple]:
    """What apply_clusters must drop, cluster by cluster in id order, members in their order:
    every member but the keeper (the chosen row, else the first kept), none for 'all'."""
    out = []
    for cid, members in clusters.groupby("cluster_id", sort=True):
        choice = overrides.get(cid)
        if choice == dedup.KEEP_ALL:
            continue
        keeper = members[members["row_key"] == choice].iloc[0] if choice is not None \
            else members[members["kept"]].iloc[0]
        for m in members.itertuples(index=False):
            if m.row_key != keeper["row_key"]:
                exact = m.exact_group >= 0 and m.exact_group == keeper["exact_group"]
                out.append((m.row_key, dedup.REASONS["exact" if exact else m.method],
                            int(keeper["row_key"])))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_apply_clusters_drops_every_member_but_the_keeper_in_cluster_order(seed):
    clusters, overrides = _random_clusters(seed)
    keys = clusters["row_key"].unique()
    frame = pd.DataFrame({"row_key": keys.astype("int64"), "messages": [[]] * len(keys)})
    dropped = dedup.apply_clusters(frame, clusters, overrides=overrides).dropped
    assert list(dropped.columns) == list(DROP_COLUMNS)
    got = list(zip(dropped["row_key"].tolist(), dropped["reason"].tolist(),
                   dropped["duplicate_of"].tolist()))
    assert got == _dropped_by_hand(clusters, overrides)
    assert dedup.drop_plan(clusters, overrides)["row_key"].tolist() == dropped["row_key"].tolist()
    chosen = [d for d in dropped["detail"] if d.endswith("chosen by hand")]
    assert len(chosen) == sum(len(dropped[dropped["duplicate_of"] == k]) for k in
                              {v for v in overrides.values() if v != dedup.KEEP_ALL})
