"""Dataset and model cards: README.md files that say how a dataset version or an adapter was made.

A dataset card is written next to an exported version (inside a Hugging Face dataset folder,
or ``<name>.README.md`` beside a file); a model card into a merged model's folder or a run's
adapter folder. Both are built from what the store and the run folders already record: the
version lineage (operations, parameters, counts), dropped rows with their reasons, labels, the
recipe, the run's config, loss events and the eval runs that used the adapter. Nothing in a
card is typed in by hand, and an existing card is never replaced without ``overwrite``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from . import jobs, recipes
from . import labels as LB
from .exceptions import ExportError, WorkbenchError
from .store import Store, VersionInfo

CARD = "README.md"


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """Return a Markdown table; cell text has its pipes and line breaks escaped."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]


# --- dataset cards -----------------------------------------------------------------------------

def dataset_card(store: Store, version_id: int, *, fmt: str | None = None) -> str:
    """Return the Markdown dataset card of a version."""
    chain = store.lineage(version_id)
    info = chain[-1]
    lines = [f"# Dataset card: {info.ref}", "",
             f"{info.n_rows:,} rows, made by {len(chain)} step(s) in workbench"
             + (f"; exported as {fmt}." if fmt else "."), ""]
    for section in (_sources, _row_counts, _drops, _cleaning, _dedup, _selection, _labels,
                    _recipe, _limitations):
        lines += section(store, chain) + [""]
    return "\n".join(lines).rstrip() + "\n"


def dataset_summary(store: Store, version_id: int) -> list[str]:
    """Return the short part of a dataset card (sources, rows per step, drop reasons)."""
    chain = store.lineage(version_id)
    return _sources(store, chain) + [""] + _row_counts(store, chain) + [""] + \
        _drops(store, chain)


def _sources(store: Store, chain: list[VersionInfo]) -> list[str]:
    rows = [(Path(str(v.params.get("file", "?"))).name, v.params.get("kind", "?"),
             v.params.get("shape", "auto"), v.counts.get("rows_read", ""),
             v.counts.get("imported", v.counts.get("added", "")), v.counts.get("rejected", 0))
            for v in chain if v.operation in ("import", "targeted")]
    return ["## Source files", ""] + _table(
        ["file", "kind", "shape", "lines read", "imported", "rejected"], rows)


def _row_counts(store: Store, chain: list[VersionInfo]) -> list[str]:
    rows, before = [], None
    for i, v in enumerate(chain, start=1):
        dropped = sum(n for k, n in v.counts.items() if ":" not in k and k not in
                      ("kept", "rows_read", "imported", "rejected", "added", "restored"))
        changed = sum(n for k, n in v.counts.items() if k.startswith("changed:"))
        flagged = sum(n for k, n in v.counts.items() if k.startswith("flagged:"))
        rows.append((i, v.ref, v.operation, f"{v.n_rows:,}",
                     "" if before is None else f"{v.n_rows - before:+,}", dropped, changed,
                     flagged))
        before = v.n_rows
    return ["## Row counts per step", ""] + _table(
        ["step", "version", "operation", "rows", "change", "dropped", "changed", "flagged"],
        rows)


def _drops(store: Store, chain: list[VersionInfo]) -> list[str]:
    removed = store.removed(chain[-1].version_id)
    out = ["## Drop reasons", ""]
    if removed.empty:
        return out + ["No row was dropped on the way to this version."]
    counts = removed["reason"].value_counts()
    return out + [f"{len(removed):,} rows were dropped (each keeps its reason in the store):",
                  ""] + _table(["reason", "rows"], counts.items())


