"""The Ray engine gives what the local engine gives: the same clean preview and child version,
the same duplicate clusters, scores and embeddings, on the sample data.

One local Ray (2 CPUs, no dashboard) is started for the module and shut down after it; the
data is tiny, so the time goes to Ray's start-up. Skipped when Ray Data is not installed.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import clean, curate, quality
from workbench import engine as E
from workbench.exceptions import Cancelled, ConfigError
from workbench.store import Store

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
EMBED_ROWS = 24  # the real embedder on a few rows: enough for an actor pool, cheap on a CPU
MODEL_ROWS = 12  # perplexity and IFD with the tiny random model
EVAL_ROWS = 4  # greedy generation with the tiny random model: one Ray batch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_unreachable_ray_address_fails_fast_and_names_it(monkeypatch):
    if ray.is_initialized():
        pytest.skip("a Ray is already attached in this process")
    address = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    with pytest.raises(E.EngineError, match=f"RAY_ADDRESS={address}: no Ray cluster answers"):
        E.ray_session()
    assert not ray.is_initialized()


# --- shards ----------------------------------------------------------------------------------

def test_shards_are_written_inside_the_data_folder_only(tmp_path):
    frame = _frame(Store(":memory:"), rows=12)
    home = tmp_path / "home"
    folder = E.write_shards(frame, home, rows_per_file=5)
    assert folder.parent == (home / E.SHARD_DIR).resolve()
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
    back = pd.concat([pd.read_parquet(folder / f) for f in files], ignore_index=True)
    assert back["_pos"].tolist() == list(range(12))
    decoded = E.decode(back).drop(columns="_pos")
    assert decoded["messages"].tolist() == frame["messages"].tolist()
    assert decoded["metadata"].tolist() == frame["metadata"].tolist()
    with E.shards(frame, home) as temporary:
        assert temporary.is_dir()
    assert not temporary.exists()


# --- identical results under Ray --------------------------------------------------------------

@pytest.fixture(scope="module")
def module_by_value(local_ray):
    """The session's Ray (tests/conftest.py), with this module's own batch functions sent by
    value: workers cannot import tests/."""
    local_ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield local_ray
    local_ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def use_ray(module_by_value, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RAY_MIN_ROWS", "0")  # tiny data still goes to Ray


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two stores holding the same sample import: one for each engine."""
    made = {}
    for name in ("local", "ray"):
        store = Store(tmp_path_factory.mktemp(name) / "wb.duckdb", lock_timeout=30)
        store.import_file(SAMPLE / "support_train.jsonl", "support")
        made[name] = store
    return made


def _frame(store: Store, rows: int | None = None) -> pd.DataFrame:
    if not store.datasets().shape[0]:
        store.import_file(SAMPLE / "support_train.jsonl", "support")
    frame = store.frame(store.active_version("support"))
    return frame if rows is None else frame.head(rows)


def _assert_same_run(local: clean.CleanRun, remote: clean.CleanRun) -> None:
    assert remote.preview == local.preview  # counts, samples and every hit row, rule by rule
    for part in ("kept", "dropped", "changed", "flagged"):
        pd.testing.assert_frame_equal(getattr(remote.result, part),
                                      getattr(local.result, part))


def test_clean_preview_and_version_are_the_same_on_ray(use_ray, stores):
    rules = clean.default_rules()
    frames = {name: _frame(store) for name, store in stores.items()}
    local = curate.clean_preview(frames["local"], rules, engine="local")
    remote = curate.clean_preview(frames["ray"], rules, engine="ray")
    assert local.result.dropped.shape[0] + local.result.flagged.shape[0] > 0  # rules do hit
    _assert_same_run(local, remote)
    made = {name: curate.apply_clean(store, store.active_version("support"), frames[name],
                                     rules, engine=name)
            for name, store in stores.items()}
    assert made["ray"].counts == made["local"].counts
    assert made["ray"].params == made["local"].params
    for read in (Store.frame, Store.removed, Store.flagged):
        pd.testing.assert_frame_equal(read(stores["ray"], made["ray"].version_id),
                                      read(stores["local"], made["local"].version_id))


