"""Streamlit glue shared by the pages: the store handle, the sidebar and messages.

Anything that came from a user or a dataset (names, paths, file contents, error messages that
quote them) goes through `md_escape` before a markdown-rendering element shows it.
"""

from __future__ import annotations

import os

import streamlit as st

from workbench.exceptions import WorkbenchError
from workbench.store import Store, default_store_path
from workbench.views import md_escape, plural


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
        if pending in names:
            st.session_state["dataset"] = pending
        if st.session_state.get("dataset") not in names:
            st.session_state["dataset"] = names[0]
        st.selectbox("Dataset", names, key="dataset")
        version = store().version(store().active_version(st.session_state["dataset"]))
        st.caption(f"active version v{version.version_id} · {plural(version.n_rows, 'row')} · "
                   f"{md_escape(version.operation)}")


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
    if message:
        st.success(md_escape(message), icon=":material/check_circle:")
