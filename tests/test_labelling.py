"""The review queue and the learned score against the store: seeds, active learning, caching."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import chat

from workbench import clean, labelling, quality
from workbench import labels as LB
from workbench.exceptions import ConfigError
from workbench.schema import StepResult
from workbench.score import direction_of
from workbench.store import Store

TOPICS = ["tax", "garden", "python", "travel", "music", "cooking", "football", "weather"]


def dataset(store: Store, n: int = 300, seed: int = 0) -> tuple[int, np.ndarray]:
    """A version whose bad rows have a placeholder input ("No input") or a one-word answer."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        prompt = f"Tell me about {topic}, case {i}."
        answer = f"Sure. {topic.title()} case {i} works like this, step by step."
        bad = rng.random() < 0.15
        if bad:
            if i % 2:
                prompt += "\n\nNo input"
            else:
                answer = "Yes."
        rows.append(chat(("user", prompt), ("assistant", answer)))
        truth.append(int(bad))
    return store.add_examples("d", rows), np.array(truth)


def oracle(store: Store, vid: int, truth: np.ndarray, keys: list[int]) -> None:
    position = {k: i for i, k in enumerate(store.frame(vid)["row_key"])}
    bad = [k for k in keys if truth[position[k]]]
    good = [k for k in keys if not truth[position[k]]]
    if bad:
        labelling.label_rows(store, vid, bad, "bad")
    if good:
        labelling.label_rows(store, vid, good, "good")


def test_queue_starts_from_rule_hits_and_random_rows_and_says_why(store):
    vid, _ = dataset(store)
    frame = store.frame(vid)
    queue = labelling.next_rows(store, vid, frame, labelling.QueueOptions(n=10))
    assert queue.stage == "seeds" and queue.result is None and len(queue.rows) == 10
    assert "label at least" not in queue.message and "5 of each" in queue.message
    assert queue.rows["row_key"].is_unique and queue.rows["why"].str.len().gt(0).all()
    assert set(queue.rows["source"]) >= {"random"}
    assert queue.rows["p_bad"].isna().all()


