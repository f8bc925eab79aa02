"""Job tasks: the only code a background process runs.

Each task reads the store (once, briefly), calls pure steps, and writes its results into its
run folder or the store's caches. Each is registered by a short name with a parameter
dataclass (``@task("train", TrainParams)``): ``jobs.start("train", params)`` checks the
parameters in the caller, so a bad one fails there, not in the worker. The dotted names older
run folders hold ("workbench.train.train_task") map to these names, so such runs still resume.

Steps never import the store, the caches or jobs (tests/test_boundaries.py): this module does
the wiring, handing a step a ``cache.StoreCache`` where it caches.

Registered: train, eval, import, loop, model_score (kind "score"), heuristic_score (kind
"heuristics"), judge, embed, clean, dedup, dedup_curve, learn, pairwise_judge, rule_scan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from . import analysis, tracking
from . import engine as E
from . import evaluate as ev
from . import score as S
from . import train as T
from .atomic import write_atomic
from .cache import StoreCache
from .device import describe, resolve_device, resolve_precision
from .embed import embed_rows
from .exceptions import ConfigError
from .jobs import run_child, task
from .store import Store

# ---------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainParams:
    """A training job: the versions to train (and validate) on and the TrainConfig fields."""

    store: str | None = None
    version_id: int | None = None
    val_version_id: int | None = None
    config: dict | None = None
    name: str = ""
    device: str = ""  # as training.start_run resolved it: shown in listings while it runs
    precision: str = ""


@task("train", TrainParams, old=("workbench.train.train_task",))
def train(p: TrainParams, ctx: Any) -> dict[str, Any]:
    """Train on a store version; return the metrics and the versions trained on.

    Executing a run folder that has a checkpoint continues from it, on the data snapshot that
    the first execution wrote into the run folder (the store is read once, then closed).
    """
    config = T.TrainConfig.from_dict(p.config or {})
    rows, val_rows = _train_data(p, Path(ctx.run_dir), ctx)
    metrics = T.train(config, rows, val_rows, run_dir=ctx.run_dir, ctx=ctx)
    versions = {"version_id": p.version_id, "val_version_id": p.val_version_id}
    T._write_json(Path(ctx.run_dir) / T.METRICS_FILE, metrics | versions)
    tracking.after_run(ctx, metrics | versions, store=p.store)
    return metrics | versions


def _train_data(p: TrainParams, run_dir: Path, ctx: Any
                ) -> tuple[list[T.Messages], list[T.Messages] | None]:
    folder = run_dir / T.DATA_DIR
    if (folder / "versions.json").is_file():  # a resumed run trains on exactly the same rows
        has_val = json.loads((folder / "versions.json").read_text())["val_version_id"] is not None
        return _read_rows(folder / "train.jsonl"), (
            _read_rows(folder / "val.jsonl") if has_val else None)
    if p.version_id is None:
        raise ConfigError("version_id is required: the dataset version to train on")
    store = Store(p.store)  # every Store call opens and closes its connection
    rows = [list(e.messages) for e in store.examples(int(p.version_id))]
    val_id = p.val_version_id
    val_rows = [list(e.messages) for e in store.examples(int(val_id))] \
        if val_id is not None else None
    folder.mkdir(parents=True, exist_ok=True)
    _write_rows(folder / "train.jsonl", rows)
    _write_rows(folder / "val.jsonl", val_rows or [])
    T._write_json(folder / "versions.json", {"version_id": p.version_id,
                                             "val_version_id": val_id})
    ctx.log(f"read {len(rows)} rows of version {p.version_id}"
            + (f" and {len(val_rows)} validation rows of version {val_id}"
               if val_rows is not None else ""))
    return rows, val_rows


def _write_rows(path: Path, rows: Sequence[T.Messages]) -> None:
    write_atomic(path, "".join(json.dumps({"messages": list(r)}, ensure_ascii=False) + "\n"
                               for r in rows))


def _read_rows(path: Path) -> list[T.Messages]:
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- eval, import, loop


@dataclass(frozen=True)
class EvalParams:
    """An eval job: model ("default" | path | {"run_dir": ...}) on a version; generation
    (GenerationConfig fields), style (style_checks spec), embedder ("default"; None skips
    similarity), limit (first N rows), name; device ("auto", "cpu", "cuda[:N]", "mps"),
    precision ("auto", "fp32", "bf16", "fp16") and backend ("torch", or "vllm" on a CUDA GPU)
    for generation."""

    store: str | None
    version_id: int
    model: str | dict | None = "default"
    generation: dict | None = None
    style: dict | None = None
    embedder: str | None = "default"
    limit: int | None = None
    name: str | None = ""
    device: str = "auto"
    precision: str = "auto"
    backend: str = "torch"
    engine: str = "local"


@task("eval", EvalParams, old=("workbench.evaluate.eval_task",))
def evaluate(p: EvalParams, ctx: Any) -> dict:
    """Generate and score a dataset version; write predictions and summary; return it."""
    config = ev.GenerationConfig.from_dict(p.generation)
    checks = ev.as_checks(style=p.style) if p.style else {}
    store = Store(p.store)
    frame = store.frame(int(p.version_id))  # one short read; the store stays free
    if p.limit:
        frame = frame.head(int(p.limit))
    ctx.log(f"evaluating {ev.model_label(p.model)} on version {p.version_id} "
            f"({len(frame)} rows, {config.to_dict()})")
    choice = E.choose(p.engine, len(frame), "eval")
    if choice.engine == "ray":
        ctx.log(f"engine {choice}")
        T.start_phase(ctx, "evaluating", len(frame))
        generations, seconds, ran_on, precision = _generate_ray(p, frame, config, ctx)
        scoring = p.device  # the workers chose theirs; the embedder resolves this one if used
    else:
        scoring = where = resolve_device(p.device)
        ctx.log(f"on {describe(where)}, backend {p.backend}")
        T.start_phase(ctx, "loading model")
        generate = _generator(p, where, config)
        T.start_phase(ctx, "evaluating", len(frame))
        generations, seconds = _generate_with_progress(generate, frame, ctx, describe(where))
        ran_on, precision = describe(where), resolve_precision(p.precision, where)
    predictions = ev.predictions_frame(frame, generations, ev.model_label(p.model))
    ctx.log("scoring the answers")  # the bar stays on "evaluating N/N": its speed and count
    scored = ev.score_predictions(predictions, checks=checks, cache=StoreCache(store),
                                  embedder=p.embedder, device=scoring)
    summary = _eval_summary(p, config, scored, generations, seconds)
    summary.update(device=ran_on, backend=p.backend, precision=precision)
    ev.write_run(ctx.run_dir, scored, summary)
    tracking.after_run(ctx, summary, store=p.store)
    return summary


def _generator(p: EvalParams, device: str, config: ev.GenerationConfig) -> Any:
    """Return generate(conversations, progress, check) for the run's backend, model loaded."""
    from . import vllm_backend

    vllm_backend.check_backend(p.backend, device)
    if p.backend == "vllm":
        engine = vllm_backend.load(p.model, device=device, precision=p.precision)
        return lambda rows, progress, check: ev.generate_vllm(engine, rows, config, progress,
                                                              check=check)
    model, tokenizer = ev.load_eval_model(p.model, device=device, precision=p.precision)
    return lambda rows, progress, check: ev.generate_batch(model, tokenizer, rows, config,
                                                           progress=progress, check=check)


