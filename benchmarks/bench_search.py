"""Text search over a 1M-row version: the regex screen (now) against ILIKE as the screen
(before, commit cc010bd), same rows found.

``Store.matches`` with a search term scans every row's text once. Before, it screened each
row's whole JSON with ``ILIKE '%term%'`` and then checked each turn with ILIKE; now a
case-insensitive RE2 regex of the term screens (``store._search_regex``), and the same
per-turn ILIKE decides. The baseline is rebuilt from today's SQL by putting the ILIKE back in
the screen, so both run in this process on the same store, alternating, each term twice.

    python benchmarks/bench_search.py [--store PATH] [--rows 1000000]

Without --store it builds the store: the Alpaca file (../shared/data/alpaca, never copied
here) repeated and perturbed up to --rows rows (bench_pages.scaled), imported into /tmp.
Skips with a message when the data set is absent. Prints seconds per term and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_pages import ALPACA, scaled  # noqa: E402

from workbench import store as S  # noqa: E402

TERMS = ["poem", "Photosynthesis", "the capital of", "zzqx"]


def before(fn):
    """Run ``fn`` with the search screened by ILIKE, as it was before."""
    sql, regex = S._SEARCH_SQL, S._search_regex
    S._SEARCH_SQL = sql.replace("regexp_matches(r.messages, $jre)",
                                "r.messages ILIKE $jre ESCAPE '\\'").replace(
        "regexp_matches(r.metadata, $jre)", "r.metadata ILIKE $jre ESCAPE '\\'")
    S._search_regex = S._like_pattern  # the screen's argument: '%term%' for ILIKE
    try:
        return fn()
    finally:
        S._SEARCH_SQL, S._search_regex = sql, regex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-search-", dir="/tmp") as home:
        path = args.store
        if path is None:
            if not ALPACA.exists():
                print(f"skipped: {ALPACA} is absent")
                return
            path = Path(home) / "workbench.duckdb"
            S.Store(path).import_file(scaled(ALPACA, args.rows, Path(home) / "rows.jsonl"),
                                      "alpaca")
        store = S.Store(path)
        name = store.datasets()["name"].iloc[0]
        vid = store.active_version(name)
        print(f"{store.version(vid).n_rows:,} rows; load average {os.getloadavg()[0]:.1f}")
        print(f"{'term':<18} {'before s':>9} {'now s':>7} {'ratio':>6}  rows found")
        for term in TERMS:
            filters = S.RowFilter(search=term)
            times: dict[str, list[float]] = {"before": [], "now": []}
            found = {}
            for _ in range(2):
                for label in ("before", "now"):
                    start = time.perf_counter()
                    keys = before(lambda f=filters: store.matches(vid, f)) \
                        if label == "before" else store.matches(vid, filters)
                    times[label].append(time.perf_counter() - start)
                    found[label] = keys.tolist()
            assert found["before"] == found["now"], term
            b, n = min(times["before"]), min(times["now"])
            print(f"{term:<18} {b:9.2f} {n:7.2f} {b / n:6.1f}  {len(found['now']):,} (same)",
                  flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
