"""Every page at real size: open it and do its main interaction on the 52k-row Alpaca file.

Imports ../shared/data/alpaca/alpaca_data.json (52,002 rows) into a throwaway store under
/tmp (its own WORKBENCH_HOME), then drives the app with Streamlit's AppTest in one session,
as a user moves between pages: open a page, then its main interactions (Clean: preview (a
job: its wait is printed, then the rerun that shows it), apply; Deduplicate: find (a job too),
open a cluster, keep all of it, the threshold explorer's curve (a job), move the threshold
(stale clusters), apply (a job); Score & select: score (a job, then again from the cache),
change the scatter's axis, move a threshold slider, pick a method (top-k, longest-k); Label:
mark a row; ...).
Prints the server time of every rerun (the script run that AppTest times is what the server
does between a click and the last element sent) and the process's resident memory after it,
then the peak.

Target (issue 10): every interaction under 1 s once the data is loaded, except those that do
the work itself (scoring, cleaning, finding duplicates) or start a job; those must show a
progress bar with a count. Rows marked "work" are those. Prints, does not assert.

    python benchmarks/bench_pages.py [--rows N] [--data PATH] [--skip Clean,Deduplicate]
    python benchmarks/bench_pages.py --scale 1000000 --skip "Clean,Deduplicate,Score & select"

--skip leaves out the named pages' interactions (the pages still open): at 1M rows Clean's
preview and Deduplicate's search take many minutes each. --scale N repeats the data's rows
until there are N, each copy after the first with "(variant k)" after its instruction and two
neighbouring words of its output swapped, so no two rows are identical.

Skips with a message when the data set is absent.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_data.json"
TARGET_S = 1.0


def rss_mb() -> float:
    """Return this process's resident memory now, in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    """Return this process's peak resident memory so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pin_navigation() -> None:
    """Make AppTest rerun app.py as a live server does (tests/helpers_app.py says why)."""
    from streamlit.runtime import pages_manager

    original = pages_manager.PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pages_manager.PagesManager.uses_pages_directory = False

    pages_manager.PagesManager.__init__ = init


class Walk:
    """One AppTest session; each step reruns the script once and records its time."""

    def __init__(self, skip: frozenset[str] = frozenset()) -> None:
        from streamlit.testing.v1 import AppTest

        self.at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=1800)
        self.rows: list[tuple[str, str, float, float, str]] = []
        self.skip = skip

    def step(self, page: str, label: str, act=None, *, work: bool = False) -> None:
        """Apply ``act`` to the session (a widget change) and rerun; print the time."""
        if page in self.skip and label != "open":
            print(f"{page:<16} {label:<44}   skipped (--skip)", flush=True)
            return
        if act is not None:
            try:
                act(self.at)
            except (KeyError, IndexError, ValueError) as e:  # the widget is not on the page
                print(f"{page:<16} {label:<44}   skipped: {e!r}", flush=True)
                return
        start = time.perf_counter()
        self.at = self.at.run()
        seconds = time.perf_counter() - start
        problems = [str(e.value)[:200] for e in [*self.at.exception, *self.at.error]]
        kind = "work" if work else ("" if seconds < TARGET_S else "SLOW")
        self.rows.append((page, label, seconds, rss_mb(), kind))
        print(f"{page:<16} {label:<44} {seconds:7.2f} s {rss_mb():7.0f} MB  {kind}"
              + (f"  ! {problems}" if problems else ""), flush=True)

    def finish_jobs(self, page: str, label: str) -> None:
        """Wait for the jobs a click started (their worker process does the work), print the
        wait, then rerun once: the page then shows their results."""
        from workbench import jobs

        if page in self.skip:
            return
        start = time.perf_counter()
        ended = [jobs.wait(j.run_id, timeout=3600) for j in jobs.list_runs() if j.active]
        for job in ended:
            print(f"{page:<16} {'  job ' + job.run_id[:38]:<44} {time.perf_counter() - start:7.2f}"
                  f" s  (worker process, {job.state})", flush=True)
        self.step(page, label)

    def open(self, page: str, title: str) -> None:
        self.step(title, "open", lambda at: at.switch_page(f"pages/{page}.py"))


