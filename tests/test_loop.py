"""Closing the loop against the store and run folders: failures, annotations, slices, clusters,
provenance, targeted versions, retrain + re-evaluate (tiny model) and the iterations overview.

Eval runs are written by hand (evaluate.write_run), so no model generates anything except in
the one retrain test, which trains the tiny random model for 2 steps.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workbench import analysis, evaluation, jobs, loop, models, runs, training
from workbench import evaluate as ev
from workbench.exceptions import ConfigError, NotFoundError
from workbench.schema import Example
from workbench.store import Store

STYLE = {"starts_with": "Thanks"}
GOOD = "Thanks for asking! Press reset twice and wait."


def chat(i: int, answer: str = GOOD, **metadata) -> Example:
    """One support chat whose texts name its number."""
    topic = "billing" if i % 2 else "login"
    return Example(({"role": "user", "content": f"{topic} question {i}: how do I fix {topic}?"},
                    {"role": "assistant", "content": answer}), {"topic": topic, **metadata})


def write_eval_run(home: Path, store: Store, version: int, predictions: list[str], *,
                   name: str = "eval-1", model="tiny") -> Path:
    """Write an eval run of hand-made predictions for a version's rows; return its folder."""
    frame = store.frame(version)
    table = pd.DataFrame({
        "row_key": frame["row_key"], "id": frame["id"], "prompt": frame["prompt"],
        "reference": frame["response"], "prediction": predictions,
        "prompt_messages": [ev._dumps(ev.prompt_messages(m)) for m in frame["messages"]],
        "metadata": [ev._dumps(m) for m in frame["metadata"]], "model": str(model),
        "hit_max": False})
    scored = ev.score_predictions(table, checks=ev.as_checks(style=STYLE), embedder=None)
    summary = {"kind": "eval", "version_id": version, "model": model, "style": STYLE,
               "embedder": None, "generation": {"max_new_tokens": 8, "batch_size": 4},
               "rows": len(scored), "metrics": ev.summarize(scored, n=50)}
    return ev.write_run(home / name, scored, summary)


@pytest.fixture
def tiny_embedder(monkeypatch):
    """Embeddings from the tiny random embedder instead of loading MiniLM."""
    encoder = models.tiny_embedder()
    monkeypatch.setattr(models, "load_embedder", lambda *a, **k: encoder)
    return encoder


@pytest.fixture
def setup(tmp_path):
    """A store with train, eval and pool datasets and one eval run: rows 0-2 fail the style."""
    store, home = Store(tmp_path / "wb.duckdb"), tmp_path / "runs"
    train_v = store.add_examples("train", [chat(i) for i in range(100, 108)])
    eval_v = store.add_examples("eval", [chat(i) for i in range(6)])
    pool_v = store.add_examples("pool", [chat(i) for i in range(200, 210)])
    preds = ["Press reset.", "", "no idea no idea no idea no idea no idea no idea", GOOD, GOOD,
             GOOD]
    run = write_eval_run(home, store, eval_v, preds)
    keys = store.frame(eval_v)["row_key"].tolist()
    return {"store": store, "home": home, "train": train_v, "eval": eval_v, "pool": pool_v,
            "run": run, "keys": keys}


def test_eval_runs_lists_hand_made_runs_newest_first(setup, tmp_path):
    runs = evaluation.eval_runs(setup["store"], home=setup["home"])
    assert runs["run_id"].tolist() == ["eval-1"]
    assert runs["rows"].tolist() == [6] and runs["model"].tolist() == ["tiny"]
    assert evaluation.eval_runs(Store(tmp_path / "other.duckdb"),
                                home=setup["home"] / "nothing").empty


def test_failures_are_tagged_and_sorted_by_severity(setup):
    table = loop.failures("eval-1", home=setup["home"])
    keys = setup["keys"]
    assert set(table["row_key"]) == set(keys[:3])
    assert table["row_key"].iloc[0] == keys[1] and table["tags"].iloc[0] == ["empty"]
    assert table["severity"].is_monotonic_decreasing
    assert "off_format" in table.set_index("row_key").at[keys[0], "tags"]
    assert "repetition_loop" in table.set_index("row_key").at[keys[2], "tags"]