def _cleaning(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Cleaning settings", ""]
    steps = [v for v in chain if v.operation in ("clean", "drop_flagged")]
    if not steps:
        return out + ["No cleaning step."]
    for v in steps:
        if v.operation == "drop_flagged":
            out.append(f"- {v.ref}: dropped the rows rule '{v.params.get('rule')}' flagged"
                       + (", keeping rows labelled good" if v.params.get("kept_good") else ""))
            continue
        out.append(f"- {v.ref}: rules in order")
        for r in v.params.get("rules", []):
            options = {k: x for k, x in r.items() if k not in ("rule", "mode", "eval_ids")}
            out.append(f"  - {r.get('rule')} ({r.get('mode', 'change')}): "
                       f"{json.dumps(options, default=str)}")
    return out


def _dedup(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Dedup settings", ""]
    steps = [v for v in chain if v.operation == "dedup"]
    for v in steps:
        p = v.params
        near = (f"near duplicates by MinHash (Jaccard >= {p.get('near_threshold')}, "
                f"{p.get('ngram')}-grams, {p.get('num_perm')} permutations)"
                if p.get("near") else "no near-duplicate pass")
        semantic = (f", semantic duplicates (cosine >= {p.get('semantic_threshold')}, "
                    f"model {p.get('model')})" if p.get("semantic") else "")
        overrides = len(p.get("overrides") or {})
        out.append(f"- {v.ref}: exact duplicates, {near}{semantic} on the {p.get('field')} "
                   f"text; kept the {p.get('keep')} row of each of {p.get('clusters')} "
                   f"clusters" + (f"; {overrides} clusters chosen by hand" if overrides else ""))
    return out + ([] if steps else ["No dedup step."])


def _selection(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Scores used for selection", ""]
    steps = [v for v in chain if v.operation == "select"]
    for v in steps:
        o = v.params.get("options") or {}
        bounds = o.get("bounds") or {}
        limits = ", ".join(f"{s} in [{lo if lo is not None else '-inf'}, "
                           f"{hi if hi is not None else 'inf'}]" for s, (lo, hi) in bounds.items())
        rank = f"{o.get('method')} k={o.get('k')}" + (f" by {o['score']}" if o.get("score")
                                                       else "")
        weights = o.get("weights") or {}
        out.append(f"- {v.ref}: {rank if o.get('method') != 'threshold' else 'thresholds only'}"
                   + (f"; thresholds {limits}" if limits else "")
                   + (f"; combined score weights {json.dumps(weights)}" if weights else "")
                   + f"; {v.params.get('rows_in', '?')} rows in, {v.n_rows:,} kept")
    return out + ([] if steps else ["No selection step."])


def _labels(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Labels", ""]
    ids = store.frame(chain[-1].version_id)["id"].tolist()
    rows = []
    for label_set in LB.label_sets(store):
        current = LB.current_labels(store, ids, label_set=label_set)
        counts = current["label"].value_counts()
        if len(current):
            rows.append((label_set, int(counts.get("good", 0)), int(counts.get("bad", 0)),
                         len(set(ids)) - len(current)))
    if not rows:
        out.append("No row of this version is labelled.")
    else:
        out += ["Labels on this version's rows (by content, so they survive new versions):",
                ""] + _table(["label set", "good", "bad", "unlabelled"], rows)
    used = [v for v in chain if v.operation == "drop_flagged" and v.params.get("kept_good")]
    used += [v for v in chain if v.operation == "select" and any(
        str(c).startswith("learned") for c in _score_names(v))]
    for v in used:
        out.append(f"- {v.ref} ({v.operation}) used the labels")
    return out


def _score_names(v: VersionInfo) -> list[str]:
    o = v.params.get("options") or {}
    return [o.get("score") or "", *(o.get("bounds") or {}), *(o.get("weights") or {})]


def _recipe(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Recipe", ""]
    try:
        text = recipes.to_yaml(recipes.build(store, chain[-1].version_id))
    except WorkbenchError as e:
        return out + [f"No recipe: {e}"]
    return out + ["Replay these steps on new data with `workbench recipe apply recipe.yaml "
                  "NEW_FILE --dataset NAME` (save the block below as recipe.yaml):", "",
                  "```yaml", text.rstrip(), "```"]


def _limitations(store: Store, chain: list[VersionInfo]) -> list[str]:
    out = ["## Known limitations", ""]
    flagged = store.flagged(chain[-1].version_id)
    if len(flagged):
        per_rule = flagged.groupby("reason")["row_key"].nunique()
        out.append(f"- {flagged['row_key'].nunique():,} rows were flagged for review and are "
                   "still in: " + ", ".join(f"{r} {n}" for r, n in per_rule.items()))
    rejected = sum(int(v.counts.get("rejected", 0)) for v in chain)
    if rejected:
        out.append(f"- {rejected:,} input lines were rejected at import (see `workbench "
                   "rejects`).")
    try:
        steps = recipes.build(store, chain[-1].version_id)["steps"]
    except WorkbenchError:
        steps = []
    for s in steps:
        why = s.get("not_replayed") or s.get("note")
        if why:
            out.append(f"- {s['made']} ({s.get('operation', s['step'])}): {why}.")
    if not any(v.operation in ("clean", "dedup", "select") for v in chain):
        out.append("- No cleaning, dedup or selection was applied: the rows are as imported.")
    out.append("- Cleaning rules and scores are heuristics; how well they match your own "
               "judgement on this data is known only where rows are labelled (Label page).")
    return out


def card_path(out: str | Path, fmt: str) -> Path:
    """Return where an export's dataset card goes: README.md inside a HF dataset folder,
    else ``<name>.README.md`` beside the file."""
    out = Path(out)
    return out / CARD if fmt == "hf" else out.with_name(f"{out.stem}.{CARD}")


def export_with_card(store: Store, version_id: int, out: str | Path, fmt: str, *,
                     overwrite: bool = False) -> tuple[Path, Path]:
    """Export a version and write its dataset card; return (data path, card path).

    An existing card beside a file is refused unless ``overwrite``, before anything is
    written; inside a HF folder the card belongs to the folder the export replaces.
    """
    card = card_path(out, fmt)
    if fmt != "hf" and (card.exists() or card.is_symlink()) and not overwrite:
        raise ExportError(f"{card}: the dataset card's file already exists; choose another "
                          "name, or pass --force to replace it")
    path = store.export(version_id, out, fmt, overwrite=overwrite)
    card.write_text(dataset_card(store, version_id, fmt=fmt), encoding="utf-8")
    return path, card


# --- model cards -------------------------------------------------------------------------------

def model_card(store: Store | None, run_id: str, *, home: str | Path | None = None,
               merged: bool = False) -> str:
    """Return the Markdown model card of a training run's adapter (or its merged model)."""
    from . import training

    job = training.get_run(run_id, home)
    config = training.run_config(job)
    params = job.config.get("params", {})
    what = "merged model (base + LoRA adapter)" if merged else "LoRA adapter"
    lines = [f"# Model card: {run_id}", "", f"A {what} trained by workbench "
             f"(run {run_id}, {job.state}).", "", "## Base model", "", f"`{config.model}`", ""]
    lines += _training_data(store, params) + [""]
    lines += _lora(config) + [""]
    lines += _curves(job) + [""]
    evals = _eval_runs(job, store, home)
    lines += _evals(evals, store, home) + [""]
    lines += _contamination(store, params, evals) + [""]
    lines += ["## Limitations", "",
              f"- Trained for {job.result.get('steps', job.step) if job.result else job.step} "
              "steps; the losses above are on the training data's own split unless a "
              "validation version is named.",
              "- Evaluation results hold for the eval sets listed only."]
    return "\n".join(lines).rstrip() + "\n"


def _ref(store: Store | None, version_id: Any) -> str:
    if version_id is None:
        return "none"
    return store.ref_of(int(version_id)) if store is not None else f"version id {version_id}"


def _training_data(store: Store | None, params: dict) -> list[str]:
    vid = params.get("version_id")
    out = ["## Training data", "", f"- data version: {_ref(store, vid)}"]
    val = params.get("val_version_id")
    out.append(f"- validation: {_ref(store, val)}" if val is not None else
               "- validation: a seeded split of the training version")
    if store is None or vid is None:
        return out
    try:
        summary = dataset_summary(store, int(vid))
    except WorkbenchError as e:
        return out + [f"- its dataset card: unavailable ({e})"]
    # The dataset card's sections, one heading level down.
    return out + ["", "### Dataset card summary", ""] + \
        [("#" + line) if line.startswith("## ") else line for line in summary]


def _lora(config: Any) -> list[str]:
    c = asdict(config)
    keys = ["lora_r", "lora_alpha", "lora_dropout", "target_modules", "precision", "qlora",
            "device", "learning_rate",
            "lr_schedule", "warmup_ratio", "epochs", "max_steps", "batch_size", "grad_accum",
            "max_seq_len", "val_fraction", "seed"]
    return ["## LoRA configuration", ""] + _table(
        ["option", "value"], [(k, c[k]) for k in keys if k in c])


def _curves(job: Any) -> list[str]:
    from . import training

    frame = training.loss_frame(job)
    out = ["## Training curve", ""]
    if frame.empty:
        return out + ["No loss was logged."]
    rows = []
    for split in ("train", "validation"):
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        best = part.loc[part["loss"].idxmin()]
        rows.append((split, _at(part.iloc[0]), _at(part.iloc[-1]), _at(best), len(part)))
    return out + _table(["loss", "first (step)", "last (step)", "best (step)", "points"], rows)


def _at(row: pd.Series) -> str:
    return f"{row['loss']:.4f} ({int(row['step'])})"


def _eval_runs(job: Any, store: Store | None, home: str | Path | None) -> list[Any]:
    """Return the finished eval runs (registry records) whose model is this training run."""
    from . import evaluation, runs

    if store is None:
        return []
    mine = str(Path(job.run_dir).resolve())
    found = runs.records(store, kinds=list(evaluation.EVAL_TASKS.values()), home=home)
    return [r for r in found.itertuples()
            if r.state == "done" and (r.config.get("model") or {}) == {"run_dir": mine}]


def _evals(evals: list[Any], store: Store | None, home: str | Path | None) -> list[str]:
    from . import evaluation

    out = ["## Evaluation", ""]
    if not evals:
        return out + ["No evaluation run has used this adapter yet (`workbench eval REF "
                      "--model RUN_ID`)."]
    rows = []
    for j in evals:
        data = _ref(store, j.version_id)
        for m in evaluation.summary_table(jobs.runs_dir(home) / j.run_id).itertuples():
            rows.append((j.run_id, data, m.metric, evaluation.format_ci(
                {"mean": m.mean, "lo": m.lo, "hi": m.hi}), m.n))
    return out + ["Means with 95% bootstrap intervals:", ""] + _table(
        ["eval run", "eval data", "metric", "mean [95% CI]", "n"], rows)


def _contamination(store: Store | None, params: dict, evals: list[Any]) -> list[str]:
    """Return the eval sets' contamination check against the training rows: the share of each
    eval prompt's word 8-grams found in the training texts (analysis.contamination)."""
    from . import analysis

    out = ["## Eval set contamination check", ""]
    vid = params.get("version_id")
    if store is None or vid is None or not evals:
        return out + ["Not checked: no evaluation run used this adapter."]
    train = store.frame(int(vid))
    texts = (train["prompt"] + "\n" + train["response"]).tolist()
    for ev_vid in dict.fromkeys(j.version_id for j in evals):
        try:
            prompts = store.frame(int(ev_vid))["prompt"].tolist()
        except WorkbenchError:
            out.append(f"- {_ref(store, ev_vid)}: not checked (the version is gone)")
            continue
        check = analysis.contamination(prompts, texts)
        out.append(f"- {_ref(store, ev_vid)}: {int(check['contaminated'].sum())} of "
                   f"{len(check)} eval prompts share >= 50% of their word 8-grams with the "
                   f"training rows (mean overlap {check['overlap'].mean():.1%})")
    cleaned = [v for v in store.lineage(int(vid)) if v.operation == "clean"
               and v.params.get("eval_version") is not None]
    for v in cleaned:
        out.append(f"- the training data's {v.ref} dropped rows overlapping "
                   f"{_ref(store, v.params['eval_version'])} (contamination rule)")
    return out


def write_model_card(store: Store | None, run_id: str, folder: str | Path, *,
                     home: str | Path | None = None, merged: bool = False,
                     overwrite: bool = False) -> Path:
    """Write README.md (the model card) into a model or adapter folder; return its path."""
    path = Path(folder) / CARD
    if (path.exists() or path.is_symlink()) and not overwrite and not _peft_template(path):
        raise ExportError(f"{path}: already exists; pass --force to replace it")
    path.write_text(model_card(store, run_id, home=home, merged=merged), encoding="utf-8")
    return path


def _peft_template(path: Path) -> bool:
    """True for the placeholder card PEFT's save_pretrained writes into every adapter folder
    ("library_name: peft" metadata, "[More Information Needed]" sections): ours replaces it."""
    if path.is_symlink() or not path.is_file():
        return False
    head = path.read_text(encoding="utf-8", errors="replace")[:4000]
    return "library_name: peft" in head and "# Model card" not in head


def merge_with_card(store: Store | None, run_id: str, out_dir: str | Path, *,
                    home: str | Path | None = None) -> Path:
    """Merge a run's adapter into its base model in out_dir and write its model card there."""
    from . import training

    folder = training.merge_run(run_id, out_dir, home=home)
    write_model_card(store, run_id, folder, home=home, merged=True, overwrite=True)
    return folder


def adapter_card(store: Store | None, run_id: str, *, home: str | Path | None = None,
                 overwrite: bool = False) -> Path:
    """Write the model card into a finished run's adapter folder; return its path."""
    from . import training

    job = training.get_run(run_id, home)
    folder = training.adapter_dir(job)
    if folder is None:
        raise ExportError(f"run {run_id} is {job.state} and has no final adapter yet")
    return write_model_card(store, run_id, folder, home=home, overwrite=overwrite)
