"""The threshold explorer's curve on the 52k-row Alpaca file: computed in the app process (as
the Deduplicate page did before) against a ``dedup_curve`` job (as it does now).

Each way runs in a fresh process that imports the app's modules first, then prints the time
the app process spends and how far its resident memory grows (peak, sampled every 10 ms,
minus the RSS after the imports): in the app, reading the version and the MinHash pass; as a
job, starting it, waiting, and reading the saved curve (the worker holds the version).
Also checks the two curves are equal. Prints, never asserts.

    python benchmarks/bench_dedup_curve.py [--data PATH] [--method near]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"

MEASURE = r"""
import json, os, sys, threading, time
import pyarrow.parquet  # noqa: F401  (the app has these loaded already)
from workbench import curate, jobs, tasks  # noqa: F401
from workbench.store import Store

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

store, way, method = Store(sys.argv[1]), sys.argv[2], sys.argv[3]
vid = store.active_version("alpaca")
options = curate.DedupOptions()
base = rss_mb()
peak, running = [base], [True]

def sample():  # the peak of this step alone (ru_maxrss counts the imports' peak too)
    while running[0]:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.01)

threading.Thread(target=sample, daemon=True).start()
start = time.perf_counter()
if way == "app":
    curve = curate.duplicate_curve(store, store.frame(vid), options, method,
                                   curate.CURVE_THRESHOLDS[method])
else:
    job = curate.start_dedup_curve(store, vid, options, method)
    job = jobs.wait(job.run_id, timeout=3600)
    assert job.state == "done", job.error
    curve = curate.dedup_job_curve(job)
seconds = time.perf_counter() - start
running[0] = False
peak[0] = max(peak[0], rss_mb())
print(json.dumps({"way": way, "s": seconds, "grew_mb": peak[0] - base,
                  "curve": curve.to_dict("list")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ALPACA)
    parser.add_argument("--method", default="near", choices=["near"])
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} is absent")
        return
    from workbench.store import Store

    with tempfile.TemporaryDirectory(prefix="bench-dedup-curve-") as folder:  # removed after
        home = Path(folder)
        store = Store(home / "store.duckdb")
        store.import_file(args.data, "alpaca")
        env = {**os.environ, "WORKBENCH_HOME": str(home)}
        print(f"{store.version(store.active_version('alpaca')).n_rows:,} rows; load "
              f"{os.getloadavg()[0]:.2f}")
        results = {}
        for way in ("app", "job"):
            out = subprocess.run([sys.executable, "-c", MEASURE, str(store.path), way, args.method],
                                 env=env, capture_output=True, text=True, check=True)
            results[way] = r = json.loads(out.stdout.strip().splitlines()[-1])
            wait = " (waiting on the worker: the page shows its progress meanwhile)" \
                if way == "job" else ""
            print(f"{way:>4}: app process {r['s']:.2f} s{wait}, its memory grew "
                  f"{r['grew_mb']:.0f} MB")
        same = results["app"]["curve"] == results["job"]["curve"]
        print(f"the curves are {'equal' if same else 'DIFFERENT'}: rows removed "
              f"{results['job']['curve']['rows_removed']}")


if __name__ == "__main__":
    main()
