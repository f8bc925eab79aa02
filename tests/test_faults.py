"""Fault injection: a full disk, kill -9 in the middle of a write, a reused pid, a fatal
DuckDB error. After each, the same process and a second one must work on the store again, with
no row lost, and the CLI must say what happened in one line.

The full disk is simulated with RLIMIT_FSIZE (no root, no special filesystem): every write at
an offset past the limit fails with EFBIG ("File too large"), as a full disk fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from helpers_app import ROOT, chat_file
from test_train import rows, tiny_config

from workbench import evaluation, jobs, train, training
from workbench import store as store_module
from workbench.cli import main
from workbench.exceptions import StoreError
from workbench.sample import SAMPLE_DIR
from workbench.schema import Example
from workbench.store import Store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="RLIMIT_FSIZE and /proc start times are Linux behaviour")
LIMIT = 64 * 1024  # far below the store file's size, above a small write-ahead log

# A process holding the store that obeys one JSON command per stdin line and answers with one
# JSON line, so the test can fill "the disk" under it, look from other processes, then free it.
CHILD = r"""
import json, resource, sys
from workbench import curate
from workbench.store import Store

store = Store(sys.argv[1], lock_timeout=10)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
options = curate.DedupOptions(near=False)
found = {}
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "limit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (cmd["bytes"], hard))
            out = {}
        elif cmd["op"] == "unlimit":
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            out = {}
        elif cmd["op"] == "import":
            version, _ = store.import_file(cmd["file"], cmd["dataset"])
            out = {"rows": version.n_rows}
        elif cmd["op"] == "find_duplicates":
            vid = store.active_version(cmd["dataset"])
            frame = store.frame(vid)
            found.update(vid=vid, frame=frame,
                         clusters=curate.find_duplicates(store, frame, options))
            out = {"clusters": int(found["clusters"]["cluster_id"].nunique())}
        elif cmd["op"] == "apply_dedup":
            version = curate.apply_dedup(store, found["vid"], found["frame"], found["clusters"],
                                         options)
            out = {"rows": version.n_rows}
        elif cmd["op"] == "list":
            out = {"datasets": store.datasets()["name"].tolist()}
        print(json.dumps({"ok": True, **out}), flush=True)
    except Exception as e:
        print(json.dumps({"ok": False, "type": type(e).__name__, "message": str(e)}),
              flush=True)