def test_queue_switches_to_the_learned_score_and_finds_bad_rows(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    seen = []
    for _ in range(8):
        queue = labelling.next_rows(store, vid, frame, labelling.QueueOptions(n=10))
        oracle(store, vid, truth, queue.rows["row_key"].tolist())
        seen += queue.rows["row_key"].tolist()
    assert queue.stage == "model" and queue.result.auroc > 0.8
    assert len(set(seen)) == len(seen)  # a labelled row is never suggested again
    position = {k: i for i, k in enumerate(frame["row_key"])}
    found = sum(truth[position[k]] for k in seen)
    assert found >= 2 * truth.mean() * len(seen)  # more bad rows than random labelling
    scored = quality.with_cached_scores(store, frame)
    unlabelled = (~frame["row_key"].isin(seen)).to_numpy()
    if truth[unlabelled].any():  # the queue may already have shown every bad row
        assert labelling_auroc(truth[unlabelled], scored["learned_score"][unlabelled]) > 0.9
    else:
        assert found == truth.sum()


def labelling_auroc(y, score):
    from workbench.learn import auroc

    return auroc(np.asarray(y), np.asarray(score))


def test_the_learned_score_is_a_registered_score_with_its_direction(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist()[:120])
    result = labelling.train_learned(store, vid, frame)
    assert result.column == "learned_score" and result.scored_rows == len(frame)
    assert direction_of("learned_score") == "lower"
    scored = quality.with_cached_scores(store, frame)
    assert scored["learned_score"].between(0, 1).all()
    # Usable like any score: keep the 100 rows least likely bad.
    selection = quality.select_rows(scored, quality.SelectOptions("top_k", k=100,
                                                                  score="learned_score"))
    kept = frame["row_key"].isin(selection.kept["row_key"])
    assert truth[kept.to_numpy()].mean() < truth.mean()
    assert labelling.last_result(store).n_bad == int(truth[:120].sum())


def test_named_label_sets_train_their_own_learned_scores(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist()[:100])
    keys = frame["row_key"].tolist()[:100]
    LB.set_labels(store, frame["id"][:100].tolist(),
                  ["bad" if "garden" in p else "good" for p in frame["prompt"][:100]],
                  label_set="off-topic")
    labelling.train_learned(store, vid, frame)
    labelling.train_learned(store, vid, frame, label_set="off-topic")
    scored = quality.with_cached_scores(store, frame)
    assert {"learned_score", "learned_off_topic_score"} <= set(scored.columns)
    assert direction_of("learned_off_topic_score") == "lower"
    assert len(keys) == 100


def test_labels_on_rows_dropped_since_still_train_the_score(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist()[:150])
    bad = [k for k, t in zip(frame["row_key"][:150], truth[:150]) if t]
    child = store.drop_rows(vid, bad, reason="labelled_bad").version_id
    result = labelling.train_learned(store, child, store.frame(child))
    assert result.outside_version == len(bad) and result.n_bad == len(bad)


def test_clear_errors_before_the_score_can_train(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    with pytest.raises(ConfigError, match="no labelled rows in this dataset.*at least 5 good"):
        labelling.train_learned(store, vid, frame)
    labelling.label_rows(store, vid, frame["row_key"][:8].tolist(), "good")
    with pytest.raises(ConfigError, match="8 good and 0 bad labels: label at least 5"):
        labelling.train_learned(store, vid, frame)
    other = store.add_examples("other", [chat(("user", "q"), ("assistant", "a"))])
    with pytest.raises(ConfigError, match="8 labels are on other datasets"):
        labelling.train_learned(store, other, store.frame(other))


def test_every_score_is_checked_against_labels(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist())
    scored = quality.score_heuristics(store, frame, quality.heuristic_specs(["length", "overlap"]))
    table = labelling.signal_table(store, scored).set_index("score")
    # One-word answers are bad rows: short responses separate, as "higher = better" declares.
    assert table.loc["length_score", "bad_rows_score"] == "lower (as declared)"
    assert table.loc["length_score", "labelled"] == len(frame)
    weights, better = labelling.fitted_weights(store, scored, ["length_score", "overlap_score"])
    assert better["length_score"] == "higher" and weights["length_score"] > 0


def test_rule_precision_against_labels(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist())
    preview = clean.preview(frame, [clean.Placeholder(values=("yes",))])
    table = labelling.rule_table(store, frame, preview)
    row = table.iloc[0]
    assert row["rule"] == "placeholder" and row["labelled_bad"] == row["rows"] > 0
    assert row["labelled_good"] == 0 and row["precision"] == 1.0 and row["low"] > 0.5


def test_flagged_rows_are_stored_with_the_version_and_can_be_dropped_later(store):
    vid, _ = dataset(store, n=20)
    frame = store.frame(vid)
    keys = frame["row_key"].tolist()
    flagged = pd.DataFrame({"row_key": keys[:3], "reason": "repetition", "detail": "x"})
    nothing = pd.DataFrame({"row_key": pd.Series(dtype="int64"),
                            "reason": pd.Series(dtype=str)})
    child = store.apply_step(vid, StepResult(frame[["row_key"]], nothing, None, flagged),
                             operation="clean")
    assert child.counts["flagged:repetition"] == 3 and child.n_rows == 20
    assert store.flagged(child.version_id)["row_key"].tolist() == keys[:3]
    dropped = store.drop_rows(child.version_id, keys[:2], reason="repetition",
                              details="reviewed")
    assert dropped.n_rows == 18 and store.flagged(dropped.version_id)["row_key"].tolist() == \
        keys[2:3]
    removed = store.removed(dropped.version_id)
    assert removed["reason"].tolist() == ["repetition"] * 2


def test_seeds_use_the_flags_a_cleaning_step_stored(store, monkeypatch):
    from workbench import curate

    vid, _ = dataset(store)
    frame = store.frame(vid)
    cleaned = curate.apply_clean(store, vid, frame, [clean.Placeholder(values=("yes",),
                                                                       mode="flag")])
    monkeypatch.setattr(labelling, "rule_hits", lambda *a, **k: pytest.fail("rules rerun"))
    sources = labelling.seed_sources(store, cleaned.version_id, store.frame(cleaned.version_id))
    rules = [s for s in sources if s.name.startswith("rule:")]
    assert [s.name for s in rules] == ["rule:placeholder"] and len(rules[0].rows) > 0
    assert all("placeholder" in why for why in rules[0].why)


@pytest.mark.slow
def test_one_embedding_job_embeds_prompts_and_responses_and_the_score_uses_them(file_store,
                                                                                  tmp_path):
    from workbench import jobs

    vid, truth = dataset(file_store, n=60)
    frame = file_store.frame(vid)
    job = jobs.run_inline("workbench.embed.embed_task",
                          {"store": file_store.path, "version_id": vid,
                           "fields": ["user", "assistant"]}, kind="embed", home=tmp_path)
    assert job.state == "done" and job.result["fields"] == ["user", "assistant"]
    assert (job.step, job.total) == (120, 120)  # one bar over both fields
    assert labelling.embedded(file_store, frame, "user")
    assert labelling.embedded(file_store, frame, "assistant")
    oracle(file_store, vid, truth, frame["row_key"].tolist())
    result = labelling.train_learned(file_store, vid, frame)
    assert result.features[:4] == ["words", "embedding:user", "embedding:assistant",
                                   "prompt-response cosine"]


def test_rule_seeds_of_a_big_version_come_from_a_fixed_sample(store, monkeypatch):
    vid, _ = dataset(store, n=300)
    frame = store.frame(vid)
    monkeypatch.setattr(labelling, "SEED_SCAN_ROWS", 40)
    scanned = []
    hits = labelling.rule_hits

    def spy(store, rows, **kwargs):
        scanned.append(rows["row_key"].tolist())
        return hits(store, rows, **kwargs)

    monkeypatch.setattr(labelling, "rule_hits", spy)
    sources = labelling.seed_sources(store, vid, frame)
    again = labelling.seed_sources(store, vid, frame)
    assert len(scanned[0]) == 40 and scanned[0] == scanned[1]  # the same rows each time
    assert set(scanned[0]) < set(frame["row_key"]) and scanned[0] == sorted(scanned[0])
    rules = [s for s in sources if s.name.startswith("rule:")]
    assert rules, "the sample's rows hit no rule: the test data changed"
    sampled = {int(k) for k in scanned[0]}
    position = dict(zip(frame["row_key"].astype(int), range(len(frame))))
    for source in rules:  # positions in the whole frame, of sampled rows only
        assert {position[k] for k in sampled} >= set(source.rows.tolist())
    assert [s.name for s in again] == [s.name for s in sources]


def test_a_queue_over_keys_and_ids_picks_what_a_queue_over_the_texts_picks(store):
    vid, truth = dataset(store, n=200)
    full, narrow = store.frame(vid), labelling.queue_rows(store, vid)
    assert list(narrow.columns) == ["row_key", "id"]
    assert narrow["row_key"].tolist() == full["row_key"].tolist()
    options = labelling.QueueOptions(n=10)
    seeds = labelling.next_rows(store, vid, narrow, options)
    assert seeds.stage == "seeds"
    pd.testing.assert_frame_equal(seeds.rows, labelling.next_rows(store, vid, full, options).rows)
    oracle(store, vid, truth, full["row_key"].tolist()[:60])
    model = labelling.next_rows(store, vid, narrow, options)
    assert model.stage == "model"
    pd.testing.assert_frame_equal(model.rows, labelling.next_rows(store, vid, full, options).rows)


def test_queue_rows_beyond_the_limit_are_the_sample_frame_rows(store, monkeypatch):
    vid, _ = dataset(store, n=120)
    monkeypatch.setattr(labelling, "QUEUE_ROWS", 50)
    sample = store.sample_frame(vid, 50)
    assert labelling.queue_rows(store, vid)["row_key"].tolist() == sample["row_key"].tolist()


def test_the_signal_table_of_a_score_table_reads_only_labelled_rows_and_agrees(store):
    vid, truth = dataset(store)
    frame = store.frame(vid)
    oracle(store, vid, truth, frame["row_key"].tolist()[:120])
    scored = quality.score_heuristics(store, frame, quality.heuristic_specs(["length", "overlap"]))
    expected = labelling.signal_table(store, scored)
    got = labelling.version_signal_table(store, vid, quality.score_table(store, vid))
    pd.testing.assert_frame_equal(got, expected)
    assert got.set_index("score").loc["length_score", "labelled"] == 120


def test_a_queue_opens_before_the_rule_scan_and_the_scan_job_brings_the_rule_seeds(file_store,
                                                                                  tmp_path,
                                                                                  monkeypatch):
    from workbench import jobs

    vid, _ = dataset(file_store, n=300)
    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)  # 300 rows: the scan is a job
    frame = labelling.queue_rows(file_store, vid)
    assert labelling.rule_scan_pending(file_store, vid, frame)
    options = labelling.QueueOptions(n=10, scan_rules=False)
    early = labelling.next_rows(file_store, vid, frame, options)
    assert early.stage == "seeds" and early.rules_pending and len(early.rows) == 10
    assert "rule scan" in early.message
    assert not any(s.startswith("rule:") for s in early.rows["source"])

    job = jobs.run_inline("rule_scan", {"store": str(file_store.path), "version_id": vid},
                          home=tmp_path)
    assert job.state == "done" and job.kind == "rule_scan" and job.result["hits"]
    n_rules = len(labelling._hit_rules())
    last = jobs.events(job.run_dir)[-1]  # progress counted rows x rules, named the rule
    assert last["step"] == last["total"] == 300 * n_rules
    assert last["phase"].startswith(f"rule {n_rules}/{n_rules} · ")
    assert labelling.rule_scan_jobs(file_store, vid, home=tmp_path)[0].run_id == job.run_id
    assert not labelling.rule_scan_pending(file_store, vid, frame)
    # The job's cached hits are those a scan in the caller finds.
    scanned = labelling._seed_scan_rows(file_store.frame(vid))
    pd.testing.assert_frame_equal(labelling.rule_hits(file_store, scanned),  # parquet strings
                                  labelling.rule_hits(Store(":memory:"), scanned),
                                  check_dtype=False)
    assert sum(job.result["hits"].values()) == len(labelling.rule_hits(file_store, scanned))
    # Once scanned, the queue is the one it always was: the rules' hits seed it.
    after = labelling.next_rows(file_store, vid, frame, options)
    assert not after.rules_pending and "rule scan" not in after.message
    assert any(s.startswith("rule:") for s in after.rows["source"])
    pd.testing.assert_frame_equal(after.rows, labelling.next_rows(
        file_store, vid, frame, labelling.QueueOptions(n=10)).rows)


def test_a_cancelled_rule_scan_caches_nothing_and_small_versions_scan_inline(file_store,
                                                                            tmp_path,
                                                                            monkeypatch):
    from workbench import jobs

    vid, _ = dataset(file_store, n=300)
    frame = labelling.queue_rows(file_store, vid)
    assert not labelling.rule_scan_pending(file_store, vid, frame)  # 300 rows: scanned inline
    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)
    monkeypatch.setattr(jobs.JobContext, "cancelled",
                        lambda self: self._phase.startswith("rule 2/"))
    job = jobs.run_inline("rule_scan", {"store": str(file_store.path), "version_id": vid},
                          home=tmp_path)
    assert job.state == "cancelled"
    assert labelling.rule_scan_pending(file_store, vid, frame)


