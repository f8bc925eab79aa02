"""Write a file so that a reader sees the old file or the new one, never half of one.

One way to do it for every file the workbench writes for itself (run results, caches, label
exports, job status): the data goes to a temporary name of its own beside the target (two
writers never share one, so neither publishes the other's half-written file), then
``os.replace`` moves it in place, atomically on the same file system. A failed write leaves
no temporary file behind. Step modules may use it: it imports nothing of the workbench.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, data: bytes | str | Callable[[Path], object]) -> Path:
    """Write ``data`` (bytes, UTF-8 text, or a function that writes the file at the path it
    is given) to ``path`` atomically; return the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        if callable(data):
            data(tmp)
        elif isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
