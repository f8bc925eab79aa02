"""Tests of workbench.score: heuristics on rows with an obvious right order, properties of every
scorer, model scoring (batched = one at a time), the cache, the combined score and the job."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import lm_home
from hypothesis import given, settings
from hypothesis import strategies as st

from workbench import jobs, tasks
from workbench import score as S
from workbench.cache import StoreCache, get_scores
from workbench.exceptions import ConfigError
from workbench.models import tiny_lm
from workbench.schema import Example, examples_frame
from workbench.store import Store

QUESTION = "Explain why the sky is blue."
GOOD = ("The sky looks blue because sunlight is scattered by the molecules of the air. Blue "
        "light has a shorter wavelength than red light, so it is scattered much more strongly, "
        "and that scattered light reaches our eyes from every direction of the sky.")
PLACEHOLDER = "TODO"
LOOPING = ("The sky is blue because the sky is blue because the sky is blue because the sky is "
           "blue because the sky is blue because the sky is blue because the sky is blue.")
ECHO = "Explain why the sky is blue. Explain why the sky is blue."
SYSTEM = "You are a careful assistant who answers questions about science for curious students."


def chat_frame(pairs: list[tuple[str, str]], *, system: str | None = None) -> pd.DataFrame:
    """Return a step frame with one (optional system) + user + assistant exchange per pair."""
    head = ({"role": "system", "content": system},) if system else ()
    return examples_frame([Example(head + ({"role": "user", "content": q},
                                           {"role": "assistant", "content": a}))
                           for q, a in pairs])


def answers(*texts: str) -> pd.DataFrame:
    return chat_frame([(QUESTION, t) for t in texts])


@pytest.fixture(scope="module")
def tiny():
    return tiny_lm()


# --- heuristics: the obvious orderings ------------------------------------------------------------

def test_placeholder_scores_below_a_good_answer():
    frame = answers(GOOD, PLACEHOLDER)
    length = S.length_score(frame)
    assert length[0] > length[1] == 1
    assert S.length_score(frame, unit="chars")[1] == 4
    combined = S.combined_score(S.score_frame(frame, ["length", "repetition"]),
                                {"length": 1, "repetition": 1})
    assert combined[0] > combined[1]


def test_looping_answer_scores_below_a_clean_one():
    frame = answers(GOOD, LOOPING)
    assert S.repetition_score(frame)[1] > 0.5 > S.repetition_score(frame)[0] == 0.0
    diversity = S.lexical_diversity_score(frame)
    assert diversity[0] > diversity[1]
    scored = S.score_frame(frame, ["repetition", "lexical_diversity"])
    combined = S.combined_score(scored, {"repetition": 2, "lexical_diversity": 1})
    assert combined.tolist() == [1.0, 0.0]  # repetition is lower-better: the registry knows


def test_an_echo_of_the_prompt_overlaps_more_than_an_answer():
    overlap = S.overlap_score(answers(GOOD, ECHO))
    # Every bigram of the echo is in the prompt but the one across the repeat ("blue explain").
    assert overlap[1] > 0.9 and overlap[0] < 0.2


def test_readability_prefers_short_plain_sentences():
    plain = "The cat sat on the mat. It was warm. The cat slept."
    dense = ("Notwithstanding considerable methodological heterogeneity, institutional "
             "epistemological commitments systematically undermine interdisciplinary "
             "collaboration opportunities.")
    scores = S.readability_score(answers(plain, dense))
    assert scores[0] > 80 > 0 > scores[1]
    assert S.readability_score(answers("...")).tolist() == [0.0]


def test_format_checks_are_user_defined():
    frame = answers('{"name": "Ada", "age": 36}', '```json\n[1, 2]\n```', "Name: Ada",
                    "- one\n- two")
    assert S.format_score(frame, valid_json=True).tolist() == [1, 1, 0, 0]
    assert S.format_score(frame, prefix="Name:").tolist() == [0, 0, 1, 0]
    assert S.format_score(frame, pattern=r"\d+").tolist() == [1, 1, 0, 0]
    assert S.format_score(frame, pattern=r"Name: \w+", full_match=True).tolist() == [0, 0, 1, 0]
    assert S.format_score(frame, style="markdown_list").tolist() == [0, 0, 0, 1]
    both = S.format_score(frame, valid_json=True, style="single_line")
    assert both.tolist() == [1.0, 0.5, 0.5, 0.0]  # share of the checks passed


@pytest.mark.parametrize("options, message", [
    ({}, "at least one check"),
    ({"pattern": "(unclosed"}, "not a valid regular expression"),
    ({"style": "fancy"}, "style='fancy'"),
])
def test_format_check_errors_name_the_option(options, message):
    with pytest.raises(ConfigError, match=message):
        S.format_score(answers(GOOD), **options)


# --- properties of every heuristic ---------------------------------------------------------------

HEURISTICS = {name: s for name, s in S.SCORERS.items() if s.kind == "heuristic"}
OPTIONS = {"format": {"valid_json": True, "style": "sentence"}}
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=80)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(texts, texts), min_size=1, max_size=8), st.integers(0, 8))
def test_heuristics_are_finite_aligned_deterministic_and_batchable(pairs, cut):
    frame = chat_frame([(q if q.strip() else "q", a if a.strip() else "a") for q, a in pairs])
    for name, scorer in HEURISTICS.items():
        options = {**scorer.defaults, **OPTIONS.get(name, {})}
        values = scorer.fn(frame, **options)
        assert values.shape == (len(frame),) and np.isfinite(values).all(), name
        assert np.array_equal(values, scorer.fn(frame, **options)), name
        parts = [scorer.fn(part, **options) for part in (frame.iloc[:cut], frame.iloc[cut:])
                 if len(part)]
        assert np.array_equal(values, np.concatenate(parts)), name  # batch by batch = whole


def test_registry_lists_every_scorer_with_its_direction():
    table = S.scorer_table()
    assert set(table["name"]) == {"length", "lexical_diversity", "repetition", "readability",
                                  "overlap", "format", "perplexity", "ifd", "judge", "learned"}
    assert (table["column"] == table["name"] + "_score").all()
    assert set(table["better"]) == {"higher", "lower"}
    for scorer in S.SCORERS.values():
        assert scorer.meaning.startswith("higher = ")
        if scorer.name not in ("judge", "learned"):
            assert "higher =" in (scorer.fn.__doc__ or ""), scorer.name
    assert S.direction_of("perplexity_score") == "lower" and S.direction_of("nope") is None


# --- combined score ------------------------------------------------------------------------------

def test_normalize_respects_direction_and_keeps_missing_values_missing():
    assert S.normalize([1, 5, 3]).tolist() == [0.0, 1.0, 0.5]
    assert S.normalize([1, 5, 3], better="lower").tolist() == [1.0, 0.0, 0.5]
    assert S.normalize([0, 10, 100], method="minmax").tolist() == [0.0, 0.1, 1.0]
    assert S.normalize([0, 10, 1000]).tolist() == [0.0, 0.5, 1.0]  # rank: outliers do not matter
    assert S.normalize([2, 2]).tolist() == [0.5, 0.5]
    out = S.normalize([1, np.nan, 3])
    assert out[0] == 0.0 and np.isnan(out[1]) and out[2] == 1.0


def test_combined_score_weights_and_missing_values():
    frame = pd.DataFrame({"length_score": [10.0, 20.0, 30.0], "perplexity_score": [5.0, 50.0, 9.0],
                          "judge_score": [8.0, 7.0, np.nan]})
    only_length = S.combined_score(frame, {"length": 1})
    assert only_length.tolist() == [0.0, 0.5, 1.0]
    mixed = S.combined_score(frame, {"length": 1, "perplexity_score": 3})
    assert mixed.tolist() == [0.75, 0.125, 0.625]  # (1*len + 3*(1 - ppl rank)) / 4
    with_judge = S.combined_score(frame, {"length": 1, "judge": 1})
    assert np.isnan(with_judge[2])  # a failed judge row is not silently ranked
    flipped = S.combined_score(frame, {"length": 1}, better={"length": "lower"})
    assert flipped.tolist() == [1.0, 0.5, 0.0]


@pytest.mark.parametrize("weights, message", [
    ({"missing": 1}, "no column 'missing'"),
    ({"length": -1}, "must be a number >= 0"),
    ({"length": 0}, "positive weight"),
    ({}, "positive weight"),
])
def test_combined_score_rejects_bad_weights(weights, message):
    with pytest.raises(ConfigError, match=message):
        S.combined_score(pd.DataFrame({"length_score": [1.0]}), weights)


# --- model scoring with a tiny random model -------------------------------------------------------

def mixed_frame() -> pd.DataFrame:
    """Rows of very different lengths, a multi-turn chat, and a row with no prompt."""
    rows = [Example(({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"})),
            Example(({"role": "user", "content": "The cat reads a short book. " * 12},
                     {"role": "assistant", "content": "They like the red door. " * 9})),
            Example(({"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                     {"role": "assistant", "content": "6, because three and three is six."})),
            Example(({"role": "assistant", "content": "Only an answer, no question."},))]
    return examples_frame(rows)


def one_at_a_time(frame: pd.DataFrame, lm) -> np.ndarray:
    return np.vstack([S.model_scores(frame.iloc[[i]], lm=lm).to_numpy() for i in range(len(frame))])


def test_batched_scores_equal_one_at_a_time(tiny):
    frame = mixed_frame()
    batched = S.model_scores(frame, lm=tiny, batch_tokens=4096)  # all rows in one padded batch
    assert list(batched.columns) == ["perplexity_score", "ifd_score"]
    assert batched.index.equals(frame.index)
    single = one_at_a_time(frame, tiny)
    np.testing.assert_allclose(np.log(batched["perplexity_score"]), np.log(single[:, 0]),
                               atol=1e-5)
    np.testing.assert_allclose(batched["ifd_score"], single[:, 1], atol=1e-5)
    for budget in (1, 64, 300):
        np.testing.assert_allclose(S.model_scores(frame, lm=tiny, batch_tokens=budget),
                                   batched, rtol=1e-5)


def test_batched_scores_equal_a_plain_forward_pass(tiny):
    # Reference: the whole sequence through the model with `labels`, no batching or tricks.
    import torch

    model, tokenizer = tiny
    frame = mixed_frame()
    encoded = S.encode_rows(frame, tokenizer)
    expected = []
    with torch.inference_mode():
        for row in encoded.rows:
            ids = torch.tensor([row.context + row.response])
            labels = ids.clone()
            labels[0, :len(row.context)] = -100
            expected.append(math.exp(float(model(input_ids=ids, labels=labels).loss)))
    got = S.model_scores(frame, lm=tiny, scores=("perplexity",))["perplexity_score"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_scoring_tokens_are_prompt_template_then_response_and_end_of_turn(tiny):
    _, tokenizer = tiny
    encoded = S.encode_rows(chat_frame([("Hi", "Hello!")]), tokenizer)
    row = encoded.rows[0]
    assert tokenizer.decode(row.context) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(row.response) == "Hello!<|im_end|>"
    assert tokenizer.decode(encoded.bare) == "<|im_start|>assistant\n"


def test_a_row_without_a_prompt_has_ifd_one(tiny):
    scores = S.model_scores(mixed_frame(), lm=tiny)
    assert scores["ifd_score"].iloc[3] == pytest.approx(1.0, abs=1e-9)
    assert np.isfinite(scores.to_numpy()).all() and (scores["perplexity_score"] > 1).all()


def test_shared_system_prompt_is_computed_once_with_the_same_values(tiny, monkeypatch):
    frame = chat_frame([(f"Question number {i} about cats", "Cats sleep a lot. " * (i + 1))
                        for i in range(5)], system=SYSTEM)
    contexts = [r.context for r in S.encode_rows(frame, tiny[1]).rows]
    assert S._shared_prefix(contexts) >= 15
    shared = S.model_scores(frame, lm=tiny)
    monkeypatch.setattr(S, "SHARED_MIN", 10**6)  # turn prefix sharing off
    np.testing.assert_allclose(S.model_scores(frame, lm=tiny), shared, rtol=1e-5)


def test_full_forward_fallback_gives_the_same_values(tiny, monkeypatch):
    frame = mixed_frame()
    fast = S.model_scores(frame, lm=tiny)
    monkeypatch.setitem(S._HEAD_OK, tiny[0], False)  # as for a model that soft-caps its logits
    np.testing.assert_allclose(S.model_scores(frame, lm=tiny), fast, rtol=1e-5)


def test_long_rows_are_truncated_keeping_the_response_start(tiny):
    frame = mixed_frame()
    encoded = S.encode_rows(frame, tiny[1], max_length=24)
    assert all(len(r.context) + len(r.response) <= 24 for r in encoded.rows)
    assert all(len(r.response) <= 24 - len(encoded.bare) for r in encoded.rows)
    assert np.isfinite(S.model_scores(frame, lm=tiny, max_length=24).to_numpy()).all()


def test_model_options_are_checked(tiny):
    with pytest.raises(ConfigError, match="scores="):
        S.model_scores(mixed_frame(), lm=tiny, scores=("bleu",))
    with pytest.raises(ConfigError, match="max_length=3"):
        S.model_scores(mixed_frame(), lm=tiny, max_length=3)


def test_progress_counts_tokens_and_can_stop_the_run(tiny):
    seen: list[tuple[int, int]] = []
    S.model_scores(mixed_frame(), lm=tiny, batch_tokens=64, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)

    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        S.model_scores(mixed_frame(), lm=tiny, progress=stop)


# --- the cache -----------------------------------------------------------------------------------

def test_score_frame_reads_the_cache_and_computes_only_new_rows(tiny, monkeypatch):
    store = Store(":memory:")
    frame = mixed_frame()
    calls: list[int] = []
    real = S.model_scores

    def counting(sub, **kwargs):
        calls.append(len(sub))
        return real(sub, **kwargs)

    monkeypatch.setattr(S, "model_scores", counting)
    specs = ["length", ("perplexity", {"model": "tiny-0"}), ("ifd", {"model": "tiny-0"})]
    first = S.score_frame(frame, specs, cache=StoreCache(store), lm=tiny)
    assert calls == [4]  # perplexity and ifd share one model pass
    again = S.score_frame(frame, specs, cache=StoreCache(store), lm=tiny)
    assert calls == [4]
    pd.testing.assert_frame_equal(first, again)
    grown = pd.concat([frame, answers(GOOD)], ignore_index=True)
    S.score_frame(grown, specs, cache=StoreCache(store), lm=tiny)
    assert calls == [4, 1]
    other = S.score_frame(frame, [("perplexity", {"model": "tiny-0", "max_length": 64})],
                          cache=StoreCache(store), lm=tiny)  # other options: another cache entry
    assert calls == [4, 1, 4] and len(other) == 4
    key = S.SCORERS["ifd"].cache_params({"model": "tiny-0"})
    assert "batch_tokens" not in key and len(get_scores(store, frame["id"].tolist(), "ifd", key)) == 4


def test_duplicate_rows_are_scored_once_and_both_get_the_value(monkeypatch):
    frame = pd.concat([answers(GOOD), answers(GOOD)], ignore_index=True)
    seen: list[int] = []

    def counting(sub: pd.DataFrame, **options) -> np.ndarray:
        seen.append(len(sub))
        return np.ones(len(sub))

    monkeypatch.setitem(S.SCORERS, "length", S.Scorer("length", counting, "higher",
                                                      "higher = longer"))
    out = S.score_frame(frame, ["length"], cache=StoreCache(Store(":memory:")))
    assert seen == [1] and out["length_score"].tolist() == [1.0, 1.0]


def test_score_specs_are_checked_and_columns_can_be_named():
    frame = answers(GOOD, '{"a": 1}')
    out = S.score_frame(frame, [S.ScoreSpec("format", {"valid_json": True}, column="json_score")])
    assert out["json_score"].tolist() == [0.0, 1.0]
    with pytest.raises(ConfigError, match="unknown scorer 'bleu'"):
        S.score_frame(frame, ["bleu"])
    with pytest.raises(ConfigError, match="end with '_score'"):
        S.ScoreSpec("length", column="len")


# --- the background job ---------------------------------------------------------------------------

def _store_with(tmp_path, frame: pd.DataFrame) -> tuple[str, int]:
    path = str(tmp_path / "store.duckdb")
    store = Store(path)
    version = store.add_examples("demo", [Example(tuple(m)) for m in frame["messages"]])
    return path, version


def test_model_score_task_fills_the_cache_in_chunks_and_resumes(tmp_path, tiny_folder):
    path, version = _store_with(tmp_path, mixed_frame())
    params = {"store": path, "version_id": version, "model": tiny_folder, "chunk_rows": 2}
    job = jobs.run_inline("workbench.score.model_score_task", params, home=tmp_path / "runs")
    assert job.state == "done", job.error
    assert job.result["rows"] == 4 and job.result["scored"] == 4 and job.result["cached"] == 0
    events = jobs.events(job.run_dir)
    assert events[-1]["step"] == events[-1]["total"] == job.result["tokens"]
    assert events[-1]["rows"] == 4 and "examples_per_s" in events[-1]
    store = Store(path)
    frame = store.frame(version)
    cached = S.score_frame(frame, [("ifd", {"model": tiny_folder})], cache=StoreCache(store), lm=(None, None))
    assert np.isfinite(cached["ifd_score"]).all()  # read from the cache: the lm is never used
    again = jobs.run_inline("workbench.score.model_score_task", params, home=tmp_path / "runs")
    assert again.result["cached"] == 4 and again.result["scored"] == 0


def test_cancelled_job_keeps_the_chunks_it_finished(tmp_path, tiny_folder):
    path, version = _store_with(tmp_path, mixed_frame())

    class Ctx:
        def log(self, message):
            pass

        def progress(self, step, total=None, **metrics):
            # a finished chunk was reported (not the start event naming the device): stop
            # now, as a cancel would
            if metrics.keys() - {"device"}:
                raise jobs.Cancelled()

    with pytest.raises(jobs.Cancelled):
        tasks.model_score({"store": path, "version_id": version, "model": tiny_folder,
                            "chunk_rows": 1}, Ctx())
    store = Store(path)
    ids = store.frame(version)["id"].tolist()
    key = S.SCORERS["perplexity"].cache_params({"model": tiny_folder})
    assert len(get_scores(store, ids, "perplexity", key)) == 1


# --- the real default model (slow) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def default_lm(converted_lm):
    from workbench.models import load_lm

    with lm_home(converted_lm.home):  # the session's converted copy (conftest)
        return load_lm("default")


@pytest.mark.slow
def test_default_model_batched_equals_one_at_a_time(default_lm):
    frame = pd.concat([answers(GOOD, PLACEHOLDER, LOOPING), mixed_frame(),
                       chat_frame([("What is 2+2?", "4"), ("Name a colour.", "Blue.")])],
                      ignore_index=True)
    assert len(frame) == 9
    batched = S.model_scores(frame, lm=default_lm)
    single = one_at_a_time(frame, default_lm)
    np.testing.assert_allclose(np.log(batched["perplexity_score"]), np.log(single[:, 0]),
                               atol=1e-4)
    np.testing.assert_allclose(batched["ifd_score"], single[:, 1], atol=1e-4)


@pytest.mark.slow
def test_default_model_ranks_a_good_answer_above_a_placeholder(default_lm):
    scores = S.model_scores(answers(GOOD, PLACEHOLDER), lm=default_lm)
    ifd = scores["ifd_score"].to_numpy()
    # The question helps predict a real answer (IFD below 1), not a placeholder (about 1).
    # Measured with SmolLM2-135M: 0.985 for the answer, 1.026 for the placeholder.
    assert ifd[0] < 1.0 <= ifd[1]
    assert scores["perplexity_score"].iloc[0] < scores["perplexity_score"].iloc[1]
