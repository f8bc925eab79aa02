"""The training commands: train (foreground and --detach), runs, merge, resume, cancel, errors."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import json
from pathlib import Path

import pytest
from helpers_app import chat_file
from test_cli import assert_one_line_error, run

from workbench import device, jobs

TINY = ["--model", "tiny", "--batch-size", "4", "--max-seq-len", "128", "--lr", "5e-3"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A data folder with a store holding 'chats' (8 rows); run folders go to <home>/runs."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "store.duckdb"))
    run("import", chat_file(tmp_path / "c.jsonl", 8), "-d", "chats", "--no-progress")
    return tmp_path


def test_train_commands_have_help():
    for name in ("train", "runs", "resume", "cancel", "merge"):
        assert f"Usage: workbench {name}" in run(name, "--help").output
    help_text = run("train", "--help").output
    assert "--val-fraction" in help_text
    for flag in ("--device", "--precision", "--qlora", "--gradient-checkpointing",
                 "--batch-tokens"):
        assert flag in help_text


def test_train_runs_to_the_end_then_lists_and_merges(home):
    result = run("train", "chats", *TINY, "--max-steps", "2", "--val-fraction", "0.25",
                 "--device", "cpu", "--precision", "fp32", "--gradient-checkpointing", "off",
                 "--batch-tokens", "512")
    assert "done: 2 steps, train loss" in result.stdout and "val loss" in result.stdout
    assert "training" in result.stderr  # the progress bar
    assert " on cpu (" in result.stderr  # the device it runs on
    run_id = next(d.name for d in (home / "runs").iterdir())
    assert f"adapter: {home / 'runs' / run_id / 'adapter'}" in result.stdout

    table = run("runs", "--kind", "train").stdout  # training detail: config and losses
    assert run_id in table and "done" in table and "chats@1" in table and "2/2" in table
    assert "cpu (" in table and "fp32" in table  # the device it ran on
    config = jobs.status(run_id, home=home / "runs").config["params"]["config"]
    assert (config["device"], config["precision"], config["gradient_checkpointing"],
            config["batch_tokens"], config["qlora"]) == ("cpu", "fp32", "off", 512, False)
    registry = run("runs").stdout.splitlines()  # every run, from the store's registry
    assert registry[0].split()[:5] == ["run_id", "kind", "state", "parent", "data"]
    [line] = [row for row in registry if row.startswith(run_id)]
    assert line.split()[1:3] == ["train", "done"] and "chats@1" in line
    out = home / "merged"
    assert str(out) in run("merge", run_id, out).stdout
    assert (out / "config.json").is_file()
    assert_one_line_error(run("resume", run_id, ok=False), "finished already")


def test_detach_prints_the_run_id_and_config_file_is_read(home):
    config = home / "train.json"
    config.write_text(json.dumps({"model": "tiny", "max_steps": 2, "batch_size": 4,
                                  "max_seq_len": 128, "lora_r": 4}))
    run_id = run("train", "chats", "--config", config, "--detach").stdout.strip()
    job = jobs.wait(run_id, home=home / "runs", timeout=120)
    assert job.state == "done", job.error
    assert job.config["params"]["config"]["lora_r"] == 4
    assert "cancelled" not in run("cancel", run_id).stdout  # a finished run stays done


def test_bad_input_gives_one_line_errors(home):
    assert_one_line_error(run("train", "nope", *TINY, ok=False), "nope")
    assert_one_line_error(run("train", "chats", "--rank", "0", "--model", "tiny", ok=False),
                          "lora_r must be an integer >= 1")
    assert_one_line_error(run("train", "chats", "--val", "chats", "--val-fraction", "0.1",
                              ok=False), "--val or --val-fraction")
    assert_one_line_error(run("train", "chats", "--epochs", "1", "--max-steps", "2", ok=False),
                          "--epochs or --max-steps")
    assert_one_line_error(run("train", "chats", "--val", "chats", *TINY, ok=False),
                          "must differ")
    assert_one_line_error(run("resume", "no-such-run", ok=False), "no run 'no-such-run'")
    assert_one_line_error(run("merge", "no-such-run", home / "out", ok=False), "no-such-run")
    assert_one_line_error(run("train", "chats", *TINY, "--device", "tpu", ok=False),
                          "device must be auto, cpu, cuda, cuda:N or mps")
    if not device.probe().gpus:  # this machine's refusals (the CI and dev machines have no GPU)
        assert_one_line_error(run("train", "chats", *TINY, "--qlora", ok=False),
                              "QLoRA (4-bit base weights) needs a CUDA GPU")
        assert_one_line_error(run("train", "chats", *TINY, "--device", "cuda", ok=False),
                              "'cuda' is not available here")
        assert_one_line_error(run("train", "chats", *TINY, "--precision", "fp16", ok=False),
                              "fp16 is not supported")
    assert not (home / "runs").exists()  # nothing started
