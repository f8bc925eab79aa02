"""Evaluate: run a model on an eval set in the background, import outside predictions, read
the results row by row, and compare two runs (wins, regressions, slices, training data diff)."""

from __future__ import annotations

import html

import plotly.express as px
import streamlit as st

from pages.common import (
    current_dataset,
    engine_setting,
    flash,
    job_panel,
    show_error,
    show_flash,
    store,
    tracking_toggle,
)
from workbench import evaluation, vllm_backend
from workbench.device import device_options, option_label
from workbench.evaluate import GenerationConfig
from workbench.exceptions import WorkbenchError
from workbench.judge import judge_label
from workbench.views import diff_tables, md_escape


def plot_text(value) -> str:
    """Return a string plotly shows as it is: its labels and hovers take HTML-like markup."""
    return html.escape(str(value))


def version_picker():
    """Pick an eval dataset (the one marked eval first) and a version (the active one first);
    return its VersionInfo."""
    names = store().datasets()["name"].tolist()
    marked = store().with_role("eval")
    chosen = marked[0] if marked else current_dataset()
    left, right = st.columns(2)
    name = left.selectbox("Eval dataset", names, index=names.index(chosen) if chosen in names
                          else 0, key="ev_dataset")
    if not marked:
        left.caption("Tip: mark your eval set on the Datasets page (History tab) and it is "
                     "picked here by default.")
    elif name != marked[0]:
        left.caption(f"{md_escape(marked[0])} is marked as the eval set.")
    active = store().active_version(name)
    versions = sorted(store().versions(name), key=lambda v: v.version_id != active)
    return right.selectbox("Version", versions, key="ev_version",
                           format_func=lambda v: f"{v.ref} · {v.operation} · {v.n_rows:,} rows")


def generation_form() -> GenerationConfig:
    left, middle, right = st.columns(3)
    sample = left.checkbox("Sample (greedy when off)", key="ev_sample")
    temperature = middle.slider("Temperature", 0.05, 2.0, 1.0, 0.05, key="ev_temp",
                                disabled=not sample)
    top_p = right.slider("Top-p", 0.05, 1.0, 1.0, 0.05, key="ev_top_p", disabled=not sample)
    max_new = left.number_input("Max new tokens", 1, 2048, 128, key="ev_max_new")
    batch = middle.number_input("Batch size (0: auto)", 0, 512, 0, key="ev_batch",
                                help="auto: 16 rows on the CPU; on a GPU as many as fit its "
                                     "free memory.")
    return GenerationConfig(max_new_tokens=int(max_new), batch_size=int(batch) or None,
                            do_sample=sample,
                            **({"temperature": temperature, "top_p": top_p} if sample else {}))


def device_form() -> tuple[str, str]:
    """Return (device, backend): where generation runs, and which code runs it (vLLM only
    where it is installed and a CUDA GPU is present)."""
    left, right = st.columns(2)
    device = left.selectbox("Device", device_options(), key="ev_device",
                            format_func=option_label,
                            help="auto takes a CUDA GPU, else Apple MPS, else the CPU; GPUs "
                                 "generate in bf16 where they have it.")
    backends = ["torch", "vllm"] if vllm_backend.offered() else ["torch"]
    backend = right.radio("Generation backend", backends, key="ev_backend", horizontal=True,
                          help='vLLM: pip install -e ".[vllm]" on a machine with a CUDA GPU.')
    return device, backend


def style_form() -> dict:
    """Return the style/format checks the user switched on (empty: none)."""
    with st.expander("Style and format checks (optional)"):
        left, right = st.columns(2)
        style = {"starts_with": left.text_input("Starts with", key="ev_starts"),
                 "ends_with": right.text_input("Ends with", key="ev_ends"),
                 "min_words": int(left.number_input("Min words (0: off)", 0, 10_000, 0,
                                                    key="ev_min_words")),
                 "max_words": int(right.number_input("Max words (0: off)", 0, 10_000, 0,
                                                     key="ev_max_words")),
                 "regex": [r for r in st.text_area("Must match (one regex a line)",
                                                   key="ev_regex").splitlines() if r.strip()]}
    return {k: v for k, v in style.items() if v}


