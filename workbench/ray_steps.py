"""The row-local steps as batch functions for ``engine.map_rows``, and their results put back
together into exactly what the local path returns.

A batch function gets a slice of the step frame and returns one row per input row (what the
step decided about that row, as plain columns), so Ray can run it on any slice; the ``*_result``
functions turn the rows, back in input order, into the local result: the same ``CleanRun``
(preview and StepResult), the same score columns, the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd

from . import clean
from . import score as S
from .dedup import field_texts
from .schema import StepResult

# --- cleaning -------------------------------------------------------------------------------


def clean_batch(batch: pd.DataFrame, *, rules: Sequence[clean.Rule], samples: int
                ) -> pd.DataFrame:
    """Return, per row, what the rules did to it: rules hit, drop, changes, flags, samples."""
    done = clean.run(batch, list(rules), samples=samples)
    keys = batch["row_key"].tolist()
    at = {k: i for i, k in enumerate(keys)}
    rows: list[dict[str, Any]] = [{"hits": [], "samples": [], "drop": None, "changes": [],
                                   "flags": [], "messages": None} for _ in keys]
    for number, report in enumerate(done.preview.rules):
        for key in report.row_keys:
            rows[at[key]]["hits"].append(number)
        for sample in report.samples:
            rows[at[sample["row_key"]]]["samples"].append([number, sample])
    result = done.result
    for key, reason, detail in result.dropped[["row_key", "reason", "detail"]].itertuples(
            index=False):
        rows[at[key]]["drop"] = [reason, detail]
    for name, frame in (("changes", result.changed), ("flags", result.flagged)):
        for key, reason, detail in frame.itertuples(index=False):
            rows[at[key]][name].append([reason, detail])
    changed = set(result.changed["row_key"])
    for key, messages in zip(result.kept["row_key"], result.kept["messages"]):
        if key in changed:
            rows[at[key]]["messages"] = messages
    return pd.DataFrame({"outcome": [orjson.dumps(r).decode() for r in rows]})


def clean_changes_batch(batch: pd.DataFrame, *, rules: Sequence[clean.Rule], samples: int
                        ) -> pd.DataFrame:
    """Return clean_batch's outcome only for the rows some rule hit, dropped, changed or
    flagged (None for the others, which the engine then leaves in the worker); a changed
    row's outcome also carries its metadata, tags and note, for the store's new record."""
    outcomes = clean_batch(batch, rules=rules, samples=samples)["outcome"].tolist()
    out: list[str | None] = []
    for i, text in enumerate(outcomes):
        row = orjson.loads(text)
        if row["messages"] is not None:
            row.update(metadata=batch["metadata"].iloc[i], tags=list(batch["tags"].iloc[i]),
                       note=batch["note"].iloc[i])
        touched = row["hits"] or row["drop"] or row["changes"] or row["flags"]
        out.append(orjson.dumps(row).decode() if touched or row["samples"] else None)
    return pd.DataFrame({"outcome": pd.Series(out, dtype=object)})


def clean_changes_result(keys: np.ndarray, outcomes: pd.DataFrame,
                         rules: Sequence[clean.Rule], samples: int) -> clean.CleanRun:
    """Return the CleanRun of a version whose row keys (in order) are ``keys`` from the
    clean_changes_batch rows that came back (``_pos``, ``outcome``): the preview and the
    StepResult the store saves, whose ``kept`` holds every kept row_key and the new content
    of changed rows only (the store reads nothing else of it)."""
    pos = outcomes["_pos"].to_numpy(np.int64) if len(outcomes) else np.zeros(0, np.int64)
    rows = [orjson.loads(o) for o in outcomes["outcome"]] if len(outcomes) else []
    keys = np.asarray(keys, dtype=np.int64)
    reports = [clean.RuleReport(
        rule.name, rule.action, sum(number in r["hits"] for r in rows),
        [s for r in rows for n, s in r["samples"] if n == number][:samples],
        [int(keys[p]) for p, r in zip(pos, rows) if number in r["hits"]])
        for number, rule in enumerate(rules)]
    hit_drop = [any(rules[n].action == "drop" for n in r["hits"]) for r in rows]
    hit_flag = [any(rules[n].action == "flag" for n in r["hits"]) for r in rows]
    preview = clean.CleanPreview(len(keys), sum(hit_drop), reports,
                                 sum(f and not d for f, d in zip(hit_flag, hit_drop)))
    dropped = [(int(p), *r["drop"]) for p, r in zip(pos, rows) if r["drop"] is not None]
    survivors = {int(p) for p, r in zip(pos, rows) if r["drop"] is None}  # of touched rows
    changes = [(int(p), *c) for p, r in zip(pos, rows) for c in r["changes"]]
    flagged = [(int(p), *f) for p, r in zip(pos, rows) for f in r["flags"]]
    alive = np.ones(len(keys), bool)
    alive[[d[0] for d in dropped]] = False
    kept = pd.DataFrame({"row_key": keys[alive]})
    new = {int(keys[p]): r for p, r in zip(pos, rows) if r["messages"] is not None
           and r["drop"] is None}
    at = np.flatnonzero(np.isin(kept["row_key"].to_numpy(), list(new)))
    for column in ("messages", "metadata", "tags", "note"):
        values = np.full(len(kept), None, dtype=object)
        for i in at:
            values[i] = new[int(kept["row_key"].iat[i])][column]
        kept[column] = values
    result = StepResult(kept, *clean.outcome_frames(keys, dropped, changes, flagged, survivors))
    return clean.CleanRun(preview, result)


def clean_result(frame: pd.DataFrame, outcomes: pd.DataFrame, rules: Sequence[clean.Rule],
                 samples: int) -> clean.CleanRun:
    """Return the CleanRun that ``clean.run(frame, rules)`` returns, from clean_batch rows."""
    rows = [orjson.loads(o) for o in outcomes["outcome"]]
    keys = frame["row_key"].tolist()
    reports = _reports(rules, rows, keys, samples)
    hit_drop = [any(rules[n].action == "drop" for n in r["hits"]) for r in rows]
    hit_flag = [any(rules[n].action == "flag" for n in r["hits"]) for r in rows]
    preview = clean.CleanPreview(len(rows), sum(hit_drop), reports,
                                 sum(f and not d for f, d in zip(hit_flag, hit_drop)))
    alive = [i for i, r in enumerate(rows) if r["drop"] is None]
    dropped = [(i, *r["drop"]) for i, r in enumerate(rows) if r["drop"] is not None]
    changes = [(i, *c) for i, r in enumerate(rows) for c in r["changes"]]
    flagged = [(i, *f) for i, r in enumerate(rows) for f in r["flags"]]
    convs = [r["messages"] for r in rows]  # None where no rule changed the row
    changed = {i for i, m in enumerate(convs) if m is not None}
    return clean.CleanRun(preview, clean.step_result(frame, alive, convs, changed, dropped,
                                                     changes, flagged))


def _reports(rules: Sequence[clean.Rule], rows: list[dict], keys: list, samples: int
             ) -> list[clean.RuleReport]:
    reports = []
    for number, rule in enumerate(rules):
        hit = [i for i, r in enumerate(rows) if number in r["hits"]]
        shown = [s for r in rows for n, s in r["samples"] if n == number][:samples]
        reports.append(clean.RuleReport(rule.name, rule.action, len(hit), shown,
                                        [keys[i] for i in hit]))
    return reports


# --- heuristic scores -----------------------------------------------------------------------

def score_batch(batch: pd.DataFrame, *, specs: Sequence[S.ScoreSpec]) -> pd.DataFrame:
    """Return the heuristic score columns of a batch (no cache: the driver owns the store)."""
    out = S.score_frame(batch, list(specs))
    return out[[s.out for s in specs]]


# --- embeddings -----------------------------------------------------------------------------

def load_encoder(model: str) -> Any:
    """Return the embedding model as ``models.load_embedder`` loads it (once per actor)."""
    from .models import load_embedder

    return load_embedder(model)


def embed_batch(batch: pd.DataFrame, encoder: Any, *, field: str) -> pd.DataFrame:
    """Return a unit vector per row of the batch's field, and the backend that made it."""
    from .embed import embed_texts
    from .models import encoder_backend

    vectors = embed_texts(field_texts(batch, field), encoder)
    return pd.DataFrame({"vector": list(vectors),
                         "backend": [encoder_backend(encoder)] * len(batch)})


