"""Quality scoring and subset selection run against the store.

The scorers (score.py) and selectors (select.py) are pure functions over DataFrames; this
module wires them to the store, so the Score & select page and the CLI do the same thing:
- heuristics run in the caller (``score_version``: the CLI) or as a background job
  (``start_heuristic_scoring``: the page), either way reading only the rows not cached yet;
  model scores (perplexity, IFD) and the LLM judge run as background jobs (workbench.jobs).
  Every value is cached in the store by (row id, scorer, parameters),
  and ``with_cached_scores`` gives a version back with the newest cached score of each scorer,
  so reopening the page costs one query, not a rescoring; ``score_table`` is that view without
  any text (row keys, ids, scores), which the page works on: texts are read only for the rows
  a sample, a preview or a hover shows (``row_texts``, ``threshold_preview``,
  ``dropped_preview``, ``scatter_points``); longest-k reads the responses' lengths from the
  store (``Store.response_lengths``);
- the embedding map reuses the embedding cache and job of curate.py;
- a selection (thresholds, then top-k, diverse top-k, per-cluster quota or longest-k) is saved
  as a new version whose params record the rule; every dropped row keeps a reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import xxhash

from . import curate, jobs, runs
from . import engine as E
from . import score as S
from . import select as SEL
from .atomic import write_atomic
from .cache import StoreCache, params_hash
from .exceptions import ConfigError
from .store import Store, VersionInfo

Method = Literal["top_k", "diverse", "quota", "longest", "threshold"]
METHODS: tuple[str, ...] = ("top_k", "diverse", "quota", "longest", "threshold")
HEURISTICS: tuple[str, ...] = tuple(n for n, s in S.SCORERS.items() if s.kind == "heuristic")
ALIASES = {"diversity": "lexical_diversity", "ppl": "perplexity"}
COMBINED = "combined_score"
JOB_KINDS = ("heuristics", "score", "judge")


# --- scoring ------------------------------------------------------------------------------------

def scorer_name(name: str) -> str:
    """Return the registered scorer name for a name or alias (``diversity``, ``ppl``)."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in S.SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; choose from "
                          f"{', '.join([*S.SCORERS, *ALIASES])}")
    return name


