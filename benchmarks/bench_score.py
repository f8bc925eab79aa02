"""Model scoring speed (perplexity and IFD) against a naive one-example-at-a-time loop.

Both sides use the same model and the same token ids on a few hundred Alpaca rows. The naive
loop is the straightforward code: per row, tokenize, run the model with ``labels`` (full
logits, the library's own loss), once with the prompt and once (IFD) with the bare assistant
header. Ours: workbench.score.model_scores (length-sorted token-budget batches, the vocabulary
projection only where a response token is predicted). Prints examples/s, the ratio and the
largest difference between the two sides' values; asserts nothing. Also times the page's
embedding map (PCA + k-means) on 52k random 384-d vectors, the size of Alpaca with MiniLM.

    python benchmarks/bench_score.py [path/to/alpaca_data.json] [--rows 200] [--repeat 2]

The machine is shared, so each side runs ``--repeat`` times, interleaved, best time kept.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from workbench import score as S
from workbench import select as SEL
from workbench.exceptions import ModelNotAvailableError
from workbench.models import load_lm, tiny_lm
from workbench.schema import examples_frame, to_example

DEFAULT_PATH = Path("/work/shared/data/alpaca/alpaca_data.json")


def load(path: Path, rows: int, seed: int = 0):
    """Return the step frame of a seeded random sample of Alpaca rows with an output."""
    records = [r for r in json.loads(path.read_text()) if str(r["output"]).strip()]
    pick = np.random.default_rng(seed).choice(len(records), size=min(rows, len(records)),
                                              replace=False)
    return examples_frame([to_example(records[i], "alpaca") for i in sorted(pick)])


def naive_scores(frame, lm, max_length: int) -> dict[str, np.ndarray]:
    """Return perplexity and IFD scoring one row at a time: one forward pass per sequence."""
    model, tokenizer = lm
    ppl, ifd = [], []
    with torch.inference_mode():
        for i in range(len(frame)):
            enc = S.encode_rows(frame.iloc[[i]], tokenizer, max_length=max_length)
            row = enc.rows[0]
            cond = _loss(model, row.context, row.response)
            ppl.append(math.exp(cond))
            ifd.append(cond / _loss(model, enc.bare, row.response))
    return {"perplexity": np.array(ppl), "ifd": np.array(ifd)}


def _loss(model, context: list[int], response: list[int]) -> float:
    ids = torch.tensor([context + response])
    labels = ids.clone()
    labels[0, :len(context)] = -100  # loss on the response tokens only
    return float(model(input_ids=ids, labels=labels).loss)


def ours(frame, lm, max_length: int, batch_tokens: int) -> dict[str, np.ndarray]:
    """Return perplexity and IFD from the library (both passes in one length-sorted pool)."""
    out = S.model_scores(frame, lm=lm, max_length=max_length, batch_tokens=batch_tokens)
    return {"perplexity": out["perplexity_score"].to_numpy(), "ifd": out["ifd_score"].to_numpy()}


def best_of(fn, repeat: int) -> tuple[float, dict]:
    """Return the best wall time of fn() over repeat runs, and its last values."""
    best, values = math.inf, {}
    for _ in range(repeat):
        start = time.perf_counter()
        values = fn()
        best = min(best, time.perf_counter() - start)
    return best, values


def model_bench(frame, lm, args) -> None:
    """Print examples/s of ours vs naive (interleaved best-of), the ratio and the max diff."""
    ours(frame.iloc[:4], lm, args.max_length, args.batch_tokens)  # warm-up: first-call costs
    times = {"naive": math.inf, "ours": math.inf}
    values = {}
    for _ in range(args.repeat):
        for name, fn in (("naive", lambda: naive_scores(frame, lm, args.max_length)),
                         ("ours", lambda: ours(frame, lm, args.max_length, args.batch_tokens))):
            took, values[name] = best_of(fn, 1)
            times[name] = min(times[name], took)
    n = len(frame)
    enc = S.encode_rows(frame, lm[1], max_length=args.max_length)
    tokens = sum(enc.tokens(alone=True))
    print(f"{n} rows, {tokens} tokens over both passes (prompt+response and bare+response)")
    for name in ("naive", "ours"):
        print(f"  {name:6} {times[name]:7.1f} s  {n / times[name]:6.2f} examples/s  "
              f"{tokens / times[name]:7.0f} tokens/s")
    print(f"  ratio ours/naive: {times['naive'] / times['ours']:.2f}x")
    for score in ("perplexity", "ifd"):
        a, b = values["ours"][score], values["naive"][score]
        print(f"  {score:10} max |ours - naive| = {np.max(np.abs(a - b)):.2e}  "
              f"(max relative {np.max(np.abs(a - b) / np.abs(b)):.2e}; values {b.min():.3g}.."
              f"{b.max():.3g})")


def map_bench(rows: int = 52_000, dim: int = 384, k: int = 8) -> None:
    """Print the time of embedding_map (PCA + k-means) on random unit vectors of Alpaca size."""
    x = np.random.default_rng(0).normal(size=(rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    took, _ = best_of(lambda: SEL.embedding_map(x, method="pca", k=k), 2)
    pca, _ = best_of(lambda: SEL.pca_2d(x), 2)
    print(f"embedding map on {rows} x {dim} random vectors: PCA + k-means (k={k}) {took:.2f} s "
          f"(PCA alone {pca:.2f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-tokens", type=int, default=2048)
    parser.add_argument("--skip-map", action="store_true")
    args = parser.parse_args()
    if not args.path.exists():
        print(f"skipped: {args.path} not found")
        return 0
    try:
        lm, which = load_lm("default"), "default (SmolLM2-135M-Instruct)"
    except ModelNotAvailableError as e:
        lm, which = tiny_lm(), f"tiny_lm (the default model is unavailable: {e})"
    print(f"model: {which}; torch threads: {torch.get_num_threads()}")
    model_bench(load(args.path, args.rows), lm, args)
    if not args.skip_map:
        map_bench()
    return 0


if __name__ == "__main__":
    sys.exit(main())
