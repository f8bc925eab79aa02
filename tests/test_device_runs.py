"""Inference on the device policy, on the CPU: runs record their device, --device is checked,
the pages offer what the machine has, and the vLLM backend is refused with its reason here.

The GPU side of the same code is tested in tests/test_gpu_infer.py (skipped without CUDA)."""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from helpers_app import APP, chat_file, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest
from test_cli import assert_one_line_error, run

from workbench import device as D
from workbench import evaluation, generation, jobs, models, quality, runs, vllm_backend
from workbench import score as S
from workbench.embed import CPU_BATCH, batch_texts
from workbench.exceptions import ConfigError
from workbench.store import Store

FAST = {"max_new_tokens": 3, "batch_size": 4}
CPU = D.describe("cpu")


@pytest.fixture(autouse=True)
def cpu_machine(monkeypatch):
    """This machine as it is (no GPU) and no $WORKBENCH_DEVICE from the developer's shell."""
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    if D.probe().gpus:
        pytest.skip("these tests describe a machine without a CUDA GPU")


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    store = Store(path)
    store.import_file(chat_file(tmp_path / "eval.jsonl", 4), "evalset")
    return store


# --- runs record the device they ran on ---------------------------------------------------------

def test_an_eval_run_records_its_device_precision_and_backend(store, tmp_path):
    job = evaluation.start_eval(store, "evalset", model="tiny", similarity=False,
                                generation=evaluation.ev.GenerationConfig(**FAST),
                                home=tmp_path / "runs", inline=True, device="cpu")
    assert job.config["params"] | {"device": "cpu", "backend": "torch"} == job.config["params"]
    summary = evaluation.ev.read_summary(job.run_dir)
    assert (summary["device"], summary["precision"], summary["backend"]) == (CPU, "fp32", "torch")
    assert runs.table(store, home=tmp_path / "runs").at[0, "device"] == CPU
    assert evaluation.runs_table(store, home=tmp_path / "runs").at[0, "device"] == CPU
    assert "on cpu" in jobs.log_tail(job.run_dir)
    assert jobs.progress_text(jobs.status(job.run_dir)) == f"eval · done · on {CPU} · 4/4"


def test_a_scoring_run_records_its_device(store, tiny_folder, tmp_path):
    params = quality.model_params(store, 1, model=str(tiny_folder), device="auto")
    assert params["device"] == "auto"  # as asked; the run's result says what auto became
    job = jobs.run_inline("model_score", params, home=tmp_path / "runs")
    assert job.state == "done", job.error
    assert job.result["device"] == CPU and job.result["scored"] == 4
    assert runs.table(store, home=tmp_path / "runs").at[0, "device"] == CPU
    assert jobs.status(job.run_dir).device == CPU  # what a running job's panel shows
    # the device is a runtime option: values scored on any device share one cache entry
    spec = S.ScoreSpec("perplexity", {"model": str(tiny_folder), "device": "cuda:3"})
    assert len(S.cached_values(store.frame(1), spec, quality.StoreCache(store))) == 4


def test_an_absent_gpu_is_refused_before_a_job_starts(store, tmp_path):
    with pytest.raises(ConfigError, match="'cuda' is not available here"):
        quality.model_params(store, 1, device="cuda")
    with pytest.raises(ConfigError, match="'cuda:1' is not available here"):
        evaluation.start_eval(store, "evalset", model="tiny", device="cuda:1",
                              home=tmp_path / "runs")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# --- the CLI ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_score_accepts_cpu_and_auto(store, device):
    result = run("score", "evalset", "--scorers", "length", "--device", device)
    assert "4 rows scored" in result.output


@pytest.mark.parametrize("command", [["score", "evalset"], ["eval", "evalset"],
                                     ["dedup", "evalset", "--semantic"],
                                     ["select", "evalset", "--method", "diverse"]])
def test_device_cuda_is_refused_here_in_one_line(store, command):
    result = run(*command, "--device", "cuda", ok=False)
    assert_one_line_error(result, "--device", "'cuda' is not available here", CPU)


def test_eval_backend_vllm_is_refused_here_in_one_line(store):
    result = run("eval", "evalset", "--backend", "vllm", ok=False)
    assert_one_line_error(result, "backend 'vllm'")


