"""training.py: form values to configs, runs as a table, loss curves, resume, merge, playground."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import json
from pathlib import Path

import pytest

from workbench import jobs, training
from workbench.exceptions import ConfigError, NotFoundError, WorkbenchError
from workbench.schema import Example
from workbench.store import Store

TINY = dict(model="tiny", max_steps=3, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0,
            eval_every=1, checkpoint_every=2, val_fraction=0.25, max_seq_len=64)


def chats(n: int = 8) -> list[Example]:
    return [Example(({"role": "user", "content": f"What does the cat find? {i}"},
                     {"role": "assistant", "content": f"The cat finds a short book {i}."}))
            for i in range(n)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Store, int, Path]:
    """A store with one version and a runs folder holding one finished tiny run."""
    root = tmp_path_factory.mktemp("training")
    store = Store(root / "wb.duckdb")
    version = store.add_examples("chats", chats())
    home = root / "runs"
    params = {"store": str(store.path), "version_id": version, "config": TINY}
    done = jobs.run_inline(training.TASK, params, home=home)
    assert done.state == "done", done.error
    return store, version, home


@pytest.fixture(scope="module")
def run(setup) -> jobs.JobStatus:
    store, _, home = setup
    return training.get_run(training.training_runs(store, home=home)["run_id"].iloc[0], home)


def test_build_config_reads_form_values():
    config = training.build_config({"model": "tiny", "target_modules": " q_proj, v_proj ,",
                                    "max_steps": 0, "epochs": 2.0, "seed": None})
    assert config.target_modules == ["q_proj", "v_proj"] and config.max_steps is None
    assert config.epochs == 2.0 and config.seed == 0
    assert training.build_config({"target_modules": ""}).target_modules is None


def test_bad_values_raise_errors_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="lora_alpha must be > 0"):
        training.build_config({"lora_alpha": 0.0})
    with pytest.raises(ConfigError, match="unknown training option.*rnak"):
        training.build_config({"rnak": 4})
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        training.load_config_file(bad)
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match="JSON object"):
        training.load_config_file(bad)


def test_default_targets_per_architecture(tmp_path):
    assert training.default_targets("tiny") == ["q_proj", "v_proj"]
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert training.default_targets(str(tmp_path)) == ["c_attn"]
    assert training.default_targets(str(tmp_path / "missing")) == []


def test_start_run_checks_versions_before_starting(setup):
    store, version, home = setup
    config = training.build_config(TINY)
    with pytest.raises(NotFoundError, match="no version 99"):
        training.start_run(store, 99, config, home=home)
    with pytest.raises(ConfigError, match="must differ"):
        training.start_run(store, version, config, val_version_id=version, home=home)
    missing = str(home.parent / "no-model")
    with pytest.raises(WorkbenchError, match="no such folder"):
        training.start_run(store, version, training.build_config(TINY | {"model": missing}),
                           home=home)
    assert len(training.training_runs(store, home=home)) == 1  # nothing was started


def test_runs_table_lists_status_data_config_and_losses(setup, run):
    store, version, home = setup
    table = training.runs_table(store, home=home)
    assert list(table.columns) == training.RUN_COLUMNS and len(table) == 1
    row = table.iloc[0]
    assert (row.run_id, row.status, row.step) == (run.run_id, "done", "3/3")
    assert row.data == "chats@1" and row.validation == "0.25 split" and row.part_of == ""
    assert row.model == "tiny" and row.length == "3 steps" and row.batch == "4×1"
    assert row.train_loss == pytest.approx(run.result["train_loss"])
    assert row.val_loss == pytest.approx(run.result["val_loss"])


def test_loss_frame_has_train_and_validation_curves(run):
    frame = training.loss_frame(run)
    train_steps = frame[frame.split == "train"].step.tolist()
    val_steps = frame[frame.split == "validation"].step.tolist()
    assert train_steps == [1, 2, 3] and val_steps == [0, 1, 2, 3]
    metrics = training.live_metrics(run)
    assert metrics["tokens_per_s"] > 0 and metrics["eta_s"] is None


def test_finished_run_has_an_adapter_merges_and_compares(run, tmp_path):
    assert (training.adapter_dir(run) / "adapter_model.safetensors").is_file()
    home = run.run_dir.parent
    out = training.merge_run(run.run_id, tmp_path / "merged", home=home)
    assert (out / "config.json").is_file()
    base, adapted = training.compare(run.run_id, "What does the cat find?", max_new_tokens=6,
                                     home=home)
    assert isinstance(base, str) and isinstance(adapted, str)
    with pytest.raises(ConfigError, match="prompt is empty"):
        training.compare(run.run_id, "  ", home=home)
    with pytest.raises(WorkbenchError, match="finished already"):
        training.resume_run(run.run_id, home=home)


def test_cancelled_run_cannot_merge_and_resumes_to_done(setup):
    store, version, home = setup
    run_dir = home / "cancelled-run"
    run_dir.mkdir()
    config = {"task": training.TASK, "kind": "train", "created": 0.0,
              "params": {"store": str(store.path), "version_id": version, "config": TINY}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "cancel").touch()  # the user pressed cancel before the first step ended
    jobs.execute(run_dir)
    # It ran in this (living) process: drop its pid, as if a worker had run it and exited.
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps(status | {"pid": None}))
    assert training.get_run("cancelled-run", home).state == "cancelled"
    with pytest.raises(ConfigError, match="no final adapter"):
        training.merge_run("cancelled-run", run_dir / "out", home=home)
    training.resume_run("cancelled-run", home=home)
    done = jobs.wait("cancelled-run", home=home, timeout=120)
    assert done.state == "done", done.error + jobs.log_tail(run_dir, 20)
    assert done.result["steps"] == 3


def test_other_jobs_are_not_training_runs(setup):
    store, _, home = setup
    other = jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=home)
    with pytest.raises(NotFoundError, match="not a training run"):
        training.get_run(other.run_id, home)
    assert other.run_id not in training.training_runs(store, home=home)["run_id"].tolist()
    with pytest.raises(NotFoundError):
        training.get_run("no-such-run", home)