"""


class Child:
    """The store-holding process driven by CHILD."""

    def __init__(self, tmp_path: Path, store_path: Path):
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        self.proc = subprocess.Popen([sys.executable, str(script), str(store_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=_env())

    def do(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the child died (exit {self.proc.wait()})"
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _env(**extra: str) -> dict[str, str]:
    # The child processes import this checkout's workbench, whatever is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path, **extra}


def cli(store_path: Path, *args: str, limit: int | None = None, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess:
    """Run `workbench --store STORE ARGS` in a new process, optionally under a file size limit."""
    def limited() -> None:  # CPython ignores SIGXFSZ, so a write past the limit fails EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return subprocess.run([sys.executable, "-m", "workbench.cli", "--store", str(store_path),
                           *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=_env(**env), preexec_fn=limited if limit else None, check=False)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def train_store(tmp_path: Path) -> tuple[Path, list[str]]:
    """A store file holding the sample training set (it has planted exact duplicates)."""
    path = tmp_path / "store.duckdb"
    store = Store(path)
    version, _ = store.import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    return path, store.frame(version.version_id)["id"].tolist()


# --- a full disk ------------------------------------------------------------------------------

def test_disk_full_during_import_and_dedup_then_both_processes_work_again(tmp_path,
                                                                           train_store):
    path, ids = train_store
    big = chat_file(tmp_path / "big.jsonl", 3000)
    child = Child(tmp_path, path)
    try:
        assert child.do("find_duplicates", dataset="train")["clusters"] > 0
        assert child.do("limit", bytes=1)["ok"]  # the disk is full: not one byte more

        failed = child.do("import", file=str(big), dataset="big")
        assert (failed["ok"], failed.get("type")) == (False, "DiskFullError"), failed
        assert "disk full: free space and retry" in failed["message"]
        failed = child.do("apply_dedup")
        assert (failed["ok"], failed.get("type")) == (False, "DiskFullError"), failed
        assert child.do("list") == {"ok": True, "datasets": ["train"]}  # reads still work

        # Another process is not locked out while the first one sits on a full disk.
        started = time.monotonic()
        listed = cli(path, "list")
        assert listed.returncode == 0, listed.stderr
        assert "train" in listed.stdout and "big" not in listed.stdout
        assert time.monotonic() - started < 20

        # Room for the write-ahead log but not for folding it into the file: the change is
        # committed (the log is replayed by whoever opens the file next), so the call stands.
        assert child.do("limit", bytes=LIMIT)["ok"]
        small = chat_file(tmp_path / "small.jsonl", 5)
        assert child.do("import", file=str(small), dataset="small") == {"ok": True, "rows": 5}
        listed = cli(path, "list")
        assert listed.returncode == 0 and "small" in listed.stdout, listed.stderr

        assert child.do("unlimit")["ok"]  # space is back: the same process carries on
        assert child.do("import", file=str(big), dataset="big") == {"ok": True, "rows": 3000}
        deduped = child.do("apply_dedup")
        assert deduped["ok"] and deduped["rows"] < len(ids), deduped
    finally:
        child.close()

    store = Store(path)  # and a second process sees every row, each change made once
    assert [v.operation for v in store.versions("train")] == ["import", "dedup"]
    assert [v.operation for v in store.versions("big")] == ["import"]
    assert [v.n_rows for v in store.versions("small")] == [5]
    assert store.frame(store.versions("train")[0].version_id)["id"].tolist() == ids
    assert len(store.frame(store.active_version("train"))) == deduped["rows"]
    assert len(store.frame(store.active_version("big"))) == 3000


def test_the_cli_says_disk_full_in_one_line_and_works_once_there_is_room(tmp_path,
                                                                          train_store):
    path, _ = train_store
    data = chat_file(tmp_path / "more.jsonl", 2000)
    error = one_line_error(cli(path, "import", str(data), "-d", "more", "--no-progress",
                               limit=1))
    assert "disk full: free space and retry" in error and str(path) in error
    assert "Traceback" not in error
    done = cli(path, "import", str(data), "-d", "more", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert [v.n_rows for v in Store(path).versions("more")] == [2000]


# --- kill -9 in the middle of a write -----------------------------------------------------------

# Stops inside the write transaction, after every row is inserted and just before the commit,
# says so, and waits there to be killed.
KILLED = r"""
import sys, time
from workbench.store import Store

finish = Store._finish_version
def stall(self, con, vid, **kw):
    finish(self, con, vid, **kw)
    print("inside the transaction", flush=True)
    time.sleep(600)
Store._finish_version = stall
store = Store(sys.argv[1])
if sys.argv[2] == "import":
    store.import_file(sys.argv[3], "killed")
elif sys.argv[2] == "dedup":
    from workbench import curate
    options = curate.DedupOptions(near=False)
    vid = store.active_version("train")
    frame = store.frame(vid)
    curate.apply_dedup(store, vid, frame, curate.find_duplicates(store, frame, options), options)
else:
    store.edit_row(int(sys.argv[3]), int(sys.argv[4]), note="a half-made edit")
