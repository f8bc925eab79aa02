"""Embedding path vs a plain SentenceTransformer.encode call, on Alpaca rows.

Both embed the same texts with the bundled all-MiniLM-L6-v2 in this process. Our path
(workbench.embed.embed_frame) embeds each distinct text once, in length-sorted batches, and
caches vectors in the store by content id: the first run measures the model work, the second
run what a re-run (or a re-import of the same data) costs. Prints texts/s and ratios.

    python benchmarks/bench_embed.py [--rows N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=ALPACA)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} not found")
        return
    from workbench.dedup import field_texts
    from workbench.embed import embed_frame
    from workbench.models import load_embedder
    from workbench.store import Store

    store = Store(":memory:")
    version, _ = store.import_file(args.data, "alpaca")
    frame = store.frame(version.version_id).head(args.rows)
    texts = field_texts(frame, "conversation")
    model = load_embedder()
    model.encode(texts[:8])  # warm-up, so neither side pays first-call costs

    t = time.perf_counter()
    plain = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    ours = embed_frame(store, frame, encoder=model)
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    again = embed_frame(store, frame, encoder=model)
    cached_s = time.perf_counter() - t

    n = len(texts)
    print(f"rows: {n}, distinct texts: {frame['id'].nunique()}")
    print(f"plain SentenceTransformer.encode: {n / plain_s:8.1f} texts/s ({plain_s:.2f} s)")
    print(f"workbench first run (embeds):     {n / first_s:8.1f} texts/s ({first_s:.2f} s) "
          f"ratio {plain_s / first_s:.2f}x")
    print(f"workbench second run (cache):     {n / cached_s:8.1f} texts/s ({cached_s:.3f} s) "
          f"ratio {plain_s / cached_s:.0f}x")
    print(f"max |difference| vs plain: {np.abs(ours - plain).max():.2e}; "
          f"cached equals first: {bool(np.array_equal(ours, again))}")


if __name__ == "__main__":
    sys.exit(main())
