"""Background jobs: a detached subprocess, a run folder, progress events, cancel.

A job runs a task: a function ``task(params, ctx: JobContext) -> dict`` registered under a
short name with ``@jobs.task("train", TrainParams)`` (the tasks live in ``tasks.py``, which the
registry loads on first use). ``start`` checks the parameters against the task's dataclass in
the caller, so a bad option fails there, not in the worker. A run folder written before tasks
had names holds a dotted name ("workbench.train.train_task"); the registry maps it to the new
name, so such a run still resumes and lists. A dotted path to a function outside the registry
(a test's task) is imported as before. ``start`` writes ``config.json`` into a new run folder
and launches ``python -m workbench.jobs <run_dir>`` in its own session, so closing the browser or
reloading the page does not stop it. The worker appends progress events to
``events.jsonl``, its log to ``log.txt``, and its final state to ``status.json``; anyone can
read them back (``status``), so progress survives a page reload. Cancel is a flag file the
task polls; a process that dies without writing a final state (SIGKILL, out of memory) is
reported as failed by ``status``. Jobs never hold the store open: they write results into the
run folder and the caller ingests them.

Only the worker writes ``status.json`` once it runs. Whether it still runs is told by a lock,
not by its pid: the worker holds an exclusive ``flock`` on ``worker.lock`` for its whole life
(the launcher takes it before starting the worker and hands it over), and the kernel drops it
when the process dies, however it dies. A pid can be reused by an unrelated process; the lock
cannot. ``cancel`` signals a process only if the lock is held and the pid still belongs to the
process that recorded it (same start time), so it never kills a stranger.

A run is named by its id, a plain name inside the runs folder; a path from a user is refused.
A ``Path`` (a ``JobStatus.run_dir``) is the library's own handle and is used as it is.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import functools
import importlib
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import types
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from .atomic import write_atomic
from .exceptions import Cancelled, ConfigError, NotFoundError, WorkbenchError

State = Literal["queued", "running", "done", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"done", "failed", "cancelled"})
LOCK_FILE = "worker.lock"
LOCK_WAIT_S = 5.0  # how long a worker that was not handed the lock waits for it
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


TASKS_MODULE = "workbench.tasks"  # the registry's tasks, imported on first use (no cycle)
# Cancelled lives in exceptions.py, so a step (the training loop) raises it without importing
# this module; ``jobs.Cancelled`` is the same class.


def runs_dir(home: str | Path | None = None) -> Path:
    """Return the folder that holds run folders: <home>/runs."""
    from .store import default_home

    return Path(home) if home is not None else default_home() / "runs"


SETTLE_S = 2.0  # a run folder is made, then its config written: younger listings may change


def runs_stamp(home: str | Path | None = None) -> int | None:
    """Return a stamp of the set of run folders (the runs folder's mtime, 0 while there is
    none): it changes whenever a run is started or removed, by any process or browser tab.
    None while the folder changed in the last SETTLE_S seconds (a run just made may not have
    its config.json yet), so a reader that keeps what it found under a stamp looks again."""
    try:
        mtime = runs_dir(home).stat().st_mtime_ns
    except FileNotFoundError:
        return 0
    return None if time.time_ns() - mtime < SETTLE_S * 1e9 else mtime


def check_run_id(run_id: str) -> str:
    """Return run_id if it is a plain name (letters, digits, '.', '_', '-'); else NotFoundError."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise NotFoundError(f"no run {run_id!r}: a run id is a plain name such as "
                            "20250101-120000-000-ab12 (see `workbench runs`), never a path")
    return run_id


def run_folder(run: str | Path, *, home: str | Path | None = None) -> Path:
    """Return a run's folder: a run id (checked) in the runs folder, or a run_dir Path as is."""
    if isinstance(run, os.PathLike):
        return Path(run)
    return runs_dir(home) / check_run_id(run)


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2))


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return default


