"""The bad-input corpus (tests/bad_corpus.py writes it) through the CLI: every file gives a
one-line error that names it, or per-row rejections with imported + rejected = read, and never
a traceback, for `import`, `eval-import`, `label --file` and `train --config`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bad_corpus import Case, write_corpus
from click.testing import CliRunner, Result
from helpers_app import chat_file

from workbench.cli import main
from workbench.store import Store

SUMMARY = re.compile(r"read (\d+) rows, imported (\d+), rejected (\d+)")
REJECTED = re.compile(r"^  rejected (.+?):(\d+): (\S.*?): .+ — .+$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Case]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.delenv("WORKBENCH_STORE", raising=False)
    store = Store(tmp_path / "wb.duckdb")
    store.import_file(chat_file(tmp_path / "d.jsonl", 4), "d")  # for labels and training
    return tmp_path


def run(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--store", str(home / "wb.duckdb"), *args],
                              prog_name="workbench")


def command(case: Case) -> list[str]:
    name = "c-" + case.path.stem
    return {"import": ["import", str(case.path), "-d", name, "--no-progress"],
            "eval-import": ["eval-import", str(case.path), "--no-similarity"],
            "labels": ["label", "d", "--file", str(case.path)],
            "config": ["train", "d", "--config", str(case.path), "--model", "tiny",
                       "--detach"]}[case.kind]


def assert_one_line_error(case: Case, result: Result) -> None:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), (case.what, result.stderr)
    assert not lines[0].startswith("error: unexpected"), (case.what, lines[0])
    assert case.path.name in lines[0], (case.what, lines[0])  # it names the file


def assert_accounted(case: Case, result: Result, home: Path) -> None:
    """Every row read is imported or rejected, each rejection names line and field, and the
    store holds what the report says."""
    [(read, imported, rejected)] = SUMMARY.findall(result.stdout)
    read, imported, rejected = int(read), int(imported), int(rejected)
    assert imported + rejected == read, (case.what, result.stdout)
    shown = [m for line in result.stdout.splitlines() if (m := REJECTED.match(line))]
    assert len(shown) == min(rejected, 50), (case.what, result.stdout)
    if case.kind == "import":
        store = Store(home / "wb.duckdb")
        version = store.versions("c-" + case.path.stem)[-1]
        assert version.counts == {"rows_read": read, "imported": imported,
                                  "rejected": rejected}, case.what
        assert version.n_rows == imported and len(store.import_rejects(version.version_id)) == rejected


def test_the_corpus_has_at_least_50_files_of_every_kind_of_input(corpus):
    kinds = {c.kind for c in corpus}
    assert len(corpus) >= 50 and kinds == {"import", "eval-import", "labels", "config"}


def check_case(case: Case, home: Path) -> None:
    result = run(home, *command(case))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (case.what, repr(result.exception))
    assert "Traceback" not in result.output + result.stderr, case.what
    if result.exit_code == 0 and case.kind in ("import", "eval-import"):
        assert_accounted(case, result, home)
    else:  # label files and training configs are all or nothing
        assert result.exit_code == 1, (case.what, result.stdout)
        assert_one_line_error(case, result)


@pytest.mark.parametrize("kind", ["import", "eval-import", "labels", "config"])
def test_every_corpus_file_gives_one_line_or_per_row_rejections(corpus, home, kind):
    failures = []
    for case in (c for c in corpus if c.kind == kind):
        try:
            check_case(case, home)
        except AssertionError as e:  # report every file that fails, not just the first
            failures.append(f"{case.path.name}: {str(e).splitlines()[0][:400]}")
    assert not failures, "\n".join(failures)
    if kind == "labels":  # a refused label file changed nothing
        assert "0 good, 0 bad, 4 unlabelled" in run(home, "labels", "d").stdout
