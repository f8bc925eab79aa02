"""Choosing the engine: small jobs stay local and say why; the CLI shows the choice. No Ray is
started here (tests/test_engine_ray.py runs the steps on Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench import engine as E
from workbench.cli import main
from workbench.exceptions import ConfigError

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"


def test_small_jobs_run_locally_and_say_why():
    choice = E.choose("ray", 400, "clean", threshold=1_000)
    assert choice.engine == "local"
    assert str(choice) == ("local: 400 rows is below the Ray threshold of 1000 rows for clean "
                           "(Ray's start-up would take longer than the step)")
    assert E.choose("ray", 1_000, "clean", threshold=1_000).engine == "ray"
    assert E.choose("ray", 3, "clean", force=True).engine == "ray"
    assert E.choose("local", 10**9, "clean").reason == "runs on this machine, as asked"


def test_thresholds_follow_each_steps_measured_speed():
    # Ray pays once the local run takes twice Ray's start-up: slow steps go to Ray sooner.
    assert E.RAY_MIN_ROWS["clean"] == round(2 * E.RAY_START_S * 198)
    assert E.RAY_MIN_ROWS["model_score"] < E.RAY_MIN_ROWS["embed"] < E.RAY_MIN_ROWS["clean"] \
        < E.RAY_MIN_ROWS["dedup"] < E.RAY_MIN_ROWS["score"]
    assert E.choose("ray", 400, "model_score").engine == "ray"
    assert E.choose("ray", 400, "clean").engine == "local"
    with pytest.raises(ConfigError, match="step='train': use one of clean, score"):
        E.choose("ray", 400, "train")


def test_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("WORKBENCH_RAY_MIN_ROWS", "0")
    assert E.choose("ray", 1, "score").engine == "ray"
    monkeypatch.delenv("WORKBENCH_RAY_MIN_ROWS")
    assert E.choose("ray", E.RAY_MIN_ROWS["score"] - 1, "score").engine == "local"
    monkeypatch.setenv("WORKBENCH_RAY_MIN_ROWS", "many")
    with pytest.raises(ConfigError, match="WORKBENCH_RAY_MIN_ROWS='many'"):
        E.choose("ray", 1, "score")


def test_unknown_engine_is_refused():
    with pytest.raises(ConfigError, match="engine='spark': use one of local, ray"):
        E.choose("spark", 10, "clean")


def test_cli_clean_with_engine_ray_below_the_threshold_runs_locally(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_RAY_MIN_ROWS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    db = str(tmp_path / "wb.duckdb")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--store", db, *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("import", str(SAMPLE / "support_train.jsonl"), "--dataset", "support")
    out = run("clean", "support@1", "--engine", "ray")
    assert ("engine local: 400 rows is below the Ray threshold of "
            f"{E.RAY_MIN_ROWS['clean']} rows for clean" in out)
    local = run("clean", "support@1", "--engine", "local")
    shown = [line for line in out.splitlines() if not line.startswith("engine ")]
    assert shown[:-1] == local.splitlines()[:-1]  # the same report; then the new version
    assert shown[-1].split(":")[1] == local.splitlines()[-1].split(":")[1]  # same row count


def test_cli_refuses_an_unknown_engine(tmp_path):
    result = CliRunner().invoke(main, ["--store", str(tmp_path / "wb.duckdb"), "clean", "x",
                                       "--engine", "spark"])
    assert result.exit_code == 1
    assert "'spark' is not one of 'local', 'ray'" in result.output


# --- a version's rows as Parquet shards, written by the store (no Ray needed) ----------------

def test_store_writes_a_versions_rows_as_shards_that_decode_to_its_frame(tmp_path):
    import pandas as pd

    from workbench.store import Store

    store = Store(tmp_path / "wb.duckdb")
    vid = store.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    folder = tmp_path / "shards"
    assert store.write_shards(vid, folder, rows_per_file=150) == 400
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    back = pd.concat([pd.read_parquet(folder / f) for f in files], ignore_index=True)
    assert back["_pos"].tolist() == list(range(400))
    assert back["messages"].map(type).eq(str).all()  # JSON text, as engine.decode reads it
    decoded = E.decode(back).drop(columns="_pos")
    pd.testing.assert_frame_equal(decoded, store.frame(vid)[decoded.columns])
    assert store.row_keys(vid).tolist() == back["row_key"].tolist()
    assert store.row_ids(vid)["id"].tolist() == back["id"].tolist()


def test_store_shards_of_some_positions_and_bad_columns(tmp_path):
    import pandas as pd

    from workbench.store import Store

    store = Store(tmp_path / "wb.duckdb")
    vid = store.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    ids = store.row_ids(vid)["id"].tolist()
    wanted = [ids[7], ids[3], ids[7], "no-such-id"]
    positions = store.first_positions(vid, wanted)
    assert positions.tolist() == sorted({ids.index(ids[3]), ids.index(ids[7])})
    folder = tmp_path / "some"
    assert store.write_shards(vid, folder, columns=("id",), positions=positions) == 2
    back = pd.read_parquet(folder)
    assert back.columns.tolist() == ["_pos", "row_key", "id"]
    assert back["id"].tolist() == [ids[p] for p in positions]
    with pytest.raises(ConfigError, match=r"columns: \['prompt'\] are not stored row columns"):
        store.write_shards(vid, tmp_path / "bad", columns=("prompt",))


def test_version_shards_leave_no_shard_folder_behind(tmp_path):
    from workbench.store import Store

    store = Store(tmp_path / "wb.duckdb")
    vid = store.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    with E.version_shards(store, vid, ("messages",)) as (folder, rows):
        assert rows == 400 and folder.parent == tmp_path / E.SHARD_DIR
        assert len(list(folder.glob("*.parquet"))) == 1
    assert not (tmp_path / E.SHARD_DIR).exists()  # the emptied shard root goes too


# --- `workbench embed` --------------------------------------------------------------------------

def test_cli_embed_fills_the_cache_and_says_what_came_from_it(tmp_path, monkeypatch):
    import numpy as np

    from workbench import curate, models
    from workbench.store import Store

    encoder = models.tiny_embedder()  # the tiny random embedder instead of loading MiniLM
    monkeypatch.setattr(models, "load_embedder", lambda *a, **k: encoder)
    monkeypatch.delenv("WORKBENCH_RAY_MIN_ROWS", raising=False)
    db = tmp_path / "wb.duckdb"
    store = Store(db)
    full = store.import_file(SAMPLE / "support_train.jsonl", "support")[0].version_id
    vid = store.add_examples("few", store.examples(full)[:12])
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["--store", str(db), "embed", "few@1", *args])
        assert result.exit_code == 0, result.output
        return result.output

    first = run("--field", "user", "--engine", "ray")
    assert (f"engine local: 12 rows is below the Ray threshold of {E.RAY_MIN_ROWS['embed']} "
            "rows for embed") in first
    assert "few@1 user: 0 rows from the cache, 12 embedded now (default)" in first
    assert "few@1 user: 12 rows from the cache, 0 embedded now (default)" in run("--field",
                                                                                  "user")
    cached = curate.version_embeddings(store, store.frame(vid), field="user")[0]
    direct = curate.embed_frame(Store(":memory:"), store.frame(vid), field="user",
                                encoder=encoder)
    np.testing.assert_allclose(cached, direct, atol=1e-6)
