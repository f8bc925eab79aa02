"""Benchmark dedup against datasketch, in one process, on Alpaca with planted near-duplicates.

Prints (never asserts):
1. near-duplicate detection on a sample of Alpaca plus planted copies (word edits, sentence
   reorderings, truncations, an appended sentence from another row): precision, recall and
   docs/s of workbench.dedup and of datasketch (MinHash.bulk + MinHashLSH, same normalized
   text, same shingles, num_perm, seed and threshold), and the speed ratio;
2. exact + near dedup of all of Alpaca end to end, and a threshold curve;
3. semantic dedup (when workbench.models.load_embedder exists): MRPC train cosine-threshold
   precision/recall/F1 and the time of the blocked cosine search.

Run: python benchmarks/bench_dedup.py [--sample 20000 --planted 2000 --skip-semantic]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from workbench import curate, dedup
from workbench.schema import RowError, content_id, examples_frame, to_example
from workbench.store import Store

ALPACA = Path("/work/shared/data/alpaca/alpaca_data.json")
MRPC = Path("/work/shared/data/mrpc/msr_paraphrase_train.txt")
KINDS = ("word_edits", "reorder", "truncate", "append")
SENTENCE = re.compile(r"(?<=[.!?])\s+")


# --- data -----------------------------------------------------------------------------------

def load_alpaca(path: Path) -> pd.DataFrame:
    """Return the step frame of every Alpaca record that makes a valid Example."""
    examples = []
    for record in json.loads(path.read_text(encoding="utf-8")):
        try:
            examples.append(to_example(record, "alpaca"))
        except RowError:
            pass  # a few records have an empty output
    return examples_frame(examples)


def _edit_words(text: str, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for _ in range(max(1, round(0.05 * len(words)))):
        i = rng.randrange(len(words))
        op = rng.choice(("replace", "delete", "insert"))
        if op == "replace":
            words[i] = rng.choice(vocab)
        elif op == "delete" and len(words) > 1:
            del words[i]
        else:
            words.insert(i, rng.choice(vocab))
    return " ".join(words)


def _reorder(text: str, rng: random.Random) -> str:
    sentences = SENTENCE.split(text.strip())
    shuffled = sentences[:]
    while shuffled == sentences:
        rng.shuffle(shuffled)
    return " ".join(shuffled)


def _truncate(text: str, rng: random.Random) -> str:
    words = text.split()
    return " ".join(words[:max(1, round(len(words) * rng.uniform(0.8, 0.9)))])


def _append(text: str, rng: random.Random, others: list[str]) -> str:
    return f"{text} {SENTENCE.split(rng.choice(others).strip())[0]}"


def plant(frame: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, list[tuple[int, int]],
                                                            list[str]]:
    """Return (frame + n edited copies of its rows, (source, copy) positions, kind per copy)."""
    rng = random.Random(seed)
    responses = frame["response"].tolist()
    long_enough = [i for i, r in enumerate(responses) if len(r.split()) >= 12]
    multi = [i for i in long_enough if len(SENTENCE.split(responses[i].strip())) >= 2]
    vocab = [w for r in rng.sample(responses, 2000) for w in r.split()]
    rows, truth, kinds = [], [], []
    used: set[int] = set()
    for k in range(n):
        kind = KINDS[k % len(KINDS)]
        pool = multi if kind == "reorder" else long_enough
        src = rng.choice(pool)
        while src in used:
            src = rng.choice(pool)
        used.add(src)
        text = responses[src]
        if kind == "word_edits":
            new = _edit_words(text, rng, vocab)
        elif kind == "reorder":
            new = _reorder(text, rng)
        elif kind == "truncate":
            new = _truncate(text, rng)
        else:
            new = _append(text, rng, responses)
        messages = [dict(m) for m in frame["messages"].iat[src]]
        messages[-1]["content"] = new
        rows.append({"row_key": len(frame) + k, "id": content_id(messages),
                     "messages": messages, "metadata": {"planted_from": src},
                     "prompt": frame["prompt"].iat[src], "response": new})
        truth.append((src, len(frame) + k))
        kinds.append(kind)
    return pd.concat([frame, pd.DataFrame(rows)], ignore_index=True), truth, kinds


# --- near-duplicate detection: ours and datasketch ------------------------------------------

def ours(texts: list[str], config: dedup.MinHashConfig) -> set[tuple[int, int]]:
    """Return our verified near-duplicate pairs (positions)."""
    pairs = dedup.minhash_pairs(dedup.minhash_signatures(texts, config), config)
    return set(zip(pairs["left"].tolist(), pairs["right"].tolist()))


def python_shingles(text: str, config: dedup.MinHashConfig) -> list[str]:
    """Return the shingles of one normalized text, as workbench.dedup defines them."""
    units = list(text) if config.shingle == "char" else text.split(" ")
    joiner = "" if config.shingle == "char" else " "
    n = config.ngram
    if not text:
        return []
    if len(units) < n:
        return [text]
    return [joiner.join(units[i:i + n]) for i in range(len(units) - n + 1)]


def datasketch_pairs(texts: list[str], config: dedup.MinHashConfig, hashfunc=None,
                     params: tuple[int, int] | None = None) -> set[tuple[int, int]]:
    """Return datasketch's candidate pairs: MinHash.bulk, then MinHashLSH insert + query."""
    from datasketch import MinHash, MinHashLSH

    shingles = [[s.encode("utf-8") for s in python_shingles(
        dedup.normalize_text(t, strip_punctuation=config.strip_punctuation), config)]
        for t in texts]
    kwargs = {"hashfunc": hashfunc} if hashfunc else {}
    minhashes = MinHash.bulk(shingles, num_perm=config.num_perm, seed=config.seed, **kwargs)
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm, params=params)
    for i, m in enumerate(minhashes):
        if shingles[i]:
            lsh.insert(i, m)
    pairs = set()
    for i, m in enumerate(minhashes):
        if shingles[i]:
            pairs.update((min(i, j), max(i, j)) for j in lsh.query(m) if j != i)
    return pairs