def vectors_of(rows: pd.DataFrame) -> np.ndarray:
    """Return the embed_batch rows' vectors as one float32 matrix."""
    if rows.empty:
        return np.zeros((0, 384), np.float32)
    return np.stack([np.asarray(v, np.float32) for v in rows["vector"]])


# --- model scores (perplexity, ifd) --------------------------------------------------------

def load_scoring_lm(model: str) -> Any:
    """Return (model, tokenizer) as the local model scorers load them (once per actor; on the
    CPU: score.py runs the language model where load_lm puts it)."""
    from .models import load_lm

    return load_lm(model)


def model_score_batch(batch: pd.DataFrame, lm: Any, *, scores: Sequence[str], max_length: int,
                      batch_tokens: int) -> pd.DataFrame:
    """Return the ``<score>_score`` columns (perplexity, ifd) of a batch's rows."""
    out = S.model_scores(batch, scores=list(scores), lm=lm, max_length=max_length,
                         batch_tokens=batch_tokens)
    return out.reset_index(drop=True)


# --- eval generation ----------------------------------------------------------------------

def load_generator(spec: Any, precision: str = "auto") -> Any:
    """Return (model, tokenizer) as the eval job loads them (once per actor), on the device
    this worker's policy picks ("auto"), in ``precision``."""
    from .evaluate import load_eval_model

    return load_eval_model(spec, precision=precision)


def generate_batch(batch: pd.DataFrame, lm: Any, *, config: dict) -> pd.DataFrame:
    """Return one generation per row (text, token ids, hit_max as JSON), and the device (as
    device.describe names it on this worker) and precision the model ran in."""
    from .device import describe, precision_name
    from .evaluate import GenerationConfig
    from .evaluate import generate_batch as generate

    made = generate(lm[0], lm[1], list(batch["messages"]), GenerationConfig.from_dict(config))
    device = describe(str(lm[0].device))
    precision = precision_name(str(lm[0].dtype).removeprefix("torch.")) or str(lm[0].dtype)
    return pd.DataFrame({
        "generation": [orjson.dumps({"text": g.text, "token_ids": list(g.token_ids),
                                     "hit_max": g.hit_max}).decode() for g in made],
        "device": [device] * len(made), "precision": [precision] * len(made)})