def _generate_with_progress(generate: Any, frame: pd.DataFrame, ctx: Any, device: str
                            ) -> tuple[list[ev.Generation], float]:
    started = time.perf_counter()
    # The ETA clock starts now, not at batch 1; the event says where the job runs.
    ctx.progress(0, len(frame), tokens_per_s=0.0, device=device)

    def report(done: int, total: int, tokens: int) -> None:
        elapsed = max(time.perf_counter() - started, 1e-9)
        ctx.progress(done, total, tokens=tokens, tokens_per_s=round(tokens / elapsed, 2))

    generations = generate(list(frame["messages"]), report, ctx.check_cancel)
    return generations, time.perf_counter() - started


def _generate_ray(p: EvalParams, frame: pd.DataFrame, config: ev.GenerationConfig, ctx: Any
                  ) -> tuple[list[ev.Generation], float, str, str]:
    """Generate on Ray Data: an actor pool loads the model once per worker (a GPU each where
    the cluster has them; each worker resolves its own device, in ``p.precision``); return
    the generations in row order, seconds, and the devices and precisions the workers used."""
    from . import ray_steps

    started = time.perf_counter()
    rows = E.map_rows(frame, ray_steps.generate_batch, load=ray_steps.load_generator,
                      load_kwargs={"spec": p.model, "precision": p.precision},
                      kwargs={"config": config.to_dict()},
                      use_gpu=True, batch_rows=16, home=E.data_folder(p.store),
                      progress=ctx.progress, cancelled=getattr(ctx, "cancelled", None))
    generations = [ev.Generation(r["text"], tuple(r["token_ids"]), r["hit_max"])
                   for r in map(orjson.loads, rows["generation"])]
    devices = ", ".join(sorted(set(rows["device"]))) or "no rows"
    precisions = ", ".join(sorted(set(rows["precision"]))) or p.precision
    return generations, time.perf_counter() - started, f"ray ({devices})", precisions


