"""Shared fixtures: an in-memory store, a store file, small example lists and file writers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from workbench import models
from workbench.schema import Example
from workbench.store import Store

# Tests embed with torch: the ONNX path exports the model once per data folder (5-80 s), and
# most tests get a fresh folder. tests/test_embed_backend.py clears this to test ONNX itself.
os.environ.setdefault("WORKBENCH_EMBED_BACKEND", "torch")
# Pages offer the tiny random model (fast, answers noise) only to tests.
os.environ.setdefault("WORKBENCH_TEST_MODELS", "1")
# A developer's own tracking server never receives test runs (tests/test_tracking.py sets its own).
os.environ.pop("MLFLOW_TRACKING_URI", None)


def chat(*turns: tuple[str, str], **metadata: Any) -> Example:
    """Return an Example from (role, content) pairs and metadata keywords."""
    return Example(tuple({"role": r, "content": c} for r, c in turns), metadata)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny random language model saved as a local folder, for code that loads by path."""
    folder = tmp_path_factory.mktemp("tiny_lm")
    model, tokenizer = models.tiny_lm()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def store() -> Store:
    """An in-memory store: fast, private to the test."""
    return Store(":memory:")


@pytest.fixture
def file_store(tmp_path: Path) -> Store:
    """A store file in the test's temporary folder, opened per call like the app does."""
    return Store(tmp_path / "wb.duckdb", lock_timeout=30)


@pytest.fixture
def examples() -> list[Example]:
    """Five small examples: single-turn, multi-turn, a system turn, unicode, metadata."""
    return [
        chat(("user", "What is 2+2?"), ("assistant", "4"), category="math", level=1),
        chat(("system", "Be brief."), ("user", "Capital of France?"), ("assistant", "Paris"),
             category="geo"),
        chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "Tell me a joke"),
             ("assistant", "Why did the 🐔 cross the road?"), category="fun"),
        chat(("user", 'Quote "this" and 100% of_that\\n'), ("assistant", "Done: \"ok\"\nbye"),
             category="edge"),
        chat(("user", "Übersetze: Straße"), ("assistant", "street"), category="lang",
             tags_src=["a", "b"]),
    ]


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Return a function writing records (dicts or raw bytes lines) to a .jsonl file."""
    def write(records: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path
    return write


@pytest.fixture
def write_bytes(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Return a function writing raw bytes to a named file in the temporary folder."""
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path
    return write


# ---------------------------------------------------------------- the real default LM, once


@dataclass(frozen=True)
class ConvertedLM:
    home: Path  # a data folder ($WORKBENCH_HOME) whose models/ holds the converted default LM
    folder: Path  # the converted safetensors folder
    seconds: float  # how long the conversion took


@pytest.fixture(scope="session")
def converted_lm(tmp_path_factory: pytest.TempPathFactory) -> ConvertedLM:
    """Converts the bundled GGUF once per session (30-40 s) into a fresh data folder.

    Every test of the real default LM reads it from this folder (see `lm_home`), so the
    conversion runs exactly once per session: test_models checks its result. Sharing one
    folder also lets load_lm's per-process cache hand every module the same loaded model.
    """
    if models._default_gguf() is None:
        pytest.skip(models.DEFAULT_LM_INSTALL)
    home = tmp_path_factory.mktemp("default_lm_home")
    with lm_home(home):
        started = time.perf_counter()
        folder = models.resolve_lm()
        return ConvertedLM(home, folder, time.perf_counter() - started)


@contextmanager
def lm_home(home: Path) -> Iterator[Path]:
    """Sets $WORKBENCH_HOME to home for the block: "default" then resolves to its models/."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WORKBENCH_HOME", str(home))
        yield home


@pytest.fixture
def default_lm_home(converted_lm: ConvertedLM) -> Iterator[Path]:
    """For one test: $WORKBENCH_HOME is the session's data folder with the converted LM."""
    with lm_home(converted_lm.home) as home:
        yield home


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One local Ray for every test that needs one (2 CPUs, no dashboard), started by the first
    such test and shut down at the end of the session: each start costs ~30 s here.

    Workers get this checkout first on PYTHONPATH (as engine.ray_session gives them), so they
    run the code under test. `pytest_collection_modifyitems` runs these tests last.
    """
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    from workbench import engine

    if ray.is_initialized():
        pytest.fail("a Ray is already running in this process: only this fixture starts one")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": engine._package_path()}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that use the session's Ray after all others (in their own order), so no
    other test runs while Ray is up and the Ray start-up is paid once."""
    uses = {id(i) for i in items if "local_ray" in getattr(i, "fixturenames", ())}
    if uses:
        items[:] = ([i for i in items if id(i) not in uses]
                    + [i for i in items if id(i) in uses])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skips @pytest.mark.gpu tests on a machine without CUDA (CI and the dev machines)."""
    if item.get_closest_marker("gpu") is not None:
        from workbench import device

        if not device.probe().gpus:
            pytest.skip("needs a CUDA GPU")
