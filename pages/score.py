"""Score & select: score rows, look at the scores, keep the best subset as a new version."""

from __future__ import annotations

import json

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from pages.common import (
    curation_title,
    engine_setting,
    flash,
    job_panel,
    job_watched,
    rerun_when_ended,
    session_cached,
    show_error,
    store,
)
from workbench import curate, jobs, labelling, quality
from workbench.cache import scores_fingerprint
from workbench.device import device_options, option_label
from workbench.exceptions import WorkbenchError
from workbench.judge import DEFAULT_RUBRIC, KEY_VARS_ENV, MODE_LABELS, allowed_key_vars
from workbench.schema import prompt_text, response_text
from workbench.score import MODEL_SCORES, SCORERS, STYLES
from workbench.store import Store
from workbench.views import histogram_table, hover_texts, md_escape, plot_sample

_, version_id, n_rows = curation_title("Score & select")


def describe(name: str) -> str:
    return f"{name} ({SCORERS[name].meaning})"


def heuristics_form() -> tuple[list[str], dict]:
    """Return the chosen heuristic scorers and their options."""
    names = st.multiselect("Heuristic scorers", [n for n in quality.HEURISTICS if n != "format"],
                           ["length", "lexical_diversity", "repetition"], key="sc_heur",
                           format_func=describe)
    with st.expander("Heuristic parameters"):
        a, b, c, d = st.columns(4)
        params = {"length": {"unit": a.radio("Length unit", ["words", "chars"], key="sc_unit")},
                  "lexical_diversity": {"window": b.number_input("Diversity window (words)", 2,
                                                                 500, 50, key="sc_window")},
                  "repetition": {"n": c.number_input("Repetition n-gram", 1, 10, 3, key="sc_rep")},
                  "overlap": {"n": d.number_input("Overlap n-gram", 1, 10, 2, key="sc_ovl")}}
    with st.expander("Format checks (your own)"):
        a, b, c, d = st.columns(4)
        checks = {"pattern": a.text_input("Regex the response must match", key="sc_regex"),
                  "full_match": a.checkbox("Whole response must match", key="sc_full"),
                  "valid_json": b.checkbox("Valid JSON", key="sc_json"),
                  "prefix": c.text_input("Required prefix", key="sc_prefix"),
                  "style": d.selectbox("Style", [None, *STYLES], key="sc_style")}
    checks = {k: v for k, v in checks.items() if v}
    if set(checks) - {"full_match"}:
        names, params["format"] = [*names, "format"], checks
    return names, params


def announce(key: str) -> None:
    """Once the job this session started (its run id kept under ``key``) has ended, say what
    it gave, once: a flash and a rerun (a failed job shows its error in its panel)."""
    run_id = st.session_state.get(key)
    if not run_id:
        return
    job = jobs.status(run_id)
    if job.active:  # its panel may not see it end (a quick job): this rerun will
        rerun_when_ended(run_id, key=f"{key}_watch")
        return
    del st.session_state[key]
    if job.state == "done" and job.result.get("message"):
        flash(job.result["message"])
        st.rerun()


def run_heuristics(busy: bool) -> str:
    """Start heuristic scoring (a background job, unless one runs); returns the engine chosen,
    which model scoring uses too."""
    names, params = heuristics_form()
    engine = engine_setting("sc_engine", n_rows, "score",
                            note="It also applies to model scores (a background job); the "
                            "judge runs locally.")
    if st.button("Score now", type="primary", key="sc_run", disabled=not names or busy,
                 help="Scores as a background job (it survives a page reload); rows scored "
                      "before with the same options come from the cache"):
        try:
            job = quality.start_heuristic_scoring(
                store(), version_id, quality.heuristic_specs(names, params), engine=engine)
        except WorkbenchError as e:
            show_error(e)
            return engine
        st.session_state["sc_scoring"] = job.run_id
        st.rerun()
    return engine


