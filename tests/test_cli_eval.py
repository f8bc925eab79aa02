"""`workbench eval`, `eval-import` and `compare` over a temporary store and runs folder."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest

from helpers_app import chat_file, write_jsonl
from workbench.store import Store

EVAL_COMMANDS = ("eval", "eval-import", "compare")


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job process: one thread on a shared CPU
    Store(path).import_file(chat_file(tmp_path / "eval.jsonl", 3), "evalset")
    return path


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    """The references of the 3 eval rows as predictions, then a line without a prediction."""
    rows = [{"prompt": f"question {i}: how do I reset item {i}?",
             "reference": f"answer {i}: press reset {i} times.",
             "prediction": f"answer {i}: press reset {i} times."} for i in range(3)]
    return write_jsonl(tmp_path / "outside.jsonl", [*rows, '{"prompt": "q", "reference": "r"}'])