def test_the_rule_scan_job_scans_the_rows_the_queue_seeds_from(file_store, monkeypatch):
    vid, _ = dataset(file_store, n=300)
    monkeypatch.setattr(labelling, "QUEUE_ROWS", 200)  # a sample of a sample, as at 1M rows
    monkeypatch.setattr(labelling, "SEED_SCAN_ROWS", 120)
    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)
    frame = labelling.queue_rows(file_store, vid)
    assert len(frame) == 200 and labelling.rule_scan_pending(file_store, vid, frame)
    hits = labelling.scan_queue_rules(file_store, vid)
    assert not labelling.rule_scan_pending(file_store, vid, frame)  # the same rows' cache
    seeded = labelling._seed_scan_rows(frame)
    assert len(seeded) == 120 and set(hits["row_key"]) <= set(seeded["row_key"])
    scanned_here = labelling.rule_hits(Store(":memory:"),
                                       labelling.with_texts(file_store, vid, seeded))
    pd.testing.assert_frame_equal(hits, scanned_here, check_dtype=False)


def test_a_version_rule_scan_job_caches_what_bulk_labels_by_rule_read(file_store, tmp_path,
                                                                      monkeypatch):
    from workbench import jobs

    vid, _ = dataset(file_store, n=300)
    expected = labelling.rule_hits(Store(":memory:"), file_store.frame(vid))  # scanned here
    monkeypatch.setattr(labelling, "INLINE_SCAN_ROWS", 100)
    rows = file_store.row_ids(vid)
    assert labelling.version_rules_pending(file_store, rows)
    with pytest.raises(ConfigError, match="scope"):
        labelling.start_rule_scan(file_store, vid, "all")
    job = jobs.run_inline("rule_scan", {"store": str(file_store.path), "version_id": vid,
                                        "scope": "version"}, home=tmp_path)
    assert job.state == "done" and not labelling.version_rules_pending(file_store, rows)
    assert jobs.events(job.run_dir)[-1]["total"] == 300 * len(labelling._hit_rules())
    assert [j.run_id for j in labelling.rule_scan_jobs(file_store, vid, "version",
                                                       home=tmp_path)] == [job.run_id]
    assert labelling.rule_scan_jobs(file_store, vid, home=tmp_path) == []  # not the queue's
    monkeypatch.setattr(labelling, "with_texts", lambda *a: pytest.fail("texts read"))
    assert len(expected)
    for rule, keys in expected.groupby("rule")["row_key"]:
        assert labelling.bulk_rows(file_store, vid, None, "rule", rule) == \
            sorted(keys.astype(int).unique().tolist())
