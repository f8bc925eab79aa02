"""Training on the device policy: the resolved device recorded in the run, refusals before any
file (QLoRA on the CPU), GPU out-of-memory handling, token-budget batches, merging a QLoRA run.

The GPU paths themselves are in test_gpu_train.py (skipped without CUDA); here they are
checked through the policy's pure functions on described machines and on the CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import gc
import json
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import Recorder, job_params, rows, store_version, tiny_config  # noqa: F401

from workbench import device as D
from workbench import jobs, models, train, training
from workbench.exceptions import ConfigError, WorkbenchError
from workbench.train import TrainConfig

A100 = D.Hardware(gpus=(D.GPU(0, "NVIDIA A100", (8, 0), 80 * 2**30),), cpu_cores=16,
                  bitsandbytes=True)
T4 = D.Hardware(gpus=(D.GPU(0, "Tesla T4", (7, 5), 16 * 2**30),), cpu_cores=8,
                bitsandbytes=True)
CPU_ONLY = D.Hardware(cpu_cores=2)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """As in test_train: tiny models run fastest on one thread of the shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(D.DEVICE_ENV, raising=False)
    yield
    torch.set_num_threads(threads)


def test_runtime_resolves_once_from_the_config_per_machine():
    cpu = train.resolve_runtime(TrainConfig(), CPU_ONLY)
    assert (cpu.device, cpu.precision, cpu.qlora, cpu.gradient_checkpointing) == (
        "cpu", "fp32", False, False)  # the CPU's measured choices stay
    assert not cpu.autocast and not cpu.loss_scaling
    gpu = train.resolve_runtime(TrainConfig(qlora=True), A100)
    assert (gpu.device, gpu.device_name, gpu.precision) == (
        "cuda:0", "cuda:0 (NVIDIA A100, 80 GB)", "bf16")
    assert gpu.qlora and gpu.gradient_checkpointing and gpu.autocast and not gpu.loss_scaling
    old = train.resolve_runtime(TrainConfig(gradient_checkpointing="off"), T4)
    assert old.precision == "fp16" and old.loss_scaling and not old.gradient_checkpointing
    assert train.resolve_runtime(TrainConfig(device="cpu"), A100).precision == "fp32"


def test_impossible_choices_are_refused_with_one_line_reasons():
    with pytest.raises(ConfigError, match="bf16 is not supported on Tesla T4"):
        train.resolve_runtime(TrainConfig(precision="bf16"), T4)
    with pytest.raises(ConfigError, match="'cuda' is not available here"):
        train.resolve_runtime(TrainConfig(device="cuda"), CPU_ONLY)
    with pytest.raises(ConfigError, match="fp16 is not supported .* CPU"):
        train.resolve_runtime(TrainConfig(precision="fp16"), CPU_ONLY)
    with pytest.raises(ConfigError, match="QLoRA .* needs a CUDA GPU; this run's device is cpu"):
        train.resolve_runtime(TrainConfig(qlora=True), CPU_ONLY)
    assert "needs a CUDA GPU" in training.qlora_refusal("cpu", CPU_ONLY)
    assert training.qlora_refusal("auto", A100) is None


