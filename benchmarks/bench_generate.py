"""Benchmark batched greedy generation against one example at a time, same model and settings.

Prints (never asserts): generated tokens/s of ``workbench.evaluate.generate_batch`` (sorted by
length, left-padded batches, finished rows dropped; the mean of a run before and one after the
baseline) and of calling ``model.generate`` once per prompt (no padding, the
same transformers GenerationConfig), the speed ratio, and how many outputs are token-for-token
identical. Uses the bundled default model (SmolLM2-135M-Instruct), or a tiny random model if
it is not installed (and says so). Prompts: the sample eval set (default) or Alpaca
(/work/shared/data/alpaca/alpaca_data.json, skipped cleanly when absent).

Run: python benchmarks/bench_generate.py [--prompts 32 --max-new-tokens 96 --batch-size 32
     --source support|alpaca --threads N]

On a shared 2-core machine pass --threads 1: when other processes hold a core, two OpenMP
threads wait on each other and both ways run 3-7x slower (measured), which hides batching.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import orjson
import torch

from workbench import evaluate as ev
from workbench import models

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = ROOT / "sample_data" / "support_eval.jsonl"
ALPACA = Path("/work/shared/data/alpaca/alpaca_data.json")


def load_prompts(source: str, n: int, seed: int = 0) -> list[list[dict]] | None:
    """Return n conversations (prompt turns only), or None when the source is missing."""
    if source == "alpaca":
        if not ALPACA.is_file():
            return None
        records = json.loads(ALPACA.read_text(encoding="utf-8"))
        picked = random.Random(seed).sample(records, n)
        return [[{"role": "user", "content": "\n\n".join(x for x in (r["instruction"],
                                                                      r["input"]) if x)}]
                for r in picked]
    rows = [orjson.loads(line) for line in SUPPORT.read_text().splitlines()]
    step = max(1, len(rows) // n)
    return [ev.prompt_messages(r["messages"]) for r in rows[::step][:n]]


def load_model() -> tuple[object, object, str]:
    """Return (model, tokenizer, label): the default model, else a tiny random one."""
    try:
        model, tokenizer = models.load_lm("default")
        return model, tokenizer, models.DEFAULT_LM
    except Exception as err:  # noqa: BLE001 - any failure means "not installed here"
        print(f"default model unavailable ({err}); falling back to tiny_lm: numbers are NOT "
              "representative of the real model")
        model, tokenizer = models.tiny_lm(0)
        return model, tokenizer, "tiny_lm (random)"


def one_at_a_time(model, tokenizer, conversations, config: ev.GenerationConfig
                  ) -> tuple[list[tuple[int, ...]], float]:
    """Return the token ids of each answer generated alone, and the seconds it took."""
    prompts = ev.encode_prompts(tokenizer, conversations)
    hf_config = ev.hf_generation_config(model, tokenizer, config)
    stops = set(ev.stop_token_ids(model, tokenizer))
    outputs = []
    started = time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            batch = torch.tensor([ids])
            out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch),
                                 generation_config=hf_config)
            new = out[0, len(ids):].tolist()
            end = next((i for i, t in enumerate(new) if t in stops), len(new))
            outputs.append(tuple(new[:end]))
    return outputs, time.perf_counter() - started


def batched(model, tokenizer, conversations, config: ev.GenerationConfig
            ) -> tuple[list[tuple[int, ...]], float]:
    """Return the token ids of each answer from generate_batch, and the seconds it took."""
    started = time.perf_counter()
    gens = ev.generate_batch(model, tokenizer, conversations, config)
    return [g.token_ids for g in gens], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--source", choices=("support", "alpaca"), default="support")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    conversations = load_prompts(args.source, args.prompts)
    if conversations is None:
        print(f"skipped: {ALPACA} is not on this machine")
        return
    model, tokenizer, label = load_model()
    models.configure_torch_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = ev.GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    print(f"model {label}; {len(conversations)} prompts from {args.source}; greedy, "
          f"max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}; "
          f"torch threads {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    ev.generate_batch(model, tokenizer, conversations[:2], ev.GenerationConfig(max_new_tokens=4))

    # Batched runs before and after the one-at-a-time run: the machine is shared, so its load
    # drifts; the sandwich exposes both ways to the same conditions on average.
    fast, first_s = batched(model, tokenizer, conversations, config)
    slow, slow_s = one_at_a_time(model, tokenizer, conversations, config)
    again, second_s = batched(model, tokenizer, conversations, config)
    print(f"batched runs: {first_s:.1f} s and {second_s:.1f} s (same outputs: {fast == again})")
    report(fast, (first_s + second_s) / 2, slow, slow_s)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def report(fast: list[tuple[int, ...]], fast_s: float, slow: list[tuple[int, ...]],
           slow_s: float) -> None:
    """Print tokens/s both ways, the ratio and how many outputs are identical."""
    fast_tokens, slow_tokens = sum(map(len, fast)), sum(map(len, slow))
    fast_rate, slow_rate = fast_tokens / fast_s, slow_tokens / slow_s
    same = sum(a == b for a, b in zip(fast, slow))
    print(f"one at a time: {slow_tokens} tokens in {slow_s:.1f} s = {slow_rate:.1f} tokens/s")
    print(f"batched:       {fast_tokens} tokens in {fast_s:.1f} s = {fast_rate:.1f} tokens/s")
    print(f"speed-up {fast_rate / slow_rate:.2f}x (target >= 4x); identical outputs "
          f"{same}/{len(fast)}")
    for i, (a, b) in enumerate(zip(fast, slow)):
        if a != b:
            first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  prompt {i}: outputs part at token {first} of {len(b)}")


if __name__ == "__main__":
    main()
