"""Streamlit entry: navigation over pages/ and a sidebar with the active dataset.

`python app.py [streamlit options]` starts the server (that is what `workbench app` runs).
Its defaults come from `.streamlit/config.toml` next to this file, read from any working
folder: 127.0.0.1 only, no usage statistics, no error details in the browser.
"""

import sys

import streamlit as st
from streamlit import runtime

if __name__ == "__main__" and not runtime.exists():
    # Streamlit treats a folder named pages/ as old-style auto-discovered pages until
    # st.navigation first runs, so a deep link right after start would skip this script.
    # Our pages/ belongs to st.navigation: switch the old discovery off before serving.
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli as streamlit_cli

    PagesManager.uses_pages_directory = False
    sys.argv = ["streamlit", "run", __file__, *sys.argv[1:]]
    sys.exit(streamlit_cli.main())

from pages.common import dataset_sidebar, show_error
from workbench.exceptions import WorkbenchError

st.set_page_config(page_title="workbench", page_icon="🧰", layout="wide")

PAGES = [
    st.Page("pages/datasets.py", title="Datasets", icon=":material/dataset:", default=True),
    st.Page("pages/clean.py", title="Clean", icon=":material/cleaning_services:"),
    st.Page("pages/dedup.py", title="Deduplicate", icon=":material/content_copy:"),
    st.Page("pages/score.py", title="Score & select", icon=":material/insights:"),
    st.Page("pages/label.py", title="Label", icon=":material/thumbs_up_down:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/fact_check:"),
    st.Page("pages/errors.py", title="Errors", icon=":material/bug_report:"),
    st.Page("pages/loop.py", title="Iterations", icon=":material/autorenew:"),
]

navigation = st.navigation(PAGES)
try:
    dataset_sidebar()
except WorkbenchError as e:  # e.g. the store file cannot be opened: say so, run nothing else
    show_error(e)
    st.stop()
navigation.run()