def _eval_summary(p: EvalParams, config: ev.GenerationConfig, scored: pd.DataFrame,
                  generations: Sequence[ev.Generation], seconds: float) -> dict:
    tokens = sum(g.n_tokens for g in generations)
    return {"name": p.name or "", "kind": "eval", "version_id": int(p.version_id),
            "model": p.model, "generation": config.to_dict(), "style": p.style,
            "rows": len(scored), "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 2) if seconds > 0 else None,
            "metrics": ev.summarize(scored)}


@dataclass(frozen=True)
class ImportParams:
    """An import job: a predictions file (and the model name for rows without one)."""

    path: str
    model: str | None = None
    style: dict | None = None
    store: str | None = None
    embedder: str | None = "default"
    name: str | None = None


@task("import", ImportParams, old=("workbench.evaluate.import_task",))
def import_predictions(p: ImportParams, ctx: Any) -> dict:
    """Import outside predictions, score them and write the same run files as an eval run;
    return the summary."""
    frame, report = ev.import_predictions(p.path, model=p.model)
    ctx.log(report.summary())
    for rejection in report.rejected:
        ctx.log(f"rejected {rejection}")
    checks = ev.as_checks(style=p.style) if p.style else {}
    cache = StoreCache(Store(p.store)) if p.store else None
    scored = ev.score_predictions(frame, checks=checks, cache=cache, embedder=p.embedder)
    summary = {"name": p.name or Path(p.path).name, "kind": "import", "file": str(p.path),
               "model": sorted(set(frame["model"])), "style": p.style, "rows": len(scored),
               "rejected": [str(r) for r in report.rejected], "metrics": ev.summarize(scored)}
    ev.write_run(ctx.run_dir, scored, summary)
    tracking.after_run(ctx, summary, store=p.store)
    return summary


@dataclass(frozen=True)
class LoopParams:
    """A retrain-and-re-evaluate job: train on version_id with config (TrainConfig fields) or
    previous_run's (a training run folder), evaluate with eval (EvalParams without store and
    model), compare with before_run (an eval run folder; optional)."""

    store: str | None
    version_id: int
    eval: dict
    config: dict | None = None
    previous_run: str | None = None
    before_run: str | None = None
    source_run: str | None = None  # the eval run whose failures made the version (its id)
    source_dir: str | None = None  # and its folder


@task("loop", LoopParams, old=("workbench.evaluate.loop_task",))
def loop(p: LoopParams, ctx: Any) -> dict:
    """Retrain on a (targeted) version, evaluate the new adapter, compare with before.

    The training is a run of its own, "<this run>-train" (jobs.run_child), listed and usable
    like any training run; the evaluation of its adapter writes predictions.parquet,
    summary.json and before_after.json into this run folder.
    """
    config = p.config
    if config is None and p.previous_run:
        config = orjson.loads((Path(p.previous_run) / T.CONFIG_FILE).read_bytes())
    if config is None:
        raise ConfigError("give config (training options) or previous_run (a training run)")
    ctx.log(f"phase 1/2: training on version {p.version_id}")
    train_params = {"store": p.store, "version_id": p.version_id, "config": config,
                    "name": f"retrain from {p.source_run or '?'}"}
    metrics = run_child(ctx, "train", "train", train_params, kind="train")
    train_dir = ctx.run_dir.parent / f"{ctx.run_dir.name}-train"
    ctx.log("phase 2/2: evaluating the new adapter")
    summary = evaluate({**p.eval, "store": p.store, "model": {"run_dir": str(train_dir)}}, ctx)
    result = {"train": metrics, "eval": summary}
    if p.before_run:
        result["before_after"] = _before_after(p, ctx.run_dir)
    return result


