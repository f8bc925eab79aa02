"""tracking.py: training and evaluation runs logged to MLflow (a file store, a local server)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workbench import jobs, tracking
from workbench.device import describe
from workbench.exceptions import ConfigError
from workbench.schema import Example
from workbench.store import Store

TINY = dict(model="tiny", max_steps=3, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0,
            eval_every=1, checkpoint_every=3, val_fraction=0.25, max_seq_len=64)
FAST = {"max_new_tokens": 3, "batch_size": 4}


def chats(n: int = 8) -> list[Example]:
    return [Example(({"role": "user", "content": f"What does the cat find? {i}"},
                     {"role": "assistant", "content": f"The cat finds a short book {i}."}))
            for i in range(n)]


def file_uri(folder: Path) -> str:
    return folder.resolve().as_uri()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def search(uri: str, **kwargs):
    """mlflow.search_runs on the workbench experiment of a tracking URI, as a user would."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tracking.ENV_URI, uri)
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it to read mlruns/
        return mlflow.search_runs(experiment_names=[tracking.DEFAULT_EXPERIMENT], **kwargs)


# ---------------------------------------------------------------- the switch


def test_switch_env_and_setting(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    assert not tracking.settings(tmp_path).enabled  # off unless asked
    monkeypatch.setenv(tracking.ENV_URI, "http://user:secret@127.0.0.1:5000")
    on = tracking.settings(tmp_path)
    assert (on.enabled, on.source) == (True, "env")
    assert on.shown_uri == "http://***@127.0.0.1:5000"
    assert not tracking.set_enabled(False, home=tmp_path).enabled  # off wins over the env
    monkeypatch.delenv(tracking.ENV_URI)
    local = tracking.set_enabled(True, home=tmp_path)
    assert local.uri == (tmp_path / "mlruns").resolve().as_uri() and local.source == "setting"
    assert json.loads((tmp_path / tracking.SETTINGS_FILE).read_text())["enabled"] is True
    with pytest.raises(ConfigError, match="uri"):
        tracking.set_enabled(True, uri="  ", home=tmp_path)


# ---------------------------------------------------------------- runs logged to a file store


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny training run and an evaluation of its adapter, logged as they finish to a
    file store; returns (store, version id, runs folder, train run, eval run, file store URI)."""
    pytest.importorskip("mlflow")
    root = tmp_path_factory.mktemp("tracking")
    store = Store(root / "wb.duckdb")
    version = store.add_examples("chats", chats())
    runs = root / "runs"
    uri = file_uri(root / "mlruns")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WORKBENCH_HOME", str(root))
        mp.setenv(tracking.ENV_URI, uri)
        train = jobs.run_inline("train", {"store": str(store.path), "version_id": version,
                                          "config": TINY}, home=runs)
        assert train.state == "done", train.error + jobs.log_tail(train.run_dir, 40)
        ev = jobs.run_inline("eval", {"store": str(store.path), "version_id": version,
                                      "model": {"run_dir": str(train.run_dir)},
                                      "generation": FAST, "embedder": None}, home=runs)
        assert ev.state == "done", ev.error + jobs.log_tail(ev.run_dir, 40)
    return store, version, runs, train, ev, uri


def test_training_and_evaluation_are_logged_with_their_metrics(logged, monkeypatch):
    from mlflow.tracking import MlflowClient

    store, version, runs, train, ev, uri = logged
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert "logged to MLflow" in jobs.log_tail(train.run_dir, 5)
    found = search(uri)
    by_run = {r["tags.workbench.run_id"]: r for _, r in found.iterrows()}
    assert set(by_run) == {train.run_id, ev.run_id}
    t, e = by_run[train.run_id], by_run[ev.run_id]
    assert t["params.data_version"] == e["params.data_version"] == "chats@1"
    assert t["params.model"] == "tiny" and t["params.lora_r"] == "8"
    assert t["params.device"] == "cpu"
    assert e["params.device"] == describe("cpu")  # an eval run records device.describe
    assert t["metrics.train_loss"] == pytest.approx(train.result["train_loss"])
    client = MlflowClient(tracking_uri=uri)
    steps = {k: [m.step for m in client.get_metric_history(t["run_id"], k)]
             for k in ("train_loss", "val_loss")}
    assert steps == {"train_loss": [1, 2, 3], "val_loss": [0, 1, 2, 3]}  # every step's loss
    f1 = ev.result["metrics"]["token_f1"]
    assert e["metrics.token_f1"] == pytest.approx(f1["mean"])
    assert (e["metrics.token_f1_ci_lo"], e["metrics.token_f1_ci_hi"]) == pytest.approx(
        (f1["lo"], f1["hi"]))
    assert e["params.model"] == f"run:{train.run_id}"
    adapter = {a.path for a in client.list_artifacts(t["run_id"], "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter
    name, text = tracking.version_recipe(store, version)
    files = {a.path for a in client.list_artifacts(t["run_id"])}
    assert name in files  # how the data was made: its recipe, or its lineage without recipes
    shipped = Path(client.download_artifacts(t["run_id"], name)).read_text()
    assert "chats@1" in shipped and shipped.splitlines()[0] == text.splitlines()[0]


def test_export_logs_each_run_once(logged, tmp_path, monkeypatch):
    store, version, runs, train, ev, uri = logged
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    fresh = tracking.TrackingSettings(True, file_uri(tmp_path / "other"), source="setting")
    first = tracking.export_runs(store, home=runs, config=fresh)
    assert set(first.logged) == {train.run_id, ev.run_id} and not first.failed
    again = tracking.export_runs(store, home=runs, config=fresh)
    assert not again.logged and again.already == first.logged
    assert len(search(fresh.uri)) == 2
    # Runs logged as they finished are not logged a second time either.
    live = tracking.TrackingSettings(True, uri, source="env")
    assert set(tracking.export_runs(store, home=runs, config=live).already) == \
        {train.run_id, ev.run_id}
    assert len(search(uri)) == 2


def test_a_broken_tracking_uri_does_not_fail_the_run(logged, tmp_path, monkeypatch):
    store, version, runs, train, ev, uri = logged
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    monkeypatch.setenv(tracking.ENV_URI, f"http://user:pw@127.0.0.1:{free_port()}")  # nobody
    started = time.monotonic()
    job = jobs.run_inline("eval", {"store": str(store.path), "version_id": version,
                                   "model": "tiny", "generation": FAST, "embedder": None},
                          home=tmp_path / "runs")
    assert job.state == "done", job.error
    log = jobs.log_tail(job.run_dir, 10)
    assert "warning: not logged to MLflow" in log and "pw@" not in log
    assert time.monotonic() - started < 120  # short retries, not MLflow's minutes of backoff


# ---------------------------------------------------------------- a local mlflow server


@pytest.fixture
def mlflow_server(tmp_path):
    """An `mlflow server` on 127.0.0.1 at a free port, stopped at the end; skips if it can't
    start here (mlflow-skinny has no server)."""
    pytest.importorskip("mlflow")
    port = free_port()
    # The server's default backend (SQLite); the workbench's own default is a file store.
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
           str(port), "--workers", "1", "--backend-store-uri",
           f"sqlite:///{tmp_path / 'mlflow.db'}",
           "--artifacts-destination", file_uri(tmp_path / "artifacts")]
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = (tmp_path / "server.log").read_text(errors="replace")[-800:]
                pytest.skip(f"mlflow server did not start: {tail}")
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and workers
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_runs_logged_to_a_local_mlflow_server(logged, mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store, version, runs, train, ev, uri = logged
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    server = tracking.TrackingSettings(True, mlflow_server, source="setting")
    report = tracking.export_runs(store, home=runs, config=server)
    assert set(report.logged) == {train.run_id, ev.run_id}, report.failed
    monkeypatch.setenv(tracking.ENV_URI, mlflow_server)  # and a run logged as it finishes
    job = jobs.run_inline("eval", {"store": str(store.path), "version_id": version,
                                   "model": "tiny", "generation": FAST, "embedder": None},
                          home=tmp_path / "runs")
    assert "logged to MLflow" in jobs.log_tail(job.run_dir, 3)
    found = search(mlflow_server, filter_string="params.data_version = 'chats@1'")
    assert set(found["tags.workbench.run_id"]) == {train.run_id, ev.run_id, job.run_id}
    t = found[found["tags.workbench.run_id"] == train.run_id].iloc[0]
    client = MlflowClient(tracking_uri=mlflow_server)
    assert [m.step for m in client.get_metric_history(t["run_id"], "train_loss")] == [1, 2, 3]
    assert "adapter/adapter_model.safetensors" in {
        a.path for a in client.list_artifacts(t["run_id"], "adapter")}


def test_cli_switch_and_export(logged, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from workbench.cli import main

    store, version, runs, train, ev, uri = logged
    monkeypatch.setenv("WORKBENCH_HOME", str(runs.parent))  # the runs folder is <home>/runs
    monkeypatch.setattr(tracking, "default_home", lambda: tmp_path)  # the switch: this test's
    cli = CliRunner()
    assert "tracking is off" in cli.invoke(main, ["tracking"]).output
    refused = cli.invoke(main, ["--store", str(store.path), "mlflow-export"])
    assert refused.exit_code == 1 and "tracking is off" in refused.output
    assert f"on: {(tmp_path / 'mlruns').resolve().as_uri()}" in \
        cli.invoke(main, ["tracking", "on"]).output
    export = ["--store", str(store.path), "mlflow-export"]
    first, again = cli.invoke(main, export), cli.invoke(main, export)
    assert "2 logged, 0 already in MLflow, 0 failed" in first.output, first.output
    assert "0 logged, 2 already in MLflow, 0 failed" in again.output, again.output
    assert "tracking is off" in cli.invoke(main, ["tracking", "off"]).output


def test_train_and_evaluate_pages_switch_tracking(tmp_path, monkeypatch):
    from helpers_app import APP, chat_file, page_ok, page_store
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv(tracking.ENV_URI, raising=False)
    for _ in page_store(tmp_path, monkeypatch, {"chats": chat_file(tmp_path / "c.jsonl", 8)}):
        at = page_ok(AppTest.from_file(str(APP), default_timeout=60).run())
        at = page_ok(at.switch_page("pages/train.py").run())
        assert at.toggle(key="tr_mlflow").value is False
        at = page_ok(at.toggle(key="tr_mlflow").set_value(True).run())
        assert tracking.settings().uri == (tmp_path / "mlruns").resolve().as_uri()
        assert any("MLflow:" in c.value for c in at.caption)
        at = page_ok(at.switch_page("pages/evaluate.py").run())
        assert at.toggle(key="ev_mlflow").value is True  # one switch, shown on both pages
        page_ok(at.toggle(key="ev_mlflow").set_value(False).run())
        assert not tracking.settings().enabled