def heuristic_specs(names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> list[S.ScoreSpec]:
    """Return ScoreSpecs for heuristic scorers, with per-scorer options from ``params``."""
    specs = []
    for raw in names:
        name = scorer_name(raw)
        if S.SCORERS[name].kind == "learned":
            raise ConfigError("scorer 'learned' trains on your labels: label rows, then train "
                              "it (Label page, or `workbench score REF --scorers learned`)")
        if S.SCORERS[name].kind != "heuristic":
            raise ConfigError(f"scorer {name!r} uses a model: start it as a background job")
        specs.append(S.ScoreSpec(name, dict((params or {}).get(name, {}))))
    return specs


def score_heuristics(store: Store, frame: pd.DataFrame, specs: Sequence[S.ScoreSpec], *,
                     progress: Callable[[int, int], None] | None = None,
                     chunk_rows: int = 5_000, engine: str = "local",
                     cancelled: Callable[[], bool] | None = None) -> pd.DataFrame:
    """Return the frame with the heuristic score columns (read from / written to the cache).

    Rows are scored ``chunk_rows`` at a time (heuristics look at one row at a time, so the
    values are the same) and ``progress(rows_done, rows)`` follows them. ``engine="ray"``
    scores the uncached rows batch by batch on Ray Data from the size threshold on
    (``engine.choose``); the values and the cache are the same.
    """
    if not specs:
        raise ConfigError("scorers: choose at least one scorer")
    if E.choose(engine, len(frame), "score").engine == "ray":
        out = _score_ray(store, frame, list(specs), progress, cancelled)
        for spec in specs:
            _touch(store, frame["id"].tolist(), spec.name,
                   spec.scorer.cache_params(spec.params))
        return out
    parts, cache = [], StoreCache(store)
    for start in range(0, len(frame), chunk_rows):
        parts.append(S.score_frame(frame.iloc[start:start + chunk_rows], list(specs),
                                   cache=cache))
        if progress:
            progress(start + len(parts[-1]), len(frame))
    out = pd.concat(parts) if parts else S.score_frame(frame, list(specs), cache=cache)
    for spec in specs:
        _touch(store, frame["id"].tolist(), spec.name, spec.scorer.cache_params(spec.params))
    return out


def _score_ray(store: Store, frame: pd.DataFrame, specs: list[S.ScoreSpec],
               progress: Callable[[int, int], None] | None,
               cancelled: Callable[[], bool] | None) -> pd.DataFrame:
    """Score on Ray the rows some scorer has no cached value for; cache them as the local path
    does (never a NaN); return the frame with the score columns."""
    from . import ray_steps

    def compute(missing: set[str]) -> pd.DataFrame:
        todo = frame[frame["id"].isin(missing)].drop_duplicates("id")
        values = E.map_rows(todo, ray_steps.score_batch, kwargs={"specs": specs},
                            home=E.data_folder(store.path), progress=progress,
                            cancelled=cancelled)
        return values.assign(id=todo["id"].to_numpy())

    return _with_new_scores(store, frame, specs, compute)


def _with_new_scores(store: Store, frame: pd.DataFrame, specs: list[S.ScoreSpec],
                     compute: Callable[[set[str]], pd.DataFrame]) -> pd.DataFrame:
    """Return the frame plus the score columns: the cached values, and for the ids some scorer
    has no value for, ``compute(ids)`` (id plus score columns), cached here (never a NaN)."""
    cache, out = StoreCache(store), frame.copy()
    cached = {s.out: S.cached_values(frame, s, cache) for s in specs}
    missing = set().union(*(set(frame["id"]) - set(c) for c in cached.values()))
    values = compute(missing) if missing else pd.DataFrame()
    for spec in specs:
        new = {} if values.empty else dict(zip(values["id"], values[spec.out].tolist()))
        fresh = {i: v for i, v in new.items() if i not in cached[spec.out] and np.isfinite(v)}
        cache.put_scores(list(fresh), list(fresh.values()), spec.name,
                         spec.scorer.cache_params(spec.params))
        found = {**new, **cached[spec.out]}
        out[spec.out] = np.array([found[i] for i in frame["id"].tolist()], dtype=np.float64)
    return out


def score_version(store: Store, version_id: int, specs: Sequence[S.ScoreSpec], *,
                  progress: Callable[[int, int], None] | None = None, engine: str = "local",
                  cancelled: Callable[[], bool] | None = None, chunk_rows: int = 5_000
                  ) -> pd.DataFrame:
    """Score a stored version's rows as ``score_heuristics`` does (same values, same cache);
    return its ``id`` column plus the score columns, in version order.

    Only the rows some scorer has no cached value for are read (a version scored before
    reads no text): locally ``chunk_rows`` at a time (``progress(rows_done, rows_to_score)``
    follows them), on Ray (from the size threshold on, the size being the version's n_rows)
    as Parquet shards written from the store (``Store.write_shards``). This process holds
    the version's ids and the values, never a frame of all its rows.
    """
    if not specs:
        raise ConfigError("scorers: choose at least one scorer")
    rows = store.version(version_id).n_rows or 0
    columns = ["id", *[s.out for s in specs]]
    ray = E.choose(engine, rows, "score").engine == "ray"
    ids = store.row_ids(version_id)

    def compute(missing: set[str]) -> pd.DataFrame:
        positions = store.first_positions(version_id, sorted(missing))
        if not ray:
            keys = ids["row_key"].to_numpy()[positions]
            return _score_rows(store, version_id, keys, list(specs), progress, chunk_rows)
        from . import ray_steps

        with E.version_shards(store, version_id, ("id", "messages", "metadata"),
                              positions=positions) as (folder, total):
            values = E.map_shards(folder, total, ray_steps.score_batch,
                                  kwargs={"specs": list(specs)}, progress=progress,
                                  cancelled=cancelled)
        return values.assign(id=ids["id"].to_numpy()[values["_pos"].to_numpy()])

    out = _with_new_scores(store, ids[["id"]], list(specs), compute)
    for spec in specs:
        _touch(store, ids["id"].tolist(), spec.name, spec.scorer.cache_params(spec.params))
    return out[columns]


def _score_rows(store: Store, version_id: int, keys: np.ndarray, specs: list[S.ScoreSpec],
                progress: Callable[[int, int], None] | None, chunk_rows: int) -> pd.DataFrame:
    """Score the rows with these keys, read ``chunk_rows`` at a time; return id and scores."""
    parts = [pd.DataFrame(columns=["id", *[s.out for s in specs]])]
    if progress:
        progress(0, len(keys))
    for start in range(0, len(keys), chunk_rows):
        rows = store.frame_of(version_id, keys[start:start + chunk_rows].tolist())
        parts.append(S.score_frame(rows, specs)[["id", *[s.out for s in specs]]])
        if progress:
            progress(start + len(rows), len(keys))
    return pd.concat(parts, ignore_index=True)


def heuristic_params(store: Store, version_id: int, specs: Sequence[S.ScoreSpec], *,
                     engine: str = "local") -> dict:
    """Return the checked parameters of a heuristic-scoring job (the "heuristic_score" task):
    the scorers as plain data (``specs_of`` reads them back), checked here on one row."""
    if not specs:
        raise ConfigError("scorers: choose at least one scorer")
    plain = [{"name": s.name, "params": dict(s.params)} for s in specs]
    probe = pd.DataFrame({"id": ["probe"], "messages": [[{"role": "user", "content": "a"},
                                                         {"role": "assistant", "content": "b"}]],
                          "metadata": [{}], "prompt": ["a"], "response": ["b"]})
    S.score_frame(probe, specs_of(plain))  # a bad option (a regex, a style) fails here
    store.version(version_id)  # an unknown version fails here, not in the job
    return {"store": str(store.path), "version_id": int(version_id), "specs": plain,
            "engine": E.check_engine(engine)}


def specs_of(plain: Sequence[Mapping[str, Any]]) -> list[S.ScoreSpec]:
    """Return the ScoreSpecs of heuristic scorers given as plain data ({"name", "params"})."""
    if not isinstance(plain, Sequence) or not all(isinstance(p, Mapping) and "name" in p
                                                  for p in plain):
        raise ConfigError("specs: give a list of {'name': scorer, 'params': {...}}")
    return heuristic_specs([p["name"] for p in plain],
                           {p["name"]: p.get("params") or {} for p in plain})


def start_heuristic_scoring(store: Store, version_id: int, specs: Sequence[S.ScoreSpec], *,
                            engine: str = "local") -> jobs.JobStatus:
    """Start a background job scoring a version with heuristic scorers into the score cache
    (rows read in the job, only those not cached yet); return its status."""
    return jobs.start("heuristic_score", heuristic_params(store, version_id, specs,
                                                          engine=engine))


def _touch(store: Store, ids: Sequence[str], scorer: str, params: dict) -> None:
    """Mark a scorer's cached values as the newest, so with_cached_scores picks them."""
    if not len(ids):
        return
    with store.transaction() as con:
        con.register("_ids", pa.table({"id": pa.array(list(set(ids)), pa.string())}))
        con.execute("""UPDATE scores SET created_at = current_timestamp WHERE scorer = ?
                       AND params_hash = ? AND id IN (SELECT id FROM _ids)""",
                    [scorer, params_hash(params)])
        con.unregister("_ids")


def with_cached_scores(store: Store, frame: pd.DataFrame) -> pd.DataFrame:
    """Return the frame plus one ``<scorer>_score`` column per scorer cached for its rows
    (the most recently used parameters of each; NaN where a row has no value)."""
    out = frame.copy()
    pos, code, keys, value, reasons = _newest_scores(store, frame["id"].tolist())
    order = list(S.SCORERS)
    known = sorted((k for k in keys if k.split(":")[0] in S.SCORERS),
                   key=lambda k: (order.index(k.split(":")[0]), k))
    for key in known:
        # Values land by row position: no per-column join of 50k string ids in pandas.
        column = np.full(len(frame), np.nan)
        at = code == keys.index(key)
        column[pos[at]] = value[at]
        out[_column_of(key)] = column
    if reasons is not None:  # the judge's one-line reason travels with its score
        out["judge_reason"] = frame["id"].map(reasons).fillna("")
    return out


def score_table(store: Store, version_id: int) -> pd.DataFrame:
    """Return a version's ``row_key`` and ``id`` with its cached score columns (and
    ``judge_reason``), as ``with_cached_scores`` gives them, without reading any row's text:
    the Score & select page works on this (1M rows: a few numeric columns, not every message).
    """
    return with_cached_scores(store, store.row_ids(version_id))


def scored_version(store: Store, version_id: int) -> pd.DataFrame:
    """Return the whole version (texts included) with its cached scores: for the steps that read
    the texts (the learned score, longest-k)."""
    return with_cached_scores(store, store.frame(version_id))


def row_texts(store: Store, version_id: int, row_keys: Sequence[int]) -> pd.DataFrame:
    """Return ``row_key``, ``prompt`` and ``response`` (their first 300 characters) of a few rows
    of a version, in the order of ``row_keys``: what a sample shows, without the other rows."""
    keys = [int(k) for k in row_keys]
    rows = store.rows_of(version_id, keys).set_index("row_key")
    return rows.reindex(keys)[["prompt", "response"]].rename_axis("row_key").reset_index()


def threshold_preview(store: Store, version_id: int, table: pd.DataFrame,
                      bounds: Mapping[str, tuple[float | None, float | None]], n: int = 10
                      ) -> tuple[int, pd.DataFrame]:
    """Return how many rows of a score table pass every bound, and the first n dropped rows
    with the reason and detail ``threshold_filter`` gives them and their texts.

    The count is one vectorized mask; reasons are written for the n shown rows only (at 1M
    rows the full filter formats a detail for every dropped row)."""
    keep = np.ones(len(table), dtype=bool)
    for score, (lo, hi) in bounds.items():
        values = table[SEL._score_column(table, score)].to_numpy(dtype=np.float64)
        keep &= np.isfinite(values)
        keep &= (values >= lo) if lo is not None else True
        keep &= (values <= hi) if hi is not None else True
    head = table.iloc[np.flatnonzero(~keep)[:n]]
    sample = SEL.threshold_filter(head, bounds) if len(head) else None
    dropped = sample.dropped if sample is not None else pd.DataFrame(
        columns=["row_key", "reason", "detail"])
    return int(keep.sum()), _with_texts(store, version_id, dropped)


def dropped_preview(store: Store, version_id: int, selection: SEL.Selection, n: int = 10
                    ) -> pd.DataFrame:
    """Return ``dropped_sample`` of a selection made on a score table: the texts of the n rows
    shown are read from the store."""
    return _with_texts(store, version_id, selection.dropped.head(n))


def _with_texts(store: Store, version_id: int, dropped: pd.DataFrame) -> pd.DataFrame:
    texts = row_texts(store, version_id, dropped["row_key"].tolist())
    head = dropped[["row_key", "reason", "detail"]].reset_index(drop=True)
    return head.join(texts.set_index("row_key"), on="row_key")


def scatter_points(store: Store, version_id: int, table: pd.DataFrame, x: str, y: str,
                   n: int | None = None):
    """Return a PlotSample of at most n rows with finite x and y (the full count stated), with
    a one-line hover text of each sampled row's response; no other row's text is read."""
    from .views import PLOT_POINTS, plot_sample

    sample = plot_sample(table[["row_key", x, y]].loc[:, lambda f: ~f.columns.duplicated()],
                         [x, y], n or PLOT_POINTS)
    keys = tuple(sample.rows["row_key"].tolist())
    texts = _hover_texts(store, version_id, keys) if store.path == ":memory:" else \
        _hover_texts_of(str(store.path), version_id, keys)
    return type(sample)(sample.rows.assign(text=texts), sample.total)


def _hover_texts(store: Store, version_id: int, keys: tuple[int, ...]) -> list[str]:
    from .views import hover_texts

    return hover_texts(row_texts(store, version_id, keys)["response"].fillna(""))


@functools.lru_cache(maxsize=4)
def _hover_texts_of(store_path: str, version_id: int, keys: tuple[int, ...]) -> list[str]:
    """Hover texts by store path: versions never change, and when every row has every score
    each pair of axes samples the same rows, so changing an axis reads no text again."""
    return _hover_texts(Store(store_path), version_id, keys)


_NEWEST = """WITH used AS (SELECT scorer, params_hash, max(created_at) AS t FROM scores
                           SEMI JOIN (SELECT DISTINCT id FROM _ids) USING (id) GROUP BY ALL),
                  best AS (SELECT scorer, arg_max(params_hash, t) AS h FROM used GROUP BY scorer)"""


def _newest_scores(store: Store, ids: Sequence[str]) -> tuple:
    """Return (row position, scorer code, scorer keys, value, judge reasons by id or None) of
    the newest cached scores of rows; a code indexes the keys."""
    none = np.zeros(0, np.int64), np.zeros(0, np.int32), [], np.zeros(0), None
    if not len(ids):
        return none
    with store.connect() as con:
        if not con.execute("SELECT count(*) FROM (SELECT 1 FROM scores LIMIT 1)").fetchall()[0][0]:
            return none  # nothing scored yet: 1M ids are not sent to DuckDB to join none
        con.register("_ids", pa.table({"pos": pa.array(np.arange(len(ids), dtype=np.int64)),
                                       "id": pa.array(list(ids), pa.string())}))
        table = con.sql(f"""{_NEWEST} SELECT i.pos, s.scorer, s.value FROM _ids i
            JOIN scores s USING (id) JOIN best b ON s.scorer = b.scorer
            AND s.params_hash = b.h""").to_arrow_table()
        # The scorers joined are those of best (each has a row with its newest parameters):
        # no second search for the newest parameters to learn whether the judge is one.
        scorer, reasons = table.column("scorer").combine_chunks().dictionary_encode(), None
        if "judge" in scorer.dictionary.to_pylist():
            reasons = con.sql(f"""{_NEWEST} SELECT s.id, s.detail FROM scores s JOIN best b
                ON s.scorer = b.scorer AND s.params_hash = b.h WHERE s.scorer = 'judge'
                AND s.id IN (SELECT id FROM _ids)""").df().set_index("id")["detail"]
        con.unregister("_ids")
    return (table.column("pos").to_numpy(), scorer.indices.to_numpy(zero_copy_only=False),
            scorer.dictionary.to_pylist(),
            table.column("value").to_numpy(zero_copy_only=False).astype(np.float64), reasons)


def _column_of(scorer_key: str) -> str:
    """Return the column of a cached scorer key ("learned:off-topic" -> learned_off_topic_score)."""
    name, _, label_set = scorer_key.partition(":")
    if label_set:
        return f"{name}_{label_set.replace('-', '_')}_score"
    return S.SCORERS[name].column


def score_columns(frame: pd.DataFrame) -> list[str]:
    """Return the frame's score columns (``*_score``), in frame order."""
    return [c for c in frame.columns if str(c).endswith("_score")]


def score_summary(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Return one row per score column: direction, rows scored, mean, std, min, median, max."""
    columns = list(columns) if columns is not None else score_columns(frame)
    rows = []
    for column in columns:
        values = frame[column].astype("float64")
        rows.append({"score": column, "better": S.direction_of(column) or "higher",
                     "scored": int(values.notna().sum()), "missing": int(values.isna().sum()),
                     "mean": values.mean(), "std": values.std(), "min": values.min(),
                     "median": values.median(), "max": values.max()})
    return pd.DataFrame(rows, columns=["score", "better", "scored", "missing", "mean", "std",
                                       "min", "median", "max"])


# --- model scores and the judge: background jobs ------------------------------------------------

def model_params(store: Store, version_id: int, *, scores: Sequence[str] = S.MODEL_SCORES,
                 model: str = "default", max_length: int = 1024, batch_tokens: int = 1024,
                 device: str = "auto", engine: str = "local") -> dict:
    """Return the checked parameters of a model-scoring job (the "model_score" task); device
    is checked here ("cuda" on a machine without one fails now, not in the job);
    ``engine="ray"`` scores on Ray Data from the size threshold on (``engine.choose``)."""
    from .device import resolve_device

    names = [scorer_name(s) for s in scores]
    S._check_model_options(names, max_length, batch_tokens)
    if not str(model).strip():
        raise ConfigError("model: give 'default' or a local model folder")
    resolve_device(device)
    return {"store": str(store.path), "version_id": int(version_id), "scores": names,
            "model": str(model).strip(), "max_length": int(max_length),
            "batch_tokens": int(batch_tokens), "device": str(device or "auto"),
            **({} if E.check_engine(engine) == "local" else {"engine": engine})}


def start_model_scoring(store: Store, version_id: int, **options: Any) -> jobs.JobStatus:
    """Start a background job scoring a version with perplexity/IFD; return its status."""
    params = model_params(store, version_id, **options)
    _touch_model_cache(store, params)
    return jobs.start("model_score", params)


def _touch_model_cache(store: Store, params: dict) -> None:
    ids = store.frame(params["version_id"])["id"].tolist()
    spec_params = {k: params[k] for k in ("model", "max_length", "batch_tokens")}
    for name in params["scores"]:
        _touch(store, ids, name, S.SCORERS[name].cache_params(spec_params))


def run_model_scoring(store: Store, version_id: int, *,
                      progress: Callable[[int, int], None] | None = None,
                      **options: Any) -> dict:
    """Run model scoring in this process (the CLI's way), filling the cache; return counts."""
    params = model_params(store, version_id, **options)
    _touch_model_cache(store, params)
    return jobs.run_here("model_score", params, progress=progress)


def judge_params(store: Store, version_id: int, config: Mapping[str, Any]) -> dict:
    """Return the checked parameters of a judge job (the "judge" task)."""
    from .judge import JudgeConfig

    JudgeConfig(**config)  # fail in the caller, naming the bad option
    return {"store": str(store.path), "version_id": int(version_id), "judge": dict(config)}


def start_judge(store: Store, version_id: int, config: Mapping[str, Any]) -> jobs.JobStatus:
    """Start a background LLM-judge job over a version; return its status."""
    params = _touch_judge(store, version_id, config)
    return jobs.start("judge", params)


def _touch_judge(store: Store, version_id: int, config: Mapping[str, Any]) -> dict:
    params = judge_params(store, version_id, config)
    _touch(store, store.frame(version_id)["id"].tolist(), "judge",
           S.SCORERS["judge"].cache_params(params["judge"]))
    return params


def run_judge(store: Store, version_id: int, config: Mapping[str, Any], *,
              progress: Callable[[int, int], None] | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Run the judge in this process (the CLI's way), into the same cache as the page's job;
    return its counts, the mode used and, when over a fifth of rows failed, the warning."""
    params = _touch_judge(store, version_id, config)
    return jobs.run_here("judge", params, progress=progress, log=log)


def scoring_jobs(store: Store, version_id: int, *, home: str | Path | None = None
                 ) -> list[jobs.JobStatus]:
    """Return the model-scoring and judge jobs started for a version, newest first (found in
    the store's run registry: only their folders are read)."""
    return runs.statuses(store, JOB_KINDS, lambda p: p.get("version_id") == version_id,
                         home=home)


# --- the embedding map --------------------------------------------------------------------------

def embedding_map(store: Store, frame: pd.DataFrame, *, field: str = "conversation",
                  model: str = "default", k: int = 8, version_id: int | None = None
                  ) -> tuple[pd.DataFrame | None, int]:
    """Return (row_key, x, y, cluster per row, or None while rows lack embeddings; missing).

    With ``version_id`` (the frame is that version's rows), rows without an embedding are
    counted in the store first, so a page that reruns while rows lack them loads no vector."""
    cached = _map_file(store, frame, field=field, model=model, k=k)
    if cached is not None and cached.exists():
        # Same content ids, model, field and k give the same map: reopening reads one file
        # instead of loading every vector and projecting again (52k rows: seconds saved).
        points = pd.read_parquet(cached)
        return points.assign(row_key=frame["row_key"].to_numpy()), 0
    if version_id is not None:
        missing = curate.missing_embeddings(store, version_id, field=field, model=model)
        if missing:
            return None, missing
    vectors, missing = curate.version_embeddings(store, frame, field=field, model=model)
    if vectors is None:
        return None, missing
    result = SEL.embedding_map(vectors, k=min(k, len(frame)))
    points = pd.DataFrame({"row_key": frame["row_key"].to_numpy(),
                           "x": result.coords[:, 0], "y": result.coords[:, 1],
                           "cluster": result.labels.astype(str)})
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(cached, lambda tmp: points.to_parquet(tmp, index=False))
    return points, 0


def _map_file(store: Store, frame: pd.DataFrame, **params: Any) -> Path | None:
    """Return the cache file of a map of these rows, or None for an in-memory store."""
    if store.path == ":memory:":
        return None
    # One update of every id, each followed by a newline: the digest of the same bytes as
    # one update per id gives (cache files keep their names), 1M rows in half the time.
    ids = frame["id"].tolist()
    digest = xxhash.xxh3_128(("\n".join(ids) + "\n").encode() if ids else b"")
    key = f"{digest.hexdigest()}-{params_hash(params)}"
    return Path(store.path).parent / "cache" / "maps" / f"{key}.parquet"


# --- selection ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SelectOptions:
    """A selection rule: optional score thresholds first, then one method on what is left."""

    method: Method = "top_k"
    k: int | None = None
    score: str | None = None
    bounds: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    # Directions for the combined score that override the scorers' declared ones (fitted to
    # labels, a score can turn out to separate the other way).
    directions: Mapping[str, S.Better] = field(default_factory=dict)
    similarity: float = SEL.DEFAULT_SIMILARITY
    n_clusters: int = 8
    quota: SEL.Quota = "proportional"
    unit: Literal["chars", "words"] = "chars"
    field: str = "conversation"
    model: str = "default"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method={self.method!r}: use one of {', '.join(METHODS)}")
        if self.method == "threshold" and not self.bounds:
            raise ConfigError("method='threshold': give at least one bound (min or max)")
        if self.method != "threshold":
            SEL._check_k(self.k)
        if self.method in ("top_k", "diverse", "quota") and not self.score:
            raise ConfigError(f"method={self.method!r}: name the score to rank by")

    @property
    def needs_embeddings(self) -> bool:
        """Return whether the method uses row embeddings."""
        return self.method in ("diverse", "quota")

    def params(self) -> dict:
        """Return the options as JSON for the new version's parameters."""
        out = asdict(self)
        out["bounds"] = {k: list(v) for k, v in self.bounds.items()}
        out["weights"] = dict(self.weights)
        out["directions"] = dict(self.directions)
        return out


def with_combined(frame: pd.DataFrame, weights: Mapping[str, float],
                  directions: Mapping[str, S.Better] | None = None) -> pd.DataFrame:
    """Return the frame plus ``combined_score`` (weighted, normalized; 1 = best), if weighted."""
    if not weights:
        return frame
    return frame.assign(**{COMBINED: S.combined_score(frame, weights, better=directions)})


def select_rows(frame: pd.DataFrame, options: SelectOptions, *,
                vectors: np.ndarray | None = None, labels: np.ndarray | None = None
                ) -> SEL.Selection:
    """Return the Selection the options make of a scored frame (nothing is saved)."""
    if frame.empty:
        raise ConfigError("the version has no rows to select from")
    frame = with_combined(frame, options.weights, options.directions)
    if options.needs_embeddings and vectors is None and labels is None:
        raise ConfigError(f"method={options.method!r} needs embeddings: embed the rows first")
    first = SEL.threshold_filter(frame, options.bounds) if options.bounds else None
    if options.method == "threshold":
        return _with_rule(first, options)
    pool = first.kept if first is not None else frame
    at = frame.index.get_indexer(pool.index)
    second = _method(pool, options, _take(vectors, at), _take(labels, at))
    if first is not None:
        second.dropped = pd.concat([first.dropped, second.dropped], ignore_index=True)
        second.rule = {**second.rule, "thresholds": first.rule["bounds"], "rows_in": len(frame)}
    return _with_rule(second, options)


def _take(values: np.ndarray | None, at: np.ndarray) -> np.ndarray | None:
    return None if values is None else np.asarray(values)[at]


def _method(frame: pd.DataFrame, o: SelectOptions, vectors: np.ndarray | None,
            labels: np.ndarray | None) -> SEL.Selection:
    if o.method == "longest":
        return SEL.longest_k(frame, o.k, unit=o.unit)
    if o.method == "top_k":
        return SEL.top_k(frame, o.k, score=o.score)
    if o.method == "diverse":
        return SEL.diverse_top_k(frame, o.k, score=o.score, vectors=vectors,
                                 threshold=o.similarity)
    return SEL.cluster_quota(frame, o.k, score=o.score, vectors=vectors,
                             labels=labels if vectors is None else None,
                             n_clusters=o.n_clusters, quota=o.quota)


def _with_rule(selection: SEL.Selection, options: SelectOptions) -> SEL.Selection:
    selection.rule = {**selection.rule, "options": options.params()}
    return selection


def selection_vectors(store: Store, frame: pd.DataFrame, options: SelectOptions
                      ) -> np.ndarray | None:
    """Return the embeddings a method needs (None if it needs none); raise if rows lack them."""
    if not options.needs_embeddings:
        return None
    vectors, missing = curate.version_embeddings(store, frame, field=options.field,
                                                 model=options.model)
    if vectors is None:
        raise ConfigError(f"method={options.method!r}: {missing} rows have no embedding yet; "
                          "run the embedding job first")
    return vectors


def preview_selection(store: Store, frame: pd.DataFrame, options: SelectOptions
                      ) -> SEL.Selection:
    """Return what a selection would keep and drop (with reasons), saving nothing. Longest-k
    on a frame without texts (a score table) reads the responses' lengths from the store."""
    frame = with_response_lengths(store, frame, options)
    return select_rows(frame, options, vectors=selection_vectors(store, frame, options))


def with_response_lengths(store: Store, frame: pd.DataFrame, options: SelectOptions
                          ) -> pd.DataFrame:
    """Return the frame plus ``response_<unit>`` (``Store.response_lengths``) where longest-k
    ranks a frame without the ``response`` texts; else the frame as it is."""
    column = f"response_{options.unit}"
    if options.method != "longest" or "response" in frame.columns or column in frame.columns:
        return frame
    return frame.assign(**{column: store.response_lengths(frame["row_key"].tolist(),
                                                          options.unit)})


def apply_selection(store: Store, version_id: int, frame: pd.DataFrame, options: SelectOptions,
                    *, extra_params: dict | None = None) -> VersionInfo:
    """Save a selection of a scored version's frame as a new version; return it."""
    selection = preview_selection(store, frame, options)
    return store.apply_step(version_id, selection, operation="select",
                            params={**selection.rule, **(extra_params or {})})


def dropped_sample(frame: pd.DataFrame, selection: SEL.Selection, n: int = 10) -> pd.DataFrame:
    """Return up to n dropped rows with their reason, detail, prompt and response."""
    rows = frame.set_index("row_key")[["prompt", "response"]]
    head = selection.dropped.head(n)
    return head[["row_key", "reason", "detail"]].join(rows, on="row_key").reset_index(drop=True)