def test_manual_tags_and_notes_join_the_failures_table(setup):
    keys = setup["keys"]
    loop.annotate("eval-1", keys[4], tags="tone, policy", note="too casual", home=setup["home"])
    table = loop.failures("eval-1", home=setup["home"]).set_index("row_key")
    assert table.at[keys[4], "manual_tags"] == ["tone", "policy"]
    assert table.at[keys[4], "note"] == "too casual"
    rates = loop.tag_rates("eval-1", home=setup["home"]).set_index("tag")
    assert rates.at["tone", "count"] == 1 and rates.at["any", "count"] == 4
    with pytest.raises(NotFoundError, match="row 999"):
        loop.annotate("eval-1", 999, tags=["x"], home=setup["home"])


def test_unknown_run_says_what_to_do(setup):
    with pytest.raises(NotFoundError, match="no eval run 'nope'.*run an evaluation"):
        loop.failures("nope", home=setup["home"])


def test_slices_by_tag_metadata_length_and_cluster(setup, tiny_embedder):
    metrics, kinds = loop.slice_options("eval-1", home=setup["home"])
    assert "format_ok" in metrics and "metadata.topic" in kinds and "cluster" in kinds
    by_tag = loop.slices(setup["store"], "eval-1", "format_ok", "tag", home=setup["home"])
    assert by_tag.set_index("slice").at[analysis.NO_TAG, "mean"] == 1.0
    by_topic = loop.slices(setup["store"], "eval-1", "format_ok", "metadata.topic",
                           home=setup["home"])
    assert set(by_topic["slice"]) == {"billing", "login"} and by_topic["n"].sum() == 6
    by_length = loop.slices(setup["store"], "eval-1", "rouge_l", "length", home=setup["home"])
    assert by_length["n"].sum() == 6
    by_cluster = loop.slices(setup["store"], "eval-1", "rouge_l", "cluster", k=2,
                             home=setup["home"])
    assert by_cluster["n"].sum() == 6 and {"lo", "hi"} <= set(by_cluster.columns)


def test_failure_clusters_are_named_and_list_their_rows(setup, tiny_embedder):
    clusters = loop.failure_clusters(setup["store"], "eval-1", k=2, home=setup["home"])
    assert clusters["size"].sum() == 3 and len(clusters) == 2
    assert sorted(k for keys in clusters["row_keys"] for k in keys) == sorted(setup["keys"][:3])
    assert all(isinstance(n, str) and n for n in clusters["name"])


def test_failure_detail_shows_nearest_training_rows_and_contamination(setup, tiny_embedder):
    store, key = setup["store"], setup["keys"][0]
    base = loop.failure_detail(store, "eval-1", key, home=setup["home"])
    assert base.train_version is None and base.neighbours.empty  # a base model: no rows
    detail = loop.failure_detail(store, "eval-1", key, k=2, train_version=setup["train"],
                                 home=setup["home"])
    assert len(detail.neighbours) == 2 and detail.neighbours["rank"].tolist() == [1, 2]
    assert not detail.contaminated and detail.row["prediction"] == "Press reset."
    leaked = store.add_examples("train", [chat(0)], parent=setup["train"])  # the eval row itself
    detail = loop.failure_detail(store, "eval-1", key, train_version=leaked, home=setup["home"])
    assert detail.contaminated and detail.overlap == 1.0
    assert detail.contaminating_prompt == detail.row["prompt"]


def test_targeted_version_from_corrected_answers_records_the_eval_run(setup):
    store, keys = setup["store"], setup["keys"]
    vid = loop.make_targeted_version(store, "eval-1", keys[:2],
                                     answers={keys[0]: "Thanks! Fixed.", keys[1]: "Thanks! Ok."},
                                     train_version=setup["train"], home=setup["home"])
    info = store.version(vid)
    assert info.operation == "targeted" and info.parent_id == setup["train"]
    assert info.params == {"eval_run": "eval-1", "corrected": 2} and info.n_rows == 10
    targeted = store.examples(vid)[-1].metadata["_targeted"]
    assert targeted["eval_run"] == "eval-1" and targeted["kind"] == "corrected"


def test_targeted_version_pulls_similar_pool_rows(setup, tiny_embedder):
    store, keys = setup["store"], setup["keys"]
    vid = loop.make_targeted_version(store, "eval-1", keys[:3], pool_version=setup["pool"],
                                     k=2, train_version=setup["train"], home=setup["home"])
    info = store.version(vid)
    assert info.params["pool"] == info.n_rows - 8 and 2 <= info.params["pool"] <= 6
    pool_ids = set(store.frame(setup["pool"])["id"])
    assert set(store.frame(vid)["id"].iloc[8:]) <= pool_ids


