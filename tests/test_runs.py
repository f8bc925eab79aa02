"""The runs registry, child runs, phased progress and per-dataset version names."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from workbench import jobs, runs
from workbench.exceptions import NotFoundError
from workbench.store import Store


def two_datasets(tmp_path: Path) -> Store:
    store = Store(tmp_path / "wb.duckdb")
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(3)]
    for name, file, n in (("alpha", "a", 3), ("beta", "b", 2), ("alpha", "c", 1)):
        path = tmp_path / f"{file}.jsonl"
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:n]))
        store.import_file(path, name)
    return store


def test_versions_are_numbered_per_dataset_and_resolve_by_name_at_n(tmp_path):
    store = two_datasets(tmp_path)
    alpha, beta = store.versions("alpha"), store.versions("beta")
    assert [v.ref for v in alpha] == ["alpha@1", "alpha@2"]
    assert [v.ref for v in beta] == ["beta@1"]  # its own first version, though the 2nd made
    assert store.resolve("beta@1") == beta[0].version_id
    assert store.resolve("alpha@2") == alpha[1].version_id
    assert store.version(beta[0].version_id).number == 1
    assert store.refs() == {v.version_id: v.ref for v in alpha + beta}
    with pytest.raises(NotFoundError, match="beta@2"):
        store.resolve("beta@2")


def test_cli_shows_and_takes_per_dataset_names(tmp_path):
    from click.testing import CliRunner

    from workbench.cli import main

    store = two_datasets(tmp_path)

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["--store", str(store.path), *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert run("versions", "beta").split()[:3] == ["*", "beta@1", "parent=-"]
    assert "alpha@1 is now the active version" in run("activate", "alpha@1")
    assert store.active_version("alpha") == store.versions("alpha")[0].version_id
    assert "'beta' is now marked eval" in run("role", "beta", "eval")
    assert store.with_role("eval") == ["beta"]


def test_roles_are_checked(tmp_path):
    store = two_datasets(tmp_path)
    store.set_role("alpha", "pool")
    assert store.datasets().set_index("name")["role"].to_dict() == {"alpha": "pool",
                                                                     "beta": ""}
    with pytest.raises(Exception, match="unknown role 'test'"):
        store.set_role("alpha", "test")


def test_registry_records_runs_with_data_parent_and_summary(tmp_path):
    store, home = two_datasets(tmp_path), tmp_path / "runs"
    version = store.versions("beta")[0].version_id
    loop = jobs.run_inline("tests.jobtasks.parent", {"store": str(store.path),
                                                     "version_id": version}, home=home)
    assert loop.state == "done"
    table = runs.table(store, home=home).set_index("run_id")
    child = f"{loop.run_id}-train"
    assert table.loc[child, ["kind", "state", "parent"]].tolist() == ["train", "done",
                                                                      loop.run_id]
    assert table.loc[child, "train_loss"] == 0.5  # the summary, one column per metric
    assert table.loc[loop.run_id, "data"] == "beta@1"
    assert list(runs.children(store, loop.run_id, home=home)["run_id"]) == [child]
    # Finished runs are read once: the registry keeps them when their folder is unchanged,
    # and says so when a folder is gone rather than forgetting the run.
    import shutil

    shutil.rmtree(home / child)
    again = runs.table(store, home=home).set_index("run_id")
    assert again.loc[child, "state"] == "missing" and loop.run_id in again.index


def test_registry_leaves_out_runs_of_another_store(tmp_path):
    store, home = two_datasets(tmp_path), tmp_path / "runs"
    jobs.run_inline("tests.jobtasks.count", {"n": 1, "store": str(tmp_path / "other.duckdb")},
                    home=home)
    mine = jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=home)
    assert runs.table(store, home=home)["run_id"].tolist() == [mine.run_id]


def test_a_failing_child_fails_its_parent_and_both_say_why(tmp_path):
    job = jobs.run_inline("tests.jobtasks.parent", {"child": "tests.jobtasks.boom"},
                          home=tmp_path)
    child = jobs.status(f"{job.run_id}-train", home=tmp_path)
    assert (job.state, child.state) == ("failed", "failed")
    assert child.error == job.error == "ValueError: bad value for 'lr': must be > 0"
    assert child.parent == job.run_id


def test_progress_names_phases_and_never_reads_0_of_unknown(tmp_path):
    job = jobs.run_inline("tests.jobtasks.parent", {}, home=tmp_path)
    phases = [e.get("phase") for e in jobs.events(job.run_dir)]
    assert list(dict.fromkeys(phases)) == ["loading model", "training", "evaluating"]
    child = jobs.status(f"{job.run_id}-train", home=tmp_path)
    assert (child.phase, child.step, child.total) == ("training", 3, 3)
    # What the bar says, phase by phase, as a reader finds the run folder mid-way.
    loading = jobs.JobStatus("r", tmp_path, "train", "running", {}, phase="loading model")
    assert jobs.progress_text(loading) == "train · running · loading model…"
    training = jobs.JobStatus("r", tmp_path, "loop", "running", {}, step=3, total=6,
                              phase="training")
    assert jobs.progress_text(training) == "loop · running · training 3/6"
    assert jobs.progress_text(jobs.JobStatus("r", tmp_path, "eval", "queued", {})) == \
        "eval · queued · waiting to start"
    starting = jobs.JobStatus("r", tmp_path, "eval", "running", {})
    assert jobs.progress_text(starting) == "eval · running · starting…"


def test_children_take_a_run_id_not_a_path(tmp_path):
    store = two_datasets(tmp_path)
    assert runs.children(store, "20261204-101010-123-abcd", home=tmp_path / "runs").empty
    for bad in ("../x", "/etc", "a/b", "", ".hidden", "a..b"):
        with pytest.raises(NotFoundError, match="never a path"):
            runs.children(store, bad, home=tmp_path / "runs")


def test_train_and_evaluate_listings_read_the_registry(tmp_path):
    """A loop's training run is on the Train listing and imported predictions on the Evaluate
    listing; once their folders are gone both still show, as missing."""
    import shutil

    from workbench import evaluation, training

    store, home = two_datasets(tmp_path), tmp_path / "runs"
    loop = jobs.run_inline("tests.jobtasks.parent", {"store": str(store.path)}, home=home)
    predictions = tmp_path / "outside.jsonl"
    predictions.write_bytes(orjson.dumps({"prompt": "q", "reference": "a", "prediction": "a",
                                          "model": "oracle"}) + b"\n")
    imported, _ = evaluation.import_run(predictions, store=store, similarity=False, home=home)
    child = f"{loop.run_id}-train"
    trained = training.runs_table(store, home=home)
    assert trained[["run_id", "status", "part_of", "step"]].values.tolist() == [
        [child, "done", loop.run_id, "3/3"]]
    assert trained.at[0, "train_loss"] == 0.5  # the child's result, kept by the registry
    evals = evaluation.runs_table(store, home=home)
    assert evals[["run", "kind", "state", "model", "data", "rows"]].values.tolist() == [
        [imported.run_id, "import", "done", "oracle", "file outside.jsonl", 1]]
    assert evals.at[0, "exact_match"].startswith("1.000 [")
    shutil.rmtree(home / child)
    shutil.rmtree(imported.run_dir)
    assert training.runs_table(store, home=home)["status"].tolist() == ["missing"]
    assert evaluation.runs_table(store, home=home)["state"].tolist() == ["missing"]
    assert evaluation.finished_runs(store, home=home).empty  # nothing left to open


def test_sync_reads_only_new_and_changed_run_folders(tmp_path, monkeypatch):
    store, home = two_datasets(tmp_path), tmp_path / "runs"
    done = [jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=home) for _ in range(3)]
    running = home / "running-run"
    running.mkdir()
    jobs._write_json(running / "config.json", {"task": "tests.jobtasks.count", "kind": "count",
                                               "params": {"n": 5}, "created": 1.0})
    lock = jobs._take_lock(running, wait_s=1.0)  # a live worker holds its run's lock
    try:
        jobs._write_json(running / "status.json", {"state": "running", "locked": True})
        (running / "events.jsonl").write_bytes(orjson.dumps({"t": 1.0, "step": 1, "total": 5})
                                               + b"\n")
        reads: list[str] = []
        real = jobs.status
        monkeypatch.setattr(jobs, "status", lambda run, **kw: reads.append(Path(run).name)
                            or real(run, **kw))
        runs.sync(store, home=home)
        assert sorted(reads) == sorted([j.run_id for j in done] + ["running-run"])
        reads.clear()
        runs.sync(store, home=home)
        assert reads == []  # finished runs and an unchanged running one are not read again
        with open(running / "events.jsonl", "ab") as f:  # the worker makes progress
            f.write(orjson.dumps({"t": 2.0, "step": 2, "total": 5}) + b"\n")
        table = runs.records(store, home=home).set_index("run_id")
        assert reads == ["running-run"]
        assert table.loc["running-run", "summary"]["step"] == 2
    finally:
        os.close(lock)
    reads.clear()
    # The worker died (its lock is free): read again, and it shows as failed.
    assert runs.table(store, home=home).set_index("run_id").loc["running-run", "state"] == \
        "failed"
    assert reads == ["running-run"]


def test_job_lookups_read_only_their_own_runs_folders(tmp_path, monkeypatch):
    """Score & select's, Deduplicate's, Evaluate's and Errors' job lookups find their runs in
    the registry and read the live status of those alone: neither the many finished runs of
    other kinds nor runs of their kind started for something else."""
    import pandas as pd

    from workbench import curate, evaluation, loop, quality

    store, home = two_datasets(tmp_path), tmp_path / "runs"
    version, other = (v.version_id for v in store.versions("alpha"))
    source = home / "eval-src"  # an eval run written by hand: a retrain's source
    source.mkdir(parents=True)
    pd.DataFrame({"prompt": ["q"], "reference": ["a"], "prediction": ["a"]}).to_parquet(
        source / "predictions.parquet")

    def run(kind: str, **params) -> str:
        return jobs.run_inline("tests.jobtasks.count", {"n": 1, "store": str(store.path),
                                                        **params}, kind=kind, home=home).run_id

    for kind in ("train", "eval", "import", "count", "count"):  # unrelated finished runs
        run(kind, version_id=version)
    judge = {"backend": "local", "model": "m"}
    score, judged = run("score", version_id=version), run("judge", version_id=version,
                                                            judge=judge)
    run("score", version_id=other)
    embedded = run("embed", version_id=version, field="prompt", fields=["prompt", "response"])
    run("embed", version_id=version, field="conversation")
    run("embed", version_id=other, field="prompt")
    a, b = str(home / "run-a"), str(home / "run-b")
    compared = run(evaluation.PAIRWISE_KIND, run_a=a, run_b=b)
    run(evaluation.PAIRWISE_KIND, run_a=b, run_b=a)
    retrained = run(loop.LOOP_KIND, source_run="eval-src")
    run(loop.LOOP_KIND, source_run="eval-other")
    runs.sync(store, home=home)  # the registry's one read of every folder

    reads: list[str] = []
    real = jobs.status
    monkeypatch.setattr(jobs, "status", lambda run, **kw: reads.append(Path(run).name)
                        or real(run, **kw))

    def read_by(lookup) -> tuple[list[str], list[str]]:
        reads.clear()
        found = [j.run_id for j in lookup()]
        return found, sorted(reads)

    assert read_by(lambda: quality.scoring_jobs(store, version, home=home)) == (
        [judged, score], sorted([judged, score]))  # newest first
    assert read_by(lambda: curate.embedding_jobs(store, version, "response", home=home)) == (
        [embedded], [embedded])
    assert read_by(lambda: evaluation.pairwise_judge_runs(store, "run-a", "run-b",
                                                          home=home)) == ([compared], [compared])
    assert read_by(lambda: loop.retrain_jobs(store, "eval-src", home=home)) == (
        [retrained], [retrained])
    reads.clear()
    assert evaluation.judge_config(store, home=home) == judge
    assert reads == []  # the judge's options are the registry's record of its parameters