def model_form(engine: str) -> None:
    with st.expander("Model scores: perplexity and IFD (background job)"):
        a, b, c, d = st.columns(4)
        scores = a.multiselect("Scores", list(MODEL_SCORES), list(MODEL_SCORES), key="sc_mscores",
                               format_func=describe)
        model = b.text_input("Language model ('default' or a local folder)", "default",
                             key="sc_model")
        max_length = c.number_input("Max tokens per row", 16, 8192, 1024, key="sc_maxlen")
        device = d.selectbox("Device", device_options(), key="sc_device",
                             format_func=option_label,
                             help="Where the model scorers and the embedder run: auto takes "
                                  "a CUDA GPU, else Apple MPS, else the CPU.")
        if st.button("Start model scoring", key="sc_mstart", disabled=not scores):
            start(lambda: quality.start_model_scoring(
                store(), version_id, scores=scores, model=model, max_length=max_length,
                device=device, engine=engine))


def judge_form() -> None:
    with st.expander("LLM judge (background job)"):
        a, b, c = st.columns(3)
        backend = a.radio("Judge", ["local", "openai"], key="sc_jbackend", format_func=lambda b:
                          {"local": "local model", "openai": "OpenAI-compatible endpoint"}[b])
        remote = backend == "openai"
        config = {"backend": backend,
                  "model": a.text_input("Model ('default', a folder, or the endpoint's model)",
                                        "default", key="sc_jmodel"),
                  "base_url": b.text_input("Base URL", "http://127.0.0.1:8000/v1",
                                           key="sc_jurl", disabled=not remote) if remote else None,
                  "api_key_env": key_variable(c) if remote else None,
                  "rubric": st.text_area("Rubric ({prompt} and {response} are filled in)",
                                         DEFAULT_RUBRIC, height=240, key="sc_rubric")}
        if st.button("Start judging", key="sc_jstart"):
            start(lambda: quality.start_judge(store(), version_id, config))


def key_variable(column) -> str | None:
    """Pick the environment variable whose value is sent as the key: only allowed names.

    Whoever opens the app fills this form, so it offers only the names the person running
    the app allowed; a free text box would send any secret of the server to any URL.
    """
    return column.selectbox(
        "Environment variable holding the key", [*allowed_key_vars(), None], key="sc_jkey",
        format_func=lambda n: "(no key)" if n is None else n,
        help=f"Only the names in `{KEY_VARS_ENV}` (comma-separated, default `OPENAI_API_KEY`), "
             "set where the app runs, can be sent; add a name there to offer it here.")


def start(launch) -> None:
    try:
        launch()
    except WorkbenchError as e:
        show_error(e)
        return
    st.rerun()


def jobs_panel(started: list[jobs.JobStatus]) -> None:
    shown: set[str] = set()
    for job in started:
        if job.kind not in shown:  # the newest job of each kind
            shown.add(job.kind)
            job_panel(job.run_id, key=f"sc_job_{job.kind}")
            if job.state == "done" and job.result.get("message"):
                st.caption(md_escape(job.result["message"]))
            if job.result.get("mode") in MODE_LABELS:
                st.caption(f"Judge answers: {MODE_LABELS[job.result['mode']]}.")
            if job.result.get("warning"):  # over a fifth of rows failed: say so first
                st.warning(md_escape(job.result["warning"]), icon=":material/error:")
            failed = job.result.get("errors") or []
            if failed:  # rows the judge could not score stay unscored, and are listed
                st.warning(f"{job.result['failed']:,} rows were not scored by the judge; "
                           "scoring again retries only those.", icon=":material/warning:")
                st.dataframe(failed, hide_index=True, key=f"sc_job_errors_{job.kind}")


def charts(table, columns: list[str]) -> None:
    st.subheader("Scores")
    st.dataframe(quality.score_summary(table, columns), hide_index=True, key="sc_summary")
    if "judge_reason" in table:
        with st.expander("Judge scores with their reasons (the 1,000 lowest)"):
            lowest = table[["row_key", "judge_score", "judge_reason"]].sort_values(
                "judge_score").head(1_000)
            texts = quality.row_texts(store(), version_id, lowest["row_key"].tolist())
            st.dataframe(lowest.assign(prompt=texts["prompt"].to_numpy()), hide_index=True,
                         key="sc_reasons")
    grid = st.columns(min(3, len(columns)))
    for i, column in enumerate(columns):
        grid[i % len(grid)].plotly_chart(histogram(table[column], column),
                                         key=f"sc_hist_{column}")
    if len(columns) >= 2:
        a, b = st.columns(2)
        x = a.selectbox("Scatter x", columns, 0, key="sc_x")
        y = b.selectbox("Scatter y", columns, 1, key="sc_y")
        sample = session_cached("sc_points", (version_id, fingerprint, x, y), lambda:
                                quality.scatter_points(store(), version_id, table, x, y))
        st.plotly_chart(scatter(sample.rows, x, y), key="sc_scatter")
        st.caption(sample.caption)


