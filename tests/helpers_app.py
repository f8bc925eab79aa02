"""Shared helpers for the CLI, AppTest and browser tests: tiny datasets and app drivers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"


def chat_record(i: int, **metadata: Any) -> dict:
    """Return one OpenAI-chat record whose texts name its number."""
    return {"messages": [{"role": "user", "content": f"question {i}: how do I reset item {i}?"},
                         {"role": "assistant", "content": f"answer {i}: press reset {i} times."}],
            **metadata}


def write_jsonl(path: Path, records: Iterable[dict | str]) -> Path:
    """Write records (dicts as JSON, strings verbatim) one per line; return the path."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat_file(path: Path, n: int, *, bad_lines: Iterable[str] = ()) -> Path:
    """Write n chat records (topic alternating billing/login) followed by bad lines."""
    records: list[dict | str] = [chat_record(i, topic="billing" if i % 2 else "login")
                                 for i in range(n)]
    return write_jsonl(path, [*records, *bad_lines])


# --- AppTest ----------------------------------------------------------------------------------
def emulate_running_server(monkeypatch) -> None:
    """Make AppTest rerun app.py like a live server does, despite the `pages/` folder.

    Streamlit keeps a "multipage v1" mode for apps with a `pages/` folder; st.navigation turns
    it off for the process, but AppTest resets it before every run, so from the second run on
    AppTest executes the page script alone (no sidebar, no app.py). A live server has it off
    after its first run; pin it off here.
    """
    from streamlit.runtime import pages_manager

    original = pages_manager.PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        pages_manager.PagesManager.uses_pages_directory = False

    monkeypatch.setattr(pages_manager.PagesManager, "__init__", init)


# --- a live server for the browser -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store_path: Path, port: int, log: Path, *, home: Path | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the app (as `workbench app` does) on 127.0.0.1:port with its own store; return the process.

    Its data folder (WORKBENCH_HOME: run folders under <home>/runs, exports) is `home`, by
    default the store's folder; `env` adds variables, which the jobs it starts inherit.
    """
    env = {**os.environ, **(env or {}), "WORKBENCH_STORE": str(store_path),
           "WORKBENCH_HOME": str(home if home is not None else store_path.parent)}
    # `python app.py` is how `workbench app` serves (pages/ auto-discovery off), so deep links
    # such as /clean work from the first request.
    cmd = [sys.executable, str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until the server answers its health check; raise if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_server(process: subprocess.Popen) -> None:
    """Terminate the server we started (its own process group), then make sure it is gone."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def page_store(tmp_path: Path, monkeypatch, imports: dict[str, Path]):
    """Yield a file store (env pointed at it, Streamlit caches cleared) holding `imports`."""
    import streamlit as st

    from workbench.store import Store

    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    emulate_running_server(monkeypatch)
    st.cache_resource.clear()
    st.cache_data.clear()
    store = Store(path)
    for name, file in imports.items():
        store.import_file(file, name)
    yield store
    st.cache_resource.clear()
    st.cache_data.clear()


def open_on_empty_store(tmp_path: Path, monkeypatch, page: str):
    """Return an AppTest of app.py switched to `page`, over an empty store and runs folder."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "empty.duckdb"))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    emulate_running_server(monkeypatch)
    st.cache_resource.clear()
    at = page_ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return page_ok(at.switch_page(page).run())


def page_ok(at):
    """Assert an AppTest run raised nothing and showed no error; return it."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def finish_jobs(at):
    """Wait for the jobs a page started, then run the page again (the job panel's refresh
    would do it in a browser); return it."""
    from workbench import jobs

    for job in jobs.list_runs():
        assert jobs.wait(job.run_id, timeout=180).state == "done", jobs.log_tail(job.run_id)
    return page_ok(at.run())
