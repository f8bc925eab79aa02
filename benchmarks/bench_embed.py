"""Embedding paths vs a plain SentenceTransformer.encode call, on Alpaca rows.

All embed the same texts with the bundled all-MiniLM-L6-v2 in this process. The workbench path
(workbench.embed.embed_frame) embeds each distinct text once, in length-sorted batches, and
caches vectors in the store by content id. It runs with the torch model and with the ONNX
Runtime embedder that "auto" picks on a CPU (exported once into the data folder; --int8 also
measures the int8-quantised export that models.ONNX_INT8 would switch on). A second run measures
what a re-run (or a re-import of the same data) costs. Prints texts/s and ratios against plain
encode, the per-row cosine agreement of ONNX with torch, and whether semantic dedup of the
sample data finds the same clusters with either backend's vectors. The machine may be shared:
with --rounds R every path runs R times, interleaved, best kept.

    python benchmarks/bench_embed.py [--rows N] [--rounds R] [--int8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"
SAMPLE = ROOT / "sample_data" / "support_train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--data", type=Path, default=ALPACA)
    parser.add_argument("--int8", action="store_true", help="also measure the int8 ONNX export")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} not found")
        return
    from workbench.dedup import field_texts
    from workbench.models import load_embedder
    from workbench.store import Store

    store = Store(":memory:")
    version, _ = store.import_file(args.data, "alpaca")
    frame = store.frame(version.version_id).head(args.rows)
    texts = field_texts(frame, "conversation")
    embedders = {"torch": load_embedder(backend="torch"), **_onnx_embedders(args.int8)}
    for model in embedders.values():
        model.encode(texts[:8])  # warm-up, so no side pays first-call costs

    best: dict[str, float] = {}
    out: dict[str, np.ndarray] = {}

    def timed(name: str, run) -> None:
        t = time.perf_counter()
        out[name] = run()
        best[name] = min(best.get(name, np.inf), time.perf_counter() - t)

    for _ in range(args.rounds):
        timed("plain", lambda: embedders["torch"].encode(texts, normalize_embeddings=True,
                                                         convert_to_numpy=True))
        for name, model in embedders.items():
            fresh = Store(":memory:")  # an empty cache: this run embeds every row
            timed(name, lambda s=fresh, m=model: _embed(s, frame, m))
            timed(f"{name} cached", lambda s=fresh, m=model: _embed(s, frame, m))

    n, plain_s = len(texts), best["plain"]
    print(f"rows: {n}, distinct texts: {frame['id'].nunique()}, rounds: {args.rounds}")
    print(f"plain SentenceTransformer.encode:     {n / plain_s:8.1f} texts/s ({plain_s:.2f} s)")
    for name in embedders:
        first_s, cached_s = best[name], best[f"{name} cached"]
        print(f"workbench {name:9s} first run (embeds): {n / first_s:8.1f} texts/s "
              f"({first_s:.2f} s) ratio {plain_s / first_s:.2f}x")
        print(f"workbench {name:9s} second run (cache): {n / cached_s:8.0f} texts/s "
              f"({cached_s:.3f} s) ratio {plain_s / cached_s:.0f}x; cached equals first: "
              f"{bool(np.array_equal(out[name], out[f'{name} cached']))}")
    print(f"torch max |difference| vs plain: {np.abs(out['torch'] - out['plain']).max():.2e}")
    for name, model in embedders.items():
        if name == "torch":
            continue
        cos = _row_cosines(out[name], out["plain"])
        print(f"{name} ({model.folder.name}): {plain_s / best[name]:.2f}x plain "
              f"encode (target >= 2x); cosine per row vs torch: min {cos.min():.4f}, 1st "
              f"percentile {np.percentile(cos, 1):.4f}, mean {cos.mean():.4f} (target min >= "
              f"0.99); max |difference| {np.abs(out[name] - out['plain']).max():.2e}")
    _compare_dedup(embedders)


def _onnx_embedders(int8: bool) -> dict:
    from workbench import models

    found = {}
    for name, quantized in (("onnx", False), ("onnx-int8", True))[:2 if int8 else 1]:
        models.ONNX_INT8 = quantized  # picks the export recipe (and its folder)
        started = time.perf_counter()
        model = models.load_embedder(backend="onnx")  # exports once if the folder is missing
        print(f"{name}: ready in {time.perf_counter() - started:.1f} s")
        if not isinstance(model, models.OnnxEmbedder):
            print(f"{name}: ONNX Runtime is not available here (see the log line above)")
            continue
        found[name] = model
    models.ONNX_INT8 = False
    return found


def _embed(store, frame, model) -> np.ndarray:
    from workbench.curate import embed_frame

    return embed_frame(store, frame, encoder=model)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _compare_dedup(embedders: dict) -> None:
    from workbench import dedup
    from workbench.store import Store

    if not SAMPLE.exists():
        print(f"dedup comparison skipped: {SAMPLE} not found")
        return
    frame = None
    vectors = {}
    for name, model in embedders.items():
        store = Store(":memory:")  # one per backend: fp32 ONNX shares torch's cache key
        version, _ = store.import_file(SAMPLE, "sample")
        frame = store.frame(version.version_id)
        vectors[name] = _embed(store, frame, model)
    found = {name: _clusters(frame, v) for name, v in vectors.items()}
    for name in embedders:
        if name == "torch":
            continue
        print(f"semantic dedup of {SAMPLE.name} ({len(frame)} rows, cosine >= "
              f"{dedup.DEFAULT_COSINE_THRESHOLD}): torch {len(found['torch'])} clusters, {name} "
              f"{len(found[name])} clusters, same clusters: {found['torch'] == found[name]}")
        for cluster in sorted(found["torch"] ^ found[name], key=min):
            keys = sorted(cluster)
            rows = np.flatnonzero(frame["row_key"].isin(keys).to_numpy())
            sims = {n: float(np.min(vectors[n][rows] @ vectors[n][rows].T))
                    for n in ("torch", name)}
            side = "torch" if cluster in found["torch"] else name
            print(f"  only {side}: rows {keys}, lowest cosine torch {sims['torch']:.4f} "
                  f"{name} {sims[name]:.4f}")


def _clusters(frame, vectors: np.ndarray) -> set[frozenset[int]]:
    from workbench import dedup

    found = dedup.find_duplicates(frame, semantic_threshold=dedup.DEFAULT_COSINE_THRESHOLD,
                                  embeddings=vectors)
    return {frozenset(g["row_key"].tolist()) for _, g in found.groupby("cluster_id")}


if __name__ == "__main__":
    sys.exit(main())
