"""The Score & select page's embedding map on Alpaca: first computation, then a reopen.

Imports ../shared/data/alpaca/alpaca_data.json (52,002 rows) into a temporary store, embeds
every row with the bundled all-MiniLM-L6-v2 through the cached path the embedding job uses
(workbench.embed.embed_frame), computes the map (PCA to 2-D + k-means) the page shows, then
times what a second open of the page does: read the version's rows and get the map again.
The baseline for the reopen is the same map recomputed from the cached vectors (what the page
did before the map had a cache of its own). Prints, does not assert.

    python benchmarks/bench_map.py [--rows N] [--k 8]

Skips with a message when the data set is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data.json"


def timed(label: str, fn):
    """Run fn, print its wall time, return (result, seconds)."""
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<48} {seconds:9.2f} s", flush=True)
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="first N rows (default: all)")
    parser.add_argument("--k", type=int, default=8, help="k-means clusters")
    parser.add_argument("--data", type=Path, default=ALPACA)
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} is absent")
        sys.exit(0)

    from workbench import curate, quality
    from workbench import select as SEL
    from workbench.curate import embed_frame
    from workbench.models import configure_torch_threads, load_embedder
    from workbench.store import Store

    configure_torch_threads()
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "alpaca.json"
        records = json.loads(args.data.read_text())[: args.rows]
        source.write_text(json.dumps(records))
        store = Store(Path(folder) / "store.duckdb")
        (version, _), _ = timed(f"import {len(records):,} rows",
                                lambda: store.import_file(source, "alpaca"))
        frame = store.frame(version.version_id)
        encoder = load_embedder("default")
        _, embed_s = timed("embed every row (MiniLM, cached path)",
                           lambda: embed_frame(store, frame, encoder=encoder))
        print(f"{'  texts/s':<48} {len(frame) / embed_s:9.1f}")
        (points, _), first_s = timed("map, first open (vectors + PCA + k-means)",
                                     lambda: quality.embedding_map(store, frame, k=args.k))

        def recompute():
            vectors, _ = curate.version_embeddings(store, frame)
            return SEL.embedding_map(vectors, k=args.k)

        _, base_s = timed("baseline reopen: vectors + PCA + k-means again", recompute)

        def reopen():
            rows = store.frame(version.version_id)
            return quality.embedding_map(store, rows, k=args.k)

        (again, _), reopen_s = timed("reopen: read the rows + cached map", reopen)
        assert again[["x", "y", "cluster"]].equals(points[["x", "y", "cluster"]])
        print(f"first compute (embed + map): {embed_s + first_s:.1f} s for {len(frame):,} rows; "
              f"reopen {reopen_s:.2f} s ({base_s / reopen_s:.1f}x faster than recomputing "
              f"the map from cached vectors)")


if __name__ == "__main__":
    main()
