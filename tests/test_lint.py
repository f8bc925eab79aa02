"""The code stays as the ruff configuration in pyproject.toml says (pycodestyle, pyflakes,
bugbear, import order, pyupgrade)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_reports_what_it_finds(tmp_path):
    """The check above can fail: ruff, run with our configuration, names a planted finding."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n")
    result = subprocess.run([ruff, "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                             str(planted)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "F401" in result.stdout, result.stdout