"""


def kill_inside_a_write(tmp_path: Path, path: Path, *args: str) -> None:
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    proc = subprocess.Popen([sys.executable, str(script), str(path), *args],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert proc.stdout.readline().strip() == "inside the transaction"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_during_an_import_an_edit_and_a_dedup_leaves_a_consistent_store(tmp_path, train_store):
    path, ids = train_store
    version = Store(path).active_version("train")
    row_key = int(Store(path).frame(version)["row_key"].iloc[0])

    kill_inside_a_write(tmp_path, path, "import", str(chat_file(tmp_path / "k.jsonl", 3000)))
    kill_inside_a_write(tmp_path, path, "edit", str(version), str(row_key))
    kill_inside_a_write(tmp_path, path, "dedup")

    listed = cli(path, "list")
    assert listed.returncode == 0, listed.stderr
    assert "train" in listed.stdout and "killed" not in listed.stdout
    versions = cli(path, "versions", "train")
    assert versions.returncode == 0 and "edit" not in versions.stdout, versions.stdout
    store = Store(path)
    assert store.datasets()["name"].tolist() == ["train"]
    assert [v.operation for v in store.versions("train")] == ["import"]
    assert store.frame(version)["id"].tolist() == ids  # no row lost, none half-edited
    assert store.row(row_key).note == ""
    # and the store takes writes again
    assert store.edit_row(version, row_key, note="done").n_rows == len(ids)
    assert store.import_file(chat_file(tmp_path / "k.jsonl", 10), "after")[0].n_rows == 10


# --- a reused pid ---------------------------------------------------------------------------------

@pytest.fixture
def stranger():
    """An unrelated process (in its own session, as another user's program would be)."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def start_ticks(pid: int) -> int:
    """Return when a process started, in clock ticks since boot (/proc/PID/stat field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_reused_pid_is_neither_running_nor_cancelled(tmp_path, stranger):
    runs = tmp_path / "runs"
    run = runs / "20250101-000000-000-dead"
    run.mkdir(parents=True)
    jobs._write_json(run / "config.json", {"task": training.TASK, "kind": "train", "params": {}})
    # What a worker that died long ago left, after the kernel gave its pid to `sleep`:
    # its status names the pid, and the start time the worker had, not the sleep's.
    jobs._write_json(run / "status.json", {"state": "running", "pid": stranger.pid,
                                           "pid_start": str(start_ticks(stranger.pid) - 1000),
                                           "started": time.time() - 3600})
    (run / "worker.lock").touch()

    job = jobs.status(run.name, home=runs)
    assert job.state == "failed" and "died" in job.error
    jobs.cancel(run.name, home=runs, grace_s=0.2)
    result = cli(tmp_path / "store.duckdb", "cancel", run.name, WORKBENCH_HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "failed" in result.stdout
    time.sleep(0.3)
    assert stranger.poll() is None, "cancel killed an unrelated process"


def test_a_reused_pid_without_a_lock_file_is_not_running_either(tmp_path, stranger):
    run = tmp_path / "20250101-000000-000-gone"
    run.mkdir()
    jobs._write_json(run / "config.json", {"task": "tests.jobtasks.count", "params": {}})
    jobs._write_json(run / "status.json", {"state": "running", "pid": stranger.pid,
                                           "pid_start": "1"})
    assert jobs.status(run.name, home=tmp_path).state == "failed"
    jobs.cancel(run.name, home=tmp_path, grace_s=0.2)
    time.sleep(0.3)
    assert stranger.poll() is None


def test_the_cli_refuses_a_path_as_a_run_id(tmp_path):
    error = one_line_error(cli(tmp_path / "store.duckdb", "cancel", str(tmp_path),
                               WORKBENCH_HOME=str(tmp_path)))
    assert "plain name" in error


# --- a fatal DuckDB error ---------------------------------------------------------------------------

def test_a_fatal_error_recreates_the_process_duckdb_and_the_next_call_works(train_store):
    path, ids = train_store
    store = Store(path)
    store.datasets()
    broken = store_module._HOST[1]
    with pytest.raises(StoreError, match="fatal error"), store.connect():
        # What any query answers once DuckDB has invalidated its instance.
        raise duckdb.FatalException("FATAL Error: Failed: database has been invalidated "
                                    "because of a previous fatal error")
    assert store.datasets()["name"].tolist() == ["train"]  # the next call works
    assert store_module._HOST[1] is not broken  # on a fresh instance: the old one is closed
    with pytest.raises(duckdb.ConnectionException):
        broken.execute("SELECT 1")
    listed = cli(path, "list", timeout=30)  # and the file is free for other processes
    assert listed.returncode == 0 and "train" in listed.stdout, listed.stderr
    assert store.frame(store.active_version("train"))["id"].tolist() == ids


# --- every CLI error is one line ---------------------------------------------------------------------

def test_an_unexpected_error_is_one_line_in_the_cli(tmp_path, monkeypatch):
    def boom(self):
        raise duckdb.InternalException("INTERNAL Error: something broke\n" + "frame\n" * 50)

    monkeypatch.setattr(Store, "datasets", boom)
    result = CliRunner().invoke(main, ["--store", str(tmp_path / "s.duckdb"), "list"],
                                prog_name="workbench")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: unexpected InternalException: INTERNAL Error: something")
    assert "WORKBENCH_DEBUG=1" in lines[0]
    monkeypatch.setenv("WORKBENCH_DEBUG", "1")
    result = CliRunner().invoke(main, ["--store", str(tmp_path / "s.duckdb"), "list"])
    assert isinstance(result.exception, duckdb.InternalException)  # the traceback on request


# --- training and evaluation jobs -------------------------------------------------------------------

# Trains inline in this process under a file size limit (the job's own process, as a worker is),
# and prints the final state as JSON.
LIMITED_TRAINING = r"""
import json, resource, sys
import torch
from workbench import jobs, training
torch.set_num_threads(1)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]),
                                           resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
