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
