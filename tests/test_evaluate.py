"""Evaluation: batched generation (tiny model), metrics on hand-made cases, bootstrap, import,
the eval job with cancel, and (slow) the real default model on the sample eval set."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import torch
from conftest import lm_home

from workbench import evaluate as ev
from workbench import generation, jobs, models
from workbench.cache import StoreCache
from workbench.exceptions import ConfigError, ImportFormatError
from workbench.schema import Example
from workbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
EVAL_FILE = ROOT / "sample_data" / "support_eval.jsonl"
STYLE = orjson.loads((ROOT / "sample_data" / "defects.json").read_bytes())["style"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, here and in job workers: on a shared 2-core machine two OpenMP threads
    wait on each other (~20 ms per tiny matmul; the real model's generation runs 3-7x slower)."""
    models.configure_torch_threads()
    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


def lively_tiny_lm(seed: int = 0):
    """A tiny random model with sharp logits (varied text) and an eos it sometimes picks."""
    model, tokenizer = models.tiny_lm(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(25)  # default init gives near-uniform logits: one token forever
        emb = model.get_input_embeddings().weight  # tied with the output head
        g = torch.Generator().manual_seed(1)
        v = torch.randn(emb.shape[1], generator=g)
        # The pad row (= eos here) starts at zero, so eos would never win an argmax.
        emb[tokenizer.eos_token_id] = v / v.norm() * emb.norm(dim=1).mean() * 1.5
    return model, tokenizer


@pytest.fixture(scope="module")
def tiny():
    return lively_tiny_lm()


def chats(n: int = 12) -> list[list[dict]]:
    """Conversations of varied length, some with a system turn and a reference answer."""
    out = []
    for k in range(1, n + 1):
        turns = [{"role": "user", "content": "The cat reads a short book. " * k + "Hello!"},
                 {"role": "assistant", "content": "Paris is the capital."}]
        if k % 3 == 0:
            turns.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        out.append(turns)
    return out


# ---------------------------------------------------------------- generation


def test_batched_greedy_equals_one_at_a_time_and_keeps_order(tiny):
    model, tokenizer = tiny
    config = ev.GenerationConfig(max_new_tokens=24, batch_size=5)
    batched = ev.generate_batch(model, tokenizer, chats(), config)
    single = [ev.generate_batch(model, tokenizer, [c], ev.GenerationConfig(max_new_tokens=24,
                                                                        batch_size=1))[0]
              for c in chats()]
    assert batched == single
    # the eos planted in the tiny model stops some rows early, others run to the limit
    assert {g.hit_max for g in batched} == {True, False}
    assert len({g.token_ids for g in batched}) == len(batched)
    assert [g.token_ids for g in batched] == hf_generate(model, tokenizer, chats(), config)


def hf_generate(model, tokenizer, conversations, config) -> list[tuple[int, ...]]:
    """transformers' own generate, one prompt at a time: the reference for our decode loop."""
    hf_config = ev.hf_generation_config(model, tokenizer, config)
    stops = set(ev.stop_token_ids(model, tokenizer))
    out = []
    for ids in ev.encode_prompts(tokenizer, [ev.prompt_messages(c) for c in conversations]):
        x = torch.tensor([ids])
        with torch.no_grad():
            new = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 generation_config=hf_config)[0, len(ids):].tolist()
        out.append(tuple(new[:next((i for i, t in enumerate(new) if t in stops), len(new))]))
    return out


def test_length_batches_trade_padding_against_more_batches():
    assert ev.length_batches([5, 9, 7, 8], 2, overhead=5) == [[1, 3], [2, 0]]
    assert ev.length_batches([5, 9, 7, 8], 2) == [[1], [3], [2], [0]]  # no overhead: no padding
    lengths = [200, 40, 42, 41, 190, 39]
    # cheap batches: long prompts do not drag short ones into their padding
    assert ev.length_batches(lengths, 8, overhead=100) == [[0, 4], [2, 3, 1, 5]]
    # costly batches (long generations): one batch, padding and all
    assert ev.length_batches(lengths, 8, overhead=1000) == [[0, 4, 2, 3, 1, 5]]
    assert [len(b) for b in ev.length_batches([10] * 5, 2, overhead=1)] in ([2, 2, 1],
                                                                            [1, 2, 2])
    assert ev.length_batches([], 4) == []


