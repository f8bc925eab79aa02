"""Import boundaries: pure steps never reach for the store, the caches, jobs or streamlit.

A step is a function over rows and DataFrames; reading a version, caching, running in the
background and drawing belong to the wiring modules, the job tasks (tasks.py) and the pages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
# The step modules, named here on purpose (a new module is a decision, not a glob):
# curation (clean, dedup, score, select), training (train: the loop on rows), evaluation
# (evaluate: generation and metrics; judge; analysis), embedding (embed), learned quality
# (learn: the model on features). Wiring (curate, quality, training, evaluation, loop,
# labelling, runs, views, cli), the job tasks (tasks) and foundations (store, cache, jobs,
# models, io, schema) may import what they need.
STEPS = ("clean", "dedup", "score", "select", "train", "evaluate", "analysis", "judge", "embed",
         "learn")
FORBIDDEN = ("workbench.store", "workbench.cache", "workbench.jobs", "workbench.tasks",
             "streamlit")


def imported_modules(path: Path) -> set[str]:
    """Return every module a file imports, at any depth (inside functions and TYPE_CHECKING
    blocks too), relative imports resolved against the workbench package."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "workbench" + (f".{base}" if base else "")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # from . import jobs
    return names


def forbidden_imports(path: Path) -> list[str]:
    """Return the forbidden modules a file imports (or imports names from)."""
    return sorted({f for n in imported_modules(path) for f in FORBIDDEN
                   if n == f or n.startswith(f + ".")})


@pytest.mark.parametrize("step", STEPS)
def test_step_imports_no_store_cache_jobs_or_streamlit(step):
    assert forbidden_imports(PACKAGE / f"{step}.py") == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "step.py"
    source.write_text("def f():\n    from .store import Store\n    from . import jobs\n"
                      "    import streamlit as st\n")
    assert forbidden_imports(source) == ["streamlit", "workbench.jobs", "workbench.store"]


def test_no_import_cycle_among_workbench_modules():
    def local(name: str) -> str | None:
        parts = name.split(".")
        return parts[1] if parts[0] == "workbench" and len(parts) > 1 \
            and (PACKAGE / f"{parts[1]}.py").exists() else None

    graph = {p.stem: {local(n) for n in imported_modules(p)} - {None, p.stem}
             for p in PACKAGE.glob("*.py")}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt == path[0]:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in path and nxt > path[0]:  # each cycle once, from its smallest name
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []
