"""Error analysis over a scored predictions frame (see evaluate.py): failure tags, slices,
clusters, run comparisons, provenance, contamination, and targeted data for the next run.

Everything here is a pure function of DataFrames and vectors, except the two helpers at the
end that keep manual tags and notes in a run folder and add a targeted version to the store.
A predictions frame has one row per eval row with at least ``prediction`` and ``reference``;
metric columns (``similarity``, ``length_ratio``, ``repetition``, ``format_ok``) and
``hit_max`` sharpen the tags when present.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from .atomic import write_atomic
from .clean import refusal_match, truncation_reason
from .evaluate import (
    METRICS,
    as_checks,
    bootstrap_ci,
    format_checks,
    length_ratio,
    repetition,
    words,
)
from .exceptions import ConfigError, NotFoundError
from .schema import Example
from .select import kmeans

FAILURE_TAGS = ("empty", "refusal", "repetition_loop", "truncated", "too_long", "too_short",
                "off_format", "likely_wrong")
# How bad each tag is: an empty or refused answer is worse than one a bit too long.
SEVERITY: dict[str, float] = {"empty": 5, "refusal": 4, "repetition_loop": 3, "likely_wrong": 3,
                              "truncated": 2, "off_format": 2, "too_long": 1, "too_short": 1}
MANUAL_WEIGHT = 2.0  # a tag a person added counts like an automatic format failure
ANNOTATIONS_FILE = "annotations.json"
NO_TAG = "(none)"
# Model-made refusals that clean.refusal_match (written for training data) lets through.
_MODEL_REFUSAL = re.compile(
    r"\bas an? (?:ai|chatbot|language model|virtual assistant)\b"
    r"|\bI (?:do not|don't|don’t) have the (?:capability|ability|means|information) to\b"
    r"|\bI(?: am|'m|’m) (?:not able|unable|not equipped) to "
    r"(?:provide|help|assist|answer|access)\b",
    re.IGNORECASE)
_ENDS_CLEANLY = tuple(".!?…:;)]}\"'”’»*`") + ("—",)
# Frequent English words that never make a good cluster name.
STOPWORDS = frozenset("""a about above after again all also am an and any are as at be because
been before being below between both but by can could did do does doing down during each few
for from further had has have having he her here hers him his how i if in into is it its just
me more most my no nor not now of off on once only or other our out over own same she should
so some such than that the their them then there these they this those through to too under
until up very was we were what when where which while who whom why will with would you your
yours yes hi hello please thanks thank get got can't don't i'm it's let know want need""".split())


# ---------------------------------------------------------------- failure tags


@dataclass(frozen=True)
class FailureRules:
    """Thresholds for automatic failure tags (length ratios are prediction/reference words).

    Defaults measured on SmolLM2-135M answers to the sample eval set: looping answers repeat
    40-70% of their word 3-grams, fluent 160-token answers up to ~33%; on-topic answers in
    the wrong style have similarity 0.6-0.75 to the reference, off-topic ones 0.05-0.45.
    """

    too_long: float = 2.0
    too_short: float = 0.5
    likely_wrong: float = 0.5
    repetition: float = 0.4

    def __post_init__(self) -> None:
        for name in ("too_long", "too_short", "likely_wrong", "repetition"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.too_short >= self.too_long:
            raise ConfigError(f"too_short ({self.too_short}) must be below too_long "
                              f"({self.too_long})")
        if self.repetition > 1 or self.likely_wrong > 1:
            raise ConfigError("repetition and likely_wrong are fractions: keep them <= 1")


def failure_tags(frame: pd.DataFrame, *, style: Mapping[str, Any] | None = None,
                 rules: FailureRules | None = None) -> list[list[str]]:
    """Return the automatic failure tags of each row (FAILURE_TAGS order; [] when it passes).

    ``style`` (an evaluate.style_checks spec) decides off_format when given; otherwise the
    frame's ``format_ok`` column does, if it has one.
    """
    rules = rules or FailureRules()
    preds = frame["prediction"].fillna("").astype(str).tolist()
    refs = frame["reference"].fillna("").astype(str).tolist()
    columns = _tag_inputs(frame, preds, refs, style)
    return [_row_tags(p, r, *values, rules) for p, r, *values in zip(preds, refs, *columns)]


def _tag_inputs(frame: pd.DataFrame, preds: list[str], refs: list[str],
                style: Mapping[str, Any] | None) -> list[list[Any]]:
    n = len(preds)
    if style:
        fmt = format_checks(preds, as_checks(style=style))["format_ok"].tolist()
    else:
        fmt = _column(frame, "format_ok", n)
    ratio = _column(frame, "length_ratio", n)
    ratio = [length_ratio(p, r) if _missing(x) else x for p, r, x in zip(preds, refs, ratio)]
    rep = _column(frame, "repetition", n)
    rep = [repetition(p) if _missing(x) else x for p, x in zip(preds, rep)]
    return [_column(frame, "hit_max", n), fmt, ratio, rep, _column(frame, "similarity", n)]


def _column(frame: pd.DataFrame, name: str, n: int) -> list[Any]:
    return frame[name].tolist() if name in frame.columns else [None] * n


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _flag(value: Any) -> bool:
    return not _missing(value) and bool(value)


def _row_tags(pred: str, ref: str, hit_max: Any, fmt_ok: Any, ratio: float, rep: float,
              sim: Any, rules: FailureRules) -> list[str]:
    if not pred.strip():
        return ["empty"]  # nothing else can be said about an empty answer
    found = {
        "refusal": _refusal(pred),
        "repetition_loop": rep >= rules.repetition,
        "truncated": _truncated(pred, hit_max),
        "too_long": ratio > rules.too_long,
        # An answer cut by the token limit is "truncated"; whether it was too short is unknown.
        "too_short": ratio < rules.too_short and not _flag(hit_max),
        "off_format": not _missing(fmt_ok) and not bool(fmt_ok),
        "likely_wrong": not _missing(sim) and sim < rules.likely_wrong,
    }
    return [tag for tag in FAILURE_TAGS if found.get(tag)]


def _refusal(pred: str) -> bool:
    return refusal_match(pred) is not None or _MODEL_REFUSAL.search(pred[:500]) is not None


def _truncated(pred: str, hit_max: Any) -> bool:
    if _missing(hit_max):  # imported predictions: judge by the text alone
        return truncation_reason(pred) is not None
    # Stopped by the token limit, and not at a natural end of a sentence or a list.
    return _flag(hit_max) and not pred.rstrip().endswith(_ENDS_CLEANLY)


def severity(tags: Sequence[str], similarity: float | None = None) -> float:
    """Return how bad a row is: the sum of its tags' weights plus (1 - similarity) to break ties."""
    score = sum(SEVERITY.get(t, MANUAL_WEIGHT) for t in tags)
    if not _missing(similarity):
        score += 1.0 - min(1.0, max(0.0, float(similarity)))
    return float(score)


