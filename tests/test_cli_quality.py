"""The `workbench score` and `workbench select` commands over a temporary store."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_cli import run
from helpers_app import write_jsonl
from workbench.store import Store


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return path


@pytest.fixture
def imported(store_path, tmp_path) -> Store:
    records = [{"messages": [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": " ".join(["word"] * (i + 1)) +
                              (" {}" if i % 2 else "")}]} for i in range(6)]
    run("import", write_jsonl(tmp_path / "d.jsonl", records), "-d", "d")
    return Store(store_path)