def scatter(rows, x: str, y: str) -> go.Figure:
    """A WebGL scatter of sampled rows, each with its row key and a line of its response."""
    # numpy arrays, not lists: plotly checks a list element by element.
    points = go.Scattergl(x=rows[x].to_numpy(), y=rows[y].to_numpy(), mode="markers",
                          customdata=rows["row_key"].to_numpy(),
                          text=np.array(rows["text"], dtype=str),
                          hovertemplate=f"{x} %{{x:.4g}}<br>{y} %{{y:.4g}}<br>row "
                                        "%{customdata}: %{text}<extra></extra>")
    return go.Figure(points, layout={"height": 420, "xaxis": {"title": {"text": x}},
                                     "yaxis": {"title": {"text": y}}})


def histogram(values, title: str) -> go.Figure:
    """A histogram drawn from its bins: the browser gets 40 bars, not every row's value."""
    bins = histogram_table(values)
    bar = go.Bar(x=(bins["start"] + bins["end"]) / 2, y=bins["rows"],
                 width=bins["end"] - bins["start"], customdata=bins[["start", "end"]],
                 hovertemplate="%{customdata[0]:.4g} to %{customdata[1]:.4g}: %{y:,} rows"
                               "<extra></extra>")
    return go.Figure(bar, layout={"title": {"text": title}, "height": 260, "bargap": 0.02,
                                  "yaxis": {"title": {"text": "rows"}}})


def embedding_section(table, columns: list[str]) -> None:
    st.subheader("Embedding map")
    k = st.slider("Clusters (k-means)", 2, 20, 8, key="sc_k")
    # Rows lacking embeddings are counted in the store (0.1 s at 1M rows) once, and again
    # only when a run starts or the embedding job changes state, not on every rerun.
    missing, runs = job_watched("sc_embed", (version_id,), lambda: (
        curate.missing_embeddings(store(), version_id),
        curate.embedding_jobs(store(), version_id, "conversation")[:1]))
    if runs and (runs[0].active or missing):
        job_panel(runs[0].run_id, key="sc_embed")
    points = None
    if not missing:
        points, missing = quality.embedding_map(store(), table, k=k, version_id=version_id)
    if points is None:
        st.info(f"{missing:,} rows need embeddings for the map, diverse top-k and cluster "
                "quotas; they are computed once in the background and cached.")
        if st.button("Embed rows in the background", key="sc_embed_start",
                     disabled=bool(runs) and runs[0].active):
            start(lambda: curate.start_embedding(store(), version_id,
                                                 device=st.session_state.get("sc_device",
                                                                             "auto")))
        return
    colour = st.selectbox("Colour by", ["cluster", *columns], key="sc_colour")
    sample = plot_sample(points, ["x", "y"])
    texts = quality.row_texts(store(), version_id, sample.rows["row_key"].tolist())
    data = sample.rows.assign(text=hover_texts(texts["response"].fillna(""))).merge(
        table[["row_key", *columns]], on="row_key")
    fig = px.scatter(data, x="x", y="y", color=colour, custom_data=["row_key"],
                     hover_data={"text": True, "row_key": True, "x": False, "y": False},
                     height=520, render_mode="webgl")
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="sc_map")
    st.caption(sample.caption)
    picked = [p["customdata"][0] for p in event["selection"]["points"] if p.get("customdata")]
    if picked:
        show_row(int(picked[0]))


def show_row(row_key: int) -> None:
    example = store().row(row_key).example
    st.caption(f"row {row_key}")
    st.text(prompt_text(list(example.messages))[:2000])  # dataset text stays text
    st.text(response_text(list(example.messages))[:4000])