def walk(w: Walk) -> None:
    """The walk: every page opened, and its main interactions."""
    w.step("app", "first load (sidebar, Datasets)")
    w.step("Datasets", "search 'poem'", lambda at: at.text_input(key="browse_search")
           .input("poem"))
    w.step("Datasets", "next page", lambda at: at.number_input(key="browse_page").set_value(2))
    w.open("clean", "Clean")
    w.step("Clean", "Preview (default rules): starts a job",
           lambda at: at.button(key="cl_preview").click(), work=True)
    w.finish_jobs("Clean", "rerun after the job: the preview shows")
    w.step("Clean", "switch a rule off (stale preview)",
           lambda at: at.checkbox(key="cl_ref_on").uncheck())
    w.step("Clean", "Preview again: starts a job",
           lambda at: at.button(key="cl_preview").click(), work=True)
    w.finish_jobs("Clean", "rerun after the job: the preview shows")
    w.step("Clean", "Apply: a job saves the finished preview",
           lambda at: at.button(key="cl_apply").click(), work=True)
    w.finish_jobs("Clean", "rerun after the job: the new version")
    w.open("dedup", "Deduplicate")
    w.step("Deduplicate", "Find duplicates: starts a job",
           lambda at: at.button(key="dd_find").click(), work=True)
    w.finish_jobs("Deduplicate", "rerun after the job: the clusters show")
    w.step("Deduplicate", "select the largest cluster", _select_cluster)
    w.step("Deduplicate", "keep all of it (saved with the find)", _keep_all)
    w.step("Deduplicate", "open the threshold explorer",
           lambda at: at.toggle(key="dd_explore").set_value(True))
    w.step("Deduplicate", "Compute the curve: starts a job",
           lambda at: at.button(key="dd_curve_start").click(), work=True)
    w.finish_jobs("Deduplicate", "rerun after the job: the curve shows")
    w.step("Deduplicate", "move the Jaccard slider to 0.9: stale",
           lambda at: at.slider(key="dd_near_t").set_value(0.9))
    w.step("Deduplicate", "rerun (any click)")
    w.step("Deduplicate", "move the Jaccard slider back to 0.8",
           lambda at: at.slider(key="dd_near_t").set_value(0.8))
    w.step("Deduplicate", "Apply: a job saves the clusters found",
           lambda at: at.button(key="dd_apply").click(), work=True)
    w.finish_jobs("Deduplicate", "rerun after the job: the new version")
    w.open("score", "Score & select")
    w.step("Score & select", "Score now (3 heuristics): starts a job",
           lambda at: at.button(key="sc_run").click(), work=True)
    w.finish_jobs("Score & select", "rerun after the job: the scores show")
    w.step("Score & select", "Score now again (all cached): starts a job",
           lambda at: at.button(key="sc_run").click(), work=True)
    w.finish_jobs("Score & select", "rerun after the job (from the cache)")
    w.step("Score & select", "change the scatter's y axis",
           lambda at: at.selectbox(key="sc_y").set_value(at.selectbox(key="sc_y").options[-1]))
    w.step("Score & select", "filter on length",
           lambda at: at.multiselect(key="sc_filter_on").set_value(["length_score"]))
    w.step("Score & select", "move the length threshold", _move_threshold)
    w.step("Score & select", "pick a method: top-k", _pick_top_k)
    w.step("Score & select", "pick a method: longest-k",
           lambda at: at.radio(key="sc_method").set_value("longest"))
    w.open("label", "Label")
    w.step("Label", "mark a row good", lambda at: at.button(key="lb_good").click())
    w.open("train", "Train")
    w.open("evaluate", "Evaluate")
    w.open("errors", "Errors")
    w.open("loop", "Iterations")
    w.open("score", "Score & select")
    w.open("datasets", "Datasets")