def run_section() -> None:
    for run in evaluation.eval_runs(store(), active=True).itertuples():
        st.caption(md_escape(run.label))
        job_panel(run.run_id, key=f"ev_job_{run.run_id}")
    if current_dataset() is None:
        st.info("Import a dataset first (Datasets page) to evaluate a model on it.")
        return
    version = version_picker()
    choices = evaluation.model_choices(store())  # the newest trained run first
    model = st.selectbox("Model", list(choices), format_func=choices.get, key="ev_model")
    try:
        generation = generation_form()
    except WorkbenchError as e:
        show_error(e)
        return
    limit = st.number_input(f"Rows to evaluate (of {version.n_rows:,}; 0: all)", 0,
                            version.n_rows, min(evaluation.DEFAULT_LIMIT, version.n_rows),
                            key=f"ev_limit_{version.version_id}",
                            help="Generation is the slow part: start with a sample, then "
                                 "evaluate all rows of the runs worth comparing.")
    similarity = st.checkbox("Embedding similarity to the reference", value=True, key="ev_sim")
    device, backend = device_form()
    style = style_form()
    engine = engine_setting("ev_engine", int(limit) or version.n_rows, "eval")
    tracking_toggle("ev_mlflow")
    if st.button("Run evaluation", type="primary", key="ev_run_start",
                 icon=":material/play_arrow:"):
        try:
            job = evaluation.start_eval(store(), version.version_id, model=model,
                                        generation=generation,
                                        style=style, similarity=similarity,
                                        limit=int(limit) or None, device=device,
                                        backend=backend, engine=engine)
        except WorkbenchError as e:
            show_error(e)
            return
        flash(f"Started eval run {job.run_id}.")
        st.rerun()


def import_section() -> None:
    st.caption("A JSONL or CSV file with prompt, reference, prediction and model per row; "
               "rows are matched to eval rows by prompt and reference.")
    upload = st.file_uploader("Predictions file", type=["jsonl", "ndjson", "json", "csv", "tsv"],
                              key="ev_upload")
    model = st.text_input("Model name for rows without one", key="ev_import_model")
    similarity = st.checkbox("Embedding similarity", value=True, key="ev_import_sim")
    if st.button("Import predictions", disabled=upload is None, key="ev_import"):
        try:
            with st.spinner("Scoring the predictions…"):
                job, report = evaluation.import_upload(
                    upload.name, upload.getvalue(), model=model.strip() or None,
                    store=store(), similarity=similarity)
        except WorkbenchError as e:
            show_error(e)
            return
        st.session_state["ev_import_report"] = (job.run_id, report)
    if "ev_import_report" in st.session_state:
        show_report(*st.session_state["ev_import_report"])


def show_report(run_id: str, report) -> None:
    read, imported, rejected = st.columns(3)
    read.metric("Rows read", f"{report.rows_read:,}")
    imported.metric("Imported", f"{report.imported:,}")
    rejected.metric("Rejected", f"{len(report.rejected):,}")
    st.caption(f"eval run {md_escape(run_id)}")
    if report.rejected:
        st.dataframe([{"line": r.line, "field": r.field, "reason": r.reason, "fix": r.fix,
                       "raw": r.raw} for r in report.rejected], hide_index=True,
                     key="ev_rejects")


def results_section() -> None:
    st.dataframe(evaluation.runs_table(store()), hide_index=True, key="ev_runs_table",
                 column_config={"run": st.column_config.TextColumn(width="medium")})
    finished = evaluation.finished_runs(store())
    if finished.empty:
        st.info("No finished eval runs yet: run an evaluation or import predictions.")
        return
    labels = dict(zip(finished["run_id"], finished["label"]))
    run_id = st.selectbox("Run", list(labels), key="ev_result_run", format_func=labels.get)
    try:
        predictions = evaluation.run_predictions(run_id)
        for warning in evaluation.run_warnings(predictions):
            st.warning(md_escape(warning), icon=":material/warning:")
        st.dataframe(evaluation.summary_table(run_id), hide_index=True, key="ev_summary")
    except WorkbenchError as e:
        show_error(e)
        return
    length_section(predictions)
    event = st.dataframe(evaluation.outputs_table(predictions), hide_index=True,
                         on_select="rerun", selection_mode="single-row", key="ev_rows")
    if event.selection.rows:
        row_view(evaluation.row_detail(predictions, event.selection.rows[0]))


