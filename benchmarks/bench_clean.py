"""Measure the cleaning rules on the Alpaca rows; skips cleanly when the data is absent.

1. The cleaning-defaults report: on the rows that real Alpaca cleaning labels cover (the first
   26,000 rows only; the rest are reserved), what every rule of the previous defaults and of
   ``default_rules()`` hits, how many of those rows people fixed (precision with a 95% Wilson
   interval), and in total how many rows the defaults drop and flag, before and after. The
   previous defaults are the rule module as it was at ``BEFORE_COMMIT``, loaded from git, so
   both are measured in the same run on the same rows.
2. Speed: rows/s per rule (preview, i.e. the rule on every row) and for apply() with all rules,
   against a baseline measured in the same run: a bare pass that lowercases every turn, the
   least any per-row rule must do.

    python benchmarks/bench_clean.py [path/to/alpaca_data.json] [--rows N] [--labels PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import types
from pathlib import Path

from workbench import clean as C
from workbench.io import read_dataset
from workbench.schema import examples_frame

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = ROOT / "../shared/data/alpaca/alpaca_data.json"
DEFAULT_LABELS = ROOT / "../shared/data/alpaca_defects_dev/labels.jsonl"
DEV_ROWS = 26_000  # labels cover the first 26,000 rows; never measure on the rest
# The last commit of workbench/clean.py before the defaults were measured (issue 9, item 6).
BEFORE_COMMIT = "65ce9e5541ffc1a2c2f5ef70cb2338f74c3f1c9b"
DROP_BAR = 0.8  # a rule drops by default when its precision's 95% lower bound reaches this


def load(path: Path, rows: int | None):
    """Return the step frame of the Alpaca rows the app imports; row_key = index in the file."""
    parsed = read_dataset(path)
    keep = [i for i, line in enumerate(parsed.lines) if rows is None or line <= rows]
    return examples_frame([parsed.examples[i] for i in keep],
                          [parsed.lines[i] - 1 for i in keep])


def baseline(frame) -> float:
    """Return seconds for the cheapest possible pass: lowercase every turn."""
    start = time.perf_counter()
    for conv in frame["messages"].tolist():
        for m in conv:
            m["content"].lower()
    return time.perf_counter() - start


# --- the cleaning-defaults report ------------------------------------------------------------

def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Return the 95% Wilson score interval of a proportion hits / n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale)


def precision(keys, defect: dict) -> str:
    """Return "defects  precision  [low, high]" for a set of row keys."""
    n, hits = len(keys), sum(defect[k] for k in keys)
    if not n:
        return f"{0:8d} {'-':>10}  {'':12}"
    low, high = wilson(hits, n)
    return f"{hits:8d} {hits / n:10.2f}  [{low:.2f}, {high:.2f}]"


def summary(keys, defect: dict) -> str:
    """Return "rows, defects: precision [low, high]" for a set of row keys."""
    n, hits = len(keys), sum(defect[k] for k in keys)
    if not n:
        return "0 rows"
    low, high = wilson(hits, n)
    return f"{n} rows, {hits} defects: {hits / n:.2f} [{low:.2f}, {high:.2f}]"


def before_module():
    """Return the rule module as it was at BEFORE_COMMIT, or None when git cannot show it."""
    try:
        code = subprocess.run(["git", "-C", str(ROOT), "show",
                               f"{BEFORE_COMMIT}:workbench/clean.py"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("workbench._clean_before")
    sys.modules[module.__name__] = module  # dataclasses resolve ClassVar through it
    exec(compile(code, f"{BEFORE_COMMIT[:7]}:workbench/clean.py", "exec"), module.__dict__)
    return module


def rule_hits(frame, rules, module) -> list[tuple[str, str, set]]:
    """Return (name, action, row keys hit) per rule, each rule on every row as in preview."""
    if module is C:
        report = C.preview(frame, rules, samples=0)
        return [(r.name, r.action, set(r.row_keys)) for r in report.rules]
    # The earlier module's preview lists no row keys: the same walk over its rules.
    convs, metas = [list(m) for m in frame["messages"]], frame["metadata"].tolist()
    keys, out = frame["row_key"].tolist(), []
    for rule in rules:
        hits = rule.scan(convs, metas)
        out.append((rule.name, rule.action, {k for k, h in zip(keys, hits) if h is not None}))
        if rule.action == "change":  # later rules see the changed text, as in apply
            convs = [h.messages if h else c for h, c in zip(hits, convs)]
    return out


def measure(frame, module, defect: dict, title: str) -> dict:
    """Print one line per default rule of a rule module (rows hit, action, defects,
    precision, whether it meets the drop bar); return the rows dropped and flagged."""
    print(f"\n{title}")
    print(f"{'rule':18} {'action':6} {'rows hit':>8} {'defects':>8} {'precision':>10}  95% CI"
          f"{'':7} drop bar")
    dropped, flagged = set(), set()
    for name, action, keys in rule_hits(frame, module.default_rules(), module):
        dropped |= keys if action == "drop" else set()
        flagged |= keys if action == "flag" else set()
        low = wilson(sum(defect[k] for k in keys), len(keys))[0]
        bar = "-" if action == "change" else ("meets" if low >= DROP_BAR else "below")
        print(f"{name:18} {action:6} {len(keys):8d} {precision(keys, defect)}  {bar}")
    return {"dropped": dropped, "flagged": flagged - dropped}


def totals(before: dict | None, after: dict, defect: dict) -> None:
    """Print rows dropped and flagged by the defaults before and after, with precision."""
    n_defects = sum(defect.values())
    print(f"\n{'totals (precision, 95% CI)':28} {'before':42} after")
    for label, part in (("rows dropped", "dropped"), ("rows flagged (kept)", "flagged")):
        cells = [summary(t[part], defect) if t else "-" for t in (before, after)]
        print(f"{label:28} {cells[0]:42} {cells[1]}")
    for label, parts in (("defects dropped", ("dropped",)),
                         ("defects dropped or flagged", ("dropped", "flagged"))):
        cells = [f"{sum(defect[k] for p in parts for k in t[p])} of {n_defects}" if t else "-"
                 for t in (before, after)]
        print(f"{label:28} {cells[0]:42} {cells[1]}")


def defaults_report(frame, labels_path: Path, rows: int | None) -> None:
    """Print the cleaning-defaults report for the labelled dev rows (of the first ``rows``)."""
    end = min(DEV_ROWS, rows or DEV_ROWS)
    labels = {}
    for line in labels_path.read_text().splitlines():
        row = json.loads(line)
        if row["row"] < end:
            labels[row["row"]] = row["defect"]
    dev = frame[frame["row_key"].isin(labels.keys())].reset_index(drop=True)
    defect = {k: labels[k] for k in dev["row_key"]}
    missing = sum(labels.values()) - sum(defect.values())
    print(f"cleaning defaults on the Alpaca dev labels: {len(dev):,} imported rows of the first "
          f"{end:,}, {sum(defect.values())} labelled defects ({missing} more have an "
          f"empty output and are rejected at import), base rate "
          f"{sum(defect.values()) / max(len(dev), 1):.1%}")
    print(f"drop bar: a rule drops by default when the lower end of its precision's 95% "
          f"interval is >= {DROP_BAR}")
    old = before_module()
    before = None
    if old is None:
        print(f"\nbefore: skipped (git cannot show {BEFORE_COMMIT[:7]}:workbench/clean.py)")
    else:
        before = measure(dev, old, defect, f"before: default_rules() at {BEFORE_COMMIT[:7]}")
    after = measure(dev, C, defect, "after: default_rules()")
    totals(before, after, defect)


# --- speed -----------------------------------------------------------------------------------

def speed(frame) -> None:
    """Print rows/s per rule and for apply() with all rules, against the baseline."""
    base = baseline(frame)
    n = len(frame)
    print(f"\nspeed: {n} rows; baseline (lowercase every turn) {base:.2f} s = "
          f"{n / base:,.0f} rows/s")
    eval_texts = frame["prompt"].sample(500, random_state=0).tolist()
    rules = C.default_rules() + [C.Language(), C.Contamination(eval_texts=eval_texts)]
    print(f"{'rule':18} {'rows hit':>9} {'seconds':>8} {'rows/s':>10} {'x baseline':>10}")
    for rule in rules:
        start = time.perf_counter()
        report = C.preview(frame, [rule], samples=0)
        took = time.perf_counter() - start
        print(f"{rule.name:18} {report.rules[0].rows:9d} {took:8.2f} {n / took:10,.0f} "
              f"{took / base:10.1f}")
    start = time.perf_counter()
    result = C.apply(frame, rules)
    took = time.perf_counter() - start
    print(f"apply, all rules: kept {len(result.kept)}, dropped {len(result.dropped)}, flagged "
          f"rows {result.flagged['row_key'].nunique()}, changed rows "
          f"{result.changed['row_key'].nunique()}; {took:.1f} s = {n / took:,.0f} rows/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    args = parser.parse_args()
    if not args.path.exists():
        print(f"skipped: {args.path} not found")
        return 0
    frame = load(args.path, args.rows)
    if args.labels.exists():
        defaults_report(frame, args.labels, args.rows)
    else:
        print(f"cleaning-defaults report skipped: {args.labels} not found")
    speed(frame)
    return 0


if __name__ == "__main__":
    sys.exit(main())