def _select_cluster(at) -> None:
    from workbench import jobs

    found = next(j for j in jobs.list_runs("dedup") if not j.config["params"].get("apply"))
    at.session_state[f"dd_clusters_{found.run_id}_1"] = {  # the table's key: per find and page
        "selection": {"rows": [0], "columns": [], "cells": []}}


def _keep_all(at) -> None:
    # A radio for a small cluster, a select box from 9 choices on (a big one, as at 1M rows).
    choices = [*at.radio, *at.selectbox]
    next(w for w in choices if (w.key or "").startswith("dd_keep_")).set_value("all")


def _move_threshold(at) -> None:
    slider = at.slider(key="sc_t_length_score")
    lo, hi = slider.value
    slider.set_value((lo + (hi - lo) * 0.01, hi))


def _pick_top_k(at) -> None:
    at.radio(key="sc_method").set_value("top_k")


def report(rows: list[tuple[str, str, float, float, str]]) -> None:
    interactive = [r for r in rows if r[4] != "work" and r[1] != "first load (sidebar, Datasets)"]
    slow = [r for r in interactive if r[2] >= TARGET_S]
    print(f"\npeak resident memory {peak_mb():,.0f} MB; after the walk {rss_mb():,.0f} MB")
    print(f"{len(interactive) - len(slow)} of {len(interactive)} interactions under "
          f"{TARGET_S:g} s (work steps excluded)")
    for page, label, seconds, _, _ in slow:
        print(f"  over: {page} · {label}: {seconds:.2f} s")


def scaled(data: Path, rows: int, target: Path) -> Path:
    """Write ``rows`` Alpaca rows to target (JSONL): data's rows repeated, each copy perturbed."""
    import json
    import random

    records, rng = json.loads(data.read_text()), random.Random(0)
    with target.open("w") as out:
        for n in range(rows):
            copy, record = divmod(n, len(records))
            record = dict(records[record])
            if copy:
                record["instruction"] = f"{record['instruction']} (variant {copy})"
                words = record["output"].split()
                if len(words) > 3:
                    i = rng.randrange(len(words) - 1)
                    words[i], words[i + 1] = words[i + 1], words[i]
                    record["output"] = " ".join(words)
            out.write(json.dumps(record) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=None, help="first N rows (default: all)")
    parser.add_argument("--data", type=Path, default=ALPACA)
    parser.add_argument("--scale", type=int, default=None,
                        help="repeat the data's rows (perturbed) up to this many rows")
    parser.add_argument("--skip", default="", help="pages (titles, comma-separated) whose "
                        "interactions are left out; they still open")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: {args.data} is absent")
        sys.exit(0)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="bench-pages-", dir="/tmp") as home:
        os.environ.update(WORKBENCH_HOME=home, WORKBENCH_STORE=f"{home}/workbench.duckdb")
        source = args.data
        if args.rows:
            import json

            source = Path(home) / "alpaca.json"
            source.write_text(json.dumps(json.loads(args.data.read_text())[: args.rows]))
        if args.scale:
            source = scaled(args.data, args.scale, Path(home) / "scaled.jsonl")
        from workbench.store import Store

        start = time.perf_counter()
        version, _ = Store(os.environ["WORKBENCH_STORE"]).import_file(source, "alpaca")
        print(f"imported {version.n_rows:,} rows in {time.perf_counter() - start:.1f} s "
              f"into {home}\n")
        print(f"{'page':<16} {'interaction':<44} {'server':>9} {'RSS':>10}")
        pin_navigation()
        w = Walk(frozenset(filter(None, (p.strip() for p in args.skip.split(",")))))
        try:
            walk(w)
        finally:
            report(w.rows)
            settle()


def settle() -> None:
    """Wait for the jobs the walk left running (the Label page's rule scan at 1M rows): their
    workers write into the throwaway folder, which could not be removed under them."""
    from workbench import jobs

    for job in jobs.list_runs():
        if job.active:
            jobs.wait(job.run_id, timeout=600)


if __name__ == "__main__":
    main()