def length_section(predictions) -> None:
    warning, by_length = evaluation.length_check(predictions)
    if warning:
        st.warning(warning, icon=":material/straighten:")
    with st.expander("Metrics by answer length (answer words / reference words)",
                     expanded=bool(warning)):
        st.dataframe(by_length, hide_index=True, key="ev_by_length")


def row_view(detail: dict) -> None:
    st.subheader(f"Row {detail['row_key']}")
    for turn in detail["prompt_messages"]:
        st.caption(md_escape(turn["role"]))
        st.text(turn["content"])  # dataset text stays text
    left, right = st.columns(2)
    left.caption("reference")
    left.text(detail["reference"])
    right.caption(f"prediction · {detail['n_tokens']} tokens"
                  + (" · hit max new tokens" if detail["hit_max"] else ""))
    if str(detail["prediction"]).strip():
        right.text(detail["prediction"])
    else:
        right.warning("The model's answer is empty (it generated only special or blank "
                      "tokens).", icon=":material/warning:")
    st.dataframe([{"metric": k, "value": v} for k, v in detail["metrics"].items()],
                 hide_index=True, key="ev_row_metrics")
    if detail["metadata"]:
        st.dataframe([{"key": k, "value": str(v)} for k, v in detail["metadata"].items()],
                     hide_index=True, key="ev_row_metadata")


def compare_section() -> None:
    finished = evaluation.finished_runs(store())
    if len(finished) < 2:
        st.info("Compare needs two finished eval runs on the same eval set.")
        return
    labels = dict(zip(finished["run_id"], finished["label"]))
    ids = list(labels)
    left, right = st.columns(2)
    run_a = left.selectbox("Run A (before)", ids, index=1, key="ev_cmp_a",
                           format_func=labels.get)
    run_b = right.selectbox("Run B (after)", ids, index=0, key="ev_cmp_b",
                            format_func=labels.get)
    try:
        metrics = evaluation.common_metrics(run_a, run_b)
        metric = left.selectbox("Metric", metrics, key="ev_cmp_metric")
        by = right.multiselect("Slices", evaluation.slice_options(run_a), default=["length"],
                               key="ev_cmp_by")
        result = evaluation.compare(run_a, run_b, metric=metric, by=by, store=store())
    except WorkbenchError as e:
        show_error(e)
        return
    comparison_view(result)


def comparison_view(result: evaluation.RunComparison) -> None:
    c = result.comparison
    win, loss, tie, delta = st.columns(4)
    win.metric("B wins", c.counts["win"])
    loss.metric("B loses", c.counts["loss"])
    tie.metric("Ties", c.counts["tie"])
    delta.metric(f"Mean Δ {md_escape(c.metric)}", f"{c.delta['mean']:+.3f}",
                 help=f"95% CI [{c.delta['lo']:+.3f}, {c.delta['hi']:+.3f}]")
    if result.length is not None:
        length_view(result.length)
    judge_view(result)
    st.subheader(f"Regressions ({len(c.regressions)})")
    st.dataframe(evaluation.regressions_table(result), hide_index=True, key="ev_regressions")
    deltas = evaluation.slice_deltas(result)
    if len(deltas):
        # Slice names and slice kinds (metadata keys) come from the data; plotly labels,
        # facet titles and hovers take HTML-like markup, so they are escaped.
        fig = px.bar(deltas.assign(plus=deltas["delta_hi"] - deltas["delta"],
                                   minus=deltas["delta"] - deltas["delta_lo"],
                                   slice=deltas["slice"].map(plot_text),
                                   by=deltas["by"].map(plot_text)),
                     x="slice", y="delta", color="regressed", facet_col="by",
                     error_y="plus", error_y_minus="minus", hover_data=["n", "mean_a", "mean_b"],
                     title=f"Δ {plot_text(c.metric)} per slice (B − A, 95% CI)")
        fig.update_xaxes(matches=None)
        st.plotly_chart(fig, key="ev_slices")
    st.subheader("Training data")
    st.text(evaluation.training_summary(result))
    if result.training:
        for kind, table in diff_tables(result.training["diff"]).items():
            with st.expander(f"{kind} ({len(table):,})"):
                st.dataframe(table, hide_index=True, key=f"ev_diff_{kind}")


