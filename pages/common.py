"""Streamlit glue shared by the pages: the store handle, the sidebar and messages.

Anything that came from a user or a dataset (names, paths, file contents, error messages that
quote them) goes through `md_escape` before a markdown-rendering element shows it.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import streamlit as st

from workbench.exceptions import WorkbenchError
from workbench.store import Store, default_store_path
from workbench.views import md_escape, plural, progress_text


@st.cache_resource
def get_store(path: str | None = None) -> Store:
    """Return the process-wide store handle (it holds no connection between calls)."""
    return Store(path or os.environ.get("WORKBENCH_STORE") or default_store_path())


def store() -> Store:
    """Return the store for this session."""
    return get_store(os.environ.get("WORKBENCH_STORE"))


def current_dataset() -> str | None:
    """Return the dataset chosen in the sidebar (None when the store is empty)."""
    return st.session_state.get("dataset")


def dataset_sidebar() -> None:
    """Show the dataset picker and its active version in the sidebar."""
    names = store().datasets()["name"].tolist()
    with st.sidebar:
        st.caption(f"store: {md_escape(store().path)}")
        if not names:
            st.info("No datasets yet: import one on the Datasets page.")
            st.session_state.pop("dataset", None)
            return
        pending = st.session_state.pop("pending_dataset", None)
        before = st.session_state.get("dataset")
        quiet = st.session_state.pop("pending_quiet", False)
        if pending in names and pending != before:
            st.session_state["dataset"] = pending
            if before in names and not quiet:  # say so, and offer the way back
                st.session_state["switched_from"] = (before, pending)
        if st.session_state.get("dataset") not in names:
            st.session_state["dataset"] = names[0]
        st.selectbox("Dataset", names, key="dataset")
        switched_notice(names)
        version = store().version(store().active_version(st.session_state["dataset"]))
        st.caption(f"active version {md_escape(version.ref)} · "
                   f"{plural(version.n_rows, 'row')} · {md_escape(version.operation)}")


def switch_dataset(name: str) -> None:
    """Make a dataset the one the pages work on, from the next rerun, with a notice and a way
    back (the sidebar shows both)."""
    st.session_state["pending_dataset"] = name


def switched_notice(names: list[str]) -> None:
    switched = st.session_state.get("switched_from")
    if not switched or st.session_state.get("dataset") != switched[1]:
        st.session_state.pop("switched_from", None)  # the user moved on
        return
    before, now = switched
    st.info(f"Now working on {md_escape(now)} (was {md_escape(before)}).",
            icon=":material/swap_horiz:")
    if before in names and st.button(f"Back to {before}", key="switch_back",
                                     icon=":material/undo:"):
        st.session_state.pop("switched_from", None)
        st.session_state["pending_dataset"], st.session_state["pending_quiet"] = before, True
        st.rerun()


def ref_of(version_id: int) -> str:
    """Return how people name a version: "name@N" (its dataset and place)."""
    return store().ref_of(version_id)


def show_error(error: WorkbenchError | str) -> None:
    """Render a library error as a message; the app keeps running."""
    # Error messages quote user input (file names, field names), so they are escaped.
    st.error(md_escape(error), icon=":material/error:")


def flash(message: str) -> None:
    """Keep a success message to show after the st.rerun() that usually follows a change."""
    st.session_state["flash"] = message


def show_flash() -> None:
    """Show (once) the message a previous run left with `flash`."""
    message = st.session_state.pop("flash", None)
    # Always one element here: a message that comes and goes must not shift what follows,
    # or tabs below it are recreated and jump back to their first tab.
    with st.container():
        if message:
            st.success(md_escape(message), icon=":material/check_circle:")


@st.cache_resource(max_entries=2, show_spinner="Loading rows…")
def version_frame(store_path: str, version_id: int):
    """Return a version's step DataFrame, shared by every rerun and session: read it, never
    change it (pandas operations that return a new frame are fine).

    Versions are immutable, so caching by id is safe. A resource cache hands out the frame
    itself: a data cache unpickled a 52k-row copy on every rerun (~1 s) and kept both. Two
    entries bound the memory (the version a page works on and the one it just made).
    """
    return Store(store_path).frame(version_id)


def session_cached(name: str, key: tuple, compute, keep: int = 4):
    """Return ``compute()`` for this key, computed once in this session; only the last
    ``keep`` keys of a name are kept, so memory stays bounded.

    For results that take seconds and depend on a version id and parameters (versions are
    immutable): a rerun with the same ones reuses the result instead of computing it again.
    """
    cache = st.session_state.setdefault(f"_cache_{name}", {})
    if key not in cache:
        cache[key] = compute()
        while len(cache) > keep:
            cache.pop(next(iter(cache)))
    return cache[key]


def job_watched(name: str, key: tuple, compute):
    """Return ``compute()``, a (value, jobs) pair, kept in this session until the key changes, a
    run is started or removed anywhere (jobs.runs_stamp: another tab's or process's too) or
    one of those jobs changes state. Meanwhile a rerun reads only those jobs' run folders: not
    the run registry, nor what ``value`` counted in the store.

    For what only those jobs change (embeddings a version lacks, and the jobs that add them).
    """
    from workbench import jobs
    from workbench.exceptions import NotFoundError

    kept, stamp = st.session_state.get(f"_watch_{name}"), jobs.runs_stamp()
    if kept is not None and stamp is not None and kept["key"] == (key, stamp):
        try:
            found = [jobs.status(run_id) for run_id in kept["states"]]
        except NotFoundError:  # a run folder was removed
            found = None
        if found is not None and [j.state for j in found] == list(kept["states"].values()):
            return kept["value"], found
    value, found = compute()
    st.session_state[f"_watch_{name}"] = {"key": (key, stamp), "value": value,
                                          "states": {j.run_id: j.state for j in found}}
    return value, found


def curation_header(title: str, detail: str = ""):
    """Show a curation page's title and flash; return (dataset, version id, frame) or stop."""
    dataset, version_id, _ = curation_title(title, detail)
    return dataset, version_id, version_frame(str(store().path), version_id)