def failures_table(frame: pd.DataFrame, *, style: Mapping[str, Any] | None = None,
                   rules: FailureRules | None = None,
                   annotations: Mapping[int, Mapping[str, Any]] | None = None,
                   include_passing: bool = False) -> pd.DataFrame:
    """Return rows with auto_tags, manual_tags, tags, note and severity, worst first."""
    out = frame.reset_index(drop=True).copy()
    out["auto_tags"] = failure_tags(out, style=style, rules=rules)
    notes = annotations or {}
    keys = out["row_key"].tolist() if "row_key" in out.columns else list(range(len(out)))
    out["manual_tags"] = [list(notes.get(int(k), {}).get("tags", [])) for k in keys]
    out["note"] = [str(notes.get(int(k), {}).get("note", "")) for k in keys]
    out["tags"] = [list(dict.fromkeys([*a, *m])) for a, m in zip(out["auto_tags"],
                                                                 out["manual_tags"])]
    sims = _column(out, "similarity", len(out))
    out["severity"] = [severity(t, s) for t, s in zip(out["tags"], sims)]
    if not include_passing:
        out = out[[bool(t) for t in out["tags"]]]
    return out.sort_values("severity", ascending=False, kind="stable").reset_index(drop=True)


def with_tags(frame: pd.DataFrame, **options: Any) -> pd.DataFrame:
    """Return the frame with a ``tags`` column (failure_tags) unless it has one already."""
    if "tags" in frame.columns:
        return frame
    return frame.assign(tags=failure_tags(frame, **options))


def tag_rates(frame: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0, **options: Any
              ) -> pd.DataFrame:
    """Return per tag (and "any") the count, rate and its bootstrap interval over all rows."""
    tags = with_tags(frame, **options)["tags"].tolist()
    seen = [t for t in dict.fromkeys(t for row in tags for t in row) if t not in FAILURE_TAGS]
    rows = []
    for tag in [*FAILURE_TAGS, *seen, "any"]:
        hits = np.array([bool(row) if tag == "any" else tag in row for row in tags], float)
        ci = bootstrap_ci(hits, n_boot, seed)
        rows.append({"tag": tag, "count": int(hits.sum()), "rate": ci.mean, "lo": ci.lo,
                     "hi": ci.hi, "n": ci.n})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- slicing


def length_buckets(lengths: Sequence[float], bins: int = 3) -> list[str]:
    """Return a label per value for quantile buckets, e.g. "words 12-40" (equal-count bins)."""
    values = np.asarray(lengths, float)
    if not len(values):
        return []
    edges = np.unique(np.quantile(values, np.linspace(0, 1, max(1, bins) + 1)))
    if len(edges) == 1:
        return [f"words {int(edges[0])}"] * len(values)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    labels = [f"words {int(edges[i])}-{int(edges[i + 1])}" for i in range(len(edges) - 1)]
    return [labels[i] for i in index]


def slice_labels(frame: pd.DataFrame, by: str, *, bins: int = 3) -> pd.Series:
    """Return each row's slice: by "tag" (a list per row), "length", "cluster", a column or a
    metadata key ("metadata.key" or a bare key found in the metadata)."""
    if by == "tag":
        tags = with_tags(frame)["tags"]
        return pd.Series([list(t) or [NO_TAG] for t in tags], index=frame.index)
    if by == "length":
        source = frame["reference"] if "reference" in frame.columns else frame["prompt"]
        return pd.Series(length_buckets([len(words(str(t))) for t in source], bins),
                         index=frame.index)
    if by in frame.columns:
        return frame[by].map(lambda v: NO_TAG if _missing(v) else str(v))
    key = by.removeprefix("metadata.")
    if "metadata" in frame.columns:
        metadata = [_as_dict(m) for m in frame["metadata"]]
        if any(key in m for m in metadata):
            return pd.Series([str(m.get(key, NO_TAG)) for m in metadata], index=frame.index)
    raise ConfigError(f"cannot slice by {by!r}: use tag, length, cluster, a column "
                      f"({', '.join(map(str, frame.columns))}) or a metadata key")


