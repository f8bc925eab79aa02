"""Import and browse speed against a plain pandas read of the same file, in the same process;
then a big import through the CLI: its peak memory and how long other processes wait.

    python benchmarks/bench_import.py [--rows 1000000] [--repeat 3] [--big-mb 160] [--only-big]

Prints, does not assert. Times are the best of ``--repeat`` runs (the machine is shared, so
compare the ratios, not the seconds). Needs ../shared/data/alpaca/alpaca_data.json next to the
repository (or $ALPACA_JSON); skips with a message when it is absent. Nothing is written
outside a temporary folder.

The big import writes a JSONL of the Alpaca rows repeated to at least --big-mb MB, imports it
with `workbench import` in a subprocess (peak RSS from the kernel's accounting of that child;
target: within 2x the file size), while another subprocess runs the `list` command in a loop
and records how long each call takes (target: a few seconds at most, however big the file).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from workbench.io import read_dataset
from workbench.schema import Example
from workbench.store import RowFilter, Store

ROOT = Path(__file__).resolve().parent.parent
ALPACA = Path(os.environ.get("ALPACA_JSON",
                             ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"))


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Return the fastest wall time of ``repeat`` calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_python_mb(fn: Callable[[], Any]) -> float:
    """Return the peak of Python allocations (tracemalloc) during one call, in MB."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def bench_import(folder: Path, repeat: int) -> tuple[Store, int]:
    """Time an import into a fresh store file against pandas.read_json; return the store."""
    stores: list[Store] = []

    def import_once() -> Any:
        store = Store(folder / f"import-{len(stores)}.duckdb")
        stores.append(store)
        return store.import_file(ALPACA, "alpaca")

    # Interleave the two so that both see the same machine load. CPU time (all threads) is
    # printed too: on a loaded machine it says more than wall time.
    pandas_s = imp_s = pandas_cpu = imp_cpu = float("inf")
    for _ in range(repeat):
        cpu = time.process_time()
        pandas_s = min(pandas_s, best_of(1, lambda: pd.read_json(ALPACA))[0])
        pandas_cpu = min(pandas_cpu, time.process_time() - cpu)
        cpu = time.process_time()
        seconds, (version, report) = best_of(1, import_once)
        imp_s, imp_cpu = min(imp_s, seconds), min(imp_cpu, time.process_time() - cpu)
    print(f"file                {ALPACA} ({ALPACA.stat().st_size / 1e6:.1f} MB)")
    print(f"report              {report.summary()}")
    print(f"pandas.read_json    {pandas_s:7.3f} s wall  {pandas_cpu:7.3f} s CPU")
    print(f"store.import_file   {imp_s:7.3f} s wall  {imp_cpu:7.3f} s CPU")
    print(f"import / pandas     {imp_s / pandas_s:7.2f}x wall {imp_cpu / pandas_cpu:6.2f}x CPU "
          "(target: within 2x)")
    print(f"store file size     {Path(stores[-1].path).stat().st_size / 1e6:.1f} MB")
    pandas_mb = peak_python_mb(lambda: pd.read_json(ALPACA))
    import_mb = peak_python_mb(lambda: Store(folder / "mem.duckdb").import_file(ALPACA, "a"))
    print(f"peak Python memory  pandas {pandas_mb:.0f} MB, import {import_mb:.0f} MB "
          "(tracemalloc; DuckDB's own memory is not traced)")
    return stores[-1], version.version_id