def timed(fn, *args, repeat: int = 1, pick=statistics.median):
    """Return (result of the last run, pick(seconds of each run)); pick=max is conservative."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return result, pick(times)


def evaluate(pairs: set, truth: list, kinds: list, texts: list[str],
             config: dedup.MinHashConfig) -> dict:
    """Return precision (planted pair, or true Jaccard >= threshold) and recalls."""
    norm = {}

    def jaccard(i: int, j: int) -> float:
        for k in (i, j):
            if k not in norm:
                norm[k] = set(python_shingles(dedup.normalize_text(texts[k]), config))
        a, b = norm[i], norm[j]
        return len(a & b) / max(len(a | b), 1)

    planted = set(truth)
    correct = sum(1 for p in pairs if p in planted or jaccard(*p) >= config.threshold)
    above = [p for p in truth if jaccard(*p) >= config.threshold]
    by_kind = {k: np.mean([p in pairs for p, kk in zip(truth, kinds) if kk == k])
               for k in KINDS}
    return {"pairs": len(pairs), "precision": correct / max(len(pairs), 1),
            "recall": len(planted & pairs) / len(truth),
            "recall_above": sum(p in pairs for p in above) / max(len(above), 1),
            "n_above": len(above), "by_kind": by_kind}


def bench_near(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    """Print precision, recall and docs/s of ours and datasketch on planted near-duplicates."""
    import xxhash

    sample = frame.sample(args.sample, random_state=args.seed).reset_index(drop=True)
    corpus, truth, kinds = plant(sample, args.planted, args.seed)
    texts = dedup.field_texts(corpus, "conversation")
    config = dedup.MinHashConfig(threshold=args.threshold, ngram=args.ngram,
                                 shingle=args.shingle, num_perm=args.num_perm)
    bands, rows = config.lsh_params()
    ds_bands, ds_rows = dedup.optimal_lsh_params(config.threshold, config.num_perm)
    print(f"\n== near duplicates: {len(sample)} Alpaca rows + {len(truth)} planted copies "
          f"({', '.join(KINDS)}), field=conversation")
    print(f"   {config.shingle} {config.ngram}-grams, num_perm={config.num_perm}, "
          f"threshold={config.threshold}, seed {config.seed}; bands x rows: ours "
          f"{bands}x{rows} (recall-weighted, then verified), datasketch {ds_bands}x{ds_rows} "
          "(its own choice for this threshold)")
    ours(texts[:500], config)  # warm-up: imports, first allocations
    runs = [("workbench.dedup (rensa + numpy LSH, verified)",
             *timed(ours, texts, config, repeat=3, pick=max))]
    runs.append(("datasketch bulk + MinHashLSH (sha1_hash32)",
                 *timed(datasketch_pairs, texts, config)))
    runs.append(("datasketch bulk + MinHashLSH (xxh32)",
                 *timed(datasketch_pairs, texts, config, xxhash.xxh32_intdigest)))
    runs.append((f"datasketch (xxh32), our {bands}x{rows} bands",
                 *timed(datasketch_pairs, texts, config, xxhash.xxh32_intdigest,
                        (bands, rows))))
    print(f"   {'method':<48}{'seconds':>8}{'docs/s':>9}{'pairs':>7}{'precision':>10}"
          f"{'recall':>8}{'recall(J>=t)':>13}")
    results = []
    for name, pairs, seconds in runs:
        r = evaluate(pairs, truth, kinds, texts, config)
        results.append((name, seconds, r))
        print(f"   {name:<48}{seconds:>8.2f}{len(texts) / seconds:>9.0f}{r['pairs']:>7}"
              f"{r['precision']:>10.3f}{r['recall']:>8.3f}{r['recall_above']:>13.3f}")
    print(f"   planted pairs with true Jaccard >= {config.threshold}: "
          f"{results[0][2]['n_above']} of {len(truth)}")
    for name, _, r in results:
        print(f"   recall by kind  {name[:44]:<46}"
              + "  ".join(f"{k} {v:.2f}" for k, v in r["by_kind"].items()))
    fastest = min(s for _, s, _ in results[1:])
    print(f"   speed ratio, docs/s ours / fastest datasketch: {fastest / results[0][1]:.1f}x "
          f"(ours: slowest of 3 runs; datasketch: one run each)")


# --- end to end -----------------------------------------------------------------------------

def bench_end_to_end() -> pd.DataFrame:
    """Print the time of exact + near dedup of all of Alpaca, from the store back into the
    store (read the version, find duplicates, write the child version); return the frame."""
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "bench.duckdb")
        start = time.perf_counter()
        version, _ = store.import_file(ALPACA, "alpaca")
        imported = time.perf_counter() - start
        start = time.perf_counter()
        frame = store.frame(version.version_id)
        read = time.perf_counter() - start
        clusters = dedup.find_duplicates(frame, near=dedup.MinHashConfig())
        found = time.perf_counter() - start - read
        child = curate.apply_dedup(store, version.version_id, frame, clusters,
                                   curate.DedupOptions())
        total = time.perf_counter() - start
    print(f"\n== exact + near dedup of all Alpaca ({len(frame)} rows; import {imported:.1f} s, "
          "not counted)")
    print(f"   read version {read:.2f} s + find_duplicates {found:.2f} s + write version "
          f"{total - read - found:.2f} s = {total:.2f} s end to end ({len(frame) / total:.0f} "
          "rows/s)")
    print(f"   clusters {clusters['cluster_id'].nunique()}, new version v{child.version_id}: "
          f"{child.n_rows} rows, counts {child.counts}")
    start = time.perf_counter()
    curve = dedup.threshold_curve(frame, "near", [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    print(f"   threshold_curve(near) {time.perf_counter() - start:.2f} s:")
    print("   " + curve.to_string(index=False).replace("\n", "\n   "))
    return frame


# --- semantic -------------------------------------------------------------------------------

def load_mrpc(path: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Return (labels, first sentences, second sentences) of the MRPC TSV."""
    labels, first, second = [], [], []
    for line in path.read_text(encoding="utf-8-sig").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) == 5:
            labels.append(int(parts[0]))
            first.append(parts[3])
            second.append(parts[4])
    return np.array(labels), first, second