def _as_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    if isinstance(value, (str, bytes)) and value:
        parsed = orjson.loads(value)
        return parsed if isinstance(parsed, dict) else {}
    return {}


def slice_metric(frame: pd.DataFrame, metric: str, by: str, *, bins: int = 3,
                 n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Return per slice the row count and the metric's mean with a bootstrap interval."""
    if metric not in frame.columns:
        raise ConfigError(f"no metric column {metric!r}; have {', '.join(map(str, frame.columns))}")
    exploded = _exploded(frame, by, bins)
    rows = []
    for label, part in exploded.groupby("_slice", sort=True):
        ci = bootstrap_ci(pd.to_numeric(part[metric], errors="coerce"), n_boot, seed)
        rows.append({"slice": label, "n": len(part), "mean": ci.mean, "lo": ci.lo, "hi": ci.hi})
    return pd.DataFrame(rows, columns=["slice", "n", "mean", "lo", "hi"])


def _exploded(frame: pd.DataFrame, by: str, bins: int) -> pd.DataFrame:
    # A row with two tags counts in both tag slices.
    labels = slice_labels(frame, by, bins=bins)
    return frame.assign(_slice=labels).explode("_slice")


# ---------------------------------------------------------------- clustering


@dataclass
class Clusters:
    """Cluster labels per row (aligned with the input) and one row per cluster with its name."""

    labels: np.ndarray
    table: pd.DataFrame


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


SHARED_TERM_SHARE = 0.5  # a term in more rows than this share names no cluster


def characteristic_terms(texts: Sequence[str], labels: Sequence[int], *, n_terms: int = 3
                         ) -> dict[int, list[str]]:
    """Return each cluster's top terms by class-based TF-IDF (frequent here, rare elsewhere).

    Terms in more than half of all rows are left out: text most rows share, such as a system
    prompt, says nothing about what sets a cluster apart."""
    tokens = [{w for w in words(text) if len(w) > 2 and not w.isdigit() and w not in STOPWORDS}
              for text in texts]
    rows_with = Counter(w for row in tokens for w in row)
    shared = {w for w, n in rows_with.items() if n > SHARED_TERM_SHARE * len(tokens)} \
        if len(tokens) >= 4 else set()
    counts: dict[int, Counter] = {}
    for text, label in zip(texts, labels):
        counts.setdefault(int(label), Counter()).update(
            w for w in words(text) if len(w) > 2 and not w.isdigit() and w not in STOPWORDS
            and w not in shared)
    totals = Counter()
    for c in counts.values():
        totals.update(c)
    average = sum(totals.values()) / max(1, len(counts))
    out = {}
    for label, c in counts.items():
        size = max(1, sum(c.values()))
        scores = {t: (n / size) * math.log(1 + average / totals[t]) for t, n in c.items()}
        out[label] = [t for t, _ in sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
                      [:n_terms]]
    return out


def cluster_failures(frame: pd.DataFrame, vectors: np.ndarray, k: int | None = None, *,
                     text_column: str = "prompt", seed: int = 0, n_terms: int = 3) -> Clusters:
    """Return k-means clusters of the rows' vectors, each named by its characteristic terms.

    k defaults to about sqrt(n/2), between 2 and 10.
    """
    vectors = np.asarray(vectors, np.float32)
    if len(vectors) != len(frame):
        raise ConfigError(f"{len(vectors)} vectors for {len(frame)} rows")
    if not len(frame):
        return Clusters(np.zeros(0, int), pd.DataFrame(columns=["cluster", "size", "name",
                                                                "terms", "rows"]))
    k = k if k is not None else min(10, max(2, round(math.sqrt(len(frame) / 2))))
    labels = kmeans(vectors, k, seed=seed, spherical=True)  # clusters of directions
    terms = characteristic_terms(frame[text_column].astype(str).tolist(), labels,
                                 n_terms=n_terms)
    rows = [{"cluster": int(c), "size": int((labels == c).sum()),
             "name": ", ".join(terms.get(int(c), [])) or f"cluster {c}",
             "terms": terms.get(int(c), []), "rows": np.flatnonzero(labels == c).tolist()}
            for c in np.unique(labels)]
    table = pd.DataFrame(rows).sort_values("size", ascending=False, kind="stable")
    return Clusters(labels, table.reset_index(drop=True))


# ---------------------------------------------------------------- comparing two runs


@dataclass
class Comparison:
    """Run b against run a on the same eval rows: per-row outcomes, regressions, slice deltas."""

    metric: str
    rows: pd.DataFrame
    counts: dict[str, int]
    delta: dict[str, float]
    regressions: pd.DataFrame
    slices: dict[str, pd.DataFrame] = field(default_factory=dict)


def oriented(metric: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return metric values turned so that higher is better (length_ratio: -|x - 1|)."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), float)
    direction = METRICS.get(metric, True)
    if direction is None:
        return -np.abs(x - 1.0)
    return x if direction else -x


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, metric: str, *, margin: float = 0.0,
                 regression_margin: float = 0.1, by: Sequence[str] = (), n_boot: int = 1000,
                 seed: int = 0) -> Comparison:
    """Return b versus a on one metric: win/loss/tie per row (beyond margin), regressions (b
    worse by more than regression_margin) and per-slice deltas with paired bootstrap intervals.

    Rows are matched by ``id`` (and occurrence, for repeated ids); slices come from run a.
    """
    for name, frame in (("a", a), ("b", b)):
        if metric not in frame.columns:
            raise ConfigError(f"run {name} has no metric column {metric!r}")
    joined = _paired(with_tags(a) if "tag" in by else a, b, metric)
    delta = joined["better_b"] - joined["better_a"]
    joined["delta"] = delta
    joined["outcome"] = np.where(delta > margin, "win", np.where(delta < -margin, "loss", "tie"))
    counts = {o: int((joined["outcome"] == o).sum()) for o in ("win", "loss", "tie")}
    regressions = joined[delta < -regression_margin].sort_values("delta", kind="stable")
    ci = bootstrap_ci(delta, n_boot, seed)
    slices = {s: _slice_deltas(joined, s, n_boot, seed) for s in by}
    return Comparison(metric, joined, counts, ci._asdict(), regressions.reset_index(drop=True),
                      slices)


def pair_rows(a: pd.DataFrame, b: pd.DataFrame, columns: Sequence[str] = ()) -> pd.DataFrame:
    """Return run a's rows joined with run b's on id (and occurrence, for repeated ids); b's
    texts, keys and ``columns`` come with a "_b" suffix."""
    left, right = _keyed(a), _keyed(b)
    keep = [c for c in ("row_key", "id", "prompt", "reference", "prediction", "metadata",
                        "tags", "cluster", *columns) if c in right.columns]
    b_part = right[["_key", *keep]].rename(columns={c: f"{c}_b" for c in keep})
    joined = left.merge(b_part, on="_key", how="inner", validate="one_to_one")
    if not len(joined):
        raise ConfigError("the two runs share no eval rows: compare runs on the same eval set")
    return joined


def _paired(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    joined = pair_rows(a, b, (metric,)).rename(columns={metric: f"{metric}_a"})
    joined["better_a"] = oriented(metric, joined[f"{metric}_a"])
    joined["better_b"] = oriented(metric, joined[f"{metric}_b"])
    return joined.dropna(subset=["better_a", "better_b"]).reset_index(drop=True)


def _keyed(frame: pd.DataFrame) -> pd.DataFrame:
    if "id" in frame.columns:
        base = frame["id"].astype(str)
    else:
        base = frame["prompt"].astype(str) + "\x00" + frame["reference"].astype(str)
    occurrence = base.groupby(base).cumcount().astype(str)
    return frame.assign(_key=base + "#" + occurrence)


def _slice_deltas(joined: pd.DataFrame, by: str, n_boot: int, seed: int) -> pd.DataFrame:
    rows = []
    for label, part in _exploded(joined, by, 3).groupby("_slice", sort=True):
        a_ci = bootstrap_ci(part["better_a"], n_boot, seed)
        b_ci = bootstrap_ci(part["better_b"], n_boot, seed)
        d = bootstrap_ci(part["delta"], n_boot, seed)
        rows.append({"slice": label, "n": len(part), "mean_a": a_ci.mean, "lo_a": a_ci.lo,
                     "hi_a": a_ci.hi, "mean_b": b_ci.mean, "lo_b": b_ci.lo, "hi_b": b_ci.hi,
                     "delta": d.mean, "delta_lo": d.lo, "delta_hi": d.hi,
                     # Worse for sure: the whole paired interval of the change is below zero.
                     "regressed": bool(d.hi < 0)})
    return pd.DataFrame(rows)


def tag_rate_change(a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                    **options: Any) -> pd.DataFrame:
    """Return per failure tag the rate (with interval) in run a and in run b, and the change."""
    ra = tag_rates(a, n_boot=n_boot, seed=seed, **options).set_index("tag")
    rb = tag_rates(b, n_boot=n_boot, seed=seed, **options).set_index("tag")
    out = ra[["rate", "lo", "hi"]].add_suffix("_a").join(rb[["rate", "lo", "hi"]].add_suffix("_b"),
                                                          how="outer")
    out["change"] = out["rate_b"] - out["rate_a"]
    return out.reset_index()


def before_after(a: pd.DataFrame, b: pd.DataFrame, *, metric: str = "similarity",
                 by: Sequence[str] = ("length",), n_boot: int = 1000, seed: int = 0,
                 **options: Any) -> dict[str, Any]:
    """Return a JSON-ready before (a) / after (b) report: failure tag rates, the metric per
    slice (by failure tag of run a and each ``by``), win/loss/tie and regressed slices."""
    a, b = with_tags(a, **options), with_tags(b, **options)
    result = compare_runs(a, b, metric, by=["tag", *by], n_boot=n_boot, seed=seed)
    slices = {name: table.to_dict("records") for name, table in result.slices.items()}
    regressed = [f"{name}={row['slice']}" for name, rows in slices.items() for row in rows
                 if row["regressed"]]
    return {"metric": metric, "counts": result.counts, "delta": result.delta,
            "tags": tag_rate_change(a, b, n_boot=n_boot, seed=seed).to_dict("records"),
            "slices": slices, "regressed_slices": regressed}


# ---------------------------------------------------------------- length-aware comparison

# Reference-relative length buckets (answer words / reference words): 0.8-1.25x is "as long".
LENGTH_EDGES = (0.5, 0.8, 1.25, 2.0)
# Mean length ratios this many times apart (or one run this far from 1) earn a warning: token
# F1 of a correct prefix of a third of the reference is 0.5, so ranks then follow length.
MARKED_LENGTH = 1.5
OVERLAP_NOTE = ("Reference-overlap metrics (exact match, token F1, ROUGE-L, embedding "
                "similarity) reward answers as long as the reference")


def length_buckets_ratio(ratios: Sequence[float] | np.ndarray, *, prefix: str = "",
                         suffix: str = "×") -> list[str]:
    """Return each ratio's bucket label on LENGTH_EDGES, e.g. "0.8–1.25×" or "≥2×"."""
    labels = _ratio_labels(prefix, suffix)
    index = np.searchsorted(LENGTH_EDGES, np.asarray(ratios, float), side="right")
    return [labels[i] for i in index]


def _ratio_labels(prefix: str = "", suffix: str = "×") -> list[str]:
    edges = [f"{e:g}" for e in LENGTH_EDGES]
    middle = [f"{prefix}{lo}–{hi}{suffix}" for lo, hi in zip(edges, edges[1:])]
    return [f"{prefix}<{edges[0]}{suffix}", *middle, f"{prefix}≥{edges[-1]}{suffix}"]


def mean_length_ratio(frame: pd.DataFrame) -> float:
    """Return the mean of answer words / reference words over the rows (NaN: no rows)."""
    ratios = _length_ratios(frame)
    return float(ratios.mean()) if len(ratios) else math.nan


def _length_ratios(frame: pd.DataFrame) -> np.ndarray:
    if "length_ratio" in frame.columns:
        return pd.to_numeric(frame["length_ratio"], errors="coerce").to_numpy(float)
    return np.array([length_ratio(str(p), str(r))
                     for p, r in zip(frame["prediction"], frame["reference"])], float)


def run_length_warning(ratio: float, *, factor: float = MARKED_LENGTH) -> str:
    """Return a warning when a run's mean length ratio is factor or more away from 1 ("" if
    not)."""
    if _missing(ratio) or 1 / factor < ratio < factor:
        return ""
    why = ("a short answer scores low even when it is right (recall falls with length)"
           if ratio < 1 else "a long answer scores low even when it holds the reference "
                             "(precision falls with length)")
    return (f"Answers are {ratio:.2f}× the reference length on average. {OVERLAP_NOTE}: "
            f"{why}. Before ranking this run, compare it with another within length buckets "
            "(Compare tab).")


def length_warning(ratio_a: float, ratio_b: float, *, factor: float = MARKED_LENGTH) -> str:
    """Return a warning when two runs' mean length ratios are factor or more times apart ("" if
    not), naming the run the overlap metrics favour."""
    if _missing(ratio_a) or _missing(ratio_b):
        return ""
    if max(ratio_a, ratio_b) < factor * max(min(ratio_a, ratio_b), 1e-9):
        return ""
    # Overlap metrics peak at the reference's length: the run nearer to it is favoured.
    favoured = "A" if abs(math.log(max(ratio_a, 1e-9))) <= abs(math.log(max(ratio_b, 1e-9))) \
        else "B"
    longer = "A" if ratio_a > ratio_b else "B"
    which = "the longer" if favoured == longer else "the shorter"
    return (f"Run A's answers are {ratio_a:.2f}× the reference length on average, run B's "
            f"{ratio_b:.2f}×. {OVERLAP_NOTE}, so here they favour run {favoured} ({which} "
            "one) whatever the quality: read the win rate within length buckets and the "
            "length-controlled win rate below.")


def metrics_by_length(frame: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Return per reference-relative length bucket (LENGTH_EDGES) the row count and each
    metric's mean, shortest bucket first; empty buckets are left out."""
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        raise ConfigError(f"no metric column(s) {', '.join(missing)}; have "
                          f"{', '.join(map(str, frame.columns))}")
    order = _ratio_labels()
    buckets = pd.Categorical(length_buckets_ratio(_length_ratios(frame)), categories=order,
                             ordered=True)
    values = frame[list(metrics)].apply(pd.to_numeric, errors="coerce")
    grouped = values.groupby(buckets, observed=True)
    table = grouped.mean()
    table.insert(0, "n", grouped.size())
    return table.rename_axis("length").reset_index().assign(length=lambda t: t["length"]
                                                            .astype(str))


@dataclass
class LengthControl:
    """Run b against run a with answer length held fixed (see length_control)."""

    metric: str
    ratio_a: float
    ratio_b: float
    warning: str
    by_length: pd.DataFrame  # the metric per reference-relative length bucket, run a and b
    by_pair: pd.DataFrame  # b's win rate per bucket of b's length / a's length
    win_rate: dict[str, float]  # b's raw win rate (ties count half), mean/lo/hi/n
    lc_win_rate: dict[str, float]  # b's win rate predicted at equal length, mean/lo/hi
    length_effect: float  # log-odds of a b win per std of log(b words / a words), tanh scaled
    similar: int  # pairs whose answers are within 0.8-1.25x of each other
    note: str  # why the controlled rate is shaky, or ""


def length_control(comparison: Comparison, *, factor: float = MARKED_LENGTH,
                   n_boot: int = 200, seed: int = 0) -> LengthControl:
    """Return the length-aware view of a comparison: the length warning, the metric per length
    bucket for each run, b's win rate per relative-length bucket, and a length-controlled win
    rate in the manner of AlpacaEval 2's: a logistic regression of "b wins" (ties half) on
    tanh(z / sd(z)), z = log((b words + 1) / (a words + 1)), read at z = 0 (equal length),
    with a bootstrap interval of n_boot refits.
    """
    rows, metric = comparison.rows, comparison.metric
    a = pd.DataFrame({"prediction": rows["prediction"], "reference": rows["reference"],
                      metric: rows[f"{metric}_a"]})
    b = a.assign(prediction=rows["prediction_b"], **{metric: rows[f"{metric}_b"]})
    ratio_a, ratio_b = mean_length_ratio(a), mean_length_ratio(b)
    z = np.log((_word_counts(b["prediction"]) + 1) / (_word_counts(a["prediction"]) + 1))
    won = rows["outcome"].map({"win": 1.0, "tie": 0.5, "loss": 0.0}).to_numpy(float)
    by_length = metrics_by_length(a, [metric]).merge(
        metrics_by_length(b, [metric]), on="length", how="outer", suffixes=("_a", "_b"))
    by_length = _in_bucket_order(by_length.rename(columns={metric + "_a": "mean_a",
                                                           metric + "_b": "mean_b"}), "length")
    by_length[["n_a", "n_b"]] = by_length[["n_a", "n_b"]].fillna(0).astype(int)
    lc, slope = _length_controlled(z, won, n_boot, seed)
    similar = int((np.abs(z) <= math.log(LENGTH_EDGES[2])).sum())
    return LengthControl(metric, ratio_a, ratio_b, length_warning(ratio_a, ratio_b,
                                                                  factor=factor),
                         by_length, _pair_buckets(z, won, rows["delta"].to_numpy(float)),
                         bootstrap_ci(won, 1000, seed)._asdict(), lc, slope, similar,
                         _control_note(z, similar))


def _word_counts(texts: pd.Series) -> np.ndarray:
    return np.array([len(words(str(t))) for t in texts], float)


def _in_bucket_order(table: pd.DataFrame, column: str) -> pd.DataFrame:
    rank = {label: i for i, label in enumerate(_ratio_labels())}
    order = table[column].map(rank).fillna(len(rank))
    return table.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)


def _pair_buckets(z: np.ndarray, won: np.ndarray, delta: np.ndarray) -> pd.DataFrame:
    labels = length_buckets_ratio(np.exp(z), prefix="B ", suffix="× A")
    frame = pd.DataFrame({"b_vs_a": labels, "won": won, "delta": delta})
    rows = []
    for label in _ratio_labels("B ", "× A"):
        part = frame[frame["b_vs_a"] == label]
        if len(part):
            rows.append({"b_vs_a": label, "n": len(part), "win": int((part["won"] == 1).sum()),
                         "loss": int((part["won"] == 0).sum()),
                         "tie": int((part["won"] == 0.5).sum()),
                         "win_rate": float(part["won"].mean()), "delta": float(part["delta"]
                                                                               .mean())})
    return pd.DataFrame(rows, columns=["b_vs_a", "n", "win", "loss", "tie", "win_rate",
                                       "delta"])


def _control_note(z: np.ndarray, similar: int) -> str:
    if not len(z):
        return "no paired rows"
    if similar < max(5, 0.05 * len(z)):
        return (f"only {similar} of {len(z)} pairs have answers of similar length (within "
                f"{LENGTH_EDGES[1]:g}–{LENGTH_EDGES[2]:g}×): the length-controlled rate "
                "extrapolates the regression to equal length, so read it as a rough guide")
    return ""


def _length_controlled(z: np.ndarray, won: np.ndarray, n_boot: int, seed: int
                       ) -> tuple[dict[str, float], float]:
    if not len(z):
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan}, math.nan
    spread = float(z.std())
    x = np.tanh(z / spread) if spread > 1e-9 else np.zeros_like(z)
    beta = logistic_fit(x, won, np.ones((1, len(z))))[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(z))  # bounds the (resamples x rows) weight matrix
    parts = [logistic_fit(x, won, rng.multinomial(len(z), np.full(len(z), 1 / len(z)),
                                                  size=min(chunk, n_boot - s)))
             for s in range(0, n_boot, chunk)]
    lo, hi = np.quantile(_sigmoid(np.concatenate(parts)[:, 0]), [0.025, 0.975])
    return {"mean": float(_sigmoid(beta[0])), "lo": float(lo), "hi": float(hi)}, \
        float(beta[1])


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def logistic_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, ridge: float = 0.01,
                 iterations: int = 50) -> np.ndarray:
    """Return (intercept, slope) per row of weights (resamples x rows) of a logistic regression
    of y in [0, 1] (soft labels allowed) on x, by Newton's method.

    The slope carries an L2 penalty ``ridge`` (a weak prior: it keeps the fit finite when
    length separates wins from losses); the intercept a negligible one, for the same reason.
    """
    design = np.stack([np.ones_like(x), x], axis=1)  # rows x 2
    penalty = np.diag([1e-6, ridge])
    beta = np.zeros((len(weights), 2))
    for _ in range(iterations):
        p = _sigmoid(beta @ design.T)  # resamples x rows
        grad = (weights * (y - p)) @ design - beta @ penalty
        hess = np.einsum("bn,ni,nj->bij", weights * p * (1 - p), design, design) + penalty
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        beta += np.clip(step, -5, 5)  # damped: a first step from a flat start can overshoot
        if np.abs(step).max() < 1e-8:
            break
    return beta


