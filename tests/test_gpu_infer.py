"""Inference on a CUDA GPU gives what it gives on the CPU: greedy answers, embeddings,
perplexity/IFD; and vLLM's greedy answers match ours. Every test here is @pytest.mark.gpu:
tests/conftest.py skips them on a machine without CUDA (CI, the dev machines)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from workbench import device as D
from workbench import generation, models, vllm_backend
from workbench import score as S
from workbench.embed import CPU_BATCH, batch_texts, embed_texts
from workbench.evaluate import load_eval_model
from workbench.sample import SAMPLE_DIR

pytestmark = pytest.mark.gpu

GREEDY = generation.GenerationConfig(max_new_tokens=24)
# Share of rows whose greedy answers must agree exactly across devices or backends. A random or
# small model has near-tied logits, and a different kernel (or reduction order) can flip one
# argmax; from there the answer diverges. The first steps' logits are compared separately.
SAME_ANSWERS = 0.9


def conversations(n: int = 24) -> list[list[dict]]:
    """The first n rows of the bundled support eval set, as chat turns."""
    lines = (SAMPLE_DIR / "support_eval.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [json.loads(line)["messages"] for line in lines]


def agreement(a: list[generation.Generation], b: list[generation.Generation]) -> float:
    return float(np.mean([x.token_ids == y.token_ids for x, y in zip(a, b)]))


def test_greedy_generation_on_cuda_equals_the_cpu():
    cpu, tokenizer = models.tiny_lm(seed=0)
    gpu = models.tiny_lm(seed=0)[0].to("cuda:0")  # fp32 on both: the same arithmetic
    chats = conversations()
    on_cpu = generation.generate_batch(cpu, tokenizer, chats, GREEDY)
    on_gpu = generation.generate_batch(gpu, tokenizer, chats, GREEDY)
    assert agreement(on_cpu, on_gpu) >= SAME_ANSWERS
    prompt = generation.encode_prompts(tokenizer, [chats[0]])[0]
    with torch.inference_mode():
        a = cpu(input_ids=torch.tensor([prompt])).logits
        b = gpu(input_ids=torch.tensor([prompt], device="cuda:0")).logits.cpu()
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


def test_generation_on_cuda_fills_larger_batches():
    model = models.tiny_lm(seed=0)[0].to("cuda:0")
    rows = generation.batch_rows(model, generation.GenerationConfig(), 200)
    assert generation.CPU_BATCH_SIZE < rows <= generation.GPU_MAX_BATCH
    assert generation.batch_rows(model, generation.GenerationConfig(batch_size=2), 200) == 2


def test_eval_models_load_on_the_gpu_in_bf16_where_it_has_it():
    model, _ = load_eval_model("tiny", device="cuda")
    want = torch.bfloat16 if D.probe().gpus[0].bf16 else torch.float16
    assert model.device.type == "cuda" and next(model.parameters()).dtype == want


def test_embeddings_on_cuda_match_the_cpu():
    texts = [m[-1]["content"] for m in conversations(64)]
    cpu = models.tiny_embedder(seed=0)
    gpu = models.tiny_embedder(seed=0).to("cuda:0")
    assert batch_texts(gpu) > CPU_BATCH
    a, b = embed_texts(texts, cpu), embed_texts(texts, gpu)
    assert float(np.min(np.sum(a * b, axis=1))) > 0.999  # unit vectors: the dot is the cosine
    if models._default_embedder_dir() is not None:  # the real one too, when installed
        real_cpu = models.load_embedder(device="cpu", backend="torch", cached=False)
        real_gpu = models.load_embedder(device="cuda", cached=False)
        a, b = embed_texts(texts, real_cpu), embed_texts(texts, real_gpu)
        assert float(np.min(np.sum(a * b, axis=1))) > 0.999


def test_perplexity_and_ifd_on_cuda_match_the_cpu():
    frame = pd.DataFrame({"messages": conversations(32)})
    cpu = models.tiny_lm(seed=0)
    gpu = (models.tiny_lm(seed=0)[0].to("cuda:0"), cpu[1])
    assert S.device_batch_tokens(gpu[0], 1024) > 1024
    a = S.model_scores(frame, lm=cpu)
    b = S.model_scores(frame, lm=gpu)
    assert np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-3)


def _model_folder(tmp_path: Path) -> str:
    """The bundled default LM when installed; else a random Llama whose head size (64) vLLM's
    attention kernels take, with the tiny tokenizer."""
    if models._default_gguf() is not None:
        return str(models.resolve_lm("default"))
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = models.tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path / "random-llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_vllm_greedy_answers_match_ours(tmp_path):
    if not vllm_backend.installed():
        pytest.skip(f"vllm is not installed ({vllm_backend.VLLM_INSTALL})")
    folder = _model_folder(tmp_path)
    chats = conversations()
    engine = vllm_backend.load(folder, device="cuda", precision="auto")
    theirs = generation.generate_vllm(engine, chats, GREEDY)
    model, tokenizer = load_eval_model(folder, device="cuda", precision="auto")
    ours = generation.generate_batch(model, tokenizer, chats, GREEDY)
    assert agreement(ours, theirs) >= SAME_ANSWERS, [(o.text, t.text) for o, t in
                                                     zip(ours, theirs) if o.text != t.text]
    same = [(o, t) for o, t in zip(ours, theirs) if o.token_ids == t.token_ids]
    assert all(o.hit_max == t.hit_max and o.text == t.text for o, t in same)  # same stop rules
