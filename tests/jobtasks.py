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


def phased(params: dict, ctx) -> dict:
    """Load, then count in a named phase, as training does."""
    ctx.phase("loading model")
    ctx.phase("training", params["n"])
    for i in range(1, params["n"] + 1):
        ctx.progress(i, params["n"])
    return {"steps": params["n"], "train_loss": 0.5}


def parent(params: dict, ctx) -> dict:
    """Run a child part (a run of its own), then a phase of its own, as the loop does."""
    from workbench.jobs import run_child

    child = run_child(ctx, "train", params.get("child", "tests.jobtasks.phased"), {"n": 3},
                      kind="train")
    ctx.phase("evaluating", 2)
    ctx.progress(2, 2)
    return {"child": child}