# ---------------------------------------------------------------- provenance and contamination


def training_version(eval_run: str | Path) -> int | None:
    """Return the dataset version the evaluated model was trained on (None: a base model)."""
    from .evaluate import read_summary
    from .train import DATA_DIR

    model = read_summary(eval_run).get("model")
    if not isinstance(model, Mapping) or "run_dir" not in model:
        return None
    path = Path(model["run_dir"]) / DATA_DIR / "versions.json"
    return int(orjson.loads(path.read_bytes())["version_id"]) if path.is_file() else None


def nearest_training_rows(query_vectors: np.ndarray, train_vectors: np.ndarray, k: int = 5, *,
                          block_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, cosine scores), each (queries, k), of the nearest training rows, best
    first."""
    q = _unit(np.asarray(query_vectors, np.float32))
    t = _unit(np.asarray(train_vectors, np.float32))
    if q.ndim != 2 or t.ndim != 2 or (len(q) and len(t) and q.shape[1] != t.shape[1]):
        raise ConfigError(f"vector shapes do not match: {q.shape} and {t.shape}")
    k = max(0, min(int(k), len(t)))
    index = np.zeros((len(q), k), np.int64)
    scores = np.zeros((len(q), k), np.float32)
    for start in range(0, len(q), block_size):
        sims = q[start:start + block_size] @ t.T  # a block at a time bounds the memory
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k else np.zeros((len(sims), 0), int)
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        index[start:start + block_size] = np.take_along_axis(top, order, axis=1)
        scores[start:start + block_size] = np.take_along_axis(top_scores, order, axis=1)
    return index, scores


def provenance(failures: pd.DataFrame, train_frame: pd.DataFrame, query_vectors: np.ndarray,
               train_vectors: np.ndarray, k: int = 3) -> pd.DataFrame:
    """Return for each failure its k nearest training rows: eval row, rank, score, train row."""
    index, scores = nearest_training_rows(query_vectors, train_vectors, k)
    keys = failures["row_key"].tolist() if "row_key" in failures.columns else \
        list(range(len(failures)))
    rows = []
    for key, idx, sc in zip(keys, index, scores):
        for rank, (i, s) in enumerate(zip(idx, sc), start=1):
            train = train_frame.iloc[int(i)]
            rows.append({"eval_row": key, "rank": rank, "score": float(s),
                         "train_row_key": train.get("row_key"), "train_prompt": train["prompt"],
                         "train_response": train["response"]})
    return pd.DataFrame(rows)


def contamination(eval_prompts: Sequence[str], train_texts: Sequence[str], n: int = 8, *,
                  threshold: float = 0.5) -> pd.DataFrame:
    """Return per eval prompt the fraction of its word n-grams found in the training texts,
    the training text sharing most of them (-1: none) and contaminated (overlap >= threshold).

    A prompt shorter than n words is matched by all its words in a row.
    """
    if n < 1 or not 0 < threshold <= 1:
        raise ConfigError(f"need n >= 1 and 0 < threshold <= 1, got n={n}, threshold={threshold}")
    prompts = [words(p) for p in eval_prompts]
    train = [words(t) for t in train_texts]
    sizes = sorted({min(n, len(p)) for p in prompts if p})
    indexes = {size: _gram_index(train, size) for size in sizes}
    rows = [_overlap(p, indexes.get(min(n, len(p)), {}), min(n, len(p)), threshold)
            for p in prompts]
    return pd.DataFrame(rows, columns=["overlap", "train_index", "contaminated"])


def _gram_index(texts: list[list[str]], n: int) -> dict[tuple[str, ...], int]:
    index: dict[tuple[str, ...], int] = {}
    for row, tokens in enumerate(texts):
        for gram in zip(*(tokens[i:] for i in range(n))):
            index.setdefault(gram, row)
    return index


def _overlap(tokens: list[str], index: dict, n: int, threshold: float) -> tuple[float, int, bool]:
    grams = list(zip(*(tokens[i:] for i in range(n)))) if n else []
    if not grams:
        return 0.0, -1, False
    found = [index[g] for g in grams if g in index]
    share = len(found) / len(grams)
    best = Counter(found).most_common(1)[0][0] if found else -1
    return share, best, share >= threshold


# ---------------------------------------------------------------- targeted data


def targeted_examples(failures: pd.DataFrame, *, eval_run: str,
                      corrected_answers: Mapping[int, str] | None = None,
                      pool_frame: pd.DataFrame | None = None,
                      pool_vectors: np.ndarray | None = None,
                      failure_vectors: np.ndarray | None = None, k: int = 3,
                      min_similarity: float = 0.0, exclude_ids: Sequence[str] = ()
                      ) -> list[Example]:
    """Return new training Examples for failures: their prompts with corrected answers, and
    the k pool rows nearest each failure; metadata["_targeted"] records the eval run and rows.

    Corrected answers are keyed by the failure's row_key. Training on an eval prompt makes
    that eval row contaminated: evaluate the next run on rows that were not corrected.
    """
    out = _corrected(failures, corrected_answers or {}, eval_run)
    if pool_frame is not None:
        if pool_vectors is None or failure_vectors is None:
            raise ConfigError("pulling pool rows needs pool_vectors and failure_vectors")
        taken = set(exclude_ids) | {e.id for e in out}
        out += _pulled(failures, pool_frame, pool_vectors, failure_vectors, k, min_similarity,
                       eval_run, taken)
    return out


def _corrected(failures: pd.DataFrame, answers: Mapping[int, str], eval_run: str
               ) -> list[Example]:
    by_key = failures.set_index("row_key", drop=False) if answers else None
    examples = []
    for key, answer in answers.items():
        if by_key is None or key not in by_key.index:
            raise NotFoundError(f"row {key} is not among the selected failures")
        if not isinstance(answer, str) or not answer.strip():
            raise ConfigError(f"row {key}: the corrected answer is empty")
        row = by_key.loc[key]
        messages = [*_messages(row), {"role": "assistant", "content": answer.strip()}]
        meta = {**_user_metadata(row.get("metadata")),
                "_targeted": {"eval_run": eval_run, "eval_rows": [int(key)], "kind": "corrected"}}
        examples.append(Example(tuple(messages), meta))
    return examples


def _messages(row: pd.Series) -> list[dict[str, str]]:
    value = row.get("prompt_messages")
    if isinstance(value, str):
        value = orjson.loads(value)
    if value is None or not len(value):
        return [{"role": "user", "content": str(row["prompt"])}]
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _user_metadata(value: Any) -> dict:
    return {k: v for k, v in _as_dict(value).items() if not k.startswith("_")}


def _pulled(failures: pd.DataFrame, pool: pd.DataFrame, pool_vectors: np.ndarray,
            failure_vectors: np.ndarray, k: int, min_similarity: float, eval_run: str,
            taken: set[str]) -> list[Example]:
    blocked = {i for i, row_id in enumerate(pool["id"]) if row_id in taken}
    # Ask for enough neighbours that k remain after skipping rows the training set has.
    index, scores = nearest_training_rows(failure_vectors, pool_vectors, k + len(blocked))
    keys = failures["row_key"].tolist() if "row_key" in failures.columns else \
        list(range(len(failures)))
    picked: dict[int, dict] = {}  # pool position -> provenance, in first-seen order
    for key, idx, sc in zip(keys, index, scores):
        eligible = [(i, s) for i, s in zip(idx.tolist(), sc.tolist())
                    if i not in blocked and s >= min_similarity][:k]
        for i, s in eligible:
            entry = picked.setdefault(i, {"eval_rows": [], "similarity": float(s)})
            entry["eval_rows"].append(int(key))
            entry["similarity"] = max(entry["similarity"], float(s))
    return [_pool_example(pool.iloc[i], entry, eval_run) for i, entry in picked.items()]


def _pool_example(row: pd.Series, entry: dict, eval_run: str) -> Example:
    meta = {**_user_metadata(row.get("metadata")),
            "_targeted": {"eval_run": eval_run, "kind": "pool",
                          "pool_row": int(row["row_key"]) if "row_key" in row else None,
                          "eval_rows": entry["eval_rows"],
                          "similarity": round(entry["similarity"], 4)}}
    messages = tuple({"role": m["role"], "content": m["content"]} for m in row["messages"])
    return Example(messages, meta)


# ---------------------------------------------------------------- manual tags and notes


def read_annotations(run_dir: str | Path) -> dict[int, dict[str, Any]]:
    """Return a run's manual tags and notes: {row_key: {"tags": [...], "note": str}}."""
    path = Path(run_dir) / ANNOTATIONS_FILE
    if not path.is_file():
        return {}
    return {int(k): v for k, v in orjson.loads(path.read_bytes()).items()}


def annotate(run_dir: str | Path, row_key: int, *, tags: Sequence[str] | None = None,
             note: str | None = None) -> dict[str, Any]:
    """Set a row's manual tags and/or note in the run folder; return the row's annotation."""
    if tags is not None and any(not isinstance(t, str) or not t.strip() for t in tags):
        raise ConfigError("manual tags must be non-empty strings")
    notes = read_annotations(run_dir)
    entry = notes.setdefault(int(row_key), {"tags": [], "note": ""})
    if tags is not None:
        entry["tags"] = list(dict.fromkeys(t.strip() for t in tags))
    if note is not None:
        entry["note"] = note
    path = Path(run_dir) / ANNOTATIONS_FILE
    write_atomic(path, orjson.dumps({str(k): v for k, v in notes.items()},
                                    option=orjson.OPT_INDENT_2))
    return entry
