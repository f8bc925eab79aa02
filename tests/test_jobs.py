"""Background jobs: progress, ETA, result, cancel, crash and kill recovery."""

import os
import signal
import time

import pytest

from workbench import jobs
from workbench.exceptions import NotFoundError, WorkbenchError


def test_inline_run_records_progress_and_result(tmp_path):
    job = jobs.run_inline("tests.jobtasks.count", {"n": 5}, home=tmp_path)
    assert job.state == "done"
    assert job.result == {"counted": 5}
    assert (job.step, job.total, job.fraction) == (5, 5, 1.0)
    assert job.last["loss"] == pytest.approx(0.2)
    assert len(jobs.events(job.run_dir)) == 5
    assert "counted" in jobs.log_tail(job.run_dir)


def test_failed_task_has_readable_reason(tmp_path):
    job = jobs.run_inline("tests.jobtasks.boom", {}, home=tmp_path)
    assert job.state == "failed"
    assert job.error == "ValueError: bad value for 'lr': must be > 0"
    assert "Traceback" in jobs.log_tail(job.run_dir, 50)


def test_out_of_memory_is_named(tmp_path):
    job = jobs.run_inline("tests.jobtasks.oom", {}, home=tmp_path)
    assert job.state == "failed" and job.error.startswith("out of memory")
    assert "smaller batch size" in job.error


def test_unknown_task_fails_in_the_caller(tmp_path):
    with pytest.raises(WorkbenchError, match="unknown job task"):
        jobs.start("tests.jobtasks.nope", {}, home=tmp_path)
    assert not any(tmp_path.iterdir())


def test_unknown_run_is_not_found(tmp_path):
    with pytest.raises(NotFoundError):
        jobs.status("missing", home=tmp_path)


def test_background_job_runs_detached_and_reports_eta(tmp_path):
    job = jobs.start("tests.jobtasks.count", {"n": 20, "sleep": 0.05}, home=tmp_path)
    seen = []
    final = jobs.wait(job.run_id, home=tmp_path, timeout=60, on_progress=seen.append)
    assert final.state == "done", final.error + jobs.log_tail(final.run_dir, 50)
    assert final.result == {"counted": 20}
    running = [s for s in seen if s.state == "running" and s.eta_s is not None]
    assert running, "an ETA is reported while the job runs"
    assert all(s.eta_s >= 0 for s in running)
    # a fresh reader (a reloaded page) sees the same finished job
    again = jobs.status(job.run_id, home=tmp_path)
    assert again.state == "done" and again.step == 20
    assert [j.run_id for j in jobs.list_runs(home=tmp_path)] == [job.run_id]


def test_cancel_stops_a_running_job(tmp_path):
    job = jobs.start("tests.jobtasks.count", {"n": 1000, "sleep": 0.02}, home=tmp_path)
    _wait_for_step(job.run_id, tmp_path, 3)
    jobs.cancel(job.run_id, home=tmp_path)
    final = jobs.wait(job.run_id, home=tmp_path, timeout=30)
    assert final.state == "cancelled"
    assert 3 <= final.step < 1000


def test_killed_job_is_reported_failed(tmp_path):
    job = jobs.start("tests.jobtasks.count", {"n": 1000, "sleep": 0.02}, home=tmp_path)
    _wait_for_step(job.run_id, tmp_path, 2)
    pid = jobs._read_json(job.run_dir / "status.json")["pid"]
    os.kill(pid, signal.SIGKILL)
    final = jobs.wait(job.run_id, home=tmp_path, timeout=30)
    assert final.state == "failed"
    assert "died" in final.error


def _wait_for_step(run_id, home, step, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.status(run_id, home=home)
        if job.step >= step:
            return job
        assert job.active, job.error
        time.sleep(0.05)
    raise AssertionError("job made no progress")


# --- hardening: run ids, the start race, shared temp files ------------------------------------

@pytest.mark.parametrize("bad", ["/etc", "../other", "a/b", "..", ".hidden", "", "x" * 200])
def test_a_run_id_is_a_plain_name_never_a_path(tmp_path, bad):
    with pytest.raises(NotFoundError, match="plain name"):
        jobs.status(bad, home=tmp_path)
    with pytest.raises(NotFoundError, match="plain name"):
        jobs.cancel(bad, home=tmp_path)


def test_a_real_run_folder_given_as_a_path_string_is_refused(tmp_path):
    # `workbench cancel /some/dir` used to act on any folder holding a config.json.
    job = jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=tmp_path / "runs")
    with pytest.raises(NotFoundError, match="plain name"):
        jobs.status(str(job.run_dir), home=tmp_path / "elsewhere")
    assert jobs.status(job.run_id, home=tmp_path / "runs").state == "done"
    assert jobs.status(job.run_dir).state == "done"  # the library's own handle still works
    with pytest.raises(NotFoundError, match="plain name"):
        jobs.start("tests.jobtasks.count", {"n": 1}, home=tmp_path, run_id="../escape")