def test_prompt_is_rendered_without_the_reference_answer(tiny):
    _, tokenizer = tiny
    (ids,) = ev.encode_prompts(tokenizer, [ev.prompt_messages(chats(1)[0])])
    text = tokenizer.decode(ids)
    assert "Paris" not in text and text.endswith("<|im_start|>assistant\n")
    multi = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and now?"}]
    assert ev.prompt_messages(multi) == multi  # a prompt already: earlier answers stay
    assert ev.prompt_messages([*multi, {"role": "assistant", "content": "ref"}]) == multi


def test_multi_turn_prompts_generate_the_same_alone_and_in_a_batch(tiny):
    model, tokenizer = tiny
    multi = [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."},
             {"role": "user", "content": "The cat reads a short book."}]
    config = ev.GenerationConfig(max_new_tokens=10)
    together = ev.generate_batch(model, tokenizer, [multi, multi[:1], multi + [
        {"role": "assistant", "content": "reference"}]], config)
    alone = ev.generate_batch(model, tokenizer, [multi], config)[0]
    assert together[0] == together[2] == alone != together[1]


def test_generation_stops_at_stop_tokens_and_strips_specials(tiny):
    model, tokenizer = tiny
    stops = ev.stop_token_ids(model, tokenizer)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stops
    hello = tokenizer("Hello!", add_special_tokens=False)["input_ids"]
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    ids = [im_start, *hello, stops[0], *hello]
    got = generation._decode(tokenizer, ids, set(stops), max_new_tokens=len(ids))
    assert got.text == "Hello!" and got.token_ids == (im_start, *hello) and not got.hit_max
    cut = generation._decode(tokenizer, hello, set(stops), max_new_tokens=len(hello))
    assert cut.hit_max and cut.text == "Hello!"


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny):
    model, tokenizer = tiny
    config = ev.GenerationConfig(max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.95,
                                 top_k=50, seed=3, batch_size=4)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = ev.generate_batch(model, tokenizer, chats(6), config)
    assert torch.equal(torch.rand(1), before)
    assert ev.generate_batch(model, tokenizer, chats(6), config) == first
    other = ev.generate_batch(model, tokenizer, chats(6),
                              ev.GenerationConfig(**{**config.to_dict(), "seed": 4}))
    assert other != first


def test_progress_reports_rows_and_tokens(tiny):
    model, tokenizer = tiny
    seen = []
    out = ev.generate_batch(model, tokenizer, chats(7), ev.GenerationConfig(max_new_tokens=4,
                                                                          batch_size=3),
                            progress=lambda d, n, t: seen.append((d, n, t)))
    done = [d for d, _, _ in seen]
    assert done[-1] == 7 and {n for _, n, _ in seen} == {7}
    assert all(0 < b - a <= 3 for a, b in zip([0, *done], done))  # one call per batch of <= 3
    assert seen[-1][2] == sum(g.n_tokens for g in out)


def test_generation_config_names_bad_fields():
    with pytest.raises(ConfigError, match="max_new_tokens"):
        ev.GenerationConfig(max_new_tokens=0)
    with pytest.raises(ConfigError, match="batch_size"):
        ev.GenerationConfig(batch_size=1.5)
    with pytest.raises(ConfigError, match="top_p"):
        ev.GenerationConfig(do_sample=True, top_p=0)
    with pytest.raises(ConfigError, match="temperature=0.7 only apply when sampling"):
        ev.GenerationConfig(temperature=0.7)
    with pytest.raises(ConfigError, match="unknown generation option.*beams"):
        ev.GenerationConfig.from_dict({"beams": 4})
    cfg = ev.GenerationConfig.from_dict({"max_new_tokens": 8})
    assert ev.GenerationConfig.from_dict(cfg.to_dict()) == cfg


# ---------------------------------------------------------------- metrics


def test_exact_match_normalises_case_punctuation_articles():
    assert ev.exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert ev.exact_match("Eiffel", "eiffel tower") == 0.0
    assert ev.exact_match("", "") == 1.0
    assert ev.exact_match("Café — «déjà vu»", "cafe deja vu") == 0.0  # accents are kept
    assert ev.exact_match("Café — «déjà vu»", "café déjà vu") == 1.0


def test_token_f1_squad_values():
    assert ev.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)  # P=1, R=2/3
    assert ev.token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # counts clip
    assert ev.token_f1("", "") == 1.0 and ev.token_f1("", "cat") == 0.0
    assert ev.token_f1("dog", "cat") == 0.0
    assert ev.token_f1("日本 東京", "東京") == pytest.approx(2 / 3)


