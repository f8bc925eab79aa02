"""The dedup job: the same clusters and version as deduplicating in the caller, overrides kept,
a cancel that leaves no version, and stale options told apart."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from workbench import curate, dedup, jobs
from workbench.exceptions import ConfigError
from workbench.sample import SAMPLE_DIR
from workbench.store import Store

OPTIONS = curate.DedupOptions(near_threshold=0.7)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, int]:
    store = Store(tmp_path / "wb.duckdb", lock_timeout=30)
    store.import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    return store, store.active_version("train")


def params(store: Store, vid: int, options: curate.DedupOptions = OPTIONS, **extra) -> dict:
    return {"store": str(store.path), "version_id": vid, "options": options.params(), **extra}


def find(store: Store, vid: int, home: Path, **extra) -> jobs.JobStatus:
    job = jobs.run_inline("dedup", params(store, vid, **extra), home=home)
    assert job.state == "done", job.error
    return job


def test_the_jobs_clusters_equal_find_duplicates(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    assert job.kind == "dedup"
    expected = curate.find_duplicates(store, store.frame(vid), OPTIONS)
    got = curate.dedup_job_clusters(job)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    dropped = int((~expected["kept"]).sum())
    assert dropped > 0 and job.result["dropped"] == dropped
    assert job.result["clusters"] == expected["cluster_id"].nunique()
    assert sum(job.result["by_method"].values()) == dropped
    assert set(job.result["by_method"]) <= {"exact", "near"}
    # Progress named its phase and counted the rows hashed.
    last = [e for e in jobs.events(job.run_dir) if e.get("phase") == "hashing rows"][-1]
    assert last["total"] == 400 and last["step"] == 400
    assert store.versions("train")[-1].version_id == vid  # a find changes nothing
    assert curate.dedup_jobs(store, vid, home=tmp_path)[0].run_id == job.run_id
    assert curate.dedup_job_options(job) == OPTIONS
    assert (job.run_dir / curate.DEDUP_OPTIONS_FILE).exists()


def test_stale_options_are_told_apart(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    assert curate.dedup_job_matches(job, OPTIONS)
    assert not curate.dedup_job_matches(job, curate.DedupOptions(near_threshold=0.9))
    assert not curate.dedup_job_matches(job, curate.DedupOptions(near_threshold=0.7,
                                                                 keep="longest"))


def test_an_apply_job_makes_the_version_apply_dedup_makes(setup, tmp_path, monkeypatch):
    store, vid = setup
    job = find(store, vid, tmp_path)
    clusters = curate.dedup_job_clusters(job)
    monkeypatch.setattr(dedup, "find_duplicates",
                        lambda *a, **k: pytest.fail("the duplicates were found again"))
    applied = find(store, vid, tmp_path, apply=True, from_run=job.run_id)
    monkeypatch.undo()
    made = store.version(applied.result["version_id"])
    direct = curate.apply_dedup(store, vid, store.frame(vid), clusters, OPTIONS)
    assert made.parent_id == direct.parent_id == vid
    assert made.counts == direct.counts and made.n_rows == direct.n_rows == \
        400 - job.result["dropped"]
    assert made.params == direct.params
    assert store.frame(made.version_id)["id"].tolist() == \
        store.frame(direct.version_id)["id"].tolist()
    assert store.removed(made.version_id)["duplicate_of"].tolist() == \
        store.removed(direct.version_id)["duplicate_of"].tolist()


def test_an_apply_job_without_a_find_finds_then_applies(setup, tmp_path):
    store, vid = setup
    applied = find(store, vid, tmp_path, apply=True)
    clusters = curate.find_duplicates(store, store.frame(vid), OPTIONS)
    direct = curate.apply_dedup(store, vid, store.frame(vid), clusters, OPTIONS)
    assert store.version(applied.result["version_id"]).counts == direct.counts


def test_overrides_are_respected(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    clusters = curate.dedup_job_clusters(job)
    members = clusters[clusters["cluster_id"] == clusters["cluster_id"].iloc[0]]
    cid, policy = int(members["cluster_id"].iloc[0]), int(members.loc[members["kept"],
                                                                      "row_key"].iloc[0])
    other = int(members.loc[~members["kept"], "row_key"].iloc[0])
    for chosen, stays, goes in (({cid: other}, {other}, {policy}),
                                ({cid: dedup.KEEP_ALL}, set(members["row_key"]), set())):
        applied = find(store, vid, tmp_path, apply=True, from_run=job.run_id,
                       overrides={str(k): v for k, v in chosen.items()})
        made = store.version(applied.result["version_id"])
        kept = set(store.frame(made.version_id)["row_key"])
        assert stays <= kept and not goes & kept
        direct = curate.apply_dedup(store, vid, store.frame(vid), clusters, OPTIONS, chosen)
        assert made.params == direct.params and made.params["overrides"]
        assert sorted(kept) == sorted(store.frame(direct.version_id)["row_key"])
        assert applied.result["dropped"] == len(store.removed(made.version_id)) == \
            400 - made.n_rows


def test_cancel_leaves_no_version_and_no_clusters(setup, tmp_path, monkeypatch):
    store, vid = setup

    def cancelled(self) -> bool:  # the user presses Cancel while the rows are hashed
        return self._phase == "hashing rows"

    monkeypatch.setattr(jobs.JobContext, "cancelled", cancelled)
    before = [v.version_id for v in store.versions("train")]
    job = jobs.run_inline("dedup", params(store, vid, apply=True), home=tmp_path)
    assert job.state == "cancelled"
    assert [v.version_id for v in store.versions("train")] == before
    assert not (job.run_dir / curate.DEDUP_CLUSTERS_FILE).exists()


def test_a_run_folder_without_its_clusters_is_a_clear_error(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    (job.run_dir / curate.DEDUP_CLUSTERS_FILE).unlink()
    with pytest.raises(ConfigError, match="no saved clusters"):
        curate.dedup_job_clusters(job)
    applied = jobs.run_inline("dedup", params(store, vid, apply=True, from_run=job.run_id),
                              home=tmp_path)
    assert applied.state == "failed" and "no saved clusters" in applied.error
    assert len(store.versions("train")) == 1


def test_apply_refuses_clusters_of_other_options(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    other = curate.DedupOptions(near_threshold=0.9)
    applied = jobs.run_inline("dedup", params(store, vid, other, apply=True,
                                              from_run=job.run_id), home=tmp_path)
    assert applied.state == "failed" and "other options" in applied.error
    assert len(store.versions("train")) == 1


def test_a_bad_option_fails_naming_it(setup, tmp_path):
    store, vid = setup
    job = jobs.run_inline("dedup", {**params(store, vid), "options": {"nope": 1}},
                          home=tmp_path)
    assert job.state == "failed" and "unknown option(s) nope" in job.error


def test_the_cluster_page_reads_only_its_rows(setup, tmp_path, monkeypatch):
    store, vid = setup
    frame = store.frame(vid)
    clusters = curate.find_duplicates(store, frame, OPTIONS)
    summary = curate.cluster_summary(frame, clusters)
    table = curate.cluster_table(clusters)
    pd.testing.assert_frame_equal(table, summary.drop(columns="kept_text"), check_dtype=False)
    asked = []
    real = store.rows_of
    monkeypatch.setattr(store, "rows_of", lambda v, keys: asked.append(len(keys)) or real(v, keys))
    page = curate.cluster_page(store, vid, table, 2, 3)
    assert asked == [3]
    pd.testing.assert_frame_equal(page.reset_index(drop=True),
                                  summary.iloc[2:5].reset_index(drop=True), check_dtype=False)
    cid = int(table["cluster_id"].iloc[0])
    pd.testing.assert_frame_equal(curate.stored_cluster_members(store, vid, clusters, cid),
                                  curate.cluster_members(frame, clusters, cid))


def test_semantic_duplicates_read_the_cached_embeddings_in_the_job(setup, tmp_path):
    from workbench import models

    store, vid = setup
    options = curate.DedupOptions(near=False, semantic=True, semantic_threshold=0.9)
    refused = jobs.run_inline("dedup", params(store, vid, options), home=tmp_path)
    assert refused.state == "failed" and "no embedding yet" in refused.error
    curate.embed_frame(store, store.frame(vid), encoder=models.tiny_embedder())
    job = jobs.run_inline("dedup", params(store, vid, options), home=tmp_path)
    assert job.state == "done", job.error
    expected = curate.find_duplicates(store, store.frame(vid), options)
    pd.testing.assert_frame_equal(curate.dedup_job_clusters(job), expected, check_dtype=False)
    assert job.result["dropped"] == int((~expected["kept"]).sum()) > 0


@pytest.mark.usefixtures("local_ray")
def test_on_ray_the_job_finds_the_same_clusters(setup, tmp_path, monkeypatch):
    store, vid = setup
    monkeypatch.setenv("WORKBENCH_RAY_MIN_ROWS", "0")  # the 400 rows go to Ray
    job = find(store, vid, tmp_path, engine="ray")
    expected = curate.find_duplicates(store, store.frame(vid), OPTIONS)
    got = curate.dedup_job_clusters(job)
    assert got["row_key"].tolist() == expected["row_key"].tolist()
    assert got["kept"].tolist() == expected["kept"].tolist()
    assert job.result["dropped"] == int((~expected["kept"]).sum())
    assert any(e.get("phase") == "stages on Ray" for e in jobs.events(job.run_dir))


def curve_params(store: Store, vid: int, options: curate.DedupOptions, method: str) -> dict:
    return {**params(store, vid, options), "method": method,
            "thresholds": list(curate.CURVE_THRESHOLDS[method])}


@pytest.mark.parametrize("method", ["near", "semantic"])
def test_the_curve_job_equals_duplicate_curve(setup, tmp_path, method):
    from workbench import models

    store, vid = setup
    options = curate.DedupOptions(semantic=method == "semantic")
    if method == "semantic":
        curate.embed_frame(store, store.frame(vid), encoder=models.tiny_embedder())
    job = jobs.run_inline("dedup_curve", curve_params(store, vid, options, method), home=tmp_path)
    assert job.state == "done", job.error
    expected = curate.duplicate_curve(store, store.frame(vid), options, method,
                                      curate.CURVE_THRESHOLDS[method])
    pd.testing.assert_frame_equal(curate.dedup_job_curve(job), expected)
    assert expected["rows_removed"].iloc[0] > 0 and job.result["rows"] == 400
    assert curate.dedup_curve_jobs(store, vid, home=tmp_path)[0].run_id == job.run_id
    assert curate.dedup_curve_changes(job, options, method) == {}
    if method == "near":
        last = [e for e in jobs.events(job.run_dir) if e.get("phase") == "hashing rows"][-1]
        assert last["total"] == last["step"] == 400


def test_a_curve_is_stale_for_what_it_depends_on_only(setup, tmp_path):
    store, vid = setup
    job = jobs.run_inline("dedup_curve", curve_params(store, vid, OPTIONS, "near"),
                          home=tmp_path)
    assert curate.dedup_curve_changes(job, curate.DedupOptions(near_threshold=0.95,
                                                               keep="longest"), "near") == {}
    assert curate.dedup_curve_changes(job, curate.DedupOptions(ngram=3, field="user"),
                                      "near") == {"field": ("conversation", "user"),
                                                  "ngram": (5, 3)}
    assert "method" in curate.dedup_curve_changes(job, OPTIONS, "semantic")
    (job.run_dir / curate.DEDUP_CURVE_FILE).unlink()
    with pytest.raises(ConfigError, match="no saved curve"):
        curate.dedup_job_curve(job)
    bad = jobs.run_inline("dedup_curve", {**curve_params(store, vid, OPTIONS, "near"),
                                          "method": "fuzzy"}, home=tmp_path)
    assert bad.state == "failed" and "method='fuzzy': use near or semantic" in bad.error


def test_keep_choices_are_kept_with_the_find(setup, tmp_path):
    store, vid = setup
    job = find(store, vid, tmp_path)
    assert curate.dedup_job_overrides(job) == {}
    chosen = {3: dedup.KEEP_ALL, 7: 42}
    curate.save_dedup_overrides(job, chosen)
    assert curate.dedup_job_overrides(job) == chosen
    assert curate.dedup_job_overrides(jobs.status(job.run_dir)) == chosen  # read back afresh
    (job.run_dir / curate.DEDUP_OVERRIDES_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        curate.dedup_job_overrides(job)
