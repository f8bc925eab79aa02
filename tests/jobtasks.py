"""Tasks for the job tests: importable by dotted path from the worker process."""

import time


def count(params: dict, ctx) -> dict:
    """Count to params["n"], sleeping params["sleep"] per step, reporting progress."""
    for i in range(1, params["n"] + 1):
        time.sleep(params.get("sleep", 0.0))
        ctx.progress(i, params["n"], loss=1.0 / i)
    ctx.log("counted")
    return {"counted": params["n"]}


def boom(params: dict, ctx) -> dict:
    """Fail after one step."""
    ctx.progress(1, 2)
    raise ValueError("bad value for 'lr': must be > 0")


def oom(params: dict, ctx) -> dict:
    """Fail the way torch does when memory runs out."""
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