def test_rouge_l_known_values():
    # LCS("the cat sat on the mat", "the cat lay on the mat") = 5 of 6 and 6
    assert ev.rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS = "a c" of 3 and 4 tokens: P=2/3, R=2/4
    assert ev.rouge_l("a b c", "a x c y") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert ev.rouge_l("", "") == 1.0 and ev.rouge_l("x", "") == 0.0
    assert ev.rouge_l("Ünïcode wörds", "ünïcode WÖRDS") == 1.0
    assert ev.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_length_ratio_repetition_distinct():
    assert ev.length_ratio("one two", "one two three four") == 0.5
    assert ev.length_ratio("word", "") == 1.0
    loop = "I can help. " * 10
    assert ev.repetition(loop) > 0.8 and ev.repetition("a b c d e f g") == 0.0
    assert ev.repetition("") == 0.0
    assert ev.distinct_n("a b a b a b") == pytest.approx(2 / 5)
    assert ev.distinct_n("single") == 1.0


def test_similarity_uses_vectors_and_zeroes_empty_answers():
    a = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    b = np.array([[1, 0], [1, 0], [1, 0]], np.float32)
    sims = ev.similarity(["x", "y", ""], ["r", "r", "r"], vectors=(a, b))
    assert sims == pytest.approx([1.0, math.sqrt(0.5), 0.0])
    with pytest.raises(ConfigError, match="same shape"):
        ev.cosine_rows(a, b[:2])


def test_text_vectors_are_cached_in_the_store():
    encoder = models.tiny_embedder()
    store = Store(":memory:")
    first = ev.text_vectors(["hello there", "hello there", "bye"], cache=StoreCache(store),
                            encoder=encoder)
    assert first.shape == (3, 32) and np.allclose(first[0], first[1])

    class Refuses:
        def encode(self, *a, **k):
            raise AssertionError("should have come from the cache")

    again = ev.text_vectors(["bye", "hello there"], cache=StoreCache(store), encoder=Refuses())
    assert np.allclose(again, first[[2, 0]])


def test_style_and_regex_format_checks():
    checks = ev.as_checks({"has_step": r"^1\. ", "short": lambda t: len(t) < 400},
                          style=STYLE)
    good = "Thanks for reaching out! " + "word " * 40 + "\n1. Do it.\n\n— Northwind Support"
    bad = "Sure, here is how. 1. Do it."
    table = ev.format_checks([good, bad], checks)
    assert table["format_ok"].tolist() == [1.0, 0.0]
    assert table.loc[1, ["fmt_starts_with", "fmt_ends_with", "fmt_min_words",
                         "fmt_has_step"]].tolist() == [False, False, False, False]
    assert table.loc[1, "fmt_short"]
    with pytest.raises(ConfigError, match="unknown style check.*starts"):
        ev.style_checks({"starts": "x"})
    with pytest.raises(ConfigError, match="invalid regex"):
        ev.as_checks(["("])
    assert ev.as_checks(["^a", "b$"]).keys() == {"regex_0", "regex_1"}


def test_score_predictions_adds_metric_columns():
    frame = pd.DataFrame({"prediction": ["the cat", ""], "reference": ["a cat", "a dog"]})
    a = np.eye(2, dtype=np.float32)
    scored = ev.score_predictions(frame, checks=ev.as_checks(["cat"]), vectors=(a, a))
    assert scored["exact_match"].tolist() == [1.0, 0.0]
    assert scored["similarity"].tolist() == [1.0, 0.0]
    assert scored["format_ok"].tolist() == [1.0, 0.0]
    assert set(ev.metric_columns(scored)) >= {"token_f1", "rouge_l", "repetition", "fmt_regex_0"}
    with pytest.raises(ConfigError, match="reference"):
        ev.score_predictions(frame[["prediction"]], embedder=None)


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    values = np.random.default_rng(0).random(200)
    ci = ev.bootstrap_ci(values, n=500, seed=7)
    assert ci.lo <= ci.mean <= ci.hi and ci.n == 200
    assert ci.mean == pytest.approx(values.mean())
    assert ev.bootstrap_ci(values, n=500, seed=7) == ci
    assert ev.bootstrap_ci(values, n=500, seed=8) != ci
    assert 0.05 < ci.hi - ci.lo < 0.12  # ~ 4 standard errors of a uniform mean
    assert ev.bootstrap_ci([1.0, 1.0, float("nan")]) == ev.CI(1.0, 1.0, 1.0, 2)
    assert math.isnan(ev.bootstrap_ci([]).mean)


