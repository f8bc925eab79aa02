"""Training on a CUDA GPU: a few steps in bf16, fp16 (loss-scaled) and 4-bit (QLoRA) on the
tiny random model; the saved adapter, reloaded with plain transformers + peft, gives the same
validation loss as the model in memory at the end of training. Skipped without CUDA
(tests/conftest.py); written and checked against the library APIs on a CPU-only machine,
so the first GPU run is also these tests' first run."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import gc
import json
from pathlib import Path

import pytest
import torch
from test_train import Recorder, rows, tiny_config
from test_train_device import watch_models

from workbench import models, train

CASES = [("bf16", False), ("fp16", False), ("bf16", True)]  # (precision, qlora)


def plain_reload(base_folder: Path, adapter: Path, precision: str, qlora: bool):
    """The base and adapter loaded the way a user without workbench would load them."""
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if qlora:
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        base = AutoModelForCausalLM.from_pretrained(
            base_folder, quantization_config=quantization, dtype=dtype, device_map={"": 0})
        # as in training: the norms and embeddings that stay unquantised compute in fp32
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=dtype).to("cuda:0")
    return PeftModel.from_pretrained(base, adapter).eval()


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-base")
    model, tokenizer = models.tiny_lm(seed=0)  # the weights train.py's "tiny" starts from
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "qlora"), CASES)
def test_a_few_steps_on_the_gpu_reload_with_plain_transformers_and_peft(
        tmp_path, base_folder, precision, qlora):
    config = tiny_config(device="cuda", precision=precision, qlora=qlora, max_steps=4,
                         eval_every=0, checkpoint_every=2)
    ctx = Recorder(tmp_path)
    metrics = train.train(config, rows(), run_dir=tmp_path, ctx=ctx)
    assert (metrics["device"], metrics["precision"], metrics["qlora"]) == (
        "cuda:0", precision, qlora)
    assert metrics["gradient_checkpointing"] == qlora  # "auto": on for QLoRA
    assert metrics["peak_memory_gb"] > 0 and metrics["steps"] == 4
    assert json.loads((tmp_path / train.RUNTIME_FILE).read_text())["device"] == "cuda:0"
    assert ctx.lines[0].startswith("device cuda:0 (")
    losses = [e["loss"] for e in ctx.events if "loss" in e]
    assert all(torch.isfinite(torch.tensor(losses)))

    model = plain_reload(base_folder, tmp_path / train.ADAPTER, precision, qlora)
    if qlora:
        assert any("4bit" in type(m).__name__ for m in model.modules())
    _, tokenizer = models.tiny_lm(seed=0)
    data = train._prepare_data(config, tokenizer, rows(), None, Recorder(tmp_path))
    runtime = train.resolve_runtime(config)
    reloaded = train.mean_token_loss(model, data.val, config, tokenizer.pad_token_id, runtime)
    # the last validation ran on the trained model in memory, in the same autocast
    assert reloaded == pytest.approx(metrics["val_loss"], rel=1e-2)


@pytest.mark.gpu
def test_a_qlora_run_merges_into_an_unquantised_base(tmp_path, base_folder):
    from transformers import AutoModelForCausalLM

    config = tiny_config(device="cuda", qlora=True, max_steps=2, eval_every=0)
    train.train(config, rows(), run_dir=tmp_path / "run")
    out = train.merge_and_export(tmp_path / "run", tmp_path / "merged")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # as saved
    assert not any("4bit" in type(m).__name__ for m in merged.modules())
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}  # the run's compute


@pytest.mark.gpu
def test_a_real_gpu_out_of_memory_fails_readably_and_frees_the_device(tmp_path, monkeypatch):
    # The tiny model never fills a GPU: the forward asks for twice the free memory instead.
    real = train.token_loss_sum

    def greedy(model, batch):
        free, _ = torch.cuda.mem_get_info()
        torch.empty(free * 2, dtype=torch.uint8, device="cuda")  # raises OutOfMemoryError
        return real(model, batch)

    monkeypatch.setattr(train, "token_loss_sum", greedy)
    trained = watch_models(monkeypatch)
    before = torch.cuda.memory_allocated()
    with pytest.raises(train.WorkbenchError, match=r"not enough memory on cuda:0 .* GiB allocated"):
        train.train(tiny_config(device="cuda", max_steps=2, eval_every=0, val_fraction=0.0),
                    rows(), run_dir=tmp_path)
    gc.collect()
    assert trained[0]() is None  # the model and its optimizer state are gone
    assert torch.cuda.memory_allocated() <= before
