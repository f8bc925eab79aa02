"""Time a run listing (runs.table: sync + query) with 200 finished and 5 running runs.

Baseline, measured in the same process: the registry reads every unfinished run's folder on
each listing (as before run folders had signatures; forced here by a signature that never
matches). Now: a running run whose folder has not changed since the last look is not read.
Prints the median time of a repeated listing for both and their ratio.

    python benchmarks/bench_runs_sync.py [--finished 200] [--running 5] [--events 1000]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import orjson

from workbench import jobs, runs
from workbench.store import Store


def make_runs(home: Path, finished: int, running: int, events: int) -> list[int]:
    """Write finished and running run folders; return the lock descriptors of the running."""
    for i in range(finished + running):
        folder = home / f"run-{i:04d}"
        folder.mkdir(parents=True)
        jobs._write_json(folder / "config.json", {"task": "train", "kind": "train",
                                                  "created": 1e9 + i,
                                                  "params": {"config": {"model": "tiny"}}})
        lines = b"".join(orjson.dumps({"t": 1e9 + s, "step": s, "total": events, "loss": 1.0})
                         + b"\n" for s in range(1, events + 1))
        (folder / "events.jsonl").write_bytes(lines)
    locks = []
    for i in range(finished + running):
        folder = home / f"run-{i:04d}"
        if i < finished:
            jobs._write_json(folder / "status.json", {"state": "done", "started": 1e9,
                                                      "finished": 1e9 + 1})
            jobs._write_json(folder / "result.json", {"train_loss": 1.0, "steps": events})
        else:
            locks.append(jobs._take_lock(folder, wait_s=1.0))  # a live worker's lock
            jobs._write_json(folder / "status.json", {"state": "running", "locked": True})
    return locks


def median_listing(store: Store, home: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        runs.table(store, home=home)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--finished", type=int, default=200)
    parser.add_argument("--running", type=int, default=5)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home, store = Path(tmp) / "runs", Store(Path(tmp) / "wb.duckdb")
        locks = make_runs(home, args.finished, args.running, args.events)
        try:
            runs.table(store, home=home)  # the first look reads every folder once
            now = median_listing(store, home, args.repeat)
            real, counter = jobs.signature, itertools.count()
            jobs.signature = lambda *a, **k: f"never the same {next(counter)}"
            try:
                before = median_listing(store, home, args.repeat)
            finally:
                jobs.signature = real
        finally:
            for fd in locks:
                os.close(fd)
    print(f"{args.finished} finished + {args.running} running runs ({args.events} events "
          f"each), median of {args.repeat} listings")
    print(f"  rereading unfinished runs (before): {before * 1000:8.1f} ms")
    print(f"  skipping unchanged folders (now):   {now * 1000:8.1f} ms")
    print(f"  ratio before/now: {before / now:.1f}x")


if __name__ == "__main__":
    main()
