"""Streamlit glue shared by the pages: the store handle and the active-dataset sidebar."""

from __future__ import annotations

import os

import streamlit as st

from workbench.exceptions import WorkbenchError
from workbench.store import Store, default_store_path


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
        st.caption(f"store: {store().path}")
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
        st.caption(f"active version v{version.version_id} · {version.n_rows:,} rows · "
                   f"{version.operation}")


def show_error(error: WorkbenchError) -> None:
    """Render a library error as a message; the app keeps running."""
    st.error(str(error), icon="⚠️")