def prf(sims: np.ndarray, labels: np.ndarray, t: float, beta: float = 1.0) -> tuple:
    """Return (precision, recall, F-beta) of predicting sims >= t."""
    pred = sims >= t
    tp = int((pred & (labels == 1)).sum())
    p, r = tp / max(int(pred.sum()), 1), tp / max(int((labels == 1).sum()), 1)
    b2 = beta * beta
    return p, r, (1 + b2) * p * r / max(b2 * p + r, 1e-12)


def bench_semantic(seed: int) -> None:
    """Print MRPC threshold quality of the default embedder and the cosine search time."""
    try:
        from workbench.models import load_embedder
    except ImportError:
        print("\n== semantic: skipped (workbench.models.load_embedder is not there yet)")
        return
    if not MRPC.exists():
        print(f"\n== semantic: skipped ({MRPC} is absent)")
        return
    labels, first, second = load_mrpc(MRPC)
    model = load_embedder()
    start = time.perf_counter()
    vectors = model.encode(first + second, batch_size=64, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    took = time.perf_counter() - start
    sims = (vectors[:len(first)] * vectors[len(first):]).sum(axis=1)
    print(f"\n== semantic: MRPC train, {len(labels)} pairs ({labels.mean():.0%} paraphrases), "
          f"default embedder, {2 * len(labels) / took:.0f} sentences/s")
    _report_thresholds(sims, labels, seed)
    _time_cosine(vectors, seed)


def _report_thresholds(sims: np.ndarray, labels: np.ndarray, seed: int) -> None:
    # Pick on one half, report on the other, so the printed numbers are not tuned to them.
    grid = np.round(np.arange(0.50, 0.991, 0.01), 2)
    order = np.random.default_rng(seed).permutation(len(labels))
    pick, held = order[: len(order) // 2], order[len(order) // 2:]
    f1_best = max(grid, key=lambda t: prf(sims[pick], labels[pick], t)[2])
    precise = next((t for t in grid if prf(sims[pick], labels[pick], t)[0] >= 0.9), grid[-1])
    for rule, t in (("F1-best", f1_best), ("lowest with precision >= 0.9", precise)):
        p, r, f1 = prf(sims[held], labels[held], t)
        print(f"   {rule} threshold on one half: {t:.2f}; on the other half "
              f"P {p:.3f} R {r:.3f} F1 {f1:.3f}")
    print(f"   F1 of calling every pair a duplicate: {prf(sims, labels, -1.0)[2]:.3f}")
    for t in (0.8, 0.85, 0.9, dedup.DEFAULT_COSINE_THRESHOLD, 0.95):
        p, r, f1 = prf(sims, labels, t)
        mark = "  <- DEFAULT_COSINE_THRESHOLD" if t == dedup.DEFAULT_COSINE_THRESHOLD else ""
        print(f"   all pairs, threshold {t:.2f}: P {p:.3f} R {r:.3f} F1 {f1:.3f}{mark}")


def _time_cosine(vectors: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    random5k = rng.standard_normal((5000, vectors.shape[1])).astype(np.float32)
    for name, v in (("5k random vectors", random5k), (f"{len(vectors)} MRPC sentences",
                                                     vectors)):
        pairs, seconds = timed(dedup.cosine_pairs, v, dedup.DEFAULT_COSINE_THRESHOLD, repeat=3)
        print(f"   cosine_pairs over {name}: {seconds:.3f} s, {len(pairs)} pairs >= "
              f"{dedup.DEFAULT_COSINE_THRESHOLD}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=20000, help="real Alpaca rows")
    parser.add_argument("--planted", type=int, default=2000, help="planted near-duplicates")
    parser.add_argument("--threshold", type=float, default=dedup.MinHashConfig.threshold)
    parser.add_argument("--ngram", type=int, default=dedup.MinHashConfig.ngram)
    parser.add_argument("--shingle", default=dedup.MinHashConfig.shingle)
    parser.add_argument("--num-perm", type=int, default=dedup.MinHashConfig.num_perm)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip-semantic", action="store_true")
    args = parser.parse_args()
    if not ALPACA.exists():
        print(f"skipped: {ALPACA} is absent (the benchmark never copies it into the repo)")
        return
    frame = bench_end_to_end()
    bench_near(frame, args)
    if not args.skip_semantic:
        bench_semantic(args.seed)


if __name__ == "__main__":
    main()
