"""Errors: an eval run's failures by severity, slices, clusters, provenance, and targeted data
for the next training run (retrain and re-evaluate in the background, then before/after)."""

from __future__ import annotations

import html

import pandas as pd
import plotly.express as px
import streamlit as st

from pages.common import flash, job_panel, ref_of, show_error, show_flash, store
from workbench import evaluation, loop
from workbench.exceptions import WorkbenchError
from workbench.store import Store
from workbench.views import md_escape

st.title("Errors")
show_flash()
runs = evaluation.finished_runs(store())
if runs.empty:
    st.info("No eval runs yet: evaluate a model (or import predictions) on the Evaluate page, "
            "then come back here to analyse its failures.")
    st.stop()
labels = dict(zip(runs["run_id"], runs["label"]))
run_id = st.selectbox("Eval run", runs["run_id"].tolist(), key="er_run",
                      format_func=lambda r: labels[r])
try:
    all_rows = loop.failures(run_id, include_passing=True)
except WorkbenchError as e:
    show_error(e)
    st.stop()
failed = all_rows[[bool(t) for t in all_rows["tags"]]].reset_index(drop=True)


def tag_text(tags) -> str:
    return ", ".join(tags)


def plot_text(value) -> str:
    """Return a string plotly shows as it is: its labels and hovers take HTML-like markup."""
    return html.escape(str(value))


def failures_section() -> list[int]:
    """Show the failures table; return the row keys selected in it."""
    a, b, c = st.columns(3)
    a.metric("Eval rows", f"{len(all_rows):,}")
    b.metric("Failures", f"{len(failed):,}")
    c.metric("Failure rate", f"{len(failed) / max(1, len(all_rows)):.0%}")
    if failed.empty:
        st.success("No failures in this run: every row passed the automatic checks.")
        return []
    view = pd.DataFrame({"row": failed["row_key"], "severity": failed["severity"].round(2),
                         "tags": failed["tags"].map(tag_text), "note": failed["note"],
                         "prompt": failed["prompt"].str.slice(0, 200),
                         "prediction": failed["prediction"].str.slice(0, 200)})
    event = st.dataframe(view, hide_index=True, on_select="rerun", selection_mode="multi-row",
                         key="er_table")
    with st.expander("Failure tag rates"):
        st.dataframe(loop.tag_rates(run_id), hide_index=True)
    # A selection made on another run may point past this run's rows.
    return [int(failed["row_key"].iloc[i]) for i in event.selection.rows if i < len(failed)]


def detail_section() -> None:
    st.subheader("One failure")
    keys = failed["row_key"].astype(int).tolist()
    tags = dict(zip(keys, failed["tags"].map(tag_text)))
    row_key = st.selectbox("Failure", keys, key="er_row",
                           format_func=lambda k: f"row {k} · {tags[k]}")
    version = training_version_picker()
    try:
        detail = loop.failure_detail(store(), run_id, row_key, train_version=version)
    except WorkbenchError as e:
        show_error(e)
        return
    show_texts(detail.row)
    annotate_form(detail.row)
    provenance_view(detail)


def training_version_picker() -> int | None:
    """Return the training version behind the run's model, or one the user picks."""
    version = loop.train_version_of(run_id)
    if version is not None:
        st.caption(f"The evaluated model was trained on {md_escape(ref_of(version))}.")
        return version
    names = store().datasets()["name"].tolist()
    choice = st.selectbox("Training data to compare with (the run used a base model)",
                          ["(none)", *names], key="er_train_dataset")
    return None if choice == "(none)" else store().active_version(choice)


def show_texts(row: pd.Series) -> None:
    left, middle, right = st.columns(3)
    for column, title, text in ((left, "Prompt", row["prompt"]),
                                (middle, "Reference", row["reference"]),
                                (right, "Prediction", row["prediction"])):
        column.caption(title)
        column.text(str(text))  # dataset and model text stays text


def annotate_form(row: pd.Series) -> None:
    key = int(row["row_key"])
    with st.form(f"er_annotate_{key}"):
        # Keys per row: a shared key would carry one row's text over to the next row.
        tags = st.text_input("Manual tags (comma-separated)", ", ".join(row["manual_tags"]),
                             key=f"er_manual_tags_{key}")
        note = st.text_input("Note", row["note"], key=f"er_note_{key}")
        if st.form_submit_button("Save tags and note"):
            try:
                loop.annotate(run_id, key, tags=tags, note=note)
            except WorkbenchError as e:
                show_error(e)
                return
            flash(f"Saved the tags and note of row {key}.")
            st.rerun()


