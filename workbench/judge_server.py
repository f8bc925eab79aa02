"""Serve a GGUF model with llama-cpp-python's OpenAI-compatible server on 127.0.0.1.

A judge endpoint on this machine for trying the judge, its tests and its benchmark:
``llama-cpp-python[server]`` is an optional install (see .ci/run), never imported here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .exceptions import ConfigError


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf: str | Path, log: str | Path, *, port: int | None = None,
                       n_ctx: int = 2048, threads: int = 2,
                       timeout_s: float = 180.0) -> tuple[str, subprocess.Popen]:
    """Start ``python -m llama_cpp.server`` on the GGUF and wait until it answers; return
    (base URL ending in /v1, the process). Its output goes to ``log``. Raise ConfigError
    when it exits or does not answer within ``timeout_s`` (the process is then killed)."""
    if not Path(gguf).is_file():
        raise ConfigError(f"gguf={str(gguf)!r}: no such model file")
    port = port or free_port()
    with Path(log).open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads",
             str(threads)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-1500:]
            raise ConfigError(f"the llama.cpp server exited ({process.returncode}): {tail}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return url, process
        except OSError:
            time.sleep(0.5)
    process.kill()
    process.wait()
    raise ConfigError(f"the llama.cpp server did not answer within {timeout_s:g} s; see {log}")