def test_summarize_covers_each_metric():
    frame = pd.DataFrame({"exact_match": [1.0, 0.0, 1.0, 1.0], "fmt_x": [True, False, True, True]})
    summary = ev.summarize(frame, n=200)
    assert summary["exact_match"]["mean"] == 0.75 and summary["fmt_x"]["n"] == 4


# ---------------------------------------------------------------- importing predictions


def test_import_predictions_rejects_bad_lines_with_their_field(tmp_path):
    path = tmp_path / "outside.jsonl"
    lines = [
        {"prompt": "Q1", "reference": "A1", "prediction": "A1", "model": "gpt-x", "topic": "t"},
        {"prompt": "Q2", "reference": "A2", "prediction": 3, "model": "gpt-x"},
        "not json {",
        {"prompt": "Q3", "reference": "A3", "model": "gpt-x"},
        {"prompt": "Q4", "reference": "A4", "prediction": ""},
        ["a list"],
    ]
    path.write_text("\n".join(x if isinstance(x, str) else orjson.dumps(x).decode()
                              for x in lines) + "\n\n")
    frame, report = ev.import_predictions(path)
    assert frame["prompt"].tolist() == ["Q1"] and frame["model"].tolist() == ["gpt-x"]
    assert orjson.loads(frame["metadata"][0]) == {"topic": "t"}
    assert report.rows_read == 6 and report.imported + len(report.rejected) == 6
    assert [(r.line, r.field) for r in report.rejected] == [
        (2, "prediction"), (3, "(line)"), (4, "prediction"), (5, "model"), (6, "(line)")]
    assert "wrong type: int" in report.rejected[0].reason
    frame, report = ev.import_predictions(path, model="fallback")
    assert frame["model"].tolist() == ["gpt-x", "fallback"]


def test_import_predictions_csv_and_clear_file_errors(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,reference,prediction,model\n"multi\nline",ref,pred,m\n,r,p,m\n')
    frame, report = ev.import_predictions(path)
    assert frame["prompt"].tolist() == ["multi\nline"]
    assert [(r.line, r.field) for r in report.rejected] == [(4, "prompt")]
    with pytest.raises(ImportFormatError, match="unknown file type"):
        ev.import_predictions(tmp_path / "x.txt") if (tmp_path / "x.txt").write_text("a") else 0
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"prompt": "q"}\n')
    with pytest.raises(ImportFormatError, match="no predictions imported.*line 1|e.jsonl:1"):
        ev.import_predictions(empty)