def test_the_launcher_never_overwrites_the_workers_state(tmp_path, monkeypatch):
    # Make the worker finish before Popen returns: the old launcher then wrote "queued" over
    # the worker's "done", and status called the finished job dead.
    real = jobs.subprocess.Popen

    def popen_and_wait(*args, **kwargs):
        proc = real(*args, **kwargs)
        proc.wait(timeout=60)
        return proc

    monkeypatch.setattr(jobs.subprocess, "Popen", popen_and_wait)
    job = jobs.start("tests.jobtasks.count", {"n": 2}, home=tmp_path)
    assert job.state == "done", job.error + jobs.log_tail(job.run_dir, 30)
    assert job.result == {"counted": 2}


def test_a_worker_that_dies_before_writing_a_word_is_failed_not_queued(tmp_path, monkeypatch):
    # A worker that cannot even start (here: an interpreter that exits at once) holds the
    # lock for no time at all; the run must not stay "queued" forever.
    monkeypatch.setattr(jobs.sys, "executable", "/bin/false")
    job = jobs.start("tests.jobtasks.count", {"n": 2}, home=tmp_path)
    final = jobs.wait(job.run_id, home=tmp_path, timeout=10)
    assert final.state == "failed" and "died" in final.error


def test_concurrent_writers_of_one_json_file_do_not_collide(tmp_path):
    target, errors = tmp_path / "status.json", []

    def write(tag: str) -> None:
        for i in range(300):
            try:
                jobs._write_json(target, {"writer": tag, "i": i})
            except OSError as e:  # the old shared temp name: one writer renamed the other's
                errors.append(e)

    import threading
    threads = [threading.Thread(target=write, args=(t,)) for t in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert jobs._read_json(target)["i"] == 299
    assert not list(tmp_path.glob("*.tmp"))


def test_a_second_worker_on_a_running_run_is_refused(tmp_path, monkeypatch):
    job = jobs.start("tests.jobtasks.count", {"n": 1000, "sleep": 0.02}, home=tmp_path)
    _wait_for_step(job.run_id, tmp_path, 1)
    monkeypatch.setattr(jobs, "LOCK_WAIT_S", 0.3)
    with pytest.raises(WorkbenchError, match="already running"):
        jobs.execute(job.run_dir)
    jobs.cancel(job.run_id, home=tmp_path)
    assert jobs.wait(job.run_id, home=tmp_path, timeout=30).state == "cancelled"


def test_a_worker_that_ignores_the_cancel_flag_is_terminated_and_reads_cancelled(tmp_path):
    job = jobs.start("tests.jobtasks.count", {"n": 2, "sleep": 60}, home=tmp_path)
    deadline = time.monotonic() + 30
    while jobs.status(job.run_id, home=tmp_path).state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    jobs.cancel(job.run_id, home=tmp_path, grace_s=0.5)  # it sleeps: no progress, no check
    final = jobs.status(job.run_id, home=tmp_path)
    assert final.state == "cancelled" and final.error == ""
    assert time.monotonic() - started < 10


def test_the_runs_stamp_changes_when_a_run_starts_and_waits_while_the_folder_settles(
        tmp_path, monkeypatch):
    assert jobs.runs_stamp(tmp_path / "none") == 0  # no runs folder yet
    jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=tmp_path)
    assert jobs.runs_stamp(tmp_path) is None  # a run folder was just made: look again later
    monkeypatch.setattr(jobs, "SETTLE_S", 0.0)
    first = jobs.runs_stamp(tmp_path)
    assert first and jobs.runs_stamp(tmp_path) == first
    time.sleep(0.05)  # past the clock tick of the folder times
    jobs.run_inline("tests.jobtasks.count", {"n": 1}, home=tmp_path)
    assert jobs.runs_stamp(tmp_path) not in (None, first)