def test_heuristic_scores_are_the_same_on_ray(use_ray, stores):
    specs = quality.heuristic_specs(["length", "diversity", "repetition", "readability",
                                     "overlap"])
    out = {name: quality.score_heuristics(store, _frame(store), specs, engine=name)
           for name, store in stores.items()}
    # Exact equality: the same functions on the same rows give the same floats.
    pd.testing.assert_frame_equal(out["ray"], out["local"], check_exact=True)
    cached = {name: quality.with_cached_scores(store, _frame(store))
              for name, store in stores.items()}
    pd.testing.assert_frame_equal(cached["ray"], cached["local"], check_exact=True)


def test_embeddings_are_the_same_on_ray(use_ray, stores):
    vectors = {name: curate.embed_frame(store, _frame(store, EMBED_ROWS), engine=name)
               for name, store in stores.items()}
    assert vectors["ray"].shape == vectors["local"].shape == (EMBED_ROWS, 384)
    # Batches differ (length-sorted within each Ray batch), so padding differs: float noise.
    np.testing.assert_allclose(vectors["ray"], vectors["local"], atol=1e-5)
    again = curate.embed_frame(stores["ray"], _frame(stores["ray"], EMBED_ROWS), engine="ray")
    np.testing.assert_array_equal(again, vectors["ray"])  # read back from the cache


def test_model_scores_are_the_same_on_ray(use_ray, stores, tiny_folder):
    scored = {}
    for name, store in stores.items():
        rows = store.examples(store.versions("support")[0].version_id)[:MODEL_ROWS]
        vid = store.add_examples("model-rows", rows)  # its own dataset: support stays
        quality.run_model_scoring(store, vid, model=tiny_folder, scores=["ppl", "ifd"],
                                  engine=name)
        frame = quality.with_cached_scores(store, store.frame(vid))
        scored[name] = frame[["id", "perplexity_score", "ifd_score"]]
    assert len(scored["ray"]) == MODEL_ROWS
    # Padding differs between the local length-sorted chunks and Ray's batches: float noise.
    pd.testing.assert_frame_equal(scored["ray"], scored["local"], check_exact=False,
                                  rtol=1e-4)


def test_eval_generations_are_the_same_on_ray(use_ray, stores, tmp_path):
    from workbench import evaluation
    from workbench.evaluate import GenerationConfig

    predictions, results = {}, {}
    for name, store in stores.items():
        home = tmp_path / name
        job = evaluation.start_eval(store, "support", model="tiny", limit=EVAL_ROWS,
                                    generation=GenerationConfig(max_new_tokens=6),
                                    similarity=False, home=home, inline=True, engine=name)
        assert job.state == "done" and job.result["rows"] == EVAL_ROWS
        results[name] = job.result
        predictions[name] = evaluation.run_predictions(job.run_id, home=home)
    # The record names where the workers ran, in the precision they loaded (the CPU: fp32).
    assert results["ray"]["device"].startswith("ray (cpu (")
    assert results["ray"]["precision"] == results["local"]["precision"] == "fp32"
    assert predictions["ray"]["prediction"].tolist() == \
        predictions["local"]["prediction"].tolist()  # greedy, the same batch: the same text
    pd.testing.assert_frame_equal(predictions["ray"], predictions["local"])


def test_exact_and_near_duplicates_are_the_same_on_ray(use_ray, stores):
    pytest.importorskip("workbench.ray_dedup")
    options = curate.DedupOptions(near=True)
    frames = {name: _frame(store) for name, store in stores.items()}
    clusters = {name: curate.find_duplicates(store, frames[name], options, engine=name)
                for name, store in stores.items()}
    assert len(clusters["local"])  # the sample data plants duplicates
    pd.testing.assert_frame_equal(clusters["ray"], clusters["local"])
    made = {name: curate.apply_dedup(store, store.active_version("support"), frames[name],
                                     clusters[name], options)
            for name, store in stores.items()}
    assert made["ray"].counts == made["local"].counts
    pd.testing.assert_frame_equal(stores["ray"].removed(made["ray"].version_id),
                                  stores["local"].removed(made["local"].version_id))


def test_semantic_duplicates_stay_local_under_ray(use_ray, stores):
    with pytest.raises(ConfigError, match="semantic duplicates run on the local engine only"):
        curate.find_duplicates(stores["ray"], _frame(stores["ray"]),
                               curate.DedupOptions(semantic=True), engine="ray")


