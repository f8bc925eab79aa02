"""Time each cleaning rule on the 52k Alpaca rows; skips cleanly when the data is absent.

Prints rows/s per rule (preview, i.e. the rule on every row) and for apply() with all rules,
against a baseline measured in the same run: a bare pass that lowercases every turn, the
least any per-row rule must do.

    python benchmarks/bench_clean.py [path/to/alpaca_data.json] [--rows N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from workbench import clean as C
from workbench.schema import examples_frame, to_example

DEFAULT_PATH = Path("/work/shared/data/alpaca/alpaca_data.json")


def load(path: Path, rows: int | None):
    """Return the step frame of the Alpaca rows (those with a non-empty output)."""
    records = json.loads(path.read_text())[:rows]
    return examples_frame([to_example(r, "alpaca") for r in records if str(r["output"]).strip()])


def baseline(frame) -> float:
    """Return seconds for the cheapest possible pass: lowercase every turn."""
    start = time.perf_counter()
    for conv in frame["messages"].tolist():
        for m in conv:
            m["content"].lower()
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--rows", type=int, default=None)
    args = parser.parse_args()
    if not args.path.exists():
        print(f"skipped: {args.path} not found")
        return 0
    frame = load(args.path, args.rows)
    base = baseline(frame)
    n = len(frame)
    print(f"{n} rows; baseline (lowercase every turn) {base:.2f} s = {n / base:,.0f} rows/s")
    eval_texts = frame["prompt"].sample(500, random_state=0).tolist()
    rules = C.default_rules() + [C.Language(), C.Contamination(eval_texts=eval_texts)]
    print(f"{'rule':16} {'rows hit':>9} {'seconds':>8} {'rows/s':>10} {'x baseline':>10}")
    for rule in rules:
        start = time.perf_counter()
        report = C.preview(frame, [rule], samples=0)
        took = time.perf_counter() - start
        print(f"{rule.name:16} {report.rules[0].rows:9d} {took:8.2f} {n / took:10,.0f} "
              f"{took / base:10.1f}")
    start = time.perf_counter()
    result = C.apply(frame, rules)
    took = time.perf_counter() - start
    print(f"apply, all rules: kept {len(result.kept)}, dropped {len(result.dropped)}, changed "
          f"rows {result.changed['row_key'].nunique()}; {took:.1f} s = {n / took:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