job = jobs.run_inline(training.TASK, json.loads(sys.argv[2]), home=sys.argv[1])
print(json.dumps({"run_id": job.run_id, "state": job.state, "error": job.error}), flush=True)
"""
# Room for the run's small files (config, events, the data snapshot), not for the adapter
# weights (15 KB for the tiny model): the first checkpoint hits the full disk.
TRAIN_LIMIT = 10_000


@pytest.fixture
def train_version(tmp_path) -> tuple[Path, int]:
    path = tmp_path / "wb.duckdb"
    return path, Store(path).add_examples("chats", [Example(tuple(c)) for c in rows()])


def test_disk_full_during_a_training_checkpoint_then_the_run_resumes(tmp_path, train_version):
    path, version = train_version
    script = tmp_path / "limited.py"
    script.write_text(LIMITED_TRAINING)
    params = {"store": str(path), "version_id": version,
              "config": tiny_config(max_steps=4, eval_every=0).to_dict()}
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "runs"), json.dumps(params),
                           str(TRAIN_LIMIT)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=_env(), check=False)
    job = json.loads(done.stdout.strip().splitlines()[-1])
    assert job["state"] == "failed" and job["error"].startswith("disk full: free space"), job
    run_dir = tmp_path / "runs" / job["run_id"]
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # no half checkpoint left
    assert train.last_checkpoint(run_dir) is None
    listed = cli(path, "list")  # the store was never touched
    assert listed.returncode == 0 and "chats" in listed.stdout, listed.stderr

    resumed = training.resume(job["run_id"], home=tmp_path / "runs", inline=True)  # space is back
    assert resumed.state == "done", resumed.error
    assert resumed.result["steps"] == 4 and train.last_checkpoint(run_dir).name == "step-000004"
    assert Store(path).version(version).n_rows == len(rows())


def kill_worker(job: jobs.JobStatus, home: Path, ready) -> jobs.JobStatus:
    """Wait until ``ready(status)``, kill -9 the job's worker, return the status it then has."""
    deadline = time.monotonic() + 120
    while not ready(jobs.status(job.run_id, home=home)):
        assert time.monotonic() < deadline, jobs.log_tail(job.run_id, 20, home=home)
        time.sleep(0.05)
    os.kill(jobs._read_json(job.run_dir / "status.json")["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (killed := jobs.status(job.run_id, home=home)).active:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return killed


def test_kill_9_during_training_and_evaluation_then_commands_see_a_consistent_store(
        tmp_path, train_version):
    path, version = train_version
    home = tmp_path / "runs"
    store = Store(path)
    before = store.frame(version)["id"].tolist()
    trained = training.start(path, version, tiny_config(max_steps=200, checkpoint_every=2,
                                                     eval_every=0), home=home)
    killed = kill_worker(trained, home, lambda j: train.last_checkpoint(j.run_dir) is not None)
    assert killed.state == "failed" and "died" in killed.error

    store.import_file(chat_file(tmp_path / "eval.jsonl", 60), "evalset")
    generation = {"max_new_tokens": 16, "batch_size": 1}
    evaluating = evaluation.start_eval(store, "evalset", model="tiny", similarity=False,
                                       generation=evaluation.ev.GenerationConfig(**generation),
                                       home=home)
    killed = kill_worker(evaluating, home, lambda j: j.step >= 1)
    assert killed.state == "failed" and "died" in killed.error

    env = {"WORKBENCH_HOME": str(tmp_path)}
    listed = cli(path, "list", **env)
    assert listed.returncode == 0 and "chats" in listed.stdout and "evalset" in listed.stdout
    runs = cli(path, "runs", **env)
    assert runs.returncode == 0 and trained.run_id in runs.stdout and "failed" in runs.stdout
    assert [v.operation for v in store.versions("chats")] == ["import"]
    assert store.frame(version)["id"].tolist() == before  # no row lost or half-written
    assert store.import_file(chat_file(tmp_path / "more.jsonl", 3), "more")[0].n_rows == 3