def provenance_view(detail: loop.FailureDetail) -> None:
    if detail.train_version is None:
        st.caption("No training data to trace: pick a dataset above.")
        return
    if detail.contaminated:
        st.warning(f"Contaminated: {detail.overlap:.0%} of this prompt's word 8-grams occur in "
                   f"the training data ({md_escape(ref_of(detail.train_version))}).",
                   icon=":material/warning:")
        st.text(detail.contaminating_prompt)
    else:
        st.caption(f"Not contaminated ({detail.overlap:.0%} word 8-gram overlap with "
                   f"{md_escape(ref_of(detail.train_version))}).")
    st.caption("Nearest training rows")
    st.dataframe(detail.neighbours, hide_index=True)


def slice_section() -> None:
    st.subheader("Slices")
    try:
        metrics, kinds = loop.slice_options(run_id)
    except WorkbenchError as e:
        show_error(e)
        return
    if not metrics:
        st.info("This run has no metric columns to slice.")
        return
    left, right = st.columns(2)
    # Open on a graded metric: exact match is 0 almost everywhere for free-text answers.
    preferred = next((m for m in ("similarity", "rouge_l", "token_f1") if m in metrics), None)
    metric = left.selectbox("Metric", metrics, key="er_metric",
                            index=metrics.index(preferred) if preferred else 0)
    by = right.selectbox("Slice by", kinds, key="er_by")
    try:
        table = loop.slices(store(), run_id, metric, by)
    except WorkbenchError as e:
        show_error(e)
        return
    # Slice names are metadata values from the data: escaped, like every plot label here.
    fig = px.bar(table.assign(slice=table["slice"].map(plot_text)), x="slice", y="mean",
                 hover_data=["n"], title=f"{plot_text(metric)} by {plot_text(by)}",
                 error_y=table["hi"] - table["mean"], error_y_minus=table["mean"] - table["lo"])
    st.plotly_chart(fig, key="er_slice_chart")
    st.dataframe(table, hide_index=True)


def cluster_section() -> list[int]:
    """Show failure clusters (on request); return the row keys of the chosen cluster."""
    st.subheader("Failure clusters")
    if st.button("Cluster the failures", key="er_cluster"):
        try:
            with st.spinner("Embedding prompts and clustering…"):
                st.session_state["er_clusters"] = (run_id, loop.failure_clusters(store(), run_id))
        except WorkbenchError as e:
            show_error(e)
    found = st.session_state.get("er_clusters")
    if not found or found[0] != run_id:
        return []
    table = found[1]
    st.dataframe(table[["cluster", "size", "name"]], hide_index=True)
    names = dict(zip(table["cluster"], table["name"]))
    pick = st.selectbox("Fix a whole cluster", [None, *table["cluster"].tolist()],
                        key="er_cluster_pick",
                        format_func=lambda c: "(no)" if c is None else f"{c}: {names[c]}")
    return [] if pick is None else table.set_index("cluster").at[pick, "row_keys"]


def targeted_section(chosen: list[int]) -> None:
    st.subheader("Targeted data")
    if not chosen:
        st.info("Select failures in the table (or a cluster) to turn them into training data.")
        return
    st.caption(f"{len(chosen)} failures chosen: rows {', '.join(map(str, chosen))}")
    mode = st.radio("How", ["correct the answers", "pull similar rows from a pool"],
                    horizontal=True, key="er_mode")
    answers, pool_version, k = None, None, 3
    if mode == "correct the answers":
        answers = answers_editor(chosen)
    else:
        names = store().datasets()["name"].tolist()
        left, right = st.columns(2)
        pool = left.selectbox("Pool dataset", names, key="er_pool")
        k = right.number_input("Rows per failure", 1, 20, 3, key="er_k")
        pool_version = store().active_version(pool) if pool else None
    version = loop.train_version_of(run_id)
    if version is None:
        names = store().datasets()["name"].tolist()
        base = st.selectbox("Training dataset to extend", names, key="er_extend")
        version = store().active_version(base) if base else None
    if st.button("Make targeted version", type="primary", key="er_make"):
        make_version(chosen, answers, pool_version, int(k), version)


