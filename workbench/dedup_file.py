"""Exact and near duplicates of the user's Parquet files, file to file, without the store.

For data bigger than the store's disk (as NeMo Curator and datatrove run): the rows are read
straight from the input files (one read unit per Parquet row group: with the local engine in
this process, with ``ray`` in Ray tasks), deduplicated by the same functions as a stored
version (``dedup.find_duplicates`` or ``ray_dedup.find_duplicates_ray``), and written back
row group by row group: the kept rows as they were, the removed rows with why
(``reason``, ``duplicate_of``) and where they came from. Nothing is imported; nothing is
silently dropped: kept + removed = the input rows.

A row is numbered by its place in the inputs taken in order (the first file's rows first);
``duplicate_of`` is that number of the kept row it duplicates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import curate, dedup
from . import engine as E
from .exceptions import ConfigError
from .schema import RowError, convert, detect_shape, shape_hint

REMOVED_COLUMNS = ("reason", "duplicate_of", "detail", "source_file", "source_row")
_NESTED = ("messages", "conversations")  # may be stored as JSON text


@dataclass(frozen=True)
class Unit:
    """One Parquet row group to read: its file, its number and the number of its first row
    among all inputs."""

    path: str
    row_group: int
    first: int
    shape: str


@dataclass(frozen=True)
class FileDedup:
    """What dedup_files did: rows read, kept and removed, clusters, the engine's choice."""

    rows: int
    kept: int
    removed: int
    clusters: int
    engine: str


def plan(inputs: Sequence[str | Path]) -> tuple[list[Unit], pa.Schema]:
    """Return the row groups of the inputs in order and their common schema, reading only the
    files' footers and first rows; raise ConfigError naming the file that cannot be used."""
    if not inputs:
        raise ConfigError("give at least one input Parquet file")
    units, schema, first = [], None, 0
    for raw in inputs:
        path = Path(raw)
        if not path.is_file():
            raise ConfigError(f"{path}: no such file; give an existing Parquet file")
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise ConfigError(f"{path}: not a Parquet file ({e}); convert it, or import it "
                              "with `workbench import`") from None
        if schema is None:
            schema = file.schema_arrow
        elif not file.schema_arrow.equals(schema):
            raise ConfigError(f"{path}: its columns {file.schema_arrow.names} differ from "
                              f"{inputs[0]}'s {schema.names}; give files of one layout")
        shape = _shape_of(path, file)
        for group in range(file.num_row_groups):
            units.append(Unit(str(path), group, first, shape))
            first += file.metadata.row_group(group).num_rows
    return units, schema


def _shape_of(path: Path, file: pq.ParquetFile) -> str:
    names = {n: None for n in file.schema_arrow.names}
    shape = detect_shape(names)
    if shape is None or (shape == "alpaca" and "output" not in names):
        raise ConfigError(f"{path}: missing column: {shape_hint(names)}")
    return shape


def read_unit(unit: Unit) -> pd.DataFrame:
    """Return one row group as rows ``_pos``, ``row_key`` (both the row's number) and
    ``messages`` (JSON text), converted as an import converts them."""
    table = pq.ParquetFile(unit.path).read_row_group(unit.row_group)
    messages = []
    for i, record in enumerate(table.to_pylist()):
        for key in _NESTED:
            if isinstance(record.get(key), str):
                record[key] = orjson.loads(record[key])
        try:
            converted, _ = convert(record, unit.shape)
        except RowError as e:
            raise ConfigError(f"{unit.path} row {_row_in_file(unit) + i}: {e}") from None
        messages.append(orjson.dumps(converted).decode())
    pos = np.arange(unit.first, unit.first + len(messages), dtype=np.int64)
    return pd.DataFrame({"_pos": pos, "row_key": pos, "messages": messages})


def _read_units(batch: pd.DataFrame) -> pd.DataFrame:
    """Ray task: read the row groups named by a batch of units."""
    return pd.concat([read_unit(Unit(**orjson.loads(u))) for u in batch["unit"]],
                     ignore_index=True)


def _row_in_file(unit: Unit) -> int:
    file = pq.ParquetFile(unit.path)
    return sum(file.metadata.row_group(g).num_rows for g in range(unit.row_group))


def check_outputs(inputs: Sequence[str | Path], outputs: Sequence[str | Path], force: bool
                  ) -> None:
    """Refuse outputs that exist (unless ``force``) or that are one of the inputs."""
    sources = {Path(p).resolve() for p in inputs}
    for out in outputs:
        path = Path(out)
        if path.resolve() in sources:
            raise ConfigError(f"{path}: is an input file; write the output elsewhere")
        if path.exists() and not force:
            raise ConfigError(f"{path}: exists; choose another name, or pass --force to "
                              "overwrite it")
        if not path.parent.exists():
            raise ConfigError(f"{path}: folder {path.parent} does not exist; create it first")