def test_qlora_on_this_cpu_is_refused_before_any_file(tmp_path, store_version):  # noqa: F811
    if D.probe().gpus:
        pytest.skip("this machine has a GPU: QLoRA is allowed here")
    with pytest.raises(ConfigError, match="needs a CUDA GPU") as err:
        train.train(tiny_config(qlora=True), rows(), run_dir=tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
    from workbench.store import Store

    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        training.start_run(Store(store_version[0]), store_version[1], tiny_config(qlora=True),
                           home=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # no job was started


def test_a_cpu_run_records_device_and_precision_and_computes_as_before(tmp_path):
    ctx = Recorder(tmp_path)
    metrics = train.train(tiny_config(max_steps=2, eval_every=0), rows(), run_dir=tmp_path,
                          ctx=ctx)
    recorded = json.loads((tmp_path / train.RUNTIME_FILE).read_text())
    assert recorded == {"device": "cpu", "device_name": D.describe("cpu"), "precision": "fp32",
                        "qlora": False, "gradient_checkpointing": False}
    assert (metrics["device"], metrics["device_name"], metrics["precision"]) == (
        "cpu", D.describe("cpu"), "fp32")
    assert ctx.lines[0] == f"device {D.describe('cpu')}, fp32"
    assert any("fp32 on cpu" in line and "gradient checkpointing off" in line
               for line in ctx.lines)
    saved = TrainConfig.from_json(tmp_path / train.CONFIG_FILE)  # the request, as given
    assert (saved.device, saved.precision) == ("auto", "auto")
    weights = train.load_adapter_model(tmp_path)[0]
    assert {p.dtype for p in weights.parameters()} == {torch.float32}


def test_gradient_checkpointing_on_request_gives_the_same_losses(tmp_path):
    plain = train.train(tiny_config(max_steps=2, eval_every=0, lora_dropout=0.0), rows(),
                        run_dir=tmp_path / "plain")
    ctx = Recorder(tmp_path)
    checkpointed = train.train(
        tiny_config(max_steps=2, eval_every=0, lora_dropout=0.0, gradient_checkpointing="on"),
        rows(), run_dir=tmp_path / "ckpt", ctx=ctx)
    assert checkpointed["gradient_checkpointing"] and not plain["gradient_checkpointing"]
    assert any("gradient checkpointing on" in line for line in ctx.lines)
    assert checkpointed["train_loss"] == pytest.approx(plain["train_loss"], abs=1e-5)


def watch_models(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Returns a list that gets a weak reference to every model train() wraps with LoRA."""
    trained: list[weakref.ref] = []
    add_lora = train.add_lora

    def watched(*args: Any) -> Any:
        model = add_lora(*args)
        trained.append(weakref.ref(model))
        return model

    monkeypatch.setattr(train, "add_lora", watched)
    return trained


def test_gpu_out_of_memory_fails_the_run_with_peak_and_suggestions(
        tmp_path, store_version, monkeypatch):  # noqa: F811
    calls = {"n": 0}
    real = train.token_loss_sum

    def forward(model: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 2:  # steps 1 and 2 train and checkpoint; step 3 runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, batch)

    monkeypatch.setattr(train, "token_loss_sum", forward)
    trained = watch_models(monkeypatch)
    params = job_params(store_version, eval_every=0, val_fraction=0.0, checkpoint_every=2,
                        batch_size=8)
    job = jobs.run_inline("workbench.train.train_task", params, home=tmp_path)
    assert job.state == "failed"
    assert job.error.startswith(f"not enough memory on {D.describe('cpu')} at step 3 (peak ")
    assert "GiB allocated" in job.error and "micro-batches of up to" in job.error
    longest = max(len(r.input_ids) for r in train.encode_rows(
        models.tiny_tokenizer(), rows(), 128)[0])
    assert f"lower batch_tokens to {8 * longest // 2}" in job.error
    assert "gradient checkpointing" in job.error and "QLoRA" in job.error
    assert "\n" not in job.error
    gc.collect()
    assert trained[0]() is None  # the device was freed: nothing holds the model any more
    # nothing half-written: the step-2 checkpoint is complete, no adapter, no metrics, no temp
    assert [p.name for p in train.checkpoints(job.run_dir)] == ["step-000002"]
    assert not (job.run_dir / train.ADAPTER).exists()
    assert not (job.run_dir / train.METRICS_FILE).exists()
    assert not [p for p in job.run_dir.rglob("*") if p.name.startswith(".tmp")]


def test_a_base_that_does_not_fit_fails_with_the_fix(tmp_path, monkeypatch):
    def too_big(*_: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.00 GiB")

    monkeypatch.setattr(train, "load_base", too_big)
    with pytest.raises(WorkbenchError) as err:
        train.train(tiny_config(), rows(), run_dir=tmp_path)
    assert str(err.value) == (f"not enough memory on {D.describe('cpu')} to load tiny (peak "
                              "0.00 GiB allocated): use QLoRA (--qlora)")


def test_batch_tokens_caps_padded_tokens_and_none_keeps_row_batches():
    lengths = [(i * 37) % 90 + 10 for i in range(100)]
    rows_only = train.batch_order(lengths, 8, seed=1, epoch=0)
    assert rows_only == train.batch_order(lengths, 8, seed=1, epoch=0, batch_tokens=None)
    assert sorted(len(b) for b in rows_only)[1:] == [8] * (len(rows_only) - 1)
    capped = train.batch_order(lengths, 8, seed=1, epoch=0, batch_tokens=300)
    assert sorted(i for b in capped for i in b) == list(range(100))  # every row once
    assert all(len(b) <= 8 for b in capped)
    assert all(len(b) * max(lengths[i] for i in b) <= 300 for b in capped)
    assert train.batch_order([500, 20], 8, seed=0, epoch=0, batch_tokens=100) in (
        [[0], [1]], [[1], [0]])  # a row over the budget goes alone


def test_a_run_with_batch_tokens_plans_its_steps_from_those_batches(tmp_path):
    ctx = Recorder(tmp_path)
    metrics = train.train(tiny_config(epochs=1.0, max_steps=None, batch_tokens=64,
                                      eval_every=0, val_fraction=0.0), rows(), run_dir=tmp_path,
                          ctx=ctx)
    [plan] = [line for line in ctx.lines if line.startswith("plan:")]
    assert "(<= 64 tokens)" in plan
    assert metrics["steps"] > len(rows()) / 4  # 64-token batches hold fewer than 4 rows


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished")
    train.train(tiny_config(max_steps=2, eval_every=0), rows(), run_dir=run_dir)
    return run_dir


def as_qlora_run(finished: Path, target: Path) -> Path:
    """The finished run as a QLoRA run on a bf16 GPU would have written it (same adapter)."""
    shutil.copytree(finished, target)
    config = TrainConfig.from_json(target / train.CONFIG_FILE)
    config.qlora, config.precision = True, "auto"
    config.to_json(target / train.CONFIG_FILE)
    runtime = {"device": "cuda:0", "device_name": "cuda:0 (NVIDIA A100, 80 GB)",
               "precision": "bf16", "qlora": True, "gradient_checkpointing": True}
    (target / train.RUNTIME_FILE).write_text(json.dumps(runtime))
    return target


def test_merging_a_qlora_run_loads_the_base_unquantised(tmp_path, finished):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = as_qlora_run(finished, tmp_path / "qlora-run")
    assert train.merge_runtime(run_dir) == train.Runtime("cpu", D.describe("cpu"), "bf16")
    out = train.merge_and_export(run_dir, tmp_path / "merged")
    saved = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in saved
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # as saved
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    base = models.tiny_lm(seed=0)[0].to(torch.bfloat16)
    adapted = PeftModel.from_pretrained(base, run_dir / train.ADAPTER).eval()
    batch = {"input_ids": torch.tensor([[5, 17, 42, 99, 7, 3]])}
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, adapted(**batch).logits,
                                   atol=0.05, rtol=0.02)
    # using a QLoRA run on a machine without CUDA: the unquantised fp32 base, no refusal
    model, _ = train.load_adapter_model(run_dir)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_runs_table_shows_the_device(tmp_path, store_version):  # noqa: F811
    from workbench.store import Store

    store = Store(store_version[0])
    job = training.start_run(store, store_version[1], tiny_config(max_steps=1, eval_every=0),
                             home=tmp_path)
    done = jobs.wait(job.run_id, home=tmp_path, timeout=120)
    assert done.state == "done", done.error
    assert done.config["params"]["device"] == D.describe(D.resolve_device())
    table = training.runs_table(store, home=tmp_path)
    assert table.iloc[0]["device"] == f"{D.describe(D.resolve_device())} · fp32"
    with pytest.raises(WorkbenchError):
        training.start_run(store, store_version[1], tiny_config(device="cuda:7"), home=tmp_path)