def length_view(lc) -> None:
    """The length warning, then B's win rate raw and at equal length, and the length buckets."""
    if lc.warning:
        st.warning(lc.warning, icon=":material/straighten:")
    with st.expander("Length-controlled comparison", expanded=bool(lc.warning)):
        raw, controlled, similar = st.columns(3)
        raw.metric("B win rate (ties ½)", f"{lc.win_rate['mean']:.3f}",
                   help=f"95% CI [{lc.win_rate['lo']:.3f}, {lc.win_rate['hi']:.3f}]")
        controlled.metric("Length-controlled B win rate", f"{lc.lc_win_rate['mean']:.3f}",
                          help=f"95% CI [{lc.lc_win_rate['lo']:.3f}, "
                               f"{lc.lc_win_rate['hi']:.3f}]: a logistic regression of B's "
                               "wins on the log length ratio of B's and A's answers, read at "
                               "equal length (as AlpacaEval 2's length-controlled win rate)")
        similar.metric("Pairs of similar length", f"{lc.similar}",
                       help="answers within 0.8–1.25× of each other's length")
        st.caption(f"A's answers are {lc.ratio_a:.2f}× the reference length on average, B's "
                   f"{lc.ratio_b:.2f}×. 95% CI of the controlled rate "
                   f"[{lc.lc_win_rate['lo']:.3f}, {lc.lc_win_rate['hi']:.3f}]."
                   + (f" Note: {lc.note}." if lc.note else ""))
        st.markdown("**B's wins by how long B's answer is next to A's**")
        st.dataframe(lc.by_pair, hide_index=True, key="ev_len_pairs")
        st.markdown(f"**{md_escape(lc.metric)} by answer length (answer / reference words)**")
        st.dataframe(lc.by_length, hide_index=True, key="ev_len_buckets")


def judge_view(result: evaluation.RunComparison) -> None:
    """Ask the configured judge which answer is better given the reference (a background job)."""
    with st.expander("Reference-guided judge comparison"):
        done = evaluation.pairwise_judge_runs(store(), result.run_a, result.run_b)
        if done:
            job_panel(done[0].run_id, key="ev_pj_job")
            if done[0].state == "done":
                st.text(evaluation.pairwise_summary(done[0]))
                if done[0].result.get("warning"):  # over a fifth of pairs failed
                    st.warning(md_escape(done[0].result["warning"]), icon=":material/error:")
        config = evaluation.judge_config(store())
        if config is None:
            st.info(evaluation.NO_JUDGE)
            return
        st.caption(f"Judge: {md_escape(judge_label(config))}. Each pair is asked "
                   "twice, A's answer first and then B's; orders that disagree count as a tie.")
        if st.button("Ask the judge: A or B, given the reference", key="ev_pj_start",
                     disabled=bool(done) and done[0].active):
            try:
                job = evaluation.start_pairwise_judge(store(), result.run_a, result.run_b,
                                                       config=config)
            except WorkbenchError as e:
                show_error(e)
                return
            flash(f"Started judge comparison {job.run_id}.")
            st.rerun()


st.title("Evaluate")
show_flash()
run_tab, import_tab, results_tab, compare_tab = st.tabs(
    ["Run", "Import predictions", "Results", "Compare"])
with run_tab:
    run_section()
with import_tab:
    import_section()
with results_tab:
    results_section()
with compare_tab:
    compare_section()
