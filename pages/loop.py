"""Iterations: every run from the registry, and data versions, training runs and eval runs
over time, linked by lineage."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages.common import show_error, store
from workbench import loop, runs
from workbench.evaluate import METRICS
from workbench.exceptions import WorkbenchError

st.title("Iterations")


def all_runs_section() -> None:
    """Every run of this store (training, evaluation, imports, loops, scoring, embedding)."""
    table = runs.table(store())
    if table.empty:
        return
    with st.expander(f"All runs ({len(table):,})", expanded=False):
        kinds = st.multiselect("Kinds", sorted(table["kind"].unique()), key="it_run_kinds",
                               placeholder="all kinds")
        shown = table[table["kind"].isin(kinds)] if kinds else table
        st.caption("A loop's training and evaluation show their loop under parent; data is "
                   "the dataset version a run read (name@N).")
        st.dataframe(shown, hide_index=True, key="it_all_runs", column_config={
            "run_id": st.column_config.TextColumn(width="medium")})


try:
    all_runs_section()
    overview = loop.iterations(store())
    pending = loop.unevaluated_training_runs(store())
except WorkbenchError as e:
    show_error(e)
    st.stop()
if not pending.empty:
    st.subheader("Trained, not evaluated yet")
    st.caption("Evaluate these on the Evaluate page (model: the run id) to add them here.")
    st.dataframe(pending, hide_index=True, key="it_pending")
if overview.empty:
    st.info("No eval runs yet: evaluate a model on the Evaluate page. Each evaluation, and each "
            "retrain from the Errors page, becomes one iteration here.")
    st.stop()

st.caption("One row per eval run, oldest first: the model, the dataset version it was trained "
           "on, how that version was made (and from which eval run's failures), and metrics.")
st.dataframe(overview, hide_index=True, key="it_table")
choices = ["failure_rate", *[m for m in METRICS if m in overview.columns]]
metric = st.selectbox("Metric over iterations", choices, key="it_metric")
if metric == "failure_rate":
    history = overview.rename(columns={"failure_rate": "mean"})
    fig = px.line(history, x="iteration", y="mean", markers=True, hover_data=["eval_run"])
else:
    history = loop.metric_history(store(), metric)
    fig = px.line(history, x="iteration", y="mean", markers=True, hover_data=["eval_run"],
                  error_y=history["hi"] - history["mean"],
                  error_y_minus=history["mean"] - history["lo"])
fig.update_layout(title=f"{metric} per iteration", yaxis_title=metric)
if metric == "failure_rate":  # a share: 0 to 100%, never past it
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
fig.update_xaxes(dtick=1)
st.plotly_chart(fig, key="it_chart")