# --- the store path: rows go from the store to Parquet, never into a frame here ----------------

def test_store_path_clean_dedup_scores_and_embeddings_match_local(use_ray, tmp_path,
                                                                  monkeypatch):
    """clean_version, find_version_duplicates, score_version and embed_version on Ray read
    the version from shards the store writes, and give the local engine's preview, clusters,
    child versions, scores and vectors."""
    # Two fresh stores with the same history, so their row keys (store ids) are comparable:
    # the module's shared stores have had other steps applied by earlier tests.
    local = Store(tmp_path / "local.duckdb", lock_timeout=30)
    base = local.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    frame = local.frame(base)
    store = Store(tmp_path / "wb.duckdb", lock_timeout=30)  # nothing cached: all computed
    vid = store.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    monkeypatch.setattr(Store, "frame", _no_frame)  # the Ray path never builds one

    rules = clean.default_rules()
    want = curate.clean_preview(frame, rules, engine="local")
    got = curate.clean_version(store, vid, rules, engine="ray")
    assert got.preview == want.preview
    cleaned = curate.apply_clean(store, vid, None, rules, result=got.result)
    cleaned_local = curate.apply_clean(local, base, frame, rules, result=want.result)
    assert cleaned.counts == cleaned_local.counts

    options = curate.DedupOptions(near=True)
    clusters = curate.find_version_duplicates(store, vid, options, engine="ray")
    clusters_local = curate.find_duplicates(local, frame, options, engine="local")
    pd.testing.assert_frame_equal(clusters, clusters_local)
    deduped = curate.apply_dedup(store, vid, None, clusters, options)
    deduped_local = curate.apply_dedup(local, base, frame, clusters_local, options)
    assert deduped.counts == deduped_local.counts

    specs = quality.heuristic_specs(["length", "repetition", "overlap"])
    scores = quality.score_version(store, vid, specs, engine="ray")
    scores_local = quality.score_heuristics(local, frame, specs, engine="local")
    pd.testing.assert_frame_equal(scores, scores_local[scores.columns].reset_index(drop=True),
                                  check_exact=True)

    small = store.add_examples("small", store.examples(vid)[:EMBED_ROWS])
    assert curate.embed_version(store, small, engine="ray") == (0, EMBED_ROWS)
    assert curate.embed_version(store, small, engine="ray") == (EMBED_ROWS, 0)
    monkeypatch.undo()
    vectors = curate.embed_frame(store, store.frame(small), engine="local")  # from the cache
    np.testing.assert_allclose(vectors, curate.embed_frame(local, frame.head(EMBED_ROWS)),
                               atol=1e-5)

    for name, info, info_local in (("clean", cleaned, cleaned_local),
                                   ("dedup", deduped, deduped_local)):
        for read in (Store.frame, Store.removed, Store.flagged):
            pd.testing.assert_frame_equal(read(store, info.version_id),
                                          read(local, info_local.version_id), obj=name)
    assert not (tmp_path / E.SHARD_DIR).exists()  # no shard folder left behind


def _no_frame(self, version_id):
    raise AssertionError(f"Store.frame({version_id}) on the Ray path")


# --- progress and cancel ------------------------------------------------------------------------

def _lengths(batch: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"turns": [len(m) for m in batch["messages"]]})


def test_rows_come_back_in_order_with_progress(module_by_value, tmp_path):
    frame = _frame(Store(":memory:"), rows=30)
    seen = []
    out = E.map_rows(frame, _lengths, home=tmp_path, batch_rows=5, shard_rows=5,
                     progress=lambda done, total: seen.append((done, total)))
    assert out["turns"].tolist() == [len(m) for m in frame["messages"]]
    assert seen[-1] == (30, 30) and len(seen) >= 2
    assert not (tmp_path / E.SHARD_DIR).exists()  # shards removed, and their emptied root


def test_cancel_stops_between_batches(module_by_value, tmp_path):
    frame = _frame(Store(":memory:"), rows=30)
    seen = []
    with pytest.raises(Cancelled):
        E.map_rows(frame, _lengths, home=tmp_path, batch_rows=5, shard_rows=5,
                   progress=lambda done, total: seen.append(done), cancelled=lambda: True)
    assert seen == [5]  # the first batch came back, then the run stopped
    assert not (tmp_path / E.SHARD_DIR).exists()