def _before_after(p: LoopParams, run_dir: Path) -> dict:
    report = analysis.before_after(ev.read_predictions(p.before_run),
                                   ev.read_predictions(run_dir), style=p.eval.get("style"))
    report["before_run"] = str(p.before_run)
    (Path(run_dir) / "before_after.json").write_bytes(
        orjson.dumps(report, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return report


# ---------------------------------------------------------------- scores and embeddings


@dataclass(frozen=True)
class ModelScoreParams:
    """A model-scoring job: perplexity/ifd of a version's rows into the score cache."""

    store: str | None
    version_id: int
    scores: list | None = None
    model: str = "default"
    max_length: int = 1024
    batch_tokens: int = 1024
    chunk_rows: int = 64
    device: str = "auto"
    engine: str = "local"


@task("model_score", ModelScoreParams, kind="score", old=("workbench.score.model_score_task",))
def model_score(p: ModelScoreParams, ctx: Any) -> dict:
    """Score a version with perplexity/ifd into the store's cache; return counts.

    Progress is in tokens, so the ETA holds although batches grow longer as the length-sorted
    run proceeds; each chunk of chunk_rows rows is written in its own short transaction.
    """
    store = Store(p.store)
    cache = StoreCache(store)
    frame = store.frame(int(p.version_id))  # a short read; no connection stays open
    names = list(p.scores or S.MODEL_SCORES)
    where = resolve_device(p.device)
    options = {"model": p.model, "max_length": p.max_length, "batch_tokens": p.batch_tokens,
               "device": where}
    specs = [S.ScoreSpec(n, options) for n in names]
    cached = [S.cached_values(frame, s, cache) for s in specs]
    todo = frame[~frame["id"].isin(set.intersection(*(set(c) for c in cached)))]
    todo = todo.drop_duplicates("id")
    ctx.log(f"{len(frame)} rows, {len(todo)} to score with {p.model} ({', '.join(names)})")
    choice = E.choose(p.engine, len(todo), "model_score")
    if choice.engine == "ray":
        ctx.log(f"engine {choice}")
        done = _model_score_ray(store, todo, specs, options, ctx)
        return {"rows": len(frame), "cached": len(frame) - len(todo), **done, "device": "ray"}
    ctx.log(f"on {describe(where)}")
    ctx.progress(0, None, device=describe(where))
    done = S.score_into_cache(todo, specs, cache, ctx.progress, int(p.chunk_rows))
    return {"rows": len(frame), "cached": len(frame) - len(todo), **done,
            "device": describe(where)}


def _model_score_ray(store: Store, todo: pd.DataFrame, specs: list[S.ScoreSpec],
                     options: dict, ctx: Any) -> dict:
    """Score rows on Ray (an actor pool: the model loads once per worker); cache them as the
    local path does (never a NaN); return counts."""
    from . import ray_steps

    started = time.perf_counter()
    values = E.map_rows(todo, ray_steps.model_score_batch, load=ray_steps.load_scoring_lm,
                        load_kwargs={"model": options["model"]},
                        kwargs={"scores": [s.name for s in specs],
                                "max_length": options["max_length"],
                                "batch_tokens": options["batch_tokens"]},
                        home=E.data_folder(store.path), batch_rows=64, progress=ctx.progress,
                        cancelled=getattr(ctx, "cancelled", None))
    cache = StoreCache(store)
    for spec in specs:
        column = values[spec.scorer.column].to_numpy(dtype=float)
        ok = np.isfinite(column)
        cache.put_scores(todo["id"][ok].tolist(), column[ok].tolist(), spec.name,
                         spec.scorer.cache_params(spec.params))
    return {"scored": len(todo), "seconds": round(time.perf_counter() - started, 2)}


@dataclass(frozen=True)
class HeuristicScoreParams:
    """A heuristic-scoring job: scorers as plain data ({"name", "params"}, as
    ``quality.heuristic_params`` writes them) over a version, into the score cache."""

    store: str | None
    version_id: int
    specs: list
    engine: str = "local"


@task("heuristic_score", HeuristicScoreParams, kind="heuristics")
def heuristic_score(p: HeuristicScoreParams, ctx: Any) -> dict:
    """Score a version with heuristic scorers into the store's cache, reading (in this process)
    only the rows some scorer has no cached value for; return counts and a one-line message."""
    from . import quality

    store = Store(p.store)
    specs = quality.specs_of(p.specs)
    names = ", ".join(s.name for s in specs)
    rows = store.version(int(p.version_id)).n_rows or 0
    ctx.log(f"{rows} rows of version {p.version_id}, scorers {names} "
            f"(engine {E.choose(p.engine, rows, 'score')})")
    ctx.phase("reading the cache")
    todo = [0]

    def report(done: int, total: int) -> None:
        if total != todo[0] or not done:  # the first count of the rows to score
            todo[0] = total
            ctx.phase("scoring rows", total, done)
        else:
            ctx.progress(done, total)

    started = time.perf_counter()
    out = quality.score_version(store, int(p.version_id), specs, progress=report,
                                engine=p.engine, cancelled=getattr(ctx, "cancelled", None))
    # Rows with the same content share one score: the progress counts those computed.
    message = (f"Scored {len(out):,} rows with {names} ({todo[0]:,} computed, "
               f"{len(out) - todo[0]:,} from the cache).")
    ctx.log(message)
    return {"rows": len(out), "scored": todo[0], "cached": len(out) - todo[0],
            "scorers": [s.name for s in specs], "seconds": round(time.perf_counter() - started, 2),
            "message": message}


@dataclass(frozen=True)
class LearnParams:
    """A learned-score job: train on the labels of a label set, score a version's rows."""

    store: str | None
    version_id: int
    label_set: str = "quality"


@task("learn", LearnParams)
def learn(p: LearnParams, ctx: Any) -> dict:
    """Train the learned score on the labels (``labelling.train_learned``), caching P(bad) of
    every row of the version; return the result with a one-line message."""
    from . import labelling, quality

    store = Store(p.store)
    rows = store.version(int(p.version_id)).n_rows or 0
    ctx.phase("reading rows", rows)
    frame = quality.scored_version(store, int(p.version_id))
    ctx.progress(len(frame), rows)
    ctx.phase("training on the labels and scoring the rows")
    result = labelling.train_learned(store, int(p.version_id), frame, label_set=p.label_set)
    message = labelling.trained_message(result)
    ctx.log(message)
    return {**result.as_dict(), "message": message}


@dataclass(frozen=True)
class JudgeParams:
    """An LLM-judge job: a version's unscored rows, judged in chunks into the score cache."""

    store: str | None
    version_id: int
    judge: dict
    chunk_rows: int = 16


@task("judge", JudgeParams, old=("workbench.quality.judge_task",))
def judge(p: JudgeParams, ctx: Any) -> dict:
    """Judge a version's unscored rows in chunks into the score cache; return counts."""
    from .judge import MODE_LABELS, JudgeConfig, judge_frame, settle_mode

    store = Store(p.store)
    cache = StoreCache(store)
    frame = store.frame(int(p.version_id))
    config, key = JudgeConfig(**p.judge), S.SCORERS["judge"].cache_params(p.judge)
    todo = frame[~frame["id"].isin(cache.get_scores(frame["id"].tolist(), "judge", key))]
    todo = todo.drop_duplicates("id")
    ctx.log(f"{len(frame)} rows, {len(todo)} to judge ({config.backend}, {config.model})")
    chunk, errors, mode = int(p.chunk_rows), [], None
    for start in range(0, len(todo), chunk):
        part = todo.iloc[start:start + chunk]
        judged = judge_frame(part, config, progress=lambda done, _, start=start:
                             ctx.progress(start + done, len(todo)))  # row by row
        if mode is None and judged.attrs.get("judge_mode"):
            mode = judged.attrs["judge_mode"]  # found once; the later chunks ask the same way
            config = settle_mode(config, mode)
            ctx.log(f"judge answers: {MODE_LABELS[mode]}")
        ok = judged["judge_score"].notna().to_numpy()
        cache.put_scores(part["id"][ok].tolist(), judged["judge_score"][ok].tolist(), "judge",
                         key, judged["judge_reason"][ok].tolist())
        for row_key, error in zip(part["row_key"][~ok], judged["judge_error"][~ok]):
            ctx.log(f"row {row_key}: not scored: {error}")  # a failure is said, never a score
            errors.append({"row_key": int(row_key), "error": str(error)})
        ctx.progress(start + len(part), len(todo))
    result = {"rows": len(frame), "cached": len(frame) - len(todo), "judged": len(todo),
              "failed": len(errors), "errors": errors[:200]}
    return {**result, **_judge_outcome([e["error"] for e in errors], len(todo), mode, ctx)}


def _judge_outcome(errors: list[str], total: int, mode: str | None, ctx: Any) -> dict:
    """The mode the judge was asked in and, when over a fifth of rows failed, the warning."""
    from .judge import failure_warning

    out: dict[str, Any] = {"mode": mode} if mode else {}
    warning = failure_warning(errors, total, mode=mode)
    if warning:
        ctx.log(f"warning: {warning}")
        out["warning"] = warning
    return out


@dataclass(frozen=True)
class EmbedParams:
    """An embedding job: a version's field (or fields, one after the other) into the cache."""

    store: str | None
    version_id: int
    field: str = "conversation"
    fields: list | None = None
    model: str = "default"
    device: str = "auto"
    engine: str = "local"


@task("embed", EmbedParams, old=("workbench.embed.embed_task",))
def embed(p: EmbedParams, ctx: Any) -> dict:
    """Embed a dataset version's field(s) into the store's cache, with one progress bar over
    all fields; return counts."""
    store = Store(p.store)
    frame = store.frame(int(p.version_id))
    fields = p.fields or [p.field]
    where = resolve_device(p.device)
    ctx.progress(0, None, device=describe(where))
    dim = 0
    for i, field in enumerate(fields):
        ctx.log(f"embedding {len(frame)} rows ({field}, {i + 1} of {len(fields)}) with "
                f"{p.model} on {describe(where)}")

        def report(done: int, total: int, i: int = i) -> None:
            ctx.progress(i * total + done, len(fields) * total)

        choice = E.choose(p.engine, len(frame), "embed")
        if choice.engine == "ray":
            from .curate import embed_frame

            ctx.log(f"engine {choice}")
            vectors = embed_frame(store, frame, field=field, model=p.model, progress=report,
                                  engine=p.engine, cancelled=getattr(ctx, "cancelled", None))
        else:
            vectors = embed_rows(frame, cache=StoreCache(store), field=field, model=p.model,
                                 progress=report, device=where)
        dim = int(vectors.shape[1]) if len(vectors) else 0
    return {"rows": len(frame), "fields": fields, "dim": dim, "device": describe(where)}


# ---------------------------------------------------------------- clean


@dataclass(frozen=True)
class CleanParams:
    """A clean job: rules (as ``curate.rule_specs`` writes them) over a version; eval_version
    for a contamination rule; engine (local, ray); apply: also save the new version."""

    store: str | None
    version_id: int
    rules: list
    eval_version: int | None = None
    engine: str = "local"
    apply: bool = False
    from_run: str = ""  # a finished preview job of these rules: apply its saved result


@task("clean", CleanParams)
def clean_rules(p: CleanParams, ctx: Any) -> dict:
    """Run cleaning rules over a version, progress per rows x rules and named by the rule
    being run; save the CleanRun in the run folder (and, with ``apply``, the new version)."""
    from . import curate, recipes

    store = Store(p.store)
    frame = store.frame(int(p.version_id))
    rules = recipes.clean_rules({"rules": p.rules, "eval_version": p.eval_version}
                                if p.eval_version is not None else {"rules": p.rules}, store)
    ctx.log(f"{len(rules)} rules over {len(frame)} rows of version {p.version_id} "
            f"(engine {E.choose(p.engine, len(frame), 'clean')})")
    report = _phases(ctx)  # one phase per rule: "rule 3/11 · pii 104000/572000"
    if p.from_run:  # the rules ran in that preview: its saved result is the new version
        ctx.phase("reading the preview's result")
        run = curate.clean_job_run(jobs_status(p.from_run, ctx), frame)
    else:
        ctx.phase("reading rows", len(frame) * len(rules))
        run = curate.clean_preview(frame, rules, row_progress=report, engine=p.engine,
                                   home=E.data_folder(store.path),
                                   cancelled=getattr(ctx, "cancelled", None))
        ctx.check_cancel()
        curate.save_clean_run(ctx.run_dir, run, frame)
    out = {"rows": run.preview.total_rows, "dropped": run.preview.dropped_rows,
           "flagged": run.preview.flagged_rows,
           "hits": {r.name: r.rows for r in run.preview.rules}}
    if p.apply:
        extra = {"eval_version": p.eval_version} if p.eval_version is not None else {}
        ctx.phase("saving the new version")
        version = curate.apply_clean(store, int(p.version_id), frame, rules,
                                     extra_params=extra, result=run.result)
        ctx.log(f"saved version {version.ref} ({version.n_rows} rows)")
        out.update(version_id=version.version_id, ref=version.ref, kept=version.n_rows)
    return out


def _phases(ctx: Any) -> Any:
    """Return ``report(done, total, what)``: a new phase of the job each time ``what``
    changes ("rule 3/11 · pii 104000/572000"), progress within it otherwise (a cancel stops a
    rule scan at its next report)."""
    current = [""]

    def report(done: int, total: int, what: str) -> None:
        if what != current[0]:
            current[0] = what
            ctx.phase(what, total, done)
        else:
            ctx.progress(done, total)

    return report


@dataclass(frozen=True)
class RuleScanParams:
    """A scan of the default cleaning rules for the Label page: over the rows of a version
    whose hits seed its queue (scope "queue", ``labelling.scan_queue_rules``) or over every row
    (scope "version", ``labelling.version_rule_hits``: bulk labels by rule)."""

    store: str | None
    version_id: int
    scope: str = "queue"


@task("rule_scan", RuleScanParams)
def rule_scan(p: RuleScanParams, ctx: Any) -> dict:
    """Run a rule scan on a version, progress per rows x rules; the hits go to the rule
    cache, where the Label page finds them (its queue's next round, its bulk labels)."""
    from . import labelling

    if p.scope not in ("queue", "version"):
        raise ConfigError(f"scope={p.scope!r}: use queue or version")
    ctx.phase("reading rows")
    scan = labelling.scan_queue_rules if p.scope == "queue" else labelling.version_rule_hits
    hits = scan(Store(p.store), int(p.version_id), row_progress=_phases(ctx))
    counts = {str(k): int(v) for k, v in hits["rule"].value_counts().items()}
    ctx.log(f"{len(hits)} hits: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none"))
    return {"hits": counts}


def jobs_status(run_id: str, ctx: Any):
    """Return the status of a run beside this job's own run folder."""
    from .jobs import check_run_id, status

    return status(Path(ctx.run_dir).parent / check_run_id(run_id))


# ---------------------------------------------------------------- dedup


@dataclass(frozen=True)
class DedupParams:
    """A dedup job: options (``DedupOptions.params()``) over a version; engine (local, ray);
    apply: also save the new version, keeping per cluster what overrides say (cluster id as
    text -> row key or "all")."""

    store: str | None
    version_id: int
    options: dict
    engine: str = "local"
    apply: bool = False
    from_run: str = ""  # a finished find of these options: apply its saved clusters
    overrides: dict | None = None


@task("dedup", DedupParams)
def dedup(p: DedupParams, ctx: Any) -> dict:
    """Find a version's duplicate clusters, progress per row hashed; save them and the options
    in the run folder (and, with ``apply``, the version without the dropped rows)."""
    from . import curate

    store = Store(p.store)
    options = curate.dedup_options(p.options)
    rows = store.version(int(p.version_id)).n_rows or 0
    if p.from_run:  # the clusters were found by that job: apply them as they are
        ctx.phase("reading the find's clusters")
        found = jobs_status(p.from_run, ctx)
        if (found.config.get("params") or {}).get("version_id") != p.version_id or \
                not curate.dedup_job_matches(found, options):
            raise ConfigError(f"dedup run {p.from_run} found clusters of other options or "
                              "another version: find duplicates again")
        clusters = curate.dedup_job_clusters(found)
    else:
        choice = curate.check_dedup_engine(options, p.engine, rows)
        ctx.log(f"finding duplicates in {rows} rows of version {p.version_id} "
                f"(engine {choice})")
        ctx.phase("reading rows")
        name = "hashing rows" if choice.engine == "local" else "stages on Ray"
        report = _phases(ctx)  # "hashing rows 12000/52002"

        def hashed(done: int, total: int) -> None:
            report(done, total, name)
            if done == total and choice.engine == "local":  # the rest has no count
                ctx.phase("grouping rows into clusters")

        clusters = curate.find_version_duplicates(store, int(p.version_id), options,
                                                  engine=p.engine, progress=hashed)
        ctx.check_cancel()
        ctx.phase("saving the clusters")
        curate.save_dedup_run(ctx.run_dir, clusters, options)
    overrides = {int(k): v for k, v in (p.overrides or {}).items()}
    out = curate.dedup_counts(clusters, overrides)
    ctx.log(f"{out['clusters']} clusters, {out['dropped']} rows to drop {out['by_method']}")
    if p.apply:
        ctx.phase("saving the new version")
        version = curate.apply_dedup(store, int(p.version_id), None, clusters, options,
                                     overrides)
        ctx.log(f"saved version {version.ref} ({version.n_rows} rows)")
        out.update(version_id=version.version_id, ref=version.ref, kept=version.n_rows)
    return out


@dataclass(frozen=True)
class DedupCurveParams:
    """A threshold-explorer job: rows removed and clusters at each threshold (near or semantic)
    of a version, for the options' field, n-gram, permutations and embedding model."""

    store: str | None
    version_id: int
    options: dict
    method: str = "near"
    thresholds: list | None = None  # default: curate.CURVE_THRESHOLDS[method]


@task("dedup_curve", DedupCurveParams)
def dedup_curve(p: DedupCurveParams, ctx: Any) -> dict:
    """Compute ``curate.duplicate_curve`` of a version in the worker, progress per row hashed;
    save the curve in the run folder, where the Deduplicate page's explorer reads it."""
    from . import curate

    store = Store(p.store)
    options = curate.dedup_options(p.options)
    curate.curve_params(options, p.method)  # a clear error for an unknown method
    thresholds = p.thresholds or list(curate.CURVE_THRESHOLDS[p.method])
    ctx.phase("reading rows")
    frame = store.frame(int(p.version_id))
    ctx.log(f"{p.method} curve over {len(frame)} rows of version {p.version_id} at "
            f"{len(thresholds)} thresholds")
    report = _phases(ctx)

    def hashed(done: int, total: int) -> None:
        report(done, total, "hashing rows")
        if done == total:  # the rest has no count
            ctx.phase("pairs at each threshold")

    if p.method == "semantic":  # no hashing: the cached embeddings are compared
        ctx.phase("pairs at each threshold")
    curve = curate.duplicate_curve(store, frame, options, p.method, thresholds, progress=hashed)
    ctx.check_cancel()
    curate.save_dedup_curve(ctx.run_dir, curve)
    return {"method": p.method, "rows": len(frame), "points": len(curve)}


# ---------------------------------------------------------------- a judge between two runs


@dataclass(frozen=True)
class PairwiseParams:
    """A pairwise judge job: run b's answers against run a's (run folders), given the
    reference; limit: the first N shared rows."""

    run_a: str
    run_b: str
    judge: dict
    limit: int | None = None


@task("pairwise_judge", PairwiseParams, old=("workbench.evaluation.pairwise_judge_task",))
def pairwise_judge(p: PairwiseParams, ctx: Any) -> dict:
    """Judge run b's answers against run a's given the reference (judge.judge_pairs), write
    pairwise_judge.parquet and return the counts and b's win rate."""
    from .judge import JudgeConfig, judge_label, judge_pairs

    pairs = analysis.pair_rows(ev.read_predictions(p.run_a), ev.read_predictions(p.run_b))
    if p.limit:
        pairs = pairs.head(int(p.limit))
    config = JudgeConfig(**p.judge)
    ctx.log(f"{len(pairs)} pairs, each asked in both orders ({judge_label(p.judge)})")
    ctx.progress(0, 2 * len(pairs))
    judged = judge_pairs(pairs, config, progress=lambda done, total: ctx.progress(done, total))
    columns = [c for c in ("row_key", "prompt", "reference", "prediction", "prediction_b")
               if c in pairs.columns]
    table = pd.concat([pairs[columns], judged], axis=1).reset_index(drop=True)
    table.to_parquet(ctx.run_dir / ev.PAIRWISE_FILE, index=False)
    errors = table[table["judge_error"] != ""]
    for row in errors.itertuples():
        ctx.log(f"row {getattr(row, 'row_key', '?')}: not judged: {row.judge_error}")
    return {**_pairwise_counts(judged),
            **_judge_outcome(errors["judge_error"].tolist(), len(table),
                             judged.attrs.get("judge_mode"), ctx)}


def _pairwise_counts(judged: pd.DataFrame) -> dict[str, Any]:
    share = judged["judge_b"]
    ci = ev.bootstrap_ci(share.to_numpy(float))
    return {"pairs": len(judged), "failed": int(share.isna().sum()),
            "win": int((share > 0.5).sum()), "loss": int((share < 0.5).sum()),
            "tie": int((share == 0.5).sum()),
            "inconsistent": int((share.notna() & ~judged["judge_consistent"]).sum()),
            "win_rate": ci._asdict()}
