"""write_atomic: the one way the workbench replaces a file of its own."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.atomic import write_atomic


def test_bytes_text_and_a_writer_each_replace_the_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    assert write_atomic(path, b"new bytes") == path and path.read_bytes() == b"new bytes"
    write_atomic(path, "texte accentué")
    assert path.read_text(encoding="utf-8") == "texte accentué"
    table = tmp_path / "t.parquet"
    write_atomic(table, lambda tmp: pd.DataFrame({"a": [1, 2]}).to_parquet(tmp, index=False))
    assert pd.read_parquet(table)["a"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "t.parquet"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "result.parquet"
    path.write_bytes(b"the old result")

    def half_then_fail(tmp):
        tmp.write_bytes(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"the old result"
    assert [p.name for p in tmp_path.iterdir()] == ["result.parquet"]


def test_each_write_uses_a_temporary_name_of_its_own(tmp_path):
    seen = []
    for _ in range(2):
        write_atomic(tmp_path / "x", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"1")))
    assert seen[0] != seen[1] and all(n.startswith(".x.") and n.endswith(".tmp") for n in seen)