@dataclass
class JobContext:
    """What a running task uses to report progress, log, and notice a cancel.

    A task names its phases ("loading model", "training", "evaluating"); progress events
    carry the current phase, so a reader shows "training 3/6" and times the ETA within the
    phase. A child context (``parent`` set) is a run of its own inside a bigger job, such as
    the training of a loop: its progress also shows on the parent, and a cancel of either
    stops both.
    """

    run_dir: Path
    parent: JobContext | None = None
    _started: float = field(default_factory=time.time)
    _phase: str = ""

    def phase(self, name: str, total: int | None = None, step: int = 0) -> None:
        """Start a named phase at ``step`` of ``total`` (a resumed training starts past 0); its
        first event is marked phase_start, so step series (each step once) can skip it."""
        self._phase = name
        self.progress(step, total, phase_start=True)

    def progress(self, step: int, total: int | None = None, **metrics: Any) -> None:
        """Append a progress event (step of total, plus any metrics such as loss)."""
        event = {"t": time.time(), "step": step, "total": total, **metrics}
        if self._phase:
            event["phase"] = self._phase
        _append_event(self.run_dir, event)
        if self.parent is not None:
            _append_event(self.parent.run_dir, {"t": event["t"], "step": step, "total": total,
                                                "phase": self._phase or self.parent._phase})
        self.check_cancel()

    def log(self, message: str) -> None:
        """Append a line to the run's log (and the parent's)."""
        for ctx in (self, self.parent):
            if ctx is not None:
                with open(ctx.run_dir / "log.txt", "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%H:%M:%S')} {message}\n")

    def cancelled(self) -> bool:
        """Return whether the user asked this job (or the job it belongs to) to stop."""
        return (self.run_dir / "cancel").exists() or (
            self.parent is not None and self.parent.cancelled())

    def check_cancel(self) -> None:
        """Raise Cancelled if the user asked this job to stop."""
        if self.cancelled():
            raise Cancelled()

    def rewind(self, step: int) -> None:
        """Drop the progress events after ``step``: a resumed run trains those steps again, so
        its curves show each step once."""
        path = self.run_dir / "events.jsonl"
        if path.exists():
            kept = [e for e in events(self.run_dir) if int(e.get("step", 0)) <= step]
            write_atomic(path, b"".join(orjson.dumps(e) + b"\n" for e in kept))


def _append_event(run_dir: Path, event: dict) -> None:
    with open(run_dir / "events.jsonl", "ab") as f:
        f.write(orjson.dumps(event, default=float) + b"\n")


@dataclass
class JobStatus:
    """A job's state as read from its run folder."""

    run_id: str
    run_dir: Path
    kind: str
    state: State
    config: dict
    step: int = 0
    total: int | None = None
    eta_s: float | None = None
    rate: float | None = None
    last: dict = field(default_factory=dict)
    error: str = ""
    result: dict = field(default_factory=dict)
    started: float | None = None
    finished: float | None = None
    phase: str = ""
    device: str = ""  # where the task said it runs (a progress event's "device"), if it did

    @property
    def task(self) -> str:
        """The registered name of the task this run runs (also for an older run folder)."""
        return task_name(self.config.get("task", ""))

    @property
    def parent(self) -> str | None:
        """The run this one belongs to (a loop's training points to the loop), if any."""
        return self.config.get("parent")

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.state not in FINAL


def start(task: str, params: Any, *, kind: str | None = None,
          home: str | Path | None = None, run_id: str | None = None) -> JobStatus:
    """Launch a task (a registered name) in a detached process with a new run folder; return
    its status. params: a dict or the task's parameter dataclass, checked here."""
    task, params, kind = _prepare(task, params, kind)
    run_dir = _new_run_dir(runs_dir(home), run_id)
    config = {"task": task, "kind": kind, "params": params, "created": time.time()}
    _write_json(run_dir / "config.json", config)
    launch(run_dir)
    return status(run_dir)