def answers_editor(chosen: list[int]) -> dict[int, str]:
    """Show the chosen failures with editable expected answers; return row key -> answer."""
    rows = failed.set_index("row_key").loc[chosen]
    table = pd.DataFrame({"row": chosen, "prompt": rows["prompt"].tolist(),
                          "prediction": rows["prediction"].tolist(),
                          "expected answer": rows["reference"].tolist()})
    # Edits are kept by position: a new choice of rows needs a fresh editor.
    edited = st.data_editor(table, hide_index=True, disabled=["row", "prompt", "prediction"],
                            key=f"er_answers_{hash(tuple(chosen))}")
    return dict(zip(edited["row"].astype(int), edited["expected answer"].fillna("").astype(str)))


def make_version(chosen, answers, pool_version, k, version) -> None:
    try:
        vid = loop.make_targeted_version(store(), run_id, chosen, answers=answers,
                                         pool_version=pool_version, k=k, train_version=version)
    except WorkbenchError as e:
        show_error(e)
        return
    info = store().version(vid)
    flash(f"Made targeted version {info.ref} ({info.n_rows:,} rows); it is now the active "
          f"version of {info.dataset}.")
    st.rerun()


def retrain_section() -> None:
    versions = loop.targeted_versions(store(), run_id)
    if not versions:
        return
    st.subheader("Retrain and re-evaluate")
    labels = {v.version_id: f"{v.ref} · {v.n_rows:,} rows" for v in versions}
    vid = st.selectbox("Targeted version", list(labels), key="er_targeted",
                       format_func=lambda v: labels[v])
    config = training_options()
    if st.button("Retrain and re-evaluate", key="er_retrain"):
        try:
            loop.start_retrain(store(), run_id, vid, config=config)
        except WorkbenchError as e:
            show_error(e)
            return
        st.rerun()
    started = loop.retrain_jobs(store(), run_id)
    if started:
        job_panel(started[0].run_id, key="er_job")
        if started[0].state == "done":
            before_after_view(started[0].run_id)


def training_options() -> dict | None:
    """Return training options when the run's model has no previous training config."""
    previous = loop.previous_training_run(run_id)
    if previous is not None:
        st.caption(f"Retrains with the config of training run {md_escape(previous.name)}.")
        return None
    st.caption("The run evaluated a base model: choose the training options.")
    model = runs.set_index("run_id").at[run_id, "model"]
    a, b, c = st.columns(3)
    model = a.text_input("Base model", model if model != "?" else "default", key="er_model")
    steps = b.number_input("Steps", 1, 10_000, 30, key="er_steps")
    rate = c.number_input("Learning rate", 1e-6, 0.1, 2e-4, format="%.6f", key="er_lr")
    return {"model": model, "max_steps": int(steps), "learning_rate": float(rate),
            "val_fraction": 0.0, "eval_every": 0}


@st.cache_data(max_entries=8, show_spinner="Comparing before and after…")
def cached_before_after(store_path: str, loop_run: str) -> loop.BeforeAfter:
    """Return the before/after report; a finished run never changes, so it is cached."""
    return loop.before_after(Store(store_path), loop_run)


def before_after_view(loop_run: str) -> None:
    try:
        report = cached_before_after(str(store().path), loop_run)
    except WorkbenchError as e:
        show_error(e)
        return
    st.subheader("Before / after")
    st.caption(f"{md_escape(report.metric)}: {report.counts['win']} better, "
               f"{report.counts['loss']} worse, "
               f"{report.counts['tie']} same; {len(report.excluded_rows)} rows left out "
               "(their prompts were trained on).")
    if report.regressed:
        st.warning("Regressed beyond the interval: " + md_escape(", ".join(report.regressed)))
    readable = {"rate_a": "before", "rate_b": "after", "mean_a": "before", "mean_b": "after"}
    tags = report.tags.rename(columns=readable)
    bars = tags.melt(id_vars="tag", value_vars=["before", "after"], var_name="run",
                     value_name="rate")
    bars["tag"] = bars["tag"].map(plot_text)  # manual tags are typed by users
    fig = px.bar(bars, x="tag", y="rate", color="run", barmode="group",
                 title="Share of rows with each failure tag")
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title="rows with the tag")
    st.plotly_chart(fig, key="er_tag_chart")
    st.dataframe(tags, hide_index=True, key="er_tags_table")
    for name, table in report.slices.items():
        st.caption(f"{md_escape(report.metric)} per slice by {md_escape(name)}")
        st.dataframe(table.rename(columns=readable), hide_index=True)


selected = failures_section()
if not failed.empty:
    detail_section()
slice_section()
cluster_rows = cluster_section() if not failed.empty else []
targeted_section(list(dict.fromkeys([*selected, *cluster_rows])))
retrain_section()
