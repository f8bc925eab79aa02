"""Curation steps run against the store: load a version, run a step, save the child version.

The steps themselves (clean.py, dedup.py, select.py) are pure functions over DataFrames;
this module is the one place that wires them to the store, so the pages and the CLI stay
thin and do the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from . import dedup, jobs, runs
from . import engine as E
from .atomic import write_atomic
from .cache import StoreCache, count_embedded_version, get_embeddings
from .embed import embed_rows
from .exceptions import ConfigError
from .schema import StepResult
from .store import SHARD_COLUMNS, Store, VersionInfo

Field = Literal["conversation", "user", "assistant"]


@dataclass(frozen=True)
class DedupOptions:
    """What counts as a duplicate, on which text, and which member of a cluster stays."""

    field: Field = "conversation"
    near: bool = True
    near_threshold: float = 0.8
    ngram: int = 5
    num_perm: int = 128
    semantic: bool = False
    semantic_threshold: float = dedup.DEFAULT_COSINE_THRESHOLD
    keep: dedup.KeepPolicy = "first"
    score_column: str | None = None
    model: str = "default"

    def __post_init__(self) -> None:
        if self.field not in ("conversation", "user", "assistant"):
            raise ConfigError(f"field={self.field!r}: use conversation, user or assistant")
        if not 0.0 < self.semantic_threshold <= 1.0:
            raise ConfigError(f"semantic_threshold={self.semantic_threshold}: must be in (0, 1]")

    def minhash(self) -> dedup.MinHashConfig:
        """Return the MinHash settings these options describe."""
        return dedup.MinHashConfig(threshold=self.near_threshold, ngram=self.ngram,
                                   num_perm=self.num_perm)

    def params(self) -> dict:
        """Return the options as the JSON recorded with the new version."""
        return asdict(self)


def version_embeddings(store: Store, frame: pd.DataFrame, *, field: str = "conversation",
                       model: str = "default") -> tuple[np.ndarray | None, int]:
    """Return (vectors aligned with frame rows, or None if some are missing; missing count)."""
    ids = frame["id"].tolist()
    cached = get_embeddings(store, ids, model, field)
    missing = len(set(ids) - cached.keys())
    if missing or not ids:
        return None, missing
    return np.stack([cached[i] for i in ids]), 0


def missing_embeddings(store: Store, version_id: int, *, field: str = "conversation",
                       model: str = "default") -> int:
    """Return how many distinct rows of a version have no cached embedding of this field
    (``version_embeddings``' missing count, counted in the store)."""
    found, total = count_embedded_version(store, version_id, model, field)
    return total - found


def embed_frame(store: Store, frame: pd.DataFrame, *, field: str = "conversation",
                model: str = "default", encoder=None, chunk: int = 1024,
                progress: Callable[[int, int], None] | None = None,
                device: str = "auto", engine: str = "local",
                cancelled: Callable[[], bool] | None = None) -> np.ndarray:
    """Return one vector per frame row, from the store's cache or the model (then cached, the
    model on ``device``).

    ``engine="ray"`` embeds the uncached rows on Ray Data from the size threshold on, in an
    actor pool that loads the model once per worker (a GPU each where the cluster has them).
    """
    if encoder is None and E.choose(engine, len(frame), "embed").engine == "ray":
        return _embed_ray(store, frame, field, model, progress, cancelled)
    return embed_rows(frame, cache=StoreCache(store), field=field, model=model,
                      encoder=encoder, chunk=chunk, progress=progress, device=device)


def _embed_ray(store: Store, frame: pd.DataFrame, field: str, model: str,
               progress: Callable[[int, int], None] | None,
               cancelled: Callable[[], bool] | None) -> np.ndarray:
    from . import ray_steps
    from .models import embed_backend

    cache = StoreCache(store)
    ids = frame["id"].tolist()
    cached = cache.get_embeddings(ids, model, field, backend=embed_backend("auto", model))
    todo = frame[~frame["id"].isin(cached.keys())].drop_duplicates("id")
    if len(todo):
        rows = E.map_rows(todo, ray_steps.embed_batch, kwargs={"field": field},
                          load=ray_steps.load_encoder, load_kwargs={"model": model},
                          use_gpu=True,
                          home=E.data_folder(store.path), progress=progress,
                          cancelled=cancelled)
        made = _cache_vectors(cache, todo["id"].tolist(), rows, model, field)
        cached = {**cached, **made}
    return np.stack([cached[i] for i in ids]) if ids else np.zeros((0, 384), np.float32)


def _cache_vectors(cache: StoreCache, ids: list[str], rows: pd.DataFrame, model: str,
                   field: str) -> dict[str, np.ndarray]:
    """Cache embed_batch rows (aligned with ``ids``) under the backend that made each; return
    the vectors by id."""
    from . import ray_steps

    vectors = ray_steps.vectors_of(rows)
    for backend, part in rows.reset_index(drop=True).groupby("backend", sort=False):
        cache.put_embeddings([ids[i] for i in part.index], vectors[part.index], model, field,
                             backend=backend)  # the key of what made them
    return dict(zip(ids, vectors))


def embed_version(store: Store, version_id: int, *, field: str = "conversation",
                  model: str = "default", device: str = "auto", engine: str = "local",
                  progress: Callable[[int, int], None] | None = None,
                  cancelled: Callable[[], bool] | None = None) -> tuple[int, int]:
    """Fill the embedding cache for a stored version's field; return (distinct rows found in
    the cache, rows embedded now). On Ray (from the size threshold on, the size being the
    version's n_rows) only the uncached rows go from the store to Parquet shards and this
    process holds their vectors until cached, never a frame of the version."""
    from .models import embed_backend

    rows = store.version(version_id).n_rows or 0
    if E.choose(engine, rows, "embed").engine == "local":
        found, total = count_embedded_version(store, version_id, model, field)
        embed_frame(store, store.frame(version_id), field=field, model=model,
                    progress=progress, device=device)
        return found, total - found
    from . import ray_steps
    from .cache import unembedded_positions

    positions = unembedded_positions(store, version_id, model, field,
                                     backend=embed_backend("auto", model))
    found, _ = count_embedded_version(store, version_id, model, field,
                                      backend=embed_backend("auto", model))
    if len(positions):
        with E.version_shards(store, version_id, ("id", "messages"),
                              positions=positions) as (folder, total):
            made = E.map_shards(folder, total, ray_steps.embed_batch, kwargs={"field": field},
                                load=ray_steps.load_encoder, load_kwargs={"model": model},
                                use_gpu=True, progress=progress, cancelled=cancelled)
        ids = store.row_ids(version_id)["id"].tolist()
        _cache_vectors(StoreCache(store), [ids[p] for p in made["_pos"]], made, model, field)
    return found, len(positions)


def start_embedding(store: Store, version_id: int, *, field: str = "conversation",
                    model: str = "default", fields: Sequence[str] | None = None,
                    device: str = "auto", engine: str = "local") -> jobs.JobStatus:
    """Start a background job that fills the embedding cache for a version's field (or, with
    ``fields``, several fields one after the other), the embedder on ``device``;
    ``engine="ray"`` embeds on Ray Data from the size threshold on."""
    from .device import resolve_device

    resolve_device(device)  # an absent GPU fails here, not in the job
    params = {"store": str(store.path), "version_id": version_id, "field": field,
              "model": model, "device": device,
              **({} if E.check_engine(engine) == "local" else {"engine": engine})}
    if fields:
        params.update(field=fields[0], fields=list(fields))
    return jobs.start("embed", params)


def embedding_jobs(store: Store, version_id: int, field: str, *,
                   home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the embedding jobs started for a version that embed this field, newest first
    (found in the store's run registry: only their folders are read)."""
    return runs.statuses(
        store, ["embed"], lambda p: p.get("version_id") == version_id
        and field in (p.get("fields") or [p.get("field")]), home=home)


def find_duplicates(store: Store, frame: pd.DataFrame, options: DedupOptions, *,
                    progress: Callable[[int, int], None] | None = None,
                    engine: str = "local") -> pd.DataFrame:
    """Return duplicate clusters of a version's frame (exact, plus near/semantic if asked);
    ``progress(rows_hashed, rows)`` follows the MinHash pass. ``engine="ray"`` finds exact and
    near duplicates on Ray Data from the size threshold on (``engine.choose``); semantic
    duplicates stay local (they need every vector in one place)."""
    if check_dedup_engine(options, engine, len(frame)).engine == "ray":
        return _find_duplicates_ray(store, frame, options, progress)
    vectors = None
    if options.semantic:
        vectors, missing = version_embeddings(store, frame, field=options.field,
                                              model=options.model)
        if vectors is None:
            raise ConfigError(f"{missing} rows have no embedding yet: run the embedding job "
                              "first (semantic duplicates need every row embedded)")
    return dedup.find_duplicates(
        frame, field=options.field, near=options.minhash() if options.near else None,
        semantic_threshold=options.semantic_threshold if options.semantic else None,
        embeddings=vectors, keep=options.keep, score_column=options.score_column,
        progress=progress)


def check_dedup_engine(options: DedupOptions, engine: str, rows: int) -> E.Choice:
    """Return the engine that finds duplicates over ``rows`` rows; raise ConfigError when that
    is Ray and semantic duplicates are asked for (they run on the local engine only)."""
    choice = E.choose(engine, rows, "dedup")
    if choice.engine == "ray" and options.semantic:
        raise ConfigError("semantic duplicates run on the local engine only: switch semantic "
                          "off for engine ray, or use engine local")
    return choice


def _find_duplicates_ray(store: Store, frame: pd.DataFrame, options: DedupOptions,
                         progress: Callable[[int, int], None] | None) -> pd.DataFrame:
    from .ray_dedup import find_duplicates_ray

    columns = [c for c in ("row_key", "id", "messages", "prompt", "response",
                           options.score_column) if c and c in frame.columns]
    with E.dataset(frame, E.data_folder(store.path), columns) as ds:
        return find_duplicates_ray(ds, field=options.field,
                                   near=options.minhash() if options.near else None,
                                   keep=options.keep, score_column=options.score_column,
                                   progress=progress)


def find_version_duplicates(store: Store, version_id: int, options: DedupOptions, *,
                            progress: Callable[[int, int], None] | None = None,
                            engine: str = "local") -> pd.DataFrame:
    """Return ``find_duplicates`` of a stored version. On Ray (``engine="ray"`` from the size
    threshold on, the size being the version's n_rows) the rows go from the store to Parquet
    shards (``Store.write_shards``) and Ray reads them: no frame of the version is built here."""
    rows = store.version(version_id).n_rows or 0
    if check_dedup_engine(options, engine, rows).engine == "local" or options.score_column:
        # keep by score needs the version's score column: a frame, so the local way in
        return find_duplicates(store, store.frame(version_id), options, progress=progress,
                               engine=engine)
    from .ray_dedup import find_duplicates_ray

    with E.version_shards(store, version_id, ("id", "messages")) as (folder, _):
        return find_duplicates_ray(E.read_shards(folder), field=options.field,
                                   near=options.minhash() if options.near else None,
                                   keep=options.keep, progress=progress)


def member_rows(store: Store, version_id: int, clusters: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of a version that are in some cluster (row_key, prompt, response, ...):
    what ``cluster_summary`` and ``cluster_members`` read, without the other rows."""
    return store.rows_of(version_id, clusters["row_key"].unique().tolist())


def duplicate_curve(store: Store, frame: pd.DataFrame, options: DedupOptions,
                    method: Literal["near", "semantic"], thresholds: Sequence[float], *,
                    progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Return rows removed and clusters at each threshold, for the threshold explorer."""
    vectors = None
    if method == "semantic":
        vectors, missing = version_embeddings(store, frame, field=options.field,
                                              model=options.model)
        if vectors is None:
            raise ConfigError(f"{missing} rows have no embedding yet: run the embedding job")
    return dedup.threshold_curve(frame, method, thresholds, field=options.field,
                                 config=options.minhash(), embeddings=vectors, progress=progress)


def cluster_summary(frame: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """Return one row per cluster: id, size, method, lowest similarity, the kept row's text."""
    return cluster_texts(cluster_table(clusters), frame)


def cluster_table(clusters: pd.DataFrame) -> pd.DataFrame:
    """Return ``cluster_summary`` without the text: one row per cluster (id, size, method,
    lowest similarity, kept row), largest first, from the clusters alone (no row is read)."""
    if clusters.empty:
        return pd.DataFrame(columns=["cluster_id", "size", "method", "min_similarity",
                                     "kept_row"])
    out = clusters.groupby("cluster_id").agg(size=("row_key", "size"), method=("method", "first"),
                                             min_similarity=("similarity", "min")).reset_index()
    kept = clusters[clusters["kept"]].drop_duplicates("cluster_id").set_index("cluster_id")
    out["kept_row"] = kept["row_key"].reindex(out["cluster_id"]).astype("int64").to_numpy()
    return out.sort_values(["size", "cluster_id"], ascending=[False, True], ignore_index=True)


def cluster_texts(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Return rows of ``cluster_table`` with the kept row's text (its response, one line), read
    from ``frame``: any frame holding those rows (``row_key``, ``response``)."""
    text = frame.drop_duplicates("row_key").set_index("row_key")["response"]
    out = table.copy()
    out["kept_text"] = [" ".join(str(text.get(k, "")).split())[:160] for k in out["kept_row"]]
    return out


def cluster_page(store: Store, version_id: int, table: pd.DataFrame, start: int, n: int
                 ) -> pd.DataFrame:
    """Return ``n`` rows of a ``cluster_table`` from ``start`` with their kept texts, reading
    only those kept rows of the version (``Store.rows_of``)."""
    rows = table.iloc[start:start + n]
    return cluster_texts(rows, store.rows_of(version_id, rows["kept_row"].tolist())
                         if len(rows) else pd.DataFrame(columns=["row_key", "response"]))


def cluster_members(frame: pd.DataFrame, clusters: pd.DataFrame, cluster_id: int
                    ) -> pd.DataFrame:
    """Return one cluster's members with their prompt, response, similarity and keep flag."""
    members = clusters[clusters["cluster_id"] == cluster_id]
    rows = frame.set_index("row_key").loc[members["row_key"], ["prompt", "response"]]
    return members.reset_index(drop=True).join(rows.reset_index(drop=True))


def stored_cluster_members(store: Store, version_id: int, clusters: pd.DataFrame,
                           cluster_id: int) -> pd.DataFrame:
    """Return ``cluster_members`` of one cluster, reading only its rows of the version."""
    keys = clusters.loc[clusters["cluster_id"] == cluster_id, "row_key"].tolist()
    return cluster_members(store.frame_of(version_id, keys), clusters, cluster_id)


def apply_dedup(store: Store, version_id: int, frame: pd.DataFrame | None,
                clusters: pd.DataFrame, options: DedupOptions,
                overrides: Mapping[int, int | str] | None = None, *,
                extra_params: dict | None = None) -> VersionInfo:
    """Drop all but the kept member of each cluster into a new version; return it. Without
    ``frame`` only the version's row keys are read (the clusters say what to drop)."""
    if frame is None:
        dropped = dropped_rows(clusters, overrides)
        keys = store.row_keys(version_id)
        result = StepResult(pd.DataFrame({"row_key": keys[~np.isin(keys, dropped["row_key"])]}),
                            dropped)
    else:
        result = dedup.apply_clusters(frame, clusters, overrides=overrides)
    params = {**options.params(), "clusters": int(clusters["cluster_id"].nunique()),
              "overrides": {str(k): v for k, v in (overrides or {}).items()},
              **(extra_params or {})}
    return store.apply_step(version_id, result, operation="dedup", params=params)


def dropped_rows(clusters: pd.DataFrame, overrides: Mapping[int, int | str] | None = None
                 ) -> pd.DataFrame:
    """Return the rows ``dedup.apply_clusters`` drops for these clusters (row_key, reason,
    duplicate_of, detail), from the clusters alone: no other row is read."""
    members = clusters["row_key"].unique()
    return dedup.apply_clusters(pd.DataFrame({"row_key": members,
                                              "messages": [[]] * len(members)}),
                                clusters, overrides=overrides).dropped


# --- deduplication as a background job -------------------------------------------------------
DEDUP_CLUSTERS_FILE = "dedup_clusters.parquet"  # a dedup job's clusters in its run folder
DEDUP_OPTIONS_FILE = "dedup_options.json"  # and the options they were found with
DEDUP_OVERRIDES_FILE = "dedup_overrides.json"  # and the user's choices of what to keep


def dedup_options(params: Mapping) -> DedupOptions:
    """Return the DedupOptions of their ``params()`` (as a dedup job holds them); ConfigError
    naming an unknown option."""
    names = DedupOptions.__dataclass_fields__
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise ConfigError(f"dedup options: unknown option(s) {', '.join(unknown)}; "
                          f"they are {', '.join(names)}")
    return DedupOptions(**params)


def start_dedup(store: Store, version_id: int, options: DedupOptions, *,
                engine: str = "local", apply: bool = False, from_run: str = "",
                overrides: Mapping[int, int | str] | None = None) -> jobs.JobStatus:
    """Start a background job that finds a version's duplicate clusters (the "dedup" task):
    its progress names the phase and counts rows; the clusters are saved in the run folder
    (``dedup_job_clusters``). ``apply``: the job also saves the version without the dropped
    rows, keeping per cluster what ``overrides`` say (cluster id -> row key or "all").
    ``from_run``: a finished dedup job of these options on this version, whose saved clusters
    the job applies instead of finding them again."""
    check_dedup_engine(options, engine, store.version(version_id).n_rows or 0)
    params = {"store": str(store.path), "version_id": int(version_id),
              "options": options.params(), "engine": E.check_engine(engine), "apply": apply,
              "from_run": from_run,
              "overrides": {str(int(k)): v for k, v in (overrides or {}).items()}}
    return jobs.start("dedup", params)


def dedup_jobs(store: Store, version_id: int, *,
               home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the dedup jobs started on a version, newest first (from the run registry)."""
    return runs.statuses(store, ["dedup"], lambda p: p.get("version_id") == version_id,
                         home=home)


def save_dedup_run(run_dir: str | Path, clusters: pd.DataFrame, options: DedupOptions) -> None:
    """Write a dedup job's clusters (Parquet) and options into its run folder, each atomically
    (a reader never sees half a file)."""
    import orjson

    folder = Path(run_dir)
    write_atomic(folder / DEDUP_CLUSTERS_FILE, lambda tmp: clusters.to_parquet(tmp, index=False))
    write_atomic(folder / DEDUP_OPTIONS_FILE, orjson.dumps(options.params()))


def dedup_job_clusters(job: jobs.JobStatus) -> pd.DataFrame:
    """Return the clusters a finished dedup job saved; ConfigError when its run folder has
    none (a failed or cancelled job, or a folder from elsewhere)."""
    try:
        return pd.read_parquet(job.run_dir / DEDUP_CLUSTERS_FILE)
    except FileNotFoundError:
        raise ConfigError(f"dedup run {job.run_id}: no saved clusters ({DEDUP_CLUSTERS_FILE}); "
                          "press Find duplicates again") from None


def dedup_job_options(job: jobs.JobStatus) -> DedupOptions:
    """Return the options a dedup job found its clusters with."""
    return dedup_options((job.config.get("params") or {}).get("options") or {})


def dedup_job_matches(job: jobs.JobStatus, options: DedupOptions) -> bool:
    """Return whether a dedup job found its clusters with these options."""
    return ((job.config.get("params") or {}).get("options") or {}) == options.params()


def dedup_counts(clusters: pd.DataFrame, overrides: Mapping[int, int | str] | None = None
                 ) -> dict:
    """Return a dedup job's summary: clusters, rows to drop, and rows to drop by method."""
    keys = dedup.drop_plan(clusters, overrides)["row_key"] if overrides else \
        clusters.loc[~clusters["kept"], "row_key"]
    method = clusters.drop_duplicates("row_key").set_index("row_key")["method"]
    return {"clusters": int(clusters["cluster_id"].nunique()), "dropped": len(keys),
            "by_method": {str(k): int(v) for k, v in method.reindex(keys).value_counts().items()}}


def save_dedup_overrides(job: jobs.JobStatus, overrides: Mapping[int, int | str]) -> None:
    """Keep the user's choices for a finished find's clusters (cluster id -> row key to keep,
    or "all") in its run folder, atomically: a reload shows them and its Apply uses them."""
    import orjson

    plain = {str(int(k)): v if v == dedup.KEEP_ALL else int(v) for k, v in overrides.items()}
    write_atomic(job.run_dir / DEDUP_OVERRIDES_FILE, orjson.dumps(plain))


def dedup_job_overrides(job: jobs.JobStatus) -> dict[int, int | str]:
    """Return the choices ``save_dedup_overrides`` kept for a find ({} when none were made);
    ConfigError when the file is not a JSON object of them."""
    import orjson

    path = job.run_dir / DEDUP_OVERRIDES_FILE
    try:
        saved = orjson.loads(path.read_bytes())
        return {int(k): v if v == dedup.KEEP_ALL else int(v) for k, v in saved.items()}
    except FileNotFoundError:
        return {}
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        raise ConfigError(f"dedup run {job.run_id}: {DEDUP_OVERRIDES_FILE} is not a JSON object "
                          "of cluster id -> row key or \"all\"; delete it and choose again"
                          ) from None


# --- the threshold explorer's curve as a background job ----------------------------------------
DEDUP_CURVE_FILE = "dedup_curve.parquet"  # a dedup_curve job's curve in its run folder
CURVE_THRESHOLDS = {"near": tuple(round(0.5 + 0.05 * i, 2) for i in range(11)),
                    "semantic": tuple(round(0.80 + 0.02 * i, 2) for i in range(11))}


def curve_params(options: DedupOptions, method: str) -> dict:
    """Return what a threshold curve depends on: the method, the field, and the n-gram and
    permutations (near) or the embedding model (semantic); not the thresholds chosen."""
    if method not in CURVE_THRESHOLDS:
        raise ConfigError(f"method={method!r}: use near or semantic")
    return {"method": method, "field": options.field,
            **({"ngram": options.ngram, "num_perm": options.num_perm} if method == "near"
               else {"model": options.model})}


def start_dedup_curve(store: Store, version_id: int, options: DedupOptions, method: str
                      ) -> jobs.JobStatus:
    """Start a background job (the "dedup_curve" task) that computes ``duplicate_curve`` of a
    version at ``CURVE_THRESHOLDS[method]``, progress per row hashed; the curve is saved in its
    run folder (``dedup_job_curve``): the app never holds the version."""
    curve_params(options, method)
    store.version(version_id)
    return jobs.start("dedup_curve", {"store": str(store.path), "version_id": int(version_id),
                                      "options": options.params(), "method": method,
                                      "thresholds": list(CURVE_THRESHOLDS[method])})


def dedup_curve_jobs(store: Store, version_id: int, *,
                     home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the threshold-curve jobs started on a version, newest first."""
    return runs.statuses(store, ["dedup_curve"], lambda p: p.get("version_id") == version_id,
                         home=home)


def save_dedup_curve(run_dir: str | Path, curve: pd.DataFrame) -> None:
    """Write a threshold curve (threshold, rows_removed, clusters) into a run folder."""
    write_atomic(Path(run_dir) / DEDUP_CURVE_FILE, lambda tmp: curve.to_parquet(tmp, index=False))


def dedup_job_curve(job: jobs.JobStatus) -> pd.DataFrame:
    """Return the curve a finished dedup_curve job saved; ConfigError when it has none."""
    try:
        return pd.read_parquet(job.run_dir / DEDUP_CURVE_FILE)
    except FileNotFoundError:
        raise ConfigError(f"dedup_curve run {job.run_id}: no saved curve ({DEDUP_CURVE_FILE}); "
                          "compute the curve again") from None


def dedup_curve_changes(job: jobs.JobStatus, options: DedupOptions, method: str
                        ) -> dict[str, tuple]:
    """Return what differs between the curve a job computed and the one these options ask for
    (name -> (then, now)); empty when the job's curve is theirs."""
    params = job.config.get("params") or {}
    then = curve_params(dedup_options(params.get("options") or {}), params.get("method", ""))
    now = curve_params(options, method)
    return {k: (then.get(k), v) for k, v in now.items() if then.get(k) != v}


# --- cleaning --------------------------------------------------------------------------------
def eval_texts(store: Store, version_id: int, roles: Sequence[str] = ("user",)
               ) -> tuple[list[str], list[str]]:
    """Return (texts, ids) of an evaluation version's turns of the given roles.

    Prompts (user turns) by default: answers in one house style share boilerplate sentences
    with every training answer, which n-gram overlap would call contamination.
    """
    frame = store.frame(version_id)
    texts, ids = [], []
    for row_id, messages in zip(frame["id"], frame["messages"]):
        for m in messages:
            if m["role"] in roles:
                texts.append(m["content"])
                ids.append(row_id)
    return texts, ids


def default_token_counter():
    """Return the default language model's tokenizer, for token-based length rules."""
    from transformers import AutoTokenizer

    from .models import resolve_lm

    return AutoTokenizer.from_pretrained(str(resolve_lm("default")))


def clean_preview(frame: pd.DataFrame, rules: Sequence, *, samples: int = 5,
                  progress: Callable[[int, int, str], None] | None = None,
                  row_progress: Callable[[int, int, str], None] | None = None,
                  engine: str = "local", home: str | Path | None = None,
                  cancelled: Callable[[], bool] | None = None):
    """Return what each rule would drop or change, and the version apply would save from it
    (a ``clean.CleanRun``), without changing anything. ``progress`` follows the rules,
    ``row_progress`` the rows of every rule (``clean.run`` says how). ``engine="ray"`` runs
    the rules batch by batch on Ray Data from the size threshold on (``engine.choose``), with
    shards under ``home`` (the data folder), and returns the same CleanRun."""
    from . import clean, ray_steps

    if E.choose(engine, len(frame), "clean").engine == "local":
        return clean.run(frame, list(rules), samples=samples, progress=progress,
                         row_progress=row_progress)
    clean.check_inputs(frame, rules, samples)
    report = None if row_progress is None else (
        lambda done, total: row_progress(done, total, "rules on Ray"))
    outcomes = E.map_rows(frame, ray_steps.clean_batch,
                          kwargs={"rules": list(rules), "samples": samples},
                          home=home or E.data_folder(), progress=report, cancelled=cancelled)
    return ray_steps.clean_result(frame, outcomes, list(rules), samples)


def clean_version(store: Store, version_id: int, rules: Sequence, *, samples: int = 5,
                  row_progress: Callable[[int, int, str], None] | None = None,
                  engine: str = "local", cancelled: Callable[[], bool] | None = None):
    """Return ``clean_preview`` of a stored version. On Ray (from the size threshold on, the
    size being the version's n_rows) the rows go from the store to Parquet shards and only
    what the rules hit, dropped, changed or flagged comes back: the CleanRun's ``kept`` then
    holds the kept row keys and the changed rows' new content (all ``apply_clean`` saves)."""
    from . import clean, ray_steps

    rows = store.version(version_id).n_rows or 0
    if E.choose(engine, rows, "clean").engine == "local":
        return clean_preview(store.frame(version_id), rules, samples=samples,
                             row_progress=row_progress)
    clean.check_inputs(pd.DataFrame(columns=["row_key", "messages"]), rules, samples)
    report = None if row_progress is None else (
        lambda done, total: row_progress(done, total, "rules on Ray"))
    with E.version_shards(store, version_id, SHARD_COLUMNS) as (folder, total):
        outcomes = E.map_shards(folder, total, ray_steps.clean_changes_batch,
                                kwargs={"rules": list(rules), "samples": samples},
                                sparse=True, progress=report, cancelled=cancelled)
    return ray_steps.clean_changes_result(store.row_keys(version_id), outcomes, list(rules),
                                          samples)


def apply_clean(store: Store, version_id: int, frame: pd.DataFrame | None, rules: Sequence, *,
                extra_params: dict | None = None, result=None, engine: str = "local",
                progress: Callable[[int, int], None] | None = None) -> VersionInfo:
    """Apply cleaning rules in order into a new version; return it (without ``frame``, the
    rules run on the stored version: ``clean_version``).

    ``result``: the StepResult of a preview of these same rules on this frame
    (``clean_preview(...).result``), saved as it is instead of running the rules again.
    ``engine``: where the rules run when there is no result (the version is the same).
    """
    if not rules:
        raise ConfigError("no cleaning rule is switched on")
    if result is None:
        report = None if progress is None else (lambda d, t, _n: progress(d, t))
        result = (clean_version(store, version_id, rules, samples=0, engine=engine,
                                row_progress=report) if frame is None else
                  clean_preview(frame, rules, samples=0, engine=engine, row_progress=report,
                                home=E.data_folder(store.path))).result
    params = {"rules": [r.params() for r in rules], **(extra_params or {})}
    return store.apply_step(version_id, result, operation="clean", params=params)


# --- cleaning as a background job ------------------------------------------------------------
CLEAN_RUN_FILE = "clean_run.json"  # a clean job's CleanRun (clean.run_record) in its run folder
RULE_INPUTS = ("eval_texts", "eval_ids", "count_tokens")  # fetched again, not options


def rule_specs(rules: Sequence) -> list[dict]:
    """Return each rule's options as a recipe's clean step holds them (``recipes.clean_rules``
    builds the rules back): eval texts and tokenizers are inputs, fetched again."""
    return [{k: v for k, v in r.params().items() if k not in RULE_INPUTS} for r in rules]


def start_clean(store: Store, version_id: int, rules: Sequence, *,
                eval_version: int | None = None, engine: str = "local",
                apply: bool = False, from_run: str = "") -> jobs.JobStatus:
    """Start a background job that runs the cleaning rules over a version (the "clean" task):
    its progress counts rows x rules and names the rule being run; its CleanRun is saved in
    the run folder (``clean_job_run``). ``apply``: the job also saves the result as a new
    version. ``eval_version``: the evaluation version a contamination rule reads.
    ``from_run``: a finished clean job of these rules on this version, whose saved result the
    job applies instead of running the rules again."""
    if not rules:
        raise ConfigError("no cleaning rule is switched on")
    params = {"store": str(store.path), "version_id": int(version_id),
              "rules": rule_specs(rules), "eval_version": eval_version,
              "engine": E.check_engine(engine), "apply": apply, "from_run": from_run}
    return jobs.start("clean", params)


def clean_jobs(store: Store, version_id: int, *,
               home: str | Path | None = None) -> list[jobs.JobStatus]:
    """Return the clean jobs started on a version, newest first (from the run registry)."""
    return runs.statuses(store, ["clean"], lambda p: p.get("version_id") == version_id,
                         home=home)


def save_clean_run(run_dir: str | Path, run, frame: pd.DataFrame) -> None:
    """Write a CleanRun of ``frame`` into a run folder (atomically: a reader never sees half a
    file), with the id of every row a rule hits: the preview's label precision reads those
    rows' labels without loading the version."""
    import orjson

    from . import clean

    record = clean.run_record(run)
    hit = {int(k) for r in run.preview.rules for k in r.row_keys}
    ids = frame[frame["row_key"].isin(hit)]
    record["ids"] = dict(zip((str(int(k)) for k in ids["row_key"]), ids["id"]))
    path = Path(run_dir) / CLEAN_RUN_FILE
    write_atomic(path, orjson.dumps(record, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


def _clean_record(job: jobs.JobStatus) -> dict:
    import orjson

    try:
        return orjson.loads((job.run_dir / CLEAN_RUN_FILE).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"clean run {job.run_id}: no saved result ({CLEAN_RUN_FILE}); "
                          "preview the rules again") from None


def clean_job_run(job: jobs.JobStatus, frame: pd.DataFrame):
    """Return the CleanRun a finished clean job saved, its kept rows from ``frame`` (the
    version the job read)."""
    from . import clean

    return clean.run_from_record(frame, _clean_record(job))


def clean_job_preview(job: jobs.JobStatus) -> tuple:
    """Return (CleanPreview, row_key and id of every row a rule hits) of a finished clean job,
    without reading the version's rows."""
    from . import clean

    record = _clean_record(job)
    ids = record.get("ids") or {}
    hits = pd.DataFrame({"row_key": [int(k) for k in ids], "id": list(ids.values())})
    return clean.preview_from_record(record), hits


def job_matches(job: jobs.JobStatus, rules: Sequence, eval_version: int | None) -> bool:
    """Return whether a clean job ran these rules (same options, same evaluation version)."""
    params = job.config.get("params") or {}
    return params.get("rules") == rule_specs(rules) and (
        params.get("eval_version") == eval_version
        or not any(r.name == "contamination" for r in rules))
