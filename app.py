"""Streamlit entry: navigation over pages/ and a sidebar with the active dataset."""

import streamlit as st

from pages.common import dataset_sidebar

st.set_page_config(page_title="workbench", page_icon="🧰", layout="wide")

PAGES = [
    st.Page("pages/datasets.py", title="Datasets", icon="🗂️", default=True),
]

navigation = st.navigation(PAGES)
dataset_sidebar()
navigation.run()
