"""The optional vLLM backend for evaluation generation: a CUDA GPU and ``pip install -e ".[vllm]"``.

An eval run picks it with ``backend="vllm"`` (``workbench eval --backend vllm``; the Evaluate
page offers it only where vLLM imports and a CUDA GPU is present). It loads the same model folder
our torch path loads (``models.resolve_lm``); a trained run's LoRA adapter goes through vLLM's
``LoRARequest`` on top of its base model, unmerged. Prompts are the same chat-template token ids
(``generation.encode_prompts``), decoding is greedy unless sampling was asked for, with the same
max_new_tokens and stop tokens, and answers are cut and decoded by the same code
(``generation.generate_vllm``), so the two backends' greedy outputs can be compared row by row.

Everything here but ``check`` imports vllm, which pins its own torch build: install it into an
environment of its own if that torch differs from the one workbench was installed with.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .exceptions import ConfigError

BACKENDS = ("torch", "vllm")
VLLM_INSTALL = 'pip install -e ".[vllm]"'
# vLLM takes this share of the GPU's memory for weights and KV cache (its default is 0.9): the
# rest stays for the embedder that scores the answers in the same process.
GPU_MEMORY_SHARE = 0.8


def installed() -> bool:
    """Return whether the vllm package is importable here (without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def check(device: str = "auto") -> str:
    """Return the CUDA device vLLM would run on; ConfigError saying what is missing otherwise."""
    from .device import probe, resolve_device

    if not installed():
        raise ConfigError(f"backend 'vllm' needs the vllm package: {VLLM_INSTALL} (on a machine "
                          "with an NVIDIA GPU), or use backend torch")
    where = resolve_device(device)
    if probe().gpu(where) is None:
        raise ConfigError(f"backend 'vllm' needs a CUDA GPU; this run's device is {where}: "
                          "use backend torch")
    if where != "cuda:0":
        raise ConfigError(f"backend 'vllm' runs on the first visible GPU, not {where}: run with "
                          f"CUDA_VISIBLE_DEVICES={where.split(':')[1]} and device cuda")
    return where


def offered() -> bool:
    """Return whether a page should offer the vLLM backend: vllm installed and a CUDA GPU."""
    from .device import probe

    return installed() and bool(probe().gpus)


def check_backend(backend: str, device: str = "auto") -> None:
    """Raise ConfigError for an unknown backend, or for vllm where it cannot run."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "vllm":
        check(device)


@dataclass
class VllmModel:
    """A vLLM engine with what our decoding needs: tokenizer, HF config, stop tokens, adapter."""

    llm: Any  # vllm.LLM
    tokenizer: Any
    config: Any  # the transformers config (max_position_embeddings bounds the prompt)
    stops: list[int]
    lora: Any = None  # vllm.lora.request.LoRARequest, or None for the base model
    device: str = "cuda:0"


def load(spec: Any, *, device: str = "auto", precision: str | None = "auto") -> VllmModel:
    """Return a vLLM engine for an eval model spec: "default", a model folder or hub id, or
    {"run_dir": a training run} (its base model plus its LoRA adapter)."""
    from .device import resolve_precision

    where = check(device)
    base, adapter = _model_paths(spec)
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[
        resolve_precision(precision, where)]
    return _engine(base, adapter, dtype, where)


def _model_paths(spec: Any) -> tuple[Path, Path | None]:
    from .models import resolve_lm

    if isinstance(spec, dict):
        from .train import ADAPTER, CONFIG_FILE, TINY, TrainConfig, last_checkpoint

        run_dir = Path(spec["run_dir"])
        config = TrainConfig.from_json(run_dir / CONFIG_FILE)
        if config.model == TINY:
            raise ConfigError("backend 'vllm' runs model folders; the tiny test model is built "
                              "in memory: use backend torch")
        adapter = run_dir / ADAPTER if (run_dir / ADAPTER).is_dir() else last_checkpoint(run_dir)
        if adapter is None:
            raise ConfigError(f"run {run_dir.name} has no adapter and no checkpoint yet")
        return resolve_lm(config.model), adapter
    if spec == "tiny":
        raise ConfigError("backend 'vllm' runs model folders; the tiny test model is built in "
                          "memory: use backend torch")
    return resolve_lm(spec or "default"), None


def _engine(base: Path, adapter: Path | None, dtype: str, device: str) -> VllmModel:
    from transformers import AutoConfig
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    from .generation import stop_token_ids
    from .models import load_lm_tokenizer

    options: dict[str, Any] = {"model": str(base), "dtype": dtype, "seed": 0,
                               "gpu_memory_utilization": GPU_MEMORY_SHARE,
                               "trust_remote_code": False}
    lora = None
    if adapter is not None:
        rank = int(json.loads((adapter / "adapter_config.json").read_text())["r"])
        # vLLM takes LoRA ranks of 8, 16, 32, ...: the next one up holds the adapter's.
        options.update(enable_lora=True, max_lora_rank=1 << max(3, (rank - 1).bit_length()),
                       max_loras=1)
        lora = LoRARequest("workbench-adapter", 1, str(adapter))
    config = AutoConfig.from_pretrained(base, trust_remote_code=False, local_files_only=True)
    tokenizer = load_lm_tokenizer(base)
    stops = stop_token_ids(_ConfigOnly(base, config), tokenizer)
    return VllmModel(LLM(**options), tokenizer, config, stops, lora, device)


class _ConfigOnly:
    """What stop_token_ids reads of a model (its generation config's eos), without weights."""

    def __init__(self, folder: Path, config: Any) -> None:
        try:
            saved = json.loads((folder / "generation_config.json").read_text())
        except (OSError, ValueError):
            saved = {}
        eos = saved.get("eos_token_id", getattr(config, "eos_token_id", None))
        self.config = config
        self.generation_config = SimpleNamespace(eos_token_id=eos)
