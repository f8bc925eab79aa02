"""Error analysis: failure tags, severity, slices, clusters, comparisons, provenance,
contamination and targeted data, on hand-made rows and the sample data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import torch

from workbench import analysis as an
from workbench import evaluate as ev
from workbench import evaluation, jobs, loop, models
from workbench.cache import StoreCache
from workbench.exceptions import ConfigError, NotFoundError
from workbench.schema import Example
from workbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
STYLE = orjson.loads((SAMPLE / "defects.json").read_bytes())["style"]
GOOD = ("Thanks for reaching out! You can download every invoice from the web app.\n\n"
        "1. Open Settings > Billing > Invoices.\n2. Choose the month you need and select "
        "Download PDF.\n3. Add your VAT number under Billing details first if it must appear "
        "on the invoice.\n\nOlder invoices stay available for seven years.\n\n"
        "— Northwind Support")


def rows(*specs: dict) -> pd.DataFrame:
    """A predictions frame: each spec overrides a passing row."""
    base = {"prediction": GOOD, "reference": GOOD, "hit_max": False, "similarity": 0.9}
    frame = pd.DataFrame([{**base, **s} for s in specs])
    frame.insert(0, "row_key", range(100, 100 + len(frame)))
    return frame


# ---------------------------------------------------------------- failure tags


def test_each_failure_tag_fires_on_its_case_and_not_on_a_good_answer():
    frame = rows(
        {},                                                            # passes
        {"prediction": "   "},                                         # empty
        {"prediction": "I'm sorry, but I cannot help with that request."},
        {"prediction": "As a chatbot designed to help, I don't have the capability to do that."},
        {"prediction": "Open the app and tap sync. " * 12},            # a loop
        {"prediction": GOOD[:-25] + " and then you open the", "hit_max": True},
        {"prediction": GOOD.rsplit("\n\n", 1)[0], "hit_max": True},  # at the limit, cleanly
        {"prediction": GOOD + " ".join(f"w{i}" for i in range(60))},  # too long
        {"prediction": "Thanks for reaching out! Yes.\n\n— Northwind Support"},  # too short
        {"prediction": GOOD.replace("Thanks for reaching out! ", "")},  # off style
        {"similarity": 0.2},                                           # likely wrong
    )
    tags = an.failure_tags(frame, style=STYLE)
    assert tags == [
        [], ["empty"], ["refusal", "too_short", "off_format"], ["refusal", "too_short",
                                                                 "off_format"],
        ["repetition_loop", "off_format"], ["truncated", "off_format"], ["off_format"],
        ["too_long", "off_format"], ["too_short", "off_format"], ["off_format"],
        ["likely_wrong"],
    ]


def test_off_format_comes_from_format_ok_without_a_style_and_truncation_from_text():
    frame = rows({"format_ok": 0.0}, {"format_ok": 1.0},
                 {"prediction": GOOD[:-25] + " then select the file that you want to keep from",
                  "hit_max": None},
                 {"prediction": "Thanks for reaching out! Open the", "hit_max": True})
    # a short answer cut by the token limit is truncated, not too short
    assert an.failure_tags(frame) == [["off_format"], [], ["truncated"], ["truncated"]]


def test_failure_rules_are_checked():
    with pytest.raises(ConfigError, match="too_short"):
        an.FailureRules(too_short=3.0)
    with pytest.raises(ConfigError, match="likely_wrong"):
        an.FailureRules(likely_wrong=-1)
    strict = an.FailureRules(likely_wrong=0.95)
    assert an.failure_tags(rows({}), rules=strict) == [["likely_wrong"]]


def test_failures_table_sorts_by_severity_and_merges_manual_tags(tmp_path):
    frame = rows({}, {"prediction": ""}, {"similarity": 0.1}, {"similarity": 0.3})
    an.annotate(tmp_path, 100, tags=["tone", "tone"], note="too formal")
    an.annotate(tmp_path, 103, note="check facts")
    notes = an.read_annotations(tmp_path)
    assert notes[100] == {"tags": ["tone"], "note": "too formal"}
    table = an.failures_table(frame, annotations=notes)
    assert table["row_key"].tolist() == [101, 102, 103, 100]
    assert table.loc[3, "tags"] == ["tone"] and table.loc[3, "note"] == "too formal"
    assert table.loc[1, "severity"] > table.loc[2, "severity"]  # lower similarity is worse
    assert len(an.failures_table(frame, include_passing=True)) == 4
    with pytest.raises(ConfigError):
        an.annotate(tmp_path, 100, tags=[""])


def test_tag_rates_count_every_tag_with_an_interval():
    frame = rows({}, {"prediction": ""}, {"similarity": 0.1}, {"similarity": 0.2})
    rates = an.tag_rates(frame, n_boot=200).set_index("tag")
    assert rates.loc["likely_wrong", "count"] == 2 and rates.loc["likely_wrong", "rate"] == 0.5
    assert rates.loc["any", "count"] == 3 and rates.loc["refusal", "count"] == 0
    assert rates.loc["likely_wrong", "lo"] <= 0.5 <= rates.loc["likely_wrong", "hi"]


# ---------------------------------------------------------------- slicing


def test_slice_by_metadata_column_tag_and_length():
    frame = rows({"metadata": {"category": "billing"}}, {"metadata": {"category": "billing"},
                                                          "similarity": 0.1},
                 {"metadata": {"category": "sync"}, "prediction": ""},
                 {"metadata": {"category": "sync"}, "reference": "short"})
    frame["score"] = [1.0, 0.0, 0.0, 1.0]
    by_category = an.slice_metric(frame, "score", "category", n_boot=100).set_index("slice")
    assert by_category["n"].to_dict() == {"billing": 2, "sync": 2}
    assert by_category.loc["billing", "mean"] == 0.5
    assert an.slice_metric(frame, "score", "metadata.category", n_boot=50)["n"].sum() == 4
    by_tag = an.slice_metric(frame, "score", "tag", n_boot=50).set_index("slice")
    assert set(by_tag.index) == {"(none)", "likely_wrong", "empty", "too_long"}
    frame["reference"] = ["one two three four", "one two", "one", "one two three"]
    by_length = an.slice_metric(frame, "score", "length", bins=2, n_boot=50)
    assert by_length.set_index("slice")["n"].to_dict() == {"words 1-2": 2, "words 2-4": 2}
    frame["cluster"] = [0, 0, 1, 1]
    assert an.slice_metric(frame, "score", "cluster", n_boot=50)["slice"].tolist() == ["0", "1"]
    with pytest.raises(ConfigError, match="cannot slice by 'colour'"):
        an.slice_metric(frame, "score", "colour")


def test_length_buckets_are_equal_count():
    labels = an.length_buckets(list(range(1, 10)), bins=3)
    assert len(set(labels)) == 3 and labels[0] == "words 1-3" and labels[-1] == "words 6-9"
    assert an.length_buckets([5, 5]) == ["words 5", "words 5"]


# ---------------------------------------------------------------- clustering


def test_clusters_are_found_and_named_by_their_terms():
    rng = np.random.default_rng(0)
    centers = np.eye(8, dtype=np.float32)[:2]
    vectors = np.vstack([centers[i] + 0.05 * rng.standard_normal((6, 8)) for i in (0, 1)])
    texts = [f"My refund for invoice {i} has not arrived" for i in range(6)] + \
            [f"Reset my password, the password login code {i} fails" for i in range(6)]
    frame = pd.DataFrame({"prompt": texts})
    clusters = an.cluster_failures(frame, vectors, k=2)
    assert sorted(clusters.table["size"]) == [6, 6]
    assert len(set(clusters.labels[:6])) == 1 and clusters.labels[0] != clusters.labels[6]
    names = dict(zip(clusters.table["cluster"], clusters.table["name"]))
    assert {"refund", "invoice"} <= set(names[clusters.labels[0]].split(", "))
    assert names[clusters.labels[6]].startswith("password")
    again = an.cluster_failures(frame, vectors, k=2)
    assert np.array_equal(again.labels, clusters.labels)
    with pytest.raises(ConfigError, match="vectors"):
        an.cluster_failures(frame, vectors[:3])


def test_cluster_names_ignore_text_most_rows_share():
    system = "You are Northwind's cloud support assistant. Answer politely."
    texts = [f"{system} My refund for invoice {i} has not arrived" for i in range(6)] + \
            [f"{system} Reset my password, the login code {i} fails" for i in range(6)]
    vectors = np.vstack([np.eye(4, dtype=np.float32)[i // 6] for i in range(12)])
    clusters = an.cluster_failures(pd.DataFrame({"prompt": texts}), vectors, k=2)
    names = " ".join(clusters.table["name"])
    assert not {"northwind", "cloud", "support"} & set(names.replace(",", "").split())
    named = {tuple(t) for t in clusters.table["terms"]}
    assert all(set(t) <= {"refund", "invoice", "arrived"} or
               set(t) <= {"reset", "password", "login", "code", "fails"} for t in named)


def test_clustering_handles_more_clusters_than_points():
    clusters = an.cluster_failures(pd.DataFrame({"prompt": ["a b c", "d e f", "g h i"]}),
                                   np.eye(3, dtype=np.float32), k=10)
    assert sorted(clusters.labels.tolist()) == [0, 1, 2] and len(clusters.table) == 3


def test_failure_clusters_are_spherical_length_does_not_split_a_direction():
    # Same two directions, lengths from 1 to 100: clusters follow direction, not length.
    scale = np.array([1.0, 100.0, 3.0, 50.0, 7.0, 0.5], dtype=np.float32)[:, None]
    vectors = np.vstack([np.eye(4, dtype=np.float32)[0] * scale,
                         np.eye(4, dtype=np.float32)[1] * scale])
    labels = an.cluster_failures(pd.DataFrame({"prompt": ["x"] * 12}), vectors, k=2).labels
    assert len(set(labels[:6])) == 1 and len(set(labels[6:])) == 1 and labels[0] != labels[6]


# ---------------------------------------------------------------- comparing runs


def run(values: list[float], ids: list[str] | None = None, **columns) -> pd.DataFrame:
    ids = ids or [f"r{i}" for i in range(len(values))]
    return pd.DataFrame({"id": ids, "prediction": "x", "reference": "x", "token_f1": values,
                         **columns})


def test_compare_counts_wins_losses_ties_and_flags_regressions():
    a = run([0.5, 0.5, 0.5, 0.5, 0.5], category=["a", "a", "b", "b", "b"])
    b = run([0.9, 0.5, 0.52, 0.1, 0.45], category=list("aabbb"))
    b = b.iloc[::-1]  # rows are matched by id, not position
    result = an.compare_runs(a, b, "token_f1", margin=0.05, regression_margin=0.1,
                             by=["category"], n_boot=200)
    assert result.counts == {"win": 1, "loss": 1, "tie": 3}
    assert result.regressions["id"].tolist() == ["r3"]
    assert result.delta["mean"] == pytest.approx(-0.006)
    slices = result.slices["category"].set_index("slice")
    assert slices.loc["a", "delta"] == pytest.approx(0.2)
    assert slices.loc["a", "n"] == 2


def test_compare_orients_lower_is_better_metrics_and_flags_slice_regressions():
    a = pd.DataFrame({"id": list("abcdef"), "prediction": "x", "reference": "x",
                      "repetition": [0.0] * 6, "group": ["g"] * 6})
    b = a.assign(repetition=[0.5, 0.4, 0.6, 0.5, 0.45, 0.55])
    result = an.compare_runs(a, b, "repetition", by=["group"], n_boot=200)
    assert result.counts["loss"] == 6
    assert bool(result.slices["group"]["regressed"].iloc[0])
    assert list(an.oriented("length_ratio", [1.0, 2.0, 0.5])) == [0.0, -1.0, -0.5]


def test_compare_needs_shared_rows_and_the_metric():
    with pytest.raises(ConfigError, match="share no eval rows"):
        an.compare_runs(run([1.0]), run([1.0], ids=["other"]), "token_f1")
    with pytest.raises(ConfigError, match="run b has no metric"):
        an.compare_runs(run([1.0]), run([1.0]).drop(columns="token_f1"), "token_f1")


def test_tag_rate_change_before_and_after():
    before = rows({"similarity": 0.1}, {"similarity": 0.2}, {})
    after = rows({}, {"similarity": 0.2}, {})
    change = an.tag_rate_change(before, after, n_boot=100).set_index("tag")
    assert change.loc["likely_wrong", "rate_a"] == pytest.approx(2 / 3)
    assert change.loc["likely_wrong", "change"] == pytest.approx(-1 / 3)


# ---------------------------------------------------------------- provenance, contamination


def test_nearest_training_rows_best_first():
    train = np.array([[1, 0], [0, 1], [0.8, 0.6], [-1, 0]], np.float32)
    index, scores = an.nearest_training_rows(np.array([[1, 0.1]], np.float32), train, k=2)
    assert index.tolist() == [[0, 2]] and scores[0, 0] > scores[0, 1]
    index, _ = an.nearest_training_rows(np.array([[1, 0]], np.float32), train, k=10)
    assert index.shape == (1, 4)
    with pytest.raises(ConfigError, match="shapes"):
        an.nearest_training_rows(np.ones((1, 3)), train)


def test_provenance_lists_training_rows_per_failure():
    train = pd.DataFrame({"row_key": [7, 8], "prompt": ["p7", "p8"], "response": ["r7", "r8"]})
    failures = pd.DataFrame({"row_key": [1]})
    table = an.provenance(failures, train, np.array([[0, 1]], np.float32),
                          np.array([[1, 0], [0, 1]], np.float32), k=2)
    assert table["train_row_key"].tolist() == [8, 7] and table["rank"].tolist() == [1, 2]


def test_contamination_finds_copied_prompts_not_paraphrases():
    train = ["Some other question entirely about billing and plans for the family",
             "intro text. How do I move my photo library to an external drive without losing "
             "the albums I made? thanks"]
    prompts = ["How do I move my photo library to an external drive without losing the albums "
               "I made?", "Could I shift all my pictures over to a USB disk and keep albums?",
               "billing and plans", "nothing"]
    found = an.contamination(prompts, train, n=8)
    assert found["contaminated"].tolist() == [True, False, True, False]
    assert found["train_index"].tolist() == [1, -1, 0, -1]
    assert found.loc[0, "overlap"] == 1.0


def test_contamination_finds_the_planted_rows_of_the_sample_data():
    defects = orjson.loads((SAMPLE / "defects.json").read_bytes())["support_train.jsonl"]
    planted = {d["line"]: d["eval_line"] for d in defects["defects"]
               if d["defect"] == "contamination"}
    train = [orjson.loads(x) for x in (SAMPLE / "support_train.jsonl").read_text().splitlines()]
    evals = [orjson.loads(x) for x in (SAMPLE / "support_eval.jsonl").read_text().splitlines()]
    prompts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in evals]
    texts = ["\n".join(m["content"] for m in r["messages"]) for r in train]
    verbatim = an.contamination(prompts, texts, threshold=0.9)
    flagged = {i + 1 for i in np.flatnonzero(verbatim["contaminated"].to_numpy())}
    assert flagged == set(planted.values())
    for train_line, eval_line in planted.items():
        assert verbatim.loc[eval_line - 1, "train_index"] == train_line - 1
    # At the default threshold, prompts asked again with another greeting show up too.
    near = an.contamination(prompts, texts)
    assert set(planted.values()) < {i + 1 for i in np.flatnonzero(near["contaminated"])}


def test_training_version_and_diff_follow_the_evaluated_adapter(tmp_path):
    store = Store(":memory:")
    first = store.add_examples("t", [Example(({"role": "user", "content": "q"},
                                              {"role": "assistant", "content": "a"}))])
    second = store.add_examples("t", [Example(({"role": "user", "content": "q2"},
                                               {"role": "assistant", "content": "a2"}))],
                                parent=first)
    runs = {}
    for name, version in (("a", first), ("b", second)):
        train_dir = tmp_path / f"train-{name}"
        (train_dir / "data").mkdir(parents=True)
        (train_dir / "data" / "versions.json").write_text(f'{{"version_id": {version}}}')
        runs[name] = ev.write_run(tmp_path / f"eval-{name}", pd.DataFrame({"x": [1]}),
                                  {"model": {"run_dir": str(train_dir)}})
    base = ev.write_run(tmp_path / "eval-base", pd.DataFrame({"x": [1]}), {"model": "default"})
    assert an.training_version(runs["b"]) == second and an.training_version(base) is None
    diff = evaluation.training_diff(store, runs["a"], runs["b"])
    assert diff["counts"] == {"added": 1, "removed": 0, "changed": 0}
    assert evaluation.training_diff(store, base, runs["b"]) is None


# ---------------------------------------------------------------- targeted data


def failures_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "row_key": [11, 12], "id": ["e1", "e2"], "prompt": ["How do I get a refund?", "2FA?"],
        "prompt_messages": [
            orjson.dumps([{"role": "system", "content": "Be kind."},
                          {"role": "user", "content": "How do I get a refund?"}]).decode(),
            [{"role": "user", "content": "2FA?"}]],
        "metadata": [{"category": "refunds", "_source": {"shape": "openai"}}, {}]})


def test_targeted_examples_from_corrected_answers_keep_the_prompt_and_record_the_run():
    examples = an.targeted_examples(failures_frame(), eval_run="run-1",
                                    corrected_answers={11: "  Thanks for reaching out! ...  "})
    (example,) = examples
    assert [m["role"] for m in example.messages] == ["system", "user", "assistant"]
    assert example.response == "Thanks for reaching out! ..."
    assert example.metadata == {"category": "refunds", "_targeted": {
        "eval_run": "run-1", "eval_rows": [11], "kind": "corrected"}}
    with pytest.raises(NotFoundError):
        an.targeted_examples(failures_frame(), eval_run="r", corrected_answers={99: "x"})
    with pytest.raises(ConfigError, match="empty"):
        an.targeted_examples(failures_frame(), eval_run="r", corrected_answers={11: " "})


def test_targeted_examples_pull_nearest_pool_rows_once():
    pool = pd.DataFrame({
        "row_key": [1, 2, 3],
        "messages": [[{"role": "user", "content": f"q{i}"}, {"role": "assistant",
                                                             "content": f"a{i}"}]
                     for i in range(3)],
        "metadata": [{"category": "c"}] * 3})
    pool["id"] = [Example(tuple(m)).id for m in pool["messages"]]
    pool_vectors = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    failure_vectors = np.array([[1, 0], [1, 0.05]], np.float32)
    examples = an.targeted_examples(failures_frame(), eval_run="run-2", pool_frame=pool,
                                    pool_vectors=pool_vectors, failure_vectors=failure_vectors,
                                    k=2, exclude_ids=[pool["id"][1]])
    assert [e.response for e in examples] == ["a0", "a2"]
    assert examples[0].metadata["_targeted"]["eval_rows"] == [11, 12]
    assert examples[0].metadata["_targeted"]["pool_row"] == 1
    with pytest.raises(ConfigError, match="pool_vectors"):
        an.targeted_examples(failures_frame(), eval_run="r", pool_frame=pool)


def test_targeted_version_extends_the_training_version_with_lineage():
    store = Store(":memory:")
    base = [Example(({"role": "user", "content": f"q{i}"},
                     {"role": "assistant", "content": f"a{i}"})) for i in range(3)]
    train_version = store.add_examples("train", base)
    new = an.targeted_examples(failures_frame(), eval_run="run-3",
                               corrected_answers={12: "Use the app."})
    vid = loop.add_targeted_version(store, train_version, new, eval_run="run-3")
    info = store.version(vid)
    assert info.parent_id == train_version and info.operation == "targeted"
    assert info.params == {"eval_run": "run-3", "corrected": 1} and info.n_rows == 4
    assert store.examples(vid)[-1].metadata["_targeted"]["eval_rows"] == [12]
    with pytest.raises(ConfigError, match="no targeted examples"):
        loop.add_targeted_version(store, train_version, [], eval_run="run-3")


# ---------------------------------------------------------------- closing the loop (real model)

needs_lm = pytest.mark.skipif(models._default_gguf() is None, reason=models.DEFAULT_LM_INSTALL)
# The planted rule: every answer opens with the house greeting. The base model never does.
LOOP_RULE = {"starts_with": STYLE["starts_with"]}
LOOP_GENERATION = {"max_new_tokens": 48, "batch_size": 16}
# Brief LoRA training. Measured on these rows (full-length answers): q/v adapters at lr 1e-3
# learn no greeting in 24 steps (0/15); every linear layer at r=16 learns it in 16-32 steps
# (14/15 at 16 steps and lr 3e-3, 15/15 at 32 steps and lr 2e-3).
LOOP_TRAINING = {"max_steps": 20, "batch_size": 4, "learning_rate": 2e-3, "warmup_ratio": 0.1,
                 "max_seq_len": 192, "lora_r": 16, "lora_alpha": 32,
                 "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj"],
                 "val_fraction": 0.0, "eval_every": 0, "checkpoint_every": 100, "seed": 0}


@pytest.fixture
def single_thread(monkeypatch):
    """One torch thread: on a shared 2-core machine two OpenMP threads wait on each other and
    generation runs 3-7x slower (measured in benchmarks/bench_generate.py)."""
    models.configure_torch_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
@needs_lm
def test_closing_the_loop_fixes_the_planted_format_rule(tmp_path, single_thread,
                                                        default_lm_home):
    """Sample data end to end: the base model breaks the required answer format; failures
    pull similar pool rows into a targeted version (lineage: the eval run); a brief retrain
    and automatic re-evaluation make off_format fall, and no slice regresses beyond its CI."""
    store, home = Store(tmp_path / "wb.duckdb"), tmp_path / "runs"
    train_v = store.import_file(SAMPLE / "support_train.jsonl", "support_train")[0].version_id
    pool_v = store.import_file(SAMPLE / "support_pool.jsonl", "support_pool")[0].version_id
    evals = store.import_file(SAMPLE / "support_eval.jsonl", "support_eval")[0].version_id
    eval_v = store.add_examples("support_eval_small", store.examples(evals)[::4])  # 15 rows
    task = {"version_id": eval_v, "style": LOOP_RULE, "generation": LOOP_GENERATION}

    before = jobs.run_inline("workbench.evaluate.eval_task",
                             {**task, "store": store.path, "model": "default"}, home=home)
    assert before.state == "done", before.error
    base = ev.read_predictions(before.run_dir)
    rate_before = an.tag_rates(base).set_index("tag").loc["off_format", "rate"]
    assert rate_before >= 0.8, "the base model should break the planted format rule"

    failures = an.failures_table(base)
    failures = failures[[("off_format" in t) for t in failures["tags"]]]
    pool = store.frame(pool_v)
    vectors = ev.text_vectors([*failures["prompt"], *pool["prompt"]], cache=StoreCache(store))
    examples = an.targeted_examples(
        failures, eval_run=before.run_id, pool_frame=pool, pool_vectors=vectors[len(failures):],
        failure_vectors=vectors[:len(failures)], k=3, exclude_ids=store.frame(train_v)["id"])
    targeted = loop.add_targeted_version(store, train_v, examples, eval_run=before.run_id)
    assert store.version(targeted).params["eval_run"] == before.run_id
    assert store.version(targeted).parent_id == train_v

    after = jobs.run_inline("workbench.evaluate.loop_task", {
        "store": store.path, "version_id": targeted, "config": LOOP_TRAINING, "eval": task,
        "before_run": str(before.run_dir)}, home=home)
    assert after.state == "done", after.error + jobs.log_tail(after.run_dir, 30)
    report = after.result["before_after"]
    tags = {row["tag"]: row for row in report["tags"]}
    rates = {t: (round(r["rate_a"], 2), round(r["rate_b"], 2)) for t, r in tags.items()}
    print(f"\n{report['metric']} {report['counts']}; tag rates before, after: {rates}")
    assert tags["off_format"]["rate_b"] <= tags["off_format"]["rate_a"] - 0.5
    assert tags["off_format"]["rate_b"] < tags["off_format"]["lo_a"]
    for tag, row in tags.items():  # no other failure rises beyond its interval
        assert tag in ("off_format", "any") or row["rate_b"] <= row["hi_a"], tag
    for row in report["slices"]["length"]:  # similarity per length bucket
        assert row["mean_b"] >= row["lo_a"], row
    assert not [s for s in report["regressed_slices"] if not s.startswith("tag=")]
    assert an.training_version(after.run_dir) == targeted


# ---------------------------------------------------------------- length-aware comparison

REF8 = "one two three four five six seven eight"  # 8 words
HALF = "one two three four"


def answers(predictions: list[str]) -> pd.DataFrame:
    """A scored predictions frame: each row answers REF8 with the given text."""
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(predictions))], "prompt": "q",
                          "reference": REF8, "prediction": predictions})
    return ev.score_predictions(frame, embedder=None)


def test_length_buckets_are_reference_relative():
    assert an.length_buckets_ratio([0.2, 0.5, 1.0, 1.25, 3.0]) == [
        "<0.5×", "0.5–0.8×", "0.8–1.25×", "1.25–2×", "≥2×"]
    assert an.length_buckets_ratio([0.1], prefix="B ", suffix="× A") == ["B <0.5× A"]


def test_length_warning_names_the_run_the_overlap_metrics_favour():
    short = an.length_warning(1.0, 0.33)
    assert "run B's 0.33×" in short and "favour run A (the longer one)" in short
    # Far longer than the reference is penalised too: then the shorter run is favoured.
    assert "favour run A (the shorter one)" in an.length_warning(1.0, 3.0)
    assert an.length_warning(1.0, 1.4) == an.length_warning(0.8, 1.1) == ""
    assert an.length_warning(float("nan"), 0.3) == ""
    assert "0.33× the reference" in an.run_length_warning(0.33)
    assert "precision falls" in an.run_length_warning(2.5)
    assert an.run_length_warning(1.2) == an.run_length_warning(0.7) == ""


def test_metrics_by_length_counts_and_means_by_hand():
    # Token F1 of a correct half answer: precision 1, recall 1/2, F1 2/3.
    table = an.metrics_by_length(answers([REF8, REF8, HALF]), ["token_f1", "exact_match"])
    assert table.to_dict("records") == [
        {"length": "0.5–0.8×", "n": 1, "token_f1": pytest.approx(2 / 3), "exact_match": 0.0},
        {"length": "0.8–1.25×", "n": 2, "token_f1": 1.0, "exact_match": 1.0}]
    with pytest.raises(ConfigError, match="no metric column"):
        an.metrics_by_length(answers([REF8]), ["similarity"])


def test_logistic_fit_recovers_log_odds_by_hand():
    x = np.array([-1.0] * 4 + [1.0] * 4)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0], float)  # P(y) 1/4 at x = -1, 3/4 at x = +1
    intercept, slope = an.logistic_fit(x, y, np.ones((1, 8)))[0]
    assert intercept == pytest.approx(0.0, abs=1e-6)
    assert slope == pytest.approx(np.log(3), abs=0.01)  # logit(3/4) = log 3; ridge shrinks a hair
    # Soft labels: ties count half; resample weights give one fit per row of weights.
    fits = an.logistic_fit(np.zeros(2), np.array([0.5, 0.0]), np.array([[1, 1], [0, 2]], float))
    assert fits[0, 0] == pytest.approx(np.log(1 / 3), abs=1e-5)  # logit(mean 1/4)
    assert fits[1, 0] < -10  # all weight on a loss: far down, yet finite


def test_length_control_when_length_alone_decides():
    # B's answer is half of A's three times (B loses), twice as long once (B wins), equal once
    # (a tie): raw win rate (0 + 0 + 0 + 1 + 0.5) / 5 = 0.3; at equal length, a coin flip.
    a = answers([REF8, REF8, REF8, HALF, HALF])
    b = answers([HALF, HALF, HALF, REF8, HALF])
    lc = an.length_control(an.compare_runs(a, b, "token_f1"), n_boot=50)
    assert lc.win_rate["mean"] == pytest.approx(0.3)
    # The slope's weak prior leaves a little of the length effect in the intercept.
    assert lc.lc_win_rate["mean"] == pytest.approx(0.5, abs=0.05)
    assert lc.length_effect > 3  # wins follow length
    assert (lc.ratio_a, lc.ratio_b) == (pytest.approx(0.8), pytest.approx(0.6))
    assert lc.warning == ""  # 0.8 / 0.6 < 1.5
    assert lc.similar == 1 and "only 1 of 5 pairs" in lc.note
    pairs = lc.by_pair.set_index("b_vs_a")
    # (4 + 1) / (8 + 1) = 0.56: "B 0.5-0.8x A"; (8 + 1) / (4 + 1) = 1.8: "B 1.25-2x A".
    assert pairs[["n", "win", "loss", "tie"]].to_dict("index") == {
        "B 0.5–0.8× A": {"n": 3, "win": 0, "loss": 3, "tie": 0},
        "B 0.8–1.25× A": {"n": 1, "win": 0, "loss": 0, "tie": 1},
        "B 1.25–2× A": {"n": 1, "win": 1, "loss": 0, "tie": 0}}
    buckets = lc.by_length.set_index("length")
    assert buckets.loc["0.5–0.8×", ["n_a", "n_b"]].tolist() == [2, 4]
    assert buckets.loc["0.8–1.25×", ["mean_a", "mean_b"]].tolist() == [1.0, 1.0]


def test_length_control_warns_and_keeps_a_real_quality_gap():
    # B is a third as long and also wrong: the controlled rate stays low, and the warning is on.
    a = answers([REF8] * 6)
    b = answers(["one two nine"] * 3 + ["nine ten"] * 3)
    lc = an.length_control(an.compare_runs(a, b, "token_f1"), n_boot=50)
    assert lc.warning.startswith("Run A's answers are 1.00× the reference length")
    assert lc.win_rate["mean"] == 0.0 and lc.lc_win_rate["mean"] < 0.05
    assert lc.lc_win_rate["lo"] <= lc.lc_win_rate["mean"] <= lc.lc_win_rate["hi"]
