"""The learned score (pure parts): features, fitting, agreement with labels, queue picking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench import learn as L
from workbench.exceptions import ConfigError

TOPICS = ["tax", "garden", "python", "travel", "music", "cooking", "football", "weather"]


def planted(n: int = 600, rate: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows whose bad ones carry a placeholder input or a one-word answer, as in Alpaca."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    prompts, responses = [], []
    for i, bad in enumerate(y):
        topic = TOPICS[rng.integers(len(TOPICS))]
        prompt = f"Explain something about {topic}, item {i}."
        answer = f"Here is a careful explanation of {topic} with details number {i}."
        if bad and rng.random() < 0.5:
            prompt += "\n\nNo input"
        elif bad:
            answer = "Yes"
        prompts.append(prompt)
        responses.append(answer)
    return pd.DataFrame({"prompt": prompts, "response": responses}), y


def features_of(frame: pd.DataFrame, dense: np.ndarray | None = None) -> L.Features:
    return L.Features(L.lexical_features(frame["prompt"], frame["response"]), dense)


def test_learned_score_finds_a_planted_signal_from_few_labels():
    frame, y = planted()
    feats = features_of(frame)
    rng = np.random.default_rng(1)
    train = np.concatenate([rng.choice(np.flatnonzero(y == 1), 10, replace=False),
                            rng.choice(np.flatnonzero(y == 0), 40, replace=False)])
    model = L.fit(feats, train, y[train])
    rest = np.setdiff1d(np.arange(len(y)), train)
    p = model.predict(feats, rest)
    assert L.auroc(y[rest], p) > 0.9
    assert model.calibrated and ((0 <= p) & (p <= 1)).all()
    auc, low, high = model.auroc()
    assert 0.8 < auc <= 1 and low <= auc <= high


def test_dense_features_alone_carry_a_signal():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    dense = rng.normal(size=(400, 16)).astype(np.float32)
    dense[:, 3] += 2.5 * y  # one informative column among noise
    feats = L.Features(None, dense)
    train = np.arange(200)
    model = L.fit(feats, train, y[train])
    assert L.auroc(y[200:], model.predict(feats, np.arange(200, 400))) > 0.9


@pytest.mark.parametrize("y, message", [
    (np.array([], dtype=int), "no labels yet"),
    (np.zeros(30, dtype=int), "0 bad labels: label at least 5 good and 5 bad"),
    (np.array([1] * 4 + [0] * 20), "4 bad labels"),
])
def test_too_few_labels_give_a_clear_error(y, message):
    frame, _ = planted(40)
    with pytest.raises(ConfigError, match=message):
        L.fit(features_of(frame), np.arange(len(y)), y)


def test_config_rejects_bad_options_naming_them():
    with pytest.raises(ConfigError, match="fields"):
        L.LearnConfig(fields=("prompt",))
    with pytest.raises(ConfigError, match="C="):
        L.LearnConfig(C=0)
    with pytest.raises(ConfigError, match="min_per_class"):
        L.LearnConfig(min_per_class=1)
    with pytest.raises(ConfigError, match="no features"):
        L.Features(None, None)


def test_dense_features_hold_embeddings_cosine_scores_and_lengths():
    vectors = {"user": np.eye(3, 4, dtype=np.float32), "assistant": np.eye(3, 4, dtype=np.float32)}
    scores = pd.DataFrame({"a_score": [1.0, np.nan, 3.0]})
    dense = L.dense_features(vectors, scores, [10, 20, 30], [5, 5, 5])
    # 4 + 4 embedding dims, the cosine, the score rank and its missing flag, two lengths.
    assert dense.shape == (3, 4 + 4 + 1 + 2 + 2)
    assert dense[:, 8].tolist() == [1.0, 1.0, 1.0]  # identical prompt and response vectors
    assert dense[:, 10].tolist() == [0.0, 1.0, 0.0]  # the missing flag


def test_auroc_matches_the_pairwise_definition_and_its_interval_covers_it():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    score = rng.normal(size=80) + y
    pairs = [(s_b > s_g) + 0.5 * (s_b == s_g) for s_b in score[y == 1] for s_g in score[y == 0]]
    assert L.auroc(y, score) == pytest.approx(np.mean(pairs))
    auc, low, high = L.auroc_ci(y, score)
    assert low < auc < high
    assert np.isnan(L.auroc(np.zeros(5), np.arange(5)))


def test_signal_agreement_reports_the_direction_that_separates():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    scores = pd.DataFrame({"length_score": 100 - 40 * y + rng.normal(0, 5, 300),
                           "repetition_score": 0.5 - 0.3 * y + rng.normal(0, 0.05, 300),
                           "noise_score": rng.normal(size=300)})
    table = L.signal_agreement(scores, y, {"length_score": "higher",
                                           "repetition_score": "lower",
                                           "noise_score": "higher"}).set_index("score")
    assert table.loc["length_score", "auroc"] > 0.95
    assert table.loc["length_score", "bad_rows_score"] == "lower (as declared)"
    # Declared "lower = better", but bad rows score lower: the table says so.
    assert table.loc["repetition_score", "auroc"] < 0.05
    assert table.loc["repetition_score", "bad_rows_score"] == "lower (opposite of declared)"
    assert table.loc["noise_score", "bad_rows_score"] == "no clear difference"


def test_fitted_weights_point_each_score_the_way_it_separates():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    scores = pd.DataFrame({"a_score": -y + rng.normal(0, 0.3, 300),
                           "b_score": y + rng.normal(0, 0.3, 300)})
    weights, better = L.fit_weights(scores, y)
    assert better == {"a_score": "higher", "b_score": "lower"}
    assert set(weights) == {"a_score", "b_score"} and max(weights.values()) == 1.0


def test_wilson_interval():
    p, low, high = L.wilson(8, 10)
    assert p == 0.8 and low == pytest.approx(0.490, abs=1e-3) and high == pytest.approx(0.943,
                                                                                       abs=1e-3)
    assert all(np.isnan(L.wilson(0, 0)))


def test_queue_mixes_likely_bad_unsure_and_random_rows_without_near_duplicates():
    p = np.linspace(0, 1, 100)
    vectors = np.zeros((100, 2), np.float32)
    vectors[:, 0] = 1.0  # every row the same direction ...
    vectors[::2] = [0.0, 1.0]  # ... except the even ones: two groups of near-identical rows
    picks = L.pick_queue(p, np.arange(100), 10, vectors=vectors)
    assert len(picks) == 2  # one row of each group, never two near-identical ones
    picks = L.pick_queue(p, np.arange(100), 10)
    sources = [pk.source for pk in picks]
    assert sources.count("likely_bad") == 3 and sources.count("unsure") == 4
    assert sources.count("random") == 3
    assert [pk.index for pk in picks][:3] == [99, 98, 97]
    unsure = [pk.index for pk in picks if pk.source == "unsure"]
    assert all(abs(i - 98) <= 5 for i in unsure)  # around the 98th percentile
    assert len({pk.index for pk in picks}) == 10 and all(pk.why for pk in picks)


def test_seeds_take_turns_between_sources_and_skip_labelled_rows():
    sources = [L.SeedSource("rule:a", np.array([1, 2, 3]), ["a1", "a2", "a3"]),
               L.SeedSource("random", np.array([4, 5, 6, 1]), ["r"] * 4)]
    picks = L.pick_seeds(sources, exclude={2}, n=5)
    assert [p.source for p in picks][:2] == ["rule:a", "random"]
    assert {p.index for p in picks} == {1, 3, 4, 5, 6}  # all but the labelled row, once each
    assert len(picks) == 5 and all(p.why in ("a1", "a3", "r") for p in picks)


def test_rankdata_matches_scipy():
    from scipy.stats import rankdata as scipy_rankdata

    rng = np.random.default_rng(0)
    for values in (rng.normal(size=500), rng.integers(0, 4, size=500).astype(float),
                   np.array([2.0]), np.array([]), np.array([1.0, np.nan, 0.5])):
        np.testing.assert_array_equal(L.rankdata(values), scipy_rankdata(values))