def dedup_files(inputs: Sequence[str | Path], out: str | Path, removed: str | Path, *,
                field: dedup.Field = "conversation", near: dedup.MinHashConfig | None = None,
                keep: dedup.KeepPolicy = "first", engine: str = "local", force: bool = False,
                progress: Callable[[int, int], None] | None = None) -> FileDedup:
    """Write the inputs' rows without their exact and (with ``near``) near duplicates to
    ``out``, and the removed rows with reason, duplicate_of, detail, source_file and
    source_row to ``removed``; return the counts."""
    check_outputs(inputs, [out, removed], force)
    if Path(out).resolve() == Path(removed).resolve():
        raise ConfigError(f"{out}: give different files for the kept and the removed rows")
    units, schema = plan(inputs)
    rows = units[-1].first + pq.ParquetFile(units[-1].path).metadata.row_group(
        units[-1].row_group).num_rows if units else 0
    choice = E.choose(engine, rows, "dedup")
    if choice.engine == "ray":
        clusters = _clusters_ray(units, field, near, keep, progress)
    else:
        frame = E.decode(pd.concat([read_unit(u) for u in units], ignore_index=True)
                         ) if units else pd.DataFrame({"row_key": [], "messages": []})
        clusters = dedup.find_duplicates(frame.drop(columns="_pos", errors="ignore"),
                                         field=field, near=near, keep=keep, progress=progress)
    dropped = curate.dropped_rows(clusters)
    _write(units, schema, dropped, Path(out), Path(removed))
    return FileDedup(rows, rows - len(dropped), len(dropped),
                     int(clusters["cluster_id"].nunique()) if len(clusters) else 0,
                     choice.engine)


def _clusters_ray(units: list[Unit], field: str, near: dedup.MinHashConfig | None, keep: str,
                  progress: Callable[[int, int], None] | None) -> pd.DataFrame:
    from .ray_dedup import find_duplicates_ray

    ray = E.ray_session()
    items = [{"unit": orjson.dumps(u.__dict__).decode()} for u in units]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _read_units, batch_format="pandas", batch_size=1)
    return find_duplicates_ray(ds, field=field, near=near, keep=keep, progress=progress)


def _write(units: list[Unit], schema: pa.Schema, dropped: pd.DataFrame, out: Path,
           removed: Path) -> None:
    """Copy the inputs row group by row group: dropped rows to ``removed`` with why, the
    others to ``out``; written under temporary names, then moved into place."""
    by_key = dropped.set_index("row_key")
    extra = pa.schema([("reason", pa.string()), ("duplicate_of", pa.int64()),
                       ("detail", pa.string()), ("source_file", pa.string()),
                       ("source_row", pa.int64())])
    tmp_out, tmp_removed = out.with_name(out.name + ".part"), removed.with_name(
        removed.name + ".part")
    removed_schema = pa.schema([*schema, *extra])
    try:
        with pq.ParquetWriter(tmp_out, schema) as kept_w, \
                pq.ParquetWriter(tmp_removed, removed_schema) as removed_w:
            in_file = 0
            for number, unit in enumerate(units):
                if number and unit.path != units[number - 1].path:
                    in_file = 0
                table = pq.ParquetFile(unit.path).read_row_group(unit.row_group)
                pos = np.arange(unit.first, unit.first + table.num_rows)
                gone = np.isin(pos, by_key.index.to_numpy())
                kept_w.write_table(table.filter(pa.array(~gone)))
                if gone.any():
                    why = by_key.loc[pos[gone]]
                    part = table.filter(pa.array(gone))
                    for name, values in (
                            ("reason", why["reason"].tolist()),
                            ("duplicate_of", [None if pd.isna(v) else int(v)
                                              for v in why["duplicate_of"]]),
                            ("detail", why["detail"].tolist()),
                            ("source_file", [unit.path] * len(why)),
                            ("source_row", (pos[gone] - unit.first + in_file).tolist())):
                        part = part.append_column(extra.field(name),
                                                  pa.array(values, extra.field(name).type))
                    removed_w.write_table(part)
                in_file += table.num_rows
        tmp_out.replace(out)
        tmp_removed.replace(removed)
    finally:
        tmp_out.unlink(missing_ok=True)
        tmp_removed.unlink(missing_ok=True)


def describe(result: FileDedup) -> str:
    """Return the one-line summary the CLI prints."""
    return (f"{result.rows} rows read, {result.kept} kept, {result.removed} removed in "
            f"{result.clusters} clusters (engine {result.engine})")

