"""`workbench dedup-file`: exact + near dedup of Parquet files, file to file, no store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.dedup import MinHashConfig
from workbench.dedup_file import dedup_files
from workbench.exceptions import ConfigError

BASE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch "
        "and wonders whether the fence needs painting before the long winter arrives")
OTHER = ("Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and "
         "oxygen; the light reactions happen in the thylakoid membranes of the chloroplast")


def alpaca_files(folder: Path) -> list[Path]:
    """Two Alpaca Parquet files (two row groups in the first): row 3 repeats row 0 exactly
    (upper-cased), row 5 is a near copy of row 1, and the second file's row 0 repeats row 2."""
    outputs = [BASE, OTHER, "A short unrelated answer about tea.", BASE.upper(),
               "Another unrelated answer, on trains.", OTHER.replace("glucose", "sugar")]
    first = pd.DataFrame({"instruction": [f"q{i}" for i in range(6)], "input": [""] * 6,
                          "output": outputs})
    first.loc[3, "instruction"] = "Q0"
    first.loc[5, "instruction"] = "q1"
    second = pd.DataFrame({"instruction": ["q2", "q9"], "input": ["", ""],
                           "output": [outputs[2], "Something else entirely, about boats."]})
    paths = [folder / "a.parquet", folder / "b.parquet"]
    pq.write_table(pa.Table.from_pandas(first, preserve_index=False), paths[0],
                   row_group_size=4)
    pq.write_table(pa.Table.from_pandas(second, preserve_index=False), paths[1])
    return paths


def test_kept_and_removed_files_account_for_every_row(tmp_path):
    inputs = alpaca_files(tmp_path)
    out, removed = tmp_path / "kept.parquet", tmp_path / "removed.parquet"
    result = dedup_files(inputs, out, removed, near=MinHashConfig(threshold=0.7))
    kept, gone = pd.read_parquet(out), pd.read_parquet(removed)
    assert (result.rows, result.kept, result.removed) == (8, 5, 3)
    assert kept.columns.tolist() == ["instruction", "input", "output"]
    assert kept["instruction"].tolist() == ["q0", "q1", "q2", "q4", "q9"]
    assert gone[["reason", "duplicate_of", "source_file", "source_row"]].values.tolist() == [
        ["exact_duplicate", 0, str(inputs[0]), 3],
        ["near_duplicate", 1, str(inputs[0]), 5],
        ["exact_duplicate", 2, str(inputs[1]), 0]]
    assert gone["detail"].notna().all()


def test_outputs_are_never_overwritten_without_force(tmp_path):
    inputs = alpaca_files(tmp_path)
    out, removed = tmp_path / "kept.parquet", tmp_path / "removed.parquet"
    out.write_text("mine")
    with pytest.raises(ConfigError, match=f"{out}: exists; .* --force"):
        dedup_files(inputs, out, removed)
    assert out.read_text() == "mine" and not removed.exists()
    dedup_files(inputs, out, removed, force=True)
    assert len(pd.read_parquet(out)) == 6  # exact duplicates only: no near pass asked
    with pytest.raises(ConfigError, match="is an input file"):
        dedup_files(inputs, inputs[1], removed, force=True)


def test_bad_inputs_get_one_line_naming_the_file(tmp_path):
    out, removed = tmp_path / "kept.parquet", tmp_path / "removed.parquet"
    text = tmp_path / "rows.jsonl"
    text.write_text('{"instruction": "q", "output": "a"}\n')
    with pytest.raises(ConfigError, match=f"{text}: not a Parquet file"):
        dedup_files([text], out, removed)
    with pytest.raises(ConfigError, match=f"{tmp_path / 'none.parquet'}: no such file"):
        dedup_files([tmp_path / "none.parquet"], out, removed)
    odd = tmp_path / "odd.parquet"
    pq.write_table(pa.table({"title": ["q"], "body": ["a"]}), odd)
    with pytest.raises(ConfigError, match=f"{odd}: missing column: found body, title; "
                                          "expected 'messages'"):
        dedup_files([odd], out, removed)
    empty_output = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"instruction": ["q", "r"], "output": ["a", None]}), empty_output)
    with pytest.raises(ConfigError, match=f"{empty_output} row 1: output"):
        dedup_files([empty_output], out, removed)
    assert not out.exists() and not removed.exists()


def test_cli_dedup_file_prints_counts_and_refuses_existing_outputs(tmp_path):
    inputs = [str(p) for p in alpaca_files(tmp_path)]
    args = ["dedup-file", *inputs, "--out", str(tmp_path / "k.parquet"), "--removed",
            str(tmp_path / "r.parquet"), "--threshold", "0.7"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "8 rows read, 5 kept, 3 removed in 3 clusters (engine local)" in first.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert f"error: {tmp_path / 'k.parquet'}: exists" in again.output