def test_eval_on_cpu_runs_to_the_end(store):
    result = run("eval", "evalset", "--model", "tiny", "--max-new-tokens", "2", "--limit", "2",
                 "--no-similarity", "--device", "cpu")
    run_id = result.output.splitlines()[0].removeprefix("started eval run ").strip()
    assert jobs.status(run_id).result["device"] == CPU


# --- the vLLM backend where it cannot run -------------------------------------------------------

def test_vllm_is_refused_without_the_package_or_without_cuda(monkeypatch):
    monkeypatch.setattr(vllm_backend, "installed", lambda: False)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[vllm\]"'):
        vllm_backend.check_backend("vllm")
    monkeypatch.setattr(vllm_backend, "installed", lambda: True)  # as if the extra were there
    with pytest.raises(ConfigError, match="needs a CUDA GPU; this run's device is cpu"):
        vllm_backend.load("default")
    assert not vllm_backend.offered()
    with pytest.raises(ConfigError, match="'tensorrt' is not one of torch, vllm"):
        vllm_backend.check_backend("tensorrt")
    vllm_backend.check_backend("torch")


# --- loading and batching on a device -----------------------------------------------------------

def test_loaded_models_are_cached_per_device_and_precision(tiny_folder):
    fp32 = models.load_lm(str(tiny_folder), device="cpu")
    assert models.load_lm(str(tiny_folder), device="auto") is fp32  # auto is the CPU here
    bf16 = models.load_lm(str(tiny_folder), device="cpu", precision="bf16")
    assert bf16 is not fp32 and next(bf16[0].parameters()).dtype == torch.bfloat16
    assert fp32[0].device.type == "cpu" and next(fp32[0].parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 is not supported"):
        models.load_lm(str(tiny_folder), precision="fp16")


def test_cpu_batches_stay_as_measured():
    model, _ = models.tiny_lm()
    assert generation.batch_rows(model, generation.GenerationConfig(), 100) == 16
    assert generation.batch_rows(model, generation.GenerationConfig(batch_size=3), 100) == 3
    assert S.device_batch_tokens(model, 1024) == 1024
    assert batch_texts(models.tiny_embedder()) == CPU_BATCH == 64
    assert D.rows_that_fit("cpu", 1e9, cpu_rows=7, most=99) == 7


def test_the_device_is_resolved_without_torch_on_a_cpu_machine():
    if any(os.path.exists(p) for p in D._GPU_DEVICE_FILES) or sys.platform == "darwin":
        pytest.skip("GPU device files here: resolving auto must ask torch")
    code = ("import sys; from workbench import device; device.resolve_device('auto'); "
            "device.describe('cpu'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.stdout.strip() == "False", out.stderr  # a page pays no 2-3 s torch import
    assert D.option_label("auto") == f"auto: {CPU}"
    assert D.option_label("cpu") == CPU


# --- the pages offer what this machine has ------------------------------------------------------

@pytest.fixture
def page(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"evalset": chat_file(tmp_path / "e.jsonl", 3)})


def open_page(name: str) -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page(f"pages/{name}.py").run())


def test_score_page_offers_this_machines_devices(page, tmp_path, monkeypatch):
    started = {}
    monkeypatch.setattr(quality, "start_model_scoring",
                        lambda *a, **k: started.update(k))  # the job itself is tested above
    at = open_page("score")
    picker = at.selectbox(key="sc_device")
    assert picker.options == [f"auto: {CPU}", CPU]
    at = ok(picker.set_value("cpu").run())
    at = ok(at.button(key="sc_mstart").click().run())
    assert started["device"] == "cpu"


def test_evaluate_page_offers_devices_and_only_the_torch_backend_here(page):
    at = open_page("evaluate")
    assert at.selectbox(key="ev_device").options == [f"auto: {CPU}", CPU]
    assert at.radio(key="ev_backend").options == ["torch"]
    at.selectbox(key="ev_model").set_value("tiny")
    at.selectbox(key="ev_device").set_value("cpu")
    at.number_input(key="ev_max_new").set_value(2)
    at.checkbox(key="ev_sim").uncheck()
    at = ok(at.button(key="ev_run_start").click().run())
    [run_id] = evaluation.eval_runs(page)["run_id"]
    params = jobs.status(run_id).config["params"]
    assert (params["device"], params["backend"], params["generation"]["batch_size"]) == \
        ("cpu", "torch", None)
    assert jobs.wait(run_id, timeout=120).result["device"] == CPU
