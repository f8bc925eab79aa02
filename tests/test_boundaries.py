"""Import boundaries: pure steps never reach for the store, the caches, jobs or streamlit.

A step is a function over rows and DataFrames; reading a version, caching, running in the
background and drawing belong to the wiring modules, the job tasks (tasks.py) and the pages.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"
# The step modules, named here on purpose (a new module is a decision, not a glob):
# curation (clean, dedup, score, select), training (train: the loop on rows), text generation
# (generation: the one decoding loop), evaluation (evaluate: metrics; judge; analysis),
# embedding (embed), learned quality (learn: the model on features). Wiring (curate, quality, training, evaluation, loop,
# labelling, runs, views, cli), the job tasks (tasks) and foundations (store, cache, jobs,
# models, io, schema) may import what they need.
STEPS = ("clean", "dedup", "score", "select", "train", "generation", "evaluate", "analysis",
         "judge", "embed", "learn")
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


# --- no concept written twice: one text generator, one k-means ---------------------------------

# transformers' decoding machinery: whoever imports it is writing a generator.
DECODING = re.compile(r"^(DynamicCache|GenerationConfig|LogitsProcessorList|\w+LogitsWarper|"
                      r"\w+LogitsProcessor|StoppingCriteria\w*|TextStreamer|pipeline)$")
KMEANS = re.compile(r"k_?means", re.I)


def _imported_module_names(tree: ast.AST) -> set[str]:
    """Return the local names a file binds to modules (``import torch``, ``from . import train``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level and node.module is None:
            names.update(a.asname or a.name for a in node.names)
    return names


def generation_sites(path: Path) -> list[str]:
    """Return what in a file generates text itself: calls of a model's ``.generate(`` (any
    receiver but an imported module, so ``train.generate(...)`` is a call of a function) and
    imports of transformers' decoding machinery."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = _imported_module_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "generate" \
                and not (isinstance(node.func.value, ast.Name) and node.func.value.id in modules):
            found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers"):
            found += [f"line {node.lineno}: imports {a.name}" for a in node.names
                      if DECODING.match(a.name)]
    return found


def kmeans_sites(path: Path) -> list[str]:
    """Return the k-means a file writes: functions named like k-means, sklearn.cluster imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and KMEANS.search(node.name):
            found.append(f"line {node.lineno}: defines {node.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sklearn.cluster"):
            found.append(f"line {node.lineno}: imports sklearn.cluster")
        elif isinstance(node, ast.Import) and any(a.name.startswith("sklearn.cluster")
                                                  for a in node.names):
            found.append(f"line {node.lineno}: imports sklearn.cluster")
    return found


def test_text_is_generated_in_one_module():
    sites = {p.stem: generation_sites(p) for p in sorted(PACKAGE.glob("*.py"))}
    assert {m: s for m, s in sites.items() if s and m != "generation"} == {}
    assert sites["generation"]  # the check sees the one generator


def test_kmeans_is_written_in_one_module():
    sites = {p.stem: kmeans_sites(p) for p in sorted(PACKAGE.glob("*.py"))}
    assert {m: s for m, s in sites.items() if s and m != "select"} == {}
    assert sites["select"]


def test_the_duplicate_checks_see_a_second_generator_and_kmeans(tmp_path):
    source = tmp_path / "step.py"
    source.write_text("from . import train\n"
                      "def reply(model, x):\n    train.generate(x)\n"
                      "    return model.generate(x), self.lm.generate(x)\n"
                      "def f():\n    from transformers import DynamicCache, AutoTokenizer\n"
                      "def spherical_kmeans(x):\n    from sklearn.cluster import KMeans\n")
    assert set(generation_sites(source)) == {"line 4: model.generate(...)",
                                             "line 4: self.lm.generate(...)",
                                             "line 6: imports DynamicCache"}
    assert set(kmeans_sites(source)) == {"line 7: defines spherical_kmeans",
                                         "line 8: imports sklearn.cluster"}