def test_import_predictions_reads_a_json_array(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(orjson.dumps([{"prompt": "Q", "reference": "A", "prediction": "A"},
                                  {"prompt": "Q2"}]).decode())
    frame, report = ev.import_predictions(path, model="m")
    assert len(frame) == 1 and [(r.line, r.field) for r in report.rejected] == [(2, "reference")]


def test_imported_ids_match_eval_rows():
    example = Example(({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}))
    assert ev._pair_id("Q", "A") == example.id


# ---------------------------------------------------------------- the eval job


@pytest.fixture
def eval_store(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    examples = [Example(tuple(c), {"category": "even" if i % 2 else "odd"})
                for i, c in enumerate(chats(6))]
    vid = store.add_examples("evalset", examples)
    return store, vid


def tiny_model_dir(tmp_path: Path) -> Path:
    model, tokenizer = lively_tiny_lm()
    folder = tmp_path / "tiny-model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_eval_job_writes_predictions_and_summary(eval_store, tmp_path):
    store, vid = eval_store
    folder = tiny_model_dir(tmp_path)
    params = {"store": store.path, "version_id": vid, "model": str(folder), "embedder": None,
              "generation": {"max_new_tokens": 8, "batch_size": 4},
              "style": {"starts_with": "Paris"}, "name": "tiny"}
    job = jobs.run_inline("workbench.evaluate.eval_task", params, home=tmp_path / "runs")
    assert job.state == "done", job.error + jobs.log_tail(job.run_dir, 40)
    preds = ev.read_predictions(job.run_dir)
    frame = store.frame(vid)
    assert preds["row_key"].tolist() == frame["row_key"].tolist()
    assert preds["reference"].tolist() == ["Paris is the capital."] * 6
    assert preds["metadata"][1] == {"category": "even"}
    assert preds["prompt_messages"][2][0]["role"] == "system"
    assert {"exact_match", "rouge_l", "format_ok", "fmt_starts_with"} <= set(preds.columns)
    summary = ev.read_summary(job.run_dir)
    assert summary == job.result and summary["rows"] == 6
    assert summary["metrics"]["format_ok"]["mean"] == 0.0
    assert job.last["tokens_per_s"] > 0 and job.total == 6


def test_eval_job_cancels_between_decoding_steps(eval_store, tmp_path):
    store, vid = eval_store
    folder = tiny_model_dir(tmp_path)
    params = {"store": store.path, "version_id": vid, "model": str(folder), "embedder": None,
              "generation": {"max_new_tokens": 400, "batch_size": 6}}
    job = jobs.start("workbench.evaluate.eval_task", params, home=tmp_path / "runs")
    deadline = time.monotonic() + 60
    # The first event comes once the model is loaded, just before the one and only batch.
    while time.monotonic() < deadline and not jobs.events(job.run_dir):
        time.sleep(0.05)
    (job.run_dir / "cancel").touch()  # as jobs.cancel does, without its SIGTERM fallback
    final = jobs.wait(job.run_id, home=tmp_path / "runs", timeout=60)
    assert final.state == "cancelled", final.error + jobs.log_tail(final.run_dir, 40)
    assert final.step == 0  # stopped inside the batch, not after it
    assert not (final.run_dir / ev.PREDICTIONS_FILE).exists()


def test_eval_job_rejects_bad_generation_settings(eval_store, tmp_path):
    store, vid = eval_store
    params = {"store": store.path, "version_id": vid, "generation": {"top_p": 0.5}}
    job = jobs.run_inline("workbench.evaluate.eval_task", params, home=tmp_path / "runs")
    assert job.state == "failed" and "top_p=0.5 only apply when sampling" in job.error


def test_import_job_scores_outside_predictions(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(orjson.dumps({"prompt": "Q", "reference": "Thanks for reaching out! A",
                                  "prediction": "A", "model": "other"}).decode() + "\n")
    params = {"path": str(path), "embedder": None, "style": STYLE}
    job = jobs.run_inline("workbench.evaluate.import_task", params, home=tmp_path / "runs")
    assert job.state == "done", job.error
    preds = ev.read_predictions(job.run_dir)
    assert preds["fmt_starts_with"].tolist() == [False] and job.result["model"] == ["other"]


# ---------------------------------------------------------------- the real default model

needs_lm = pytest.mark.skipif(models._default_gguf() is None, reason=models.DEFAULT_LM_INSTALL)


@pytest.fixture(scope="module")
def base_outputs(converted_lm):
    """The base model's greedy answers to 8 sample eval rows (2 batches of 4); "default" is
    the session's converted copy for the rest of this module."""
    with lm_home(converted_lm.home):
        model, tokenizer = models.load_lm()
        rows = [orjson.loads(line) for line in EVAL_FILE.read_text().splitlines()][::8][:8]
        config = ev.GenerationConfig(max_new_tokens=96, batch_size=4)
        gens = ev.generate_batch(model, tokenizer, [r["messages"] for r in rows], config)
        yield rows, gens


@pytest.mark.slow
@needs_lm
def test_base_model_fails_the_support_style(base_outputs):
    rows, gens = base_outputs
    frame = pd.DataFrame({"prediction": [g.text for g in gens],
                          "reference": [r["messages"][-1]["content"] for r in rows]})
    scored = ev.score_predictions(frame, checks=ev.as_checks(style=STYLE))
    print(f"\nbase model on {len(rows)} eval rows: style ok {scored['format_ok'].mean():.2f}, "
          f"greeting {scored['fmt_starts_with'].mean():.2f}, signature "
          f"{scored['fmt_ends_with'].mean():.2f}, similarity {scored['similarity'].mean():.2f}")
    # Measured: 0/8 rows in style, no greeting, no signature (similarity mean ~0.25).
    assert scored["format_ok"].mean() <= 0.25
    assert scored["fmt_starts_with"].mean() <= 0.25 and scored["fmt_ends_with"].mean() <= 0.25
    assert all(g.text for g in gens)


@pytest.mark.slow
@needs_lm
def test_real_model_batched_greedy_matches_single(base_outputs):
    rows, gens = base_outputs
    model, tokenizer = models.load_lm()
    config = ev.GenerationConfig(max_new_tokens=96, batch_size=1)
    single = ev.generate_batch(model, tokenizer, [r["messages"] for r in rows[:2]], config)
    assert [g.token_ids for g in single] == [g.token_ids for g in gens[:2]]