def weights_form(frame, columns: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    fitted = st.session_state.get("sc_fitted_directions", {})
    with st.expander("Combined score: weights (0 = ignore; directions come from each scorer, "
                     "or from your labels once fitted)"):
        if st.button("Fit weights to my labels", key="sc_fit_weights",
                     help="A logistic regression of your good/bad labels on the scores: each "
                          "weight is a score's pull, its direction the way it separates"):
            fit_weights(frame, columns)
        grid = st.columns(min(4, len(columns)))
        weights = {c: grid[i % len(grid)].number_input(
            f"{c} ({fitted[c]} = better)" if c in fitted else c, 0.0, 10.0, 0.0, 0.5,
            key=f"sc_w_{c}") for i, c in enumerate(columns)}
    weights = {c: w for c, w in weights.items() if w > 0}
    return weights, {c: d for c, d in fitted.items() if c in weights}


def fit_weights(frame, columns: list[str]) -> None:
    usable = [c for c in columns if not c.startswith("learned")]
    try:
        weights, better = labelling.fitted_weights(store(), frame, usable)
    except WorkbenchError as e:
        show_error(e)
        return
    for column in columns:
        st.session_state[f"sc_w_{column}"] = float(weights.get(column, 0.0))
    st.session_state["sc_fitted_directions"] = better
    flash("Weights fitted to your labels: " + ", ".join(f"{c} {w:g} ({better[c]} = better)"
                                                        for c, w in weights.items()))
    st.rerun()


def labels_section(frame) -> None:
    """Each score's agreement with the user's labels, and the learned score."""
    st.subheader("Scores against your labels")
    st.page_link("pages/label.py", label="Label rows in the review queue",
                 icon=":material/thumbs_up_down:")
    info = labelling.version_summary(store(), version_id)
    if info.good + info.bad == 0:
        st.caption("No labels on this version yet: mark rows good or bad on the Label page, "
                   "and every score here is checked against them (AUROC with a CI).")
        return
    st.caption(f"{info.good:,} good and {info.bad:,} bad labels on this version. AUROC: how "
               "often a bad row scores worse than a good one in the score's declared "
               "direction (0.5 = chance; below 0.5 = the declared direction is wrong here).")
    agreement = labelling.version_signal_table(store(), version_id, frame)
    if len(agreement):
        st.dataframe(agreement, hide_index=True, key="sc_agreement", column_config={
            "auroc": st.column_config.NumberColumn("AUROC", format="%.3f"),
            "low": st.column_config.NumberColumn("95% CI low", format="%.3f"),
            "high": st.column_config.NumberColumn("95% CI high", format="%.3f"),
            "bad_rows_score": st.column_config.TextColumn("bad rows score", width=220)})
    result = labelling.last_result(store())
    learning = labelling.learn_jobs(store(), version_id)
    a, b = st.columns([1, 3], vertical_alignment="center")
    if a.button("Train the learned score", key="sc_learn", icon=":material/school:",
                disabled=bool(learning) and learning[0].active,
                help="Trains as a background job (it survives a page reload)"):
        try:
            job = labelling.start_learning(store(), version_id)
        except WorkbenchError as e:
            show_error(e)
            return
        st.session_state["sc_learning"] = job.run_id
        st.rerun()
    if learning and learning[0].state != "done":  # running, failed or cancelled
        job_panel(learning[0].run_id, key="sc_learn_job")
    if result is not None:
        b.caption(f"learned_score = P(bad) from {result.n_good} good + {result.n_bad} bad "
                  f"labels, trained {result.trained_at}; cross-validated AUROC "
                  f"{result.auroc:.3f} (95% CI {result.low:.3f}–{result.high:.3f}) on the "
                  "labelled rows.")


def thresholds_form(frame, columns: list[str]) -> dict[str, tuple]:
    st.subheader("Thresholds")
    chosen = st.multiselect("Filter on", columns, key="sc_filter_on")
    bounds = {}
    for column in chosen:
        values = frame[column].dropna()
        lo, hi = float(values.min()), float(values.max())
        if lo == hi:
            st.caption(f"{column}: every row has {lo:g}")
            continue
        low, high = st.slider(column, lo, hi, (lo, hi), key=f"sc_t_{column}")
        bounds[column] = (low if low > lo else None, high if high < hi else None)
    bounds = {c: b for c, b in bounds.items() if b != (None, None)}
    if bounds:
        passed, dropped = quality.threshold_preview(store(), version_id, frame, bounds)
        st.metric("Rows within the thresholds", f"{passed:,} of {len(frame):,}")
        st.dataframe(dropped, hide_index=True, key="sc_t_dropped")
    return bounds


def selection_form(columns: list[str], weights: dict, bounds: dict, directions: dict
                   ) -> quality.SelectOptions | None:
    st.subheader("Select a subset")
    labels = {"none": "none yet: look only, drop nothing", "top_k": "top-k by a score",
              "diverse": "diverse top-k (embeddings)", "quota": "per-cluster quota (embeddings)",
              "longest": "longest-k", "threshold": "thresholds only"}
    a, b, c = st.columns(3)
    method = a.radio("Method", list(labels), format_func=labels.get, key="sc_method")
    if method == "none":  # the page opens here: nothing is dropped until a method is picked
        st.caption("Nothing is dropped yet: pick a method to preview what it keeps.")
        return None
    if method == "threshold":
        if not bounds:
            st.info("Set at least one threshold above (Filter on) to select by thresholds.")
            return None
        return quality.SelectOptions(method=method, bounds=bounds, weights=weights,
                                     directions=directions)
    k = b.number_input("k (rows to keep)", 1, max(1, n_rows), min(100, max(1, n_rows)),
                       key="sc_kk")
    ranks = ([quality.COMBINED] if weights else []) + columns
    score = b.selectbox("Rank by", ranks, key="sc_rank") \
        if ranks and method != "longest" else None
    similarity = c.slider("Max cosine similarity", 0.5, 1.0, 0.9, 0.01, key="sc_sim") \
        if method == "diverse" else quality.SEL.DEFAULT_SIMILARITY
    clusters = c.number_input("Clusters", 1, 100, 8, key="sc_clusters") \
        if method == "quota" else 8
    if score is None and method != "longest":
        st.info("This method ranks rows by a score: score the rows first.")
        return None
    return quality.SelectOptions(method=method, k=int(k), score=score, bounds=bounds,
                                 weights=weights, directions=directions, similarity=similarity,
                                 n_clusters=int(clusters))


def preview_and_apply(table, options: quality.SelectOptions) -> None:
    rule = json.dumps(options.params(), sort_keys=True, default=str)
    # Longest-k reads the responses' lengths from the store, not their texts. A method ranks
    # every row and gives each dropped row its reason (1M rows: about a second): a spinner.
    with st.spinner("Choosing the rows to keep…"):
        selection = session_cached("sc_preview", (version_id, fingerprint, rule),
                                   lambda: quality.preview_selection(store(), table, options))
    a, b = st.columns(2)
    a.metric("Rows kept", f"{len(selection.kept):,}")
    b.metric("Rows dropped", f"{len(selection.dropped):,}")
    st.caption("A sample of rows that would be dropped, with the reason")
    st.dataframe(quality.dropped_preview(store(), version_id, selection), hide_index=True,
                 key="sc_dropped")
    if st.button("Apply as a new version", type="primary", key="sc_apply"):
        version = quality.apply_selection(store(), version_id, table, options)
        flash(f"Selected {version.n_rows:,} rows into {version.ref}.")
        st.rerun()


@st.cache_resource(max_entries=2, show_spinner="Reading the cached scores…")
def score_table(store_path: str, version_id: int, fingerprint: tuple):
    """The version's row keys and ids with their cached scores (no text), until a score is
    added (the fingerprint of the score cache changes): reruns share it."""
    return quality.score_table(Store(store_path), version_id)


started = quality.scoring_jobs(store(), version_id)
engine = run_heuristics(busy=any(j.kind == "heuristics" and j.active for j in started))
model_form(engine)
judge_form()
jobs_panel(started)
announce("sc_scoring")  # after the panels: a panel whose job just ended reruns the page first
announce("sc_learning")
fingerprint = scores_fingerprint(store())
try:
    table = score_table(str(store().path), version_id, fingerprint)
except WorkbenchError as e:
    show_error(e)
    st.stop()
columns = quality.score_columns(table)
if columns:
    charts(table, columns)
else:
    st.info("No scores yet: pick scorers above and press Score now.")
try:
    labels_section(table)
    embedding_section(table, columns)
    weights, directions = weights_form(table, columns) if columns else ({}, {})
    bounds = thresholds_form(table, columns) if columns else {}
    options = selection_form(columns, weights, bounds, directions)
    if options is not None:
        preview_and_apply(table, options)
except WorkbenchError as e:
    show_error(e)