def launch(run_dir: Path) -> None:
    """Start the worker of a prepared run folder (config.json written) in its own session.

    The lock is taken here, before the worker exists, and handed to it: there is no moment
    at which a reader could take a starting job for a dead one. After this call only the
    worker writes status.json, so the launcher never overwrites the worker's state.
    """
    lock = _take_lock(run_dir, wait_s=LOCK_WAIT_S)
    try:
        # "locked": written under the lock the worker inherits, so from now on a free lock
        # means the worker is gone, even if it died before writing a word.
        _write_json(run_dir / "status.json", {"state": "queued", "locked": True})
        try:
            with open(run_dir / "log.txt", "ab") as log:
                subprocess.Popen([sys.executable, "-m", "workbench.jobs", str(run_dir),
                                  str(lock)], pass_fds=(lock,), stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as e:  # no worker exists, so writing its state here races with nobody
            _write_json(run_dir / "status.json", {"state": "failed", "finished": time.time(),
                                                  "error": f"cannot start the job: {e}"})
            raise WorkbenchError(f"cannot start the job in {run_dir.name}: {e}") from None
    finally:
        os.close(lock)  # the worker keeps its inherited copy (the same open file)


def _take_lock(run_dir: Path, *, wait_s: float) -> int:
    """Return a descriptor holding the run's exclusive lock; WorkbenchError if busy too long."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # A reader's probe holds it for microseconds; a live worker holds it for good.
            if time.monotonic() > deadline:
                os.close(fd)
                raise WorkbenchError(f"run {run_dir.name} is already running in another "
                                     "process") from None
            time.sleep(0.02)


def _lock_held(run_dir: Path) -> bool:
    """Return whether a live worker holds the run's lock."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock this probe may have taken
    return False


def _new_run_dir(root: Path, run_id: str | None) -> Path:
    # Milliseconds in the id keep "newest first" (a sort by name) right for runs started
    # within the same second, as a test or a quick double start does.
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    run_id = check_run_id(run_id) if run_id is not None else \
        f"{stamp}-{int(now * 1000) % 1000:03d}-{uuid.uuid4().hex[:4]}"
    run_dir = root / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


@dataclass(frozen=True)
class Task:
    """A registered task: its name, function, parameter dataclass, default kind, old names."""

    name: str
    fn: Callable[[Any, JobContext], dict]
    params: type
    kind: str
    old: tuple[str, ...] = ()

    def parse(self, params: Any) -> Any:
        """Return the params as the task's dataclass; ConfigError naming a bad or unknown one."""
        if isinstance(params, self.params):
            return params
        if not isinstance(params, dict):
            raise ConfigError(f"task {self.name!r}: params must be a dict, got "
                              f"{type(params).__name__}")
        names = {f.name for f in dataclasses.fields(self.params)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ConfigError(f"task {self.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                              f"it takes {', '.join(sorted(names))}")
        missing = [f.name for f in dataclasses.fields(self.params) if f.name not in params
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"task {self.name!r}: missing parameter(s) {', '.join(missing)}")
        hints = typing.get_type_hints(self.params)
        for key, value in params.items():
            if not _fits(value, hints.get(key, Any)):
                raise ConfigError(f"task {self.name!r}: {key}={value!r} should be "
                                  f"{_type_name(hints[key])}")
        return self.params(**params)


_TASKS: dict[str, Task] = {}
_OLD_NAMES: dict[str, str] = {}  # dotted names in run folders written before the registry


def task(name: str, params: type, *, kind: str | None = None, old: tuple[str, ...] = ()
         ) -> Callable[[Callable], Callable]:
    """Register a task function under ``name`` with its parameter dataclass; ``old`` lists the
    dotted names older run folders call it by. The function still takes a dict or the params."""
    def register(fn: Callable[[Any, JobContext], dict]) -> Callable[[Any, Any], dict]:
        spec = Task(name, fn, params, kind or name, tuple(old))

        @functools.wraps(fn)
        def run(p: Any, ctx: Any) -> dict:
            return fn(spec.parse(p), ctx)

        _TASKS[name] = dataclasses.replace(spec, fn=run)
        _OLD_NAMES.update(dict.fromkeys(old, name))
        return run
    return register


def task_name(task: str) -> str:
    """Return a task's registered name, also for the dotted name an older run folder holds."""
    _load_registry()
    return _OLD_NAMES.get(task, task)


def registered() -> dict[str, Task]:
    """Return the registered tasks by name."""
    _load_registry()
    return dict(_TASKS)


def _load_registry() -> None:
    if not _TASKS:
        importlib.import_module(TASKS_MODULE)  # its @task decorators fill the registry


def _lookup(task: str) -> Task | None:
    return registered().get(task_name(task)) if isinstance(task, str) else None


def run_here(task: str, params: Any, *, progress: Callable[[int, int], None] | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """Run a registered task in this process (the CLI's way, no run folder) and return its
    result: progress goes to ``progress(done, total)``, log lines to ``log``. Wiring calls
    tasks by name through here, so it never imports the tasks module (no import cycle)."""
    return _resolve(task)(params, InlineContext(progress, log))


@dataclass
class InlineContext:
    """A job context for running a task in the caller's process: progress goes to a callback."""

    callback: Callable[[int, int], None] | None = None
    logger: Callable[[str], None] | None = None

    def progress(self, step: int, total: int | None = None, **_: Any) -> None:
        """Forward progress to the callback."""
        if self.callback:
            self.callback(step, total or 0)

    def log(self, message: str) -> None:
        """Forward log lines to the logger, if any (the CLI shows a progress bar instead)."""
        if self.logger:
            self.logger(message)


def _resolve(task: str) -> Callable[[Any, JobContext], dict]:
    spec = _lookup(task)
    if spec is not None:
        return spec.fn
    module, _, name = task.rpartition(".")  # a task outside the registry, e.g. a test's
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise WorkbenchError(f"unknown job task '{task}' (tasks: "
                             f"{', '.join(sorted(registered()))})") from None


def _prepare(task: str, params: Any, kind: str | None) -> tuple[str, dict, str]:
    """Return (task name, params as JSON-ready dict, kind), checking params in the caller."""
    spec = _lookup(task)
    if spec is None:
        _resolve(task)  # fail now, in the caller, if the task does not exist
        return task, params, kind or task.rsplit(".", 1)[-1]
    if dataclasses.is_dataclass(params):
        params = dataclasses.asdict(spec.parse(params))
    else:
        spec.parse(params)  # a bad parameter fails here; the dict is stored as given
    return spec.name, params, kind or spec.kind


def _fits(value: Any, hint: Any) -> bool:
    """Return whether a JSON value fits a simple annotation (Any, None, unions, Literal,
    int/float/str/bool, dict, list)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    base = origin or hint
    if base in (list, tuple, typing.Sequence) or base is Sequence:
        return isinstance(value, (list, tuple))
    if base in (dict, typing.Mapping) or base is Mapping:
        return isinstance(value, dict)
    return isinstance(value, base) if isinstance(base, type) else True


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def run_inline(task: str, params: Any, *, kind: str | None = None,
               home: str | Path | None = None, run_id: str | None = None) -> JobStatus:
    """Run a task in this process with a run folder, as the worker would; return its status."""
    task, params, kind = _prepare(task, params, kind)
    run_dir = _new_run_dir(runs_dir(home), run_id)
    _write_json(run_dir / "config.json", {"task": task, "kind": kind, "params": params,
                                          "created": time.time()})
    execute(run_dir)
    return status(run_dir)


def execute(run_dir: Path, *, lock_fd: int | None = None) -> None:
    """Run the task described by a run folder and record its final state.

    ``lock_fd`` is the run's lock handed over by ``launch``; without it the lock is taken here
    (an inline run, or a worker started by other code), and refused while another holds it.
    """
    fd = lock_fd if lock_fd is not None else _take_lock(run_dir, wait_s=LOCK_WAIT_S)
    # A program this task starts must not inherit the lock and keep a dead run "running".
    os.set_inheritable(fd, False)
    try:
        _run(JobContext(run_dir))
    except Exception:  # recorded in the run folder; a worker ends quietly
        pass
    finally:
        os.close(fd)


def run_child(ctx: JobContext, name: str, task: str, params: Any, *, kind: str) -> dict:
    """Run a part of a job as a run of its own and return its result.

    The part gets the sibling folder "<run id>-<name>" whose config names its task, kind and
    parent, so it is listed, opened and used (a loop's training is evaluated, merged, shown
    with its loss curve) like any run of that task. Its progress shows on the parent too; a
    failure or cancel is recorded in both and raised on to the parent. It runs in the
    parent's process, under the parent's lock: its status names that process (pid and start
    time), so it reads as failed if the process dies.
    """
    task, params, kind = _prepare(task, params, kind)
    run_dir = ctx.run_dir.parent / f"{ctx.run_dir.name}-{name}"
    run_dir.mkdir(exist_ok=False)
    _write_json(run_dir / "config.json", {"task": task, "kind": kind, "params": params,
                                          "created": time.time(), "parent": ctx.run_dir.name})
    return _run(JobContext(run_dir, parent=ctx))


def _run(ctx: JobContext) -> dict:
    run_dir = ctx.run_dir
    config = _read_json(run_dir / "config.json")
    # The start time pairs with the pid: a later process reusing the pid has another one.
    base = {"pid": os.getpid(), "pid_start": _start_time(os.getpid()), "started": time.time()}
    _write_json(run_dir / "status.json", {**base, "state": "running"})
    try:
        result = _resolve(config["task"])(config["params"], ctx) or {}
    except Cancelled:
        ctx.log("cancelled by the user")
        _write_json(run_dir / "status.json", {**base, "state": "cancelled",
                                              "finished": time.time()})
        raise
    except BaseException as e:  # the run must end in a readable state whatever happened
        ctx.log(traceback.format_exc())
        _write_json(run_dir / "status.json", {**base, "state": "failed", "error": _reason(e),
                                              "finished": time.time()})
        raise
    _write_json(run_dir / "result.json", result)
    _write_json(run_dir / "status.json", {**base, "state": "done", "finished": time.time()})
    return result


_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def _reason(error: BaseException) -> str:
    if _disk_full(error):
        return (f"disk full: free space and resume the run ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]})")
    if isinstance(error, MemoryError):
        return "out of memory: use a smaller batch size or max sequence length"
    if "out of memory" in str(error).lower():
        return f"out of memory ({error}): use a smaller batch size or max sequence length"
    if isinstance(error, WorkbenchError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _disk_full(error: BaseException | None) -> bool:
    # Libraries wrap the OSError (safetensors, torch.save: RuntimeError), so follow the chain.
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        if any(s in str(error) for s in ("No space left on device", "File too large",
                                         "Disk quota exceeded")):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def status(run: str | Path, *, home: str | Path | None = None) -> JobStatus:
    """Return a job's state, progress, ETA and result, read from its run folder."""
    run_dir = run_folder(run, home=home)
    config = _read_json(run_dir / "config.json")
    if config is None:
        raise NotFoundError(f"no run '{run}' (no config.json in {run_dir})")
    st = _read_json(run_dir / "status.json", {"state": "queued"})
    state, error = st.get("state", "queued"), st.get("error", "")
    evs = events(run_dir)
    if state not in FINAL:
        state, error = _live_state(run_dir, st, bool(evs))
    job = JobStatus(run_dir.name, run_dir, config.get("kind", ""), state, config, error=error,
                    started=st.get("started"), finished=st.get("finished"),
                    result=_read_json(run_dir / "result.json", {}) if state == "done" else {})
    _add_progress(job, evs)
    return job


SIGNATURE_FILES = ("config.json", "status.json", "events.jsonl", "result.json", "summary.json",
                   "cancel")


def signature(run_dir: Path, *, parent: str | None = None) -> str:
    """Return what changes whenever status() of the run would: the sizes and times of its
    state files and whether its worker (or, for a child run, its parent's) holds the lock. A
    reader that saw the same signature before need not read the folder again."""
    parts = []
    for name in SIGNATURE_FILES:
        try:
            st = (run_dir / name).stat()
        except FileNotFoundError:
            parts.append("-")
            continue
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    owner = run_dir.parent / parent if parent else None
    live = _lock_held(run_dir) or (owner is not None and _lock_held(owner))
    return " ".join([*parts, "live" if live else "idle"])


def _live_state(run_dir: Path, st: dict, has_events: bool) -> tuple[State, str]:
    """Return (state, error) of a job whose status.json names no final state."""
    state = st.get("state", "queued")
    pid = st.get("pid")
    if pid:
        _reap(pid)
    if _lock_held(run_dir):
        return ("running" if has_events else state), ""
    if st.get("locked"):
        pass  # launched with the lock handed over: a free lock means the worker is gone
    elif state == "queued" and (not pid or _alive(pid, st.get("pid_start"))):
        return state, ""  # launched by code that does not hand over the lock: still starting
    elif state == "running" and pid and not (run_dir / LOCK_FILE).exists() \
            and _alive(pid, st.get("pid_start")):
        return state, ""  # a run folder written before workers held a lock
    if (run_dir / "cancel").exists():
        return "cancelled", ""  # stopped after the user asked it to
    return "failed", "the job process died without finishing (killed, or out of memory)"


def _reap(pid: int) -> None:
    # A finished child of this process stays a zombie until someone waits for it.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _start_time(pid: int) -> str | None:
    """Return when a process started (clock ticks since boot), or None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return _ps_start_time(pid)
    try:
        return stat.rsplit(")", 1)[1].split()[19]  # field 22, starttime, counted after "comm)"
    except IndexError:
        return None


def _ps_start_time(pid: int) -> str | None:
    # Where there is no /proc (macOS), ps says when a process started.
    if sys.platform.startswith("linux"):
        return None  # no /proc entry on Linux: the process is gone
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _alive(pid: int, start: str | None = None) -> bool:
    """Return whether pid runs (and, given its recorded start time, is the same process)."""
    if start is not None and _start_time(pid) != start:
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own finished child, if it is one
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return False


def events(run_dir: Path) -> list[dict]:
    """Return the progress events a job has written so far."""
    try:
        lines = (run_dir / "events.jsonl").read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            break  # a line being written right now
    return out


def _add_progress(job: JobStatus, evs: list[dict]) -> None:
    if not evs:
        return
    last = evs[-1]
    job.last, job.step, job.total = last, int(last.get("step", 0)), last.get("total")
    job.phase = last.get("phase") or ""
    job.device = next((e["device"] for e in reversed(evs) if e.get("device")), "")
    start = len(evs) - 1  # rate and ETA are timed within the current phase
    while start > 0 and (evs[start - 1].get("phase") or "") == job.phase:
        start -= 1
    first = evs[start]
    elapsed, done = last["t"] - first["t"], job.step - int(first.get("step", 0))
    if elapsed > 0 and done > 0:
        job.rate = done / elapsed
        if job.total and job.active:
            job.eta_s = max(0.0, (job.total - job.step) / job.rate)


def progress_text(job: JobStatus) -> str:
    """Return what a progress bar says: "train · running · training 3/6", "loading model"
    while a phase has no count yet, never a bare "0/?"; "· on cuda:0 (...)" once the task
    said where it runs."""
    head = f"{job.kind} · {job.state}" + (f" · on {job.device}" if job.device else "")
    if job.state == "queued":
        return f"{head} · waiting to start"
    if not job.active:
        count = f" · {job.step}/{job.total}" if job.total else ""
        return f"{head}{count}"
    what = job.phase or "step"
    if not job.total:
        return f"{head} · {job.phase or 'starting'}…" if not job.step else \
            f"{head} · {what} {job.step}"
    return f"{head} · {what} {job.step}/{job.total}"


def log_tail(run: str | Path, lines: int = 20, *, home: str | Path | None = None) -> str:
    """Return the last lines of a job's log."""
    run_dir = run_folder(run, home=home)
    try:
        text = (run_dir / "log.txt").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def cancel(run: str | Path, *, home: str | Path | None = None, grace_s: float = 10.0) -> None:
    """Ask a job to stop; SIGTERM its worker (never another process) after a grace period.

    The worker records its own final state; one that dies of the signal reads as cancelled.
    """
    job = status(run, home=home)
    if not job.active:
        return
    (job.run_dir / "cancel").touch()
    deadline = time.monotonic() + grace_s
    while _lock_held(job.run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    st = _read_json(job.run_dir / "status.json", {}) or {}
    pid = st.get("pid")
    if not (pid and _lock_held(job.run_dir) and _is_worker(pid, st.get("pid_start"))):
        return
    # The worker leads its own session (start_new_session), so its group is its pid and
    # holds the programs it started; a worker started otherwise gets the signal alone.
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # it ended by itself a moment ago
    deadline = time.monotonic() + grace_s  # let it record its state before we report it
    while _lock_held(job.run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)


def _is_worker(pid: int, start: str | None) -> bool:
    # Only a pid whose start time matches the one the worker recorded is that worker; without a
    # recorded start time nothing proves it, so nothing is signalled.
    return start is not None and pid != os.getpid() and _start_time(pid) == start


def list_runs(kind: str | None = None, *, home: str | Path | None = None) -> list[JobStatus]:
    """Return the jobs in the runs folder, newest first, optionally of one kind."""
    root = runs_dir(home)
    if not root.exists():
        return []
    jobs = [status(d) for d in sorted(root.iterdir(), reverse=True)
            if (d / "config.json").exists()]
    return [j for j in jobs if kind is None or j.kind == kind]


def wait(run: str | Path, *, home: str | Path | None = None, timeout: float = 600.0,
         on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Block until a job ends (or the timeout passes); return its last status."""
    deadline = time.monotonic() + timeout
    while True:
        job = status(run, home=home)
        if on_progress:
            on_progress(job)
        if not job.active or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


if __name__ == "__main__":
    # Import by package name so tasks and this worker share one Cancelled class.
    from workbench.jobs import execute as _run

    # argv: the run folder, then the descriptor of the run's lock when the launcher handed it.
    _run(Path(sys.argv[1]), lock_fd=int(sys.argv[2]) if len(sys.argv) > 2 else None)