def bench_pages(store: Store, version_id: int, label: str, repeat: int,
                metadata: tuple[tuple[str, str], ...]) -> None:
    """Time a first page, a deep page, a search and a metadata / length filter."""
    n = store.version(version_id).n_rows
    cases = [("page 1 (50 rows)", 0, RowFilter()),
             ("page at the middle", n // 2, RowFilter()),
             ("search 'water'", 0, RowFilter(search="water")),
             ("metadata filter", 0, RowFilter(metadata=metadata)),
             ("length filter", 0, RowFilter(min_chars=1000))]
    for name, offset, filters in cases:
        seconds, page = best_of(repeat, lambda o=offset, f=filters: store.page(
            version_id, offset=o, limit=50, filters=f))
        print(f"{label:>6} rows  {name:20s} {seconds * 1000:8.1f} ms  ({page.total:,} match)")


def repeated(examples: list[Example], total: int) -> Iterator[Example]:
    """Yield ``total`` examples by cycling through ``examples``, tagging each copy."""
    copy = 0
    while True:
        for example in examples:
            yield Example(example.messages, {**example.metadata, "copy": copy})
        copy += 1


def bench_million(folder: Path, rows: int, repeat: int) -> None:
    """Build a big version through the store's bulk path and time pages on it."""
    examples = read_dataset(ALPACA).examples
    store = Store(folder / "big.duckdb")
    start = time.perf_counter()
    version_id = store.add_examples("big", islice(repeated(examples, rows), rows))
    seconds = time.perf_counter() - start
    print(f"bulk insert         {rows:,} rows in {seconds:.1f} s "
          f"({rows / seconds:,.0f} rows/s), file {Path(store.path).stat().st_size / 1e6:.0f} MB")
    bench_pages(store, version_id, f"{rows // 1000}k", repeat, (("copy", "3"),))


def big_jsonl(folder: Path, megabytes: float) -> tuple[Path, int]:
    """Write the Alpaca rows as JSONL, repeated until the file has ``megabytes`` MB (10**6
    bytes); return it and its row count."""
    records = orjson.loads(ALPACA.read_bytes())
    block = b"".join(orjson.dumps(r) + b"\n" for r in records)
    path, copies = folder / "big.jsonl", 0
    with path.open("wb") as f:
        while f.tell() < megabytes * 1e6:
            f.write(block)
            copies += 1
    return path, copies * len(records)


# Runs the `list` command in a loop until the stop file appears; prints one line per call:
# the wall-clock time it started and how long it took (a process start costs seconds here,
# so one process polls, as the app does, rather than a new process per call).
LIST_POLLER = """
import contextlib, io, os, sys, time
from workbench.cli import main
stop = sys.argv[1]
while not os.path.exists(stop):
    start, t = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["list"], standalone_mode=False)
        except SystemExit:
            pass
    print(start, time.perf_counter() - t, flush=True)
    time.sleep(0.05)
"""


def _command() -> list[str]:
    exe = shutil.which("workbench")
    return [exe] if exe else [sys.executable, "-c", "from workbench.cli import main; main()"]


def bench_big_import(folder: Path, megabytes: float) -> None:
    """Import a big JSONL with `workbench import` while `list` polls the same store."""
    path, rows = big_jsonl(folder, megabytes)
    size = path.stat().st_size
    env = {**os.environ, "WORKBENCH_STORE": str(folder / "big-cli.duckdb"),
           "WORKBENCH_HOME": str(folder)}
    stop = folder / "stop-polling"
    poller = subprocess.Popen([sys.executable, "-c", LIST_POLLER, str(stop)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)  # let it start and time a few calls on an idle store
    start = time.time()
    importer = subprocess.Popen([*_command(), "import", str(path), "-d", "big", "--no-progress",
                                 "--no-show-rejects"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(importer.pid, 0)  # this child's own peak RSS
    seconds, end = time.time() - start, time.time()
    out, err = importer.stdout.read(), importer.stderr.read()
    time.sleep(1)
    stop.touch()
    polled, poll_err = poller.communicate(timeout=120)
    if status != 0:
        print(f"big import FAILED: {err.strip()[-500:]}")
        return
    calls = [tuple(map(float, line.split())) for line in polled.splitlines() if line.strip()]
    before = [d for t, d in calls if t < start]
    during = [d for t, d in calls if start <= t <= end]
    worst_at = max(((d, t) for t, d in calls if start <= t <= end), default=(0, start))[1]
    peak = usage.ru_maxrss * 1024  # Linux reports KiB
    print(f"big file            {size / 1e6:.0f} MB, {rows:,} rows ({path.name}, Alpaca "
          "repeated)")
    print(f"workbench import    {seconds:.1f} s, {rows / seconds:,.0f} rows/s: "
          f"{out.strip().splitlines()[0]}")
    print(f"peak RSS of import  {peak / 1e6:.0f} MB = {peak / size:.2f}x the file "
          f"(target: within 2x) {'OK' if peak <= 2 * size else 'OVER'}")
    if not during:
        print(f"list while importing: no call finished ({poll_err.strip()[-300:]})")
        return
    idle = statistics.median(before) if before else float("nan")
    print(f"`list` on an idle store  median {idle:.2f} s ({len(before)} calls)")
    print(f"`list` during the import longest {max(during):.2f} s, median "
          f"{statistics.median(during):.2f} s ({len(during)} calls); longest wait "
          f"{max(during) - idle:.2f} s, from {worst_at - start:.1f} s into the import")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big-mb", type=float, default=160,
                        help="Size of the big JSONL import (MB); 0 skips it.")
    parser.add_argument("--only-big", action="store_true", help="Run only the big import.")
    args = parser.parse_args()
    if not ALPACA.exists():
        print(f"skipped: {ALPACA} not found (set ALPACA_JSON to the Alpaca JSON file)")
        return
    print(f"cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
          f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.only_big:
            store, version_id = bench_import(folder, args.repeat)
            bench_pages(store, version_id, "52k", args.repeat, (("copy", "3"),))
            bench_million(folder, args.rows, args.repeat)
        if args.big_mb > 0:
            bench_big_import(folder, args.big_mb)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {peak:.0f} MB")


if __name__ == "__main__":
    main()
