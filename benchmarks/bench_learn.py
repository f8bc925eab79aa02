"""Oracle simulation of the review queue and the learned score on real defect labels.

A person labels rows the queue shows them; here the labels come from a file instead. Start
with 20 labelled rows drawn at random (seeded), then rounds of 20 rows from the queue
(workbench.labelling.next_rows: rule hits, extreme scores and random rows until both classes
have labels, then likely-bad, unsure and random rows from the learned score), up to 400
labels. After each round it prints the AUROC on the rows not labelled yet of:
- the learned score trained on the queue's labels,
- the same learned score trained on as many randomly chosen labels (the baseline),
- the best single shipped score (heuristics cached for the rows), in its declared direction,
and at the end how many real defects the queue put in front of the user in its first 100
suggestions, against random labelling (defect rate x 100). Then the speed of a retrain.

Defaults: the Stanford Alpaca file and the development half of its defect labels
(../shared/data, found from the repository root). Any JSON/JSONL dataset works with a labels
file of {"row": index in the data file, "defect": 0|1} or {"row": ..., "label": "good"|"bad"}.
Embeddings (prompt and response, MiniLM) are computed once into a store under the data folder
and reused by later runs; --no-embed runs on words and scores alone.

    python benchmarks/bench_learn.py [--data FILE] [--labels FILE] [--runs 3] [--no-embed]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALPACA = SHARED / "alpaca" / "alpaca_data.json"
DEV_LABELS = SHARED / "alpaca_defects_dev" / "labels.jsonl"
HEURISTICS = ["length", "lexical_diversity", "repetition", "readability", "overlap"]


def read_labels(path: Path) -> dict[int, int]:
    """Return {row index: 1 if defect/bad else 0} from a labels file."""
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            value = record["defect"] if "defect" in record else record["label"] == "bad"
            out[int(record["row"])] = int(value)
    return out


def load(args) -> tuple:
    """Import the labelled rows into the bench store; return (store, version, frame, truth)."""
    from workbench.store import Store, default_home

    truth_by_row = read_labels(args.labels)
    records = json.loads(args.data.read_text()) if args.data.suffix == ".json" else \
        [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    rows = sorted(r for r in truth_by_row if r < len(records))
    path = args.store or default_home() / "bench" / "learn.duckdb"
    store = Store(path)
    name = f"{args.data.stem}-{len(rows)}"
    if name not in store.datasets()["name"].tolist():
        from workbench.schema import RowError, detect_shape, to_example

        examples, kept = [], []
        for r in rows:
            try:
                examples.append(to_example(records[r], detect_shape(records[r])))
                kept.append(r)
            except RowError:
                continue  # rejected at import, as the app would (empty outputs)
        vid = store.add_examples(name, examples, lines=kept,
                                 params={"file": str(args.data), "labels": str(args.labels)})
    vid = store.active_version(name)
    frame = store.frame(vid)
    lines = store.page(vid, limit=len(frame)).rows.set_index("row_key")["source_line"]
    truth = np.array([truth_by_row[int(lines[k])] for k in frame["row_key"]])
    return store, vid, frame, truth


def prepare(store, vid, frame, embed: bool) -> None:
    """Cache heuristic scores and (optionally) prompt/response embeddings for the rows."""
    from workbench import quality
    from workbench.curate import embed_frame

    t = time.perf_counter()
    quality.score_heuristics(store, frame, quality.heuristic_specs(HEURISTICS))
    print(f"heuristic scores: {time.perf_counter() - t:.1f} s")
    if embed:
        for field in embed:
            t = time.perf_counter()
            embed_frame(store, frame, field=field)
            print(f"embeddings ({field}): {time.perf_counter() - t:.1f} s")


def simulate(store, vid, frame, truth, run: int, args) -> dict:
    """Run the queue and the random baseline side by side; return their curves."""
    from workbench import labelling, quality

    # Each run labels into a label set of its own, so runs never see each other's labels.
    label_set = f"bench-{run}-{int(time.time())}"
    config = _config(args)
    rng = np.random.default_rng(run)
    n = len(frame)
    start = rng.choice(n, args.start, replace=False)
    queue_rows, random_rows = list(start), list(start)
    position = {k: i for i, k in enumerate(frame["row_key"])}
    scored = quality.with_cached_scores(store, frame)
    shipped = [c for c in quality.score_columns(scored) if not c.startswith("learned")]
    features, _ = labelling.version_features(store, frame, config,
                                             scores=labelling.feature_scores(scored))
    _store_labels(store, frame, truth, queue_rows, label_set)
    curve, suggested = [], []
    while len(queue_rows) < args.budget:
        queue = labelling.next_rows(store, vid, frame, labelling.QueueOptions(
            n=args.round, label_set=label_set, config=config, seed=run))
        new = [position[k] for k in queue.rows["row_key"]]
        suggested += new
        queue_rows += new
        _store_labels(store, frame, truth, new, label_set)
        rest = np.setdiff1d(np.arange(n), queue_rows)
        random_rows += list(rng.choice(np.setdiff1d(np.arange(n), random_rows), args.round,
                                       replace=False))
        curve.append({"labels": len(queue_rows), "defects": int(truth[queue_rows].sum()),
                      "stage": queue.stage,
                      "queue": _learned_auroc(store, frame, truth, rest, label_set, vid, config),
                      "random": _random_auroc(features, truth, np.array(random_rows), config),
                      "random_defects": int(truth[random_rows].sum()),
                      "best_score": _best_score(scored, shipped, truth, rest)})
        row = curve[-1]
        print(f"  {row['labels']:4d} labels  defects labelled {row['defects']:3d} (random "
              f"{row['random_defects']:2d})  AUROC queue {_fmt(row['queue'])}  random "
              f"{_fmt(row['random'])}  best single score {row['best_score'][1]:.3f} "
              f"({row['best_score'][0]})  [{row['stage']}]", flush=True)
    return {"curve": curve, "first100": int(truth[suggested[:100]].sum())}


def _config(args):
    from workbench import learn

    return learn.LearnConfig(fields=tuple(args.fields) if args.embed else (),
                             dense_weight=args.dense_weight, C=args.C)


def _store_labels(store, frame, truth, rows, label_set) -> None:
    from workbench import labels as LB

    ids = frame["id"].to_numpy()[rows].tolist()
    LB.set_labels(store, ids, ["bad" if truth[r] else "good" for r in rows], label_set=label_set,
                  kind="bench")


def _learned_auroc(store, frame, truth, rest, label_set, vid, config) -> float:
    from workbench import labelling, learn

    try:
        labelling.train_learned(store, vid, frame, label_set=label_set, config=config)
    except Exception as error:  # too few labels of a class yet
        if "label at least" in str(error):
            return float("nan")
        raise
    p = labelling._cached_learned(store, frame, label_set)
    return learn.auroc(truth[rest], p[rest])


def _random_auroc(features, truth, rows, config) -> float:
    from workbench import learn
    from workbench.exceptions import ConfigError

    try:
        model = learn.fit(features, rows, truth[rows], config)
    except ConfigError:
        return float("nan")
    rest = np.setdiff1d(np.arange(len(truth)), rows)
    return learn.auroc(truth[rest], model.predict(features, rest))


def _best_score(scored, columns, truth, rest) -> tuple[str, float]:
    from workbench import learn
    from workbench.score import direction_of

    best = ("none", float("nan"))
    for column in columns:
        x = scored[column].to_numpy(dtype=np.float64)[rest]
        signed = -x if (direction_of(column) or "higher") == "higher" else x
        value = learn.auroc(truth[rest], signed)
        if not best[1] >= value:
            best = (column, value)
    return best


def _fmt(value: float) -> str:
    return "  -  " if value != value else f"{value:.3f}"


def speed(store, vid, frame, truth, args, *, target=None) -> None:
    """Time a retrain after one more round of labels, with the features already built, on
    the labelled rows' version or (``target``: version id and frame) on another version that
    holds them, such as the whole file."""
    from workbench import labelling
    from workbench import labels as LB

    label_set = f"bench-speed-{int(time.time())}"
    config = _config(args)
    rng = np.random.default_rng(0)
    rows = np.union1d(rng.choice(len(frame), 300, replace=False), np.flatnonzero(truth)[:30])
    more = np.setdiff1d(rng.choice(len(frame), 40, replace=False), rows)[:20]
    ids = frame["id"].to_numpy()
    LB.set_labels(store, ids[rows].tolist(), ["bad" if truth[r] else "good" for r in rows],
                  label_set=label_set)
    vid, frame = target or (vid, frame)
    t = time.perf_counter()
    labelling.train_learned(store, vid, frame, label_set=label_set, config=config)
    first = time.perf_counter() - t
    LB.set_labels(store, ids[more].tolist(), ["bad" if truth[r] else "good" for r in more],
                  label_set=label_set)
    t = time.perf_counter()
    result = labelling.train_learned(store, vid, frame, label_set=label_set, config=config)
    again = time.perf_counter() - t
    print(f"\nretrain speed on {len(frame):,} rows ({result.n_good + result.n_bad} labels, "
          f"features: {', '.join(result.features)}): first training in this process "
          f"{first:.2f} s (builds or loads the features), retrain after a round of labels "
          f"{again:.2f} s (fit, 5-fold CV AUROC, score and cache every row)")


def whole_file(store, args):
    """Import every row of the data file (once) and embed it; return (version id, frame)."""
    name = f"{args.data.stem}-all"
    if name not in store.datasets()["name"].tolist():
        store.import_file(args.data, name)
    vid = store.active_version(name)
    frame = store.frame(vid)
    prepare(store, vid, frame, args.fields if args.embed else ())
    return vid, frame


def repeated(store, vid, frame, n_rows: int):
    """Return (version id, frame) of the labelled rows repeated up to n_rows: the retrain
    timing at that size with the embeddings and scores already cached (a repeated row has the
    same content id), without embedding a new file for an hour on a 2-core machine."""
    name = f"{store.version(vid).dataset}-x{n_rows}"
    if name not in store.datasets()["name"].tolist():
        examples = store.examples(vid)
        copies = [examples[i % len(examples)] for i in range(n_rows)]
        store.add_examples(name, copies, params={"repeats_of": vid})
    target = store.active_version(name)
    return target, store.frame(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ALPACA)
    parser.add_argument("--labels", type=Path, default=DEV_LABELS)
    parser.add_argument("--store", type=Path, default=None,
                        help="bench store (default: <data folder>/bench/learn.duckdb)")
    parser.add_argument("--runs", type=int, default=3, help="seeds of the simulation")
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--round", type=int, default=20)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--no-embed", dest="embed", action="store_false")
    parser.add_argument("--fields", type=lambda t: t.split(","), default=["user", "assistant"],
                        help="embedded fields the learned score uses")
    parser.add_argument("--dense-weight", type=float, default=1.0)
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--speed-rows", type=int, default=0,
                        help="also time a retrain on this many rows: the labelled rows "
                             "repeated (cached embeddings), e.g. 52000 for Alpaca's size")
    parser.add_argument("--speed-all", action="store_true",
                        help="also time a retrain on every row of the data file (52k for "
                             "Alpaca; embeds them once)")
    args = parser.parse_args()
    if not args.data.exists() or not args.labels.exists():
        print(f"skipped: {args.data} or {args.labels} not found")
        return
    store, vid, frame, truth = load(args)
    print(f"{len(frame):,} labelled rows, {truth.sum()} defects (rate {truth.mean():.3f}); "
          f"store {store.path}")
    prepare(store, vid, frame, args.fields if args.embed else ())
    results = []
    for run in range(args.runs):
        print(f"\nrun {run} (seed {run}): labels, defects found, AUROC on unlabelled rows")
        results.append(simulate(store, vid, frame, truth, run, args))
    if results:
        summarize(results, truth, args)
    speed(store, vid, frame, truth, args)
    if args.speed_rows:
        speed(store, vid, frame, truth, args, target=repeated(store, vid, frame, args.speed_rows))
    if args.speed_all:
        speed(store, vid, frame, truth, args, target=whole_file(store, args))


def summarize(results: list[dict], truth: np.ndarray, args) -> None:
    """Print the mean curve, labels needed for 0.70/0.75, and defects among 100 suggestions."""
    print("\nmean over runs: labels | AUROC queue | random | best single score")
    for i, row in enumerate(results[0]["curve"]):
        rows = [r["curve"][i] for r in results]
        q = np.nanmean([r["queue"] for r in rows]) if any(r["queue"] == r["queue"]
                                                          for r in rows) else float("nan")
        rnd = np.nanmean([r["random"] for r in rows]) if any(r["random"] == r["random"]
                                                             for r in rows) else float("nan")
        best = np.nanmean([r["best_score"][1] for r in rows])
        print(f"  {row['labels']:4d} | {_fmt(q)} | {_fmt(rnd)} | {best:.3f}")
    for target in (0.70, 0.75):
        needed = []
        for r in results:
            hit = [row["labels"] for row in r["curve"] if row["queue"] == row["queue"]
                   and row["queue"] >= target]
            needed.append(hit[0] if hit else None)
        print(f"labels the queue needed for AUROC >= {target:.2f}: {needed} "
              f"(budget {args.budget}; None = not reached)")
    first = [r["first100"] for r in results]
    print(f"defects among the queue's first 100 suggestions: {first} (mean {np.mean(first):.1f}); "
          f"random labelling: {100 * truth.mean():.1f} expected -> "
          f"{np.mean(first) / (100 * truth.mean()):.1f}x")


if __name__ == "__main__":
    sys.exit(main())