def curation_title(title: str, detail: str = ""):
    """Show a curation page's title and flash; return (dataset, version id, row count) or stop.

    Reads no rows: a page that works on a sample or a page of rows opens in the same time
    whatever the version's size.
    """
    st.title(title)
    show_flash()
    dataset = current_dataset()
    if dataset is None:
        st.info("Import a dataset first (Datasets page).")
        st.stop()
    info = store().version(store().active_version(dataset))
    st.caption(f"Version {md_escape(info.ref)} · {info.n_rows:,} rows{detail}")
    return dataset, info.version_id, info.n_rows


@contextmanager
def progress_bar(label: str):
    """Show a progress bar while the block runs; yield the callback ``(done, total, what="")``
    that moves it, showing the count, the time so far and an estimate of the time left."""
    slot, start = st.empty(), time.monotonic()
    bar = slot.progress(0.0, text=md_escape(f"{label}…"))

    def update(done: int, total: int, what: str = "") -> None:
        bar.progress(min(done / total, 1.0) if total else 0.0,
                     text=md_escape(progress_text(label, done, total,
                                                  time.monotonic() - start, what)))

    try:
        yield update
    finally:
        slot.empty()


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def job_panel(run_id: str, *, key: str) -> None:
    """Show a background job's progress, ETA, log tail and a cancel button; refresh live."""
    from workbench import jobs

    active = jobs.status(run_id).active
    if active:  # seen running: its end, even before the panel's first look, reruns the page
        st.session_state[f"{key}_was_active"] = True

    @st.fragment(run_every=2.0 if active else None)
    def panel() -> None:
        job = jobs.status(run_id)
        label = jobs.progress_text(job)
        if job.active:
            st.progress(job.fraction, text=f"{label} · ETA {_eta(job.eta_s)}")
            if st.button("Cancel", key=f"{key}_cancel", icon=":material/cancel:"):
                jobs.cancel(run_id, grace_s=0.5)
                st.rerun()
        elif job.state == "done":
            st.progress(1.0, text=label)
        else:
            st.progress(job.fraction, text=label)
            show_error(f"{job.kind} {job.state}: {job.error or 'stopped'}")
        with st.expander("Log"):
            st.code(jobs.log_tail(run_id, 15) or "(empty)", language=None)
        if not job.active and st.session_state.get(f"{key}_was_active"):
            st.session_state[f"{key}_was_active"] = False
            st.rerun(scope="app")  # let the page pick up the finished results
        st.session_state[f"{key}_was_active"] = job.active

    panel()


def rerun_when_ended(run_id: str, *, key: str) -> None:
    """Rerun the page once a job this session waits on has ended (checked every second).

    A job panel reruns the page only when it saw the job running; a job that ends between a
    page's look at it and the panel's would otherwise leave the page waiting for a click."""
    from workbench import jobs

    @st.fragment(run_every=1.0)
    def watch() -> None:
        if not jobs.status(run_id).active:
            st.rerun(scope="app")

    with st.container(key=key):
        watch()


def finished_job(state_key: str, run_id: str | None, *, key: str):
    """Follow a job a page started and waits on (an Apply; its run id kept in
    ``st.session_state[state_key]``): while it runs, show its panel and stop the page; once it
    failed or was cancelled, show why and forget it. Return it once done (forgotten too), else
    None."""
    from workbench import jobs

    if not run_id:
        return None
    job = jobs.status(run_id)
    if job.active or job.state != "done":
        job_panel(run_id, key=f"{key}_{run_id}")
        if job.active:
            rerun_when_ended(run_id, key=f"{key}_{run_id}_watch")  # had it ended meanwhile
            st.stop()  # the page's options, results and buttons wait for it
    st.session_state.pop(state_key, None)
    return job if job.state == "done" else None


def tracking_toggle(key: str) -> None:
    """A switch for logging training and evaluation runs to MLflow (kept in the data folder)."""
    from workbench import tracking

    config = tracking.settings()
    where = config.shown_uri or tracking.default_uri()
    on = st.toggle("Log runs to MLflow", value=config.enabled, key=key,
                   help=f"Parameters, loss curves, metrics, data version and adapter go to "
                        f"{where} (MLFLOW_TRACKING_URI, else a local mlruns folder).")
    if on != config.enabled:
        config = tracking.set_enabled(on)
    if config.enabled:
        st.caption(f"MLflow: {md_escape(config.shown_uri)}, experiment "
                   f"{md_escape(config.experiment)}")


def engine_setting(key: str, rows: int, step: str, *, note: str = "") -> str:
    """An "Engine" choice (local or Ray Data); shows which engine ``step`` over ``rows`` rows
    would use and why. Returns the requested engine."""
    from workbench.engine import ENGINES, choose

    requested = st.selectbox(
        "Engine", ENGINES, key=key,
        help="local: this machine. ray: batch by batch on Ray Data (a local Ray, or the "
             "cluster at RAY_ADDRESS); below a size threshold it still runs locally, since "
             "starting Ray takes longer than a small step." + (f" {note}" if note else ""))
    try:
        st.caption(f"Engine: {md_escape(str(choose(requested, rows, step)))}")
    except WorkbenchError as e:  # a bad WORKBENCH_RAY_MIN_ROWS
        show_error(e)
    return requested