def test_bad_targeted_input_is_refused_with_the_reason(setup):
    store, keys, home = setup["store"], setup["keys"], setup["home"]
    with pytest.raises(ConfigError, match="no failures selected"):
        loop.make_targeted_version(store, "eval-1", [], answers={}, home=home,
                                   train_version=setup["train"])
    with pytest.raises(ConfigError, match="empty"):
        loop.make_targeted_version(store, "eval-1", keys[:1], answers={keys[0]: "  "},
                                   train_version=setup["train"], home=home)
    with pytest.raises(ConfigError, match="corrected answers or a pool"):
        loop.make_targeted_version(store, "eval-1", keys[:1], train_version=setup["train"],
                                   home=home)
    with pytest.raises(ConfigError, match="base model"):
        loop.make_targeted_version(store, "eval-1", keys[:1], answers={keys[0]: "x"}, home=home)
    with pytest.raises(NotFoundError, match="999"):
        loop.make_targeted_version(store, "eval-1", [999], answers={999: "x"}, home=home,
                                   train_version=setup["train"])
    with pytest.raises(ConfigError, match="training options"):
        loop.start_retrain(store, "eval-1", setup["train"], home=home)
    assert len(store.versions("train")) == 1  # nothing was added


TINY_TRAINING = {"model": "tiny", "max_steps": 2, "batch_size": 4, "learning_rate": 5e-3,
                 "warmup_ratio": 0.0, "val_fraction": 0.0, "eval_every": 0, "max_seq_len": 64}


def test_retrain_and_re_evaluate_reports_before_after_and_joins_the_overview(setup):
    store, keys, home = setup["store"], setup["keys"], setup["home"]
    vid = loop.make_targeted_version(store, "eval-1", keys[:1], answers={keys[0]: GOOD},
                                     train_version=setup["train"], home=home)
    job = loop.start_retrain(store, "eval-1", vid, config=TINY_TRAINING, home=home)
    assert [j.run_id for j in loop.retrain_jobs(store, "eval-1", home=home)] == [job.run_id]
    done = jobs.wait(job.run_id, home=home, timeout=300)
    assert done.state == "done", done.error + jobs.log_tail(done.run_dir, 40)
    report = loop.before_after(store, done.run_id, home=home)
    assert report.excluded_rows == [keys[0]]  # trained on: left out of the comparison
    assert report.metric == "rouge_l" and sum(report.counts.values()) == 5
    assert {"off_format", "empty", "any"} <= set(report.tags["tag"])
    assert {"tag", "length"} <= set(report.slices)
    overview = loop.iterations(store, home=home)
    assert overview["eval_run"].tolist() == ["eval-1", done.run_id]
    last = overview.iloc[-1]
    assert last["train_version"] == vid and last["train_operation"] == "targeted"
    assert last["train_parent"] == setup["train"] and last["from_eval_run"] == "eval-1"
    history = loop.metric_history(store, "format_ok", home=home)
    assert history["iteration"].tolist() == [1, 2]
    assert loop.train_version_of(done.run_id, home=home) == vid
    # The retraining is a training run of its own, part of the loop run: on the Train page,
    # among the models to evaluate, and in the runs registry with its parent.
    train_dir = home / f"{done.run_id}-train"
    assert loop.previous_training_run(done.run_id, home=home) == train_dir  # next round
    [trained] = training.training_runs(store, home=home).itertuples()
    assert (trained.run_id, trained.state, trained.parent) == (train_dir.name, "done",
                                                               done.run_id)
    assert training.runs_table(store, home=home).at[0, "part_of"] == done.run_id
    assert trained.run_id in evaluation.model_choices(store, home=home)
    registry = runs.table(store, home=home).set_index("run_id")
    assert registry.loc[trained.run_id, ["kind", "state", "parent"]].tolist() == [
        "train", "done", done.run_id]
    assert registry.loc[done.run_id, "kind"] == "loop"
    assert registry.loc[trained.run_id, "data"] == store.version(vid).ref
    events = jobs.events(done.run_dir)  # the loop's bar names its phases
    assert [p for p in dict.fromkeys(e.get("phase") for e in events)] == [
        "loading model", "training", "evaluating"]
    assert [v.version_id for v in loop.targeted_versions(store, "eval-1", home=home)] == [vid]


def test_iterations_of_an_empty_home_is_empty(tmp_path):
    assert loop.iterations(Store(tmp_path / "s.duckdb"), home=tmp_path / "runs").empty
    assert loop.metric_history(Store(tmp_path / "s.duckdb"), "similarity",
                               home=tmp_path / "runs").empty
