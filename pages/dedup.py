"""Deduplicate: exact, near (MinHash LSH) and semantic duplicates as reviewable clusters."""

from __future__ import annotations

from functools import partial

import plotly.express as px
import streamlit as st

from pages.common import (
    curation_title,
    engine_setting,
    finished_job,
    flash,
    job_panel,
    session_cached,
    show_error,
    store,
)
from workbench import curate
from workbench.dedup import KEEP_ALL
from workbench.exceptions import WorkbenchError
from workbench.views import md_escape

_, version_id, n_rows = curation_title("Deduplicate")


PAGE_SIZE = 100  # clusters per page of the table: at 1M rows there are thousands
KEEP_BUTTONS = 8  # Keep choices shown as a row of radio buttons; more: a select box


def options_form() -> curate.DedupOptions:
    left, middle, right = st.columns(3)
    field = left.radio("Compare", ["conversation", "user", "assistant"], horizontal=True,
                       key="dd_field", format_func=lambda f: {"conversation": "whole conversation",
                                                              "user": "user turns",
                                                              "assistant": "assistant turns"}[f])
    keep = left.selectbox("Keep in each cluster", ["first", "longest"], key="dd_keep")
    near = middle.checkbox("Near duplicates (MinHash LSH)", value=True, key="dd_near")
    threshold = middle.slider("Jaccard threshold", 0.5, 1.0, 0.8, 0.01, key="dd_near_t",
                              disabled=not near)
    ngram = middle.number_input("Character n-gram", 2, 20, 5, key="dd_ngram", disabled=not near)
    perms = middle.select_slider("Permutations", [64, 128, 256], 128, key="dd_perm",
                                 disabled=not near)
    semantic = right.checkbox("Semantic duplicates (embeddings)", key="dd_sem")
    cosine = right.slider("Cosine threshold", 0.7, 1.0, curate.dedup.DEFAULT_COSINE_THRESHOLD,
                          0.01, key="dd_sem_t", disabled=not semantic)
    return curate.DedupOptions(field=field, near=near, near_threshold=threshold, ngram=ngram,
                               num_perm=perms, semantic=semantic, semantic_threshold=cosine,
                               keep=keep)


def embeddings_section(options: curate.DedupOptions, engine: str) -> bool:
    """Show the embedding state; return whether every row has an embedding."""
    missing = curate.missing_embeddings(store(), version_id, field=options.field)
    runs = curate.embedding_jobs(store(), version_id, options.field)
    if runs and (runs[0].active or missing):
        job_panel(runs[0].run_id, key="dd_embed")
    if not missing:
        st.caption("All rows have cached embeddings.")
        return True
    active = bool(runs) and runs[0].active
    st.info(f"{missing:,} rows need embeddings for semantic duplicates; they are computed once "
            "in the background and cached.")
    if st.button("Embed rows in the background", disabled=active, key="dd_embed_start"):
        curate.start_embedding(store(), version_id, field=options.field, engine=engine)
        st.rerun()
    return False


def explorer(options: curate.DedupOptions, embedded: bool) -> None:
    methods = [m for m, on in (("near", options.near), ("semantic", options.semantic and embedded))
               if on]
    # A switch, not an expander: a collapsed expander still ran a MinHash pass over every
    # row on every rerun. The curve is a background job (the app never holds the version); its
    # result stays in its run folder, so it is computed once per version and options.
    if not methods or not st.toggle("Threshold explorer: rows removed at each threshold",
                                    key="dd_explore"):
        return
    with st.container(border=True):
        method = st.radio("Method", methods, horizontal=True, key="dd_curve_method")
        try:
            curve_section(options, method)
        except WorkbenchError as e:  # e.g. a curve job of options this version does not know
            show_error(e)


def curve_section(options: curate.DedupOptions, method: str) -> None:
    """The newest curve of these options (else the newest of the method, marked stale), the
    job computing one, and a button to compute it."""
    started = curate.dedup_curve_jobs(store(), version_id)
    done = [j for j in started
            if j.state == "done" and j.config["params"].get("method") == method]
    fresh = next((j for j in done if not curate.dedup_curve_changes(j, options, method)), None)
    shown = fresh or (done[0] if done else None)
    if started and started[0].state != "done" and (started[0].active or fresh is None):
        job_panel(started[0].run_id, key=f"dd_curve_job_{started[0].run_id}")
    busy = any(j.active for j in started)
    if fresh is None:
        curve_start(options, method, shown, busy=busy)
    if shown is not None:
        try:
            curve_chart(shown, options, method)
        except WorkbenchError as e:  # its saved curve is gone
            show_error(e)
            if fresh is not None:
                curve_start(options, method, None, busy=busy)


def curve_start(options: curate.DedupOptions, method: str, stale, *, busy: bool) -> None:
    """Say why there is no curve of these options (never computed, or computed for others),
    and offer to compute it in the background."""
    if stale is not None:
        changed = ", ".join(f"{k} {a} → {b}" for k, (a, b) in
                            curate.dedup_curve_changes(stale, options, method).items())
        st.warning(f"The options changed since this curve was computed ({md_escape(changed)}): "
                   "it is for the old ones.", icon=":material/warning:")
    if st.button("Compute the curve" if stale is None else "Compute the curve again",
                 disabled=busy, key="dd_curve_start",
                 help="A background job hashes every row once and finds the pairs at each "
                      "threshold; it survives a page reload"):
        try:
            curate.start_dedup_curve(store(), version_id, options, method)
            st.rerun()
        except WorkbenchError as e:
            show_error(e)


def curve_chart(job, options: curate.DedupOptions, method: str) -> None:
    curve = session_cached("dd_curve", (job.run_id,), lambda: curate.dedup_job_curve(job))
    chosen = options.near_threshold if method == "near" else options.semantic_threshold
    fig = px.line(curve, x="threshold", y="rows_removed", markers=True,
                  hover_data=["clusters"], title=f"{method} duplicates")
    fig.add_vline(x=chosen, line_dash="dash", annotation_text="chosen")
    st.plotly_chart(fig, key="dd_curve")


def review(job, options: curate.DedupOptions, stale: bool) -> None:
    """The clusters a finished Find saved: counts, a page of the cluster table (texts read for
    its rows only), one cluster's members, and Apply (a job that saves them as they are, with
    the choices kept beside them)."""
    clusters = session_cached("dd_found", (job.run_id,), lambda: curate.dedup_job_clusters(job),
                              keep=1)
    table = session_cached("dd_table", (job.run_id,), lambda: curate.cluster_table(clusters),
                           keep=1)
    overrides = curate.dedup_job_overrides(job)  # a small file: the choices survive a reload
    dropped = session_cached("dd_dropped", (job.run_id, tuple(sorted(overrides.items()))),
                             lambda: curate.dedup_counts(clusters, overrides)["dropped"], keep=2)
    a, b = st.columns(2)
    a.metric("Clusters", f"{len(table):,}")
    b.metric("Rows to drop", f"{dropped:,}")
    if overrides:
        st.caption(f"Your choices in {len(overrides):,} "
                   f"cluster{'' if len(overrides) == 1 else 's'} are counted and kept for Apply.")
    pages = max(1, -(-len(table) // PAGE_SIZE))
    if st.session_state.get("dd_page", 1) > pages:  # a new Find with fewer clusters
        st.session_state["dd_page"] = pages
    page = st.number_input(f"Page of clusters (of {pages:,}, {PAGE_SIZE} each, largest first)",
                           1, pages, 1, key="dd_page") if pages > 1 else 1
    shown = session_cached("dd_page_rows", (job.run_id, page), lambda: curate.cluster_page(
        store(), version_id, table, (page - 1) * PAGE_SIZE, PAGE_SIZE))
    # One selection per find and page: a row picked on page 1 is another cluster on page 2.
    event = st.dataframe(shown, hide_index=True, on_select="rerun",
                         selection_mode="single-row", key=clusters_key(job.run_id, page))
    if event.selection.rows and event.selection.rows[0] < len(shown):
        cluster_id = int(shown.iloc[event.selection.rows[0]]["cluster_id"])
        member_view(job, clusters, cluster_id, overrides)
    if st.button(f"Apply: drop {dropped:,} rows into a new version", type="primary",
                 disabled=clusters.empty or stale, key="dd_apply",
                 help="A background job saves these clusters as they are, with your choices"):
        applying = start(options, apply=True, from_run=job.run_id, overrides=overrides)
        if applying is not None:
            st.session_state["dd_applying"] = applying.run_id
            st.rerun()


def clusters_key(run_id: str, page: int) -> str:
    """The cluster table's widget key, and so its selection's, on one page of one find."""
    return f"dd_clusters_{run_id}_{page}"


def member_view(job, clusters, cluster_id: int, overrides: dict) -> None:
    members = session_cached("dd_members", (job.run_id, cluster_id),
                             lambda: curate.stored_cluster_members(store(), version_id, clusters,
                                                                   cluster_id))
    st.subheader(f"Cluster {cluster_id}: {len(members)} rows")
    columns = st.columns(min(len(members), 4))
    for i, row in members.head(4).iterrows():
        with columns[i]:
            # the reason is the kept row's: beside a dropped one it read as why it was dropped
            label = f"kept · {row['keep_reason']}" if row["kept"] else \
                f"drop · similarity {row['similarity']:.2f}"
            st.caption(f"row {row['row_key']} · {label}")
            st.text(row["prompt"][:600])  # dataset text stays text
            st.text(row["response"][:1200])
    if len(members) > 4:  # the rest, so that every row the Keep choice names can be read
        st.caption(f"{len(members) - 4} more members:")
        rest = members.iloc[4:][["row_key", "kept", "similarity", "prompt", "response"]]
        st.dataframe(rest.assign(prompt=rest["prompt"].str.slice(0, 300),
                                 response=rest["response"].str.slice(0, 600)),
                     hide_index=True)
    choices = ["policy", KEEP_ALL, *members["row_key"].astype(int).tolist()]
    current = overrides.get(cluster_id, "policy")
    # a row of buttons for a few members; a list to pick from for a large cluster
    widget = partial(st.radio, horizontal=True) if len(choices) <= KEEP_BUTTONS else st.selectbox
    widget("Keep", choices, index=choices.index(current) if current in choices else 0,
           key=f"dd_keep_{cluster_id}", on_change=keep_chosen, args=(job, cluster_id),
           format_func=lambda c: {"policy": "as the policy chose",
                                  KEEP_ALL: "keep all"}.get(c, f"row {c}"))


def keep_chosen(job, cluster_id: int) -> None:
    """Save a Keep choice with the find before the page reruns: the counts and Apply use it,
    and a reload shows it."""
    overrides = curate.dedup_job_overrides(job)
    pick = st.session_state[f"dd_keep_{cluster_id}"]
    if pick == "policy":
        overrides.pop(cluster_id, None)
    else:
        overrides[cluster_id] = pick
    curate.save_dedup_overrides(job, overrides)


def stale_options(found: curate.DedupOptions, now: curate.DedupOptions) -> str:
    return ", ".join(f"{k} {v} → {getattr(now, k)}" for k, v in found.params().items()
                     if getattr(now, k) != v)


def start(options: curate.DedupOptions, **kwargs):
    try:
        return curate.start_dedup(store(), version_id, options, engine=engine, **kwargs)
    except WorkbenchError as e:
        show_error(e)


def applied_notice(started: list) -> None:
    """While an Apply job runs, show it (also after a reload); once it ends, say what it made
    (once)."""
    run_id = st.session_state.get("dd_applying") or next(
        (j.run_id for j in started if j.active and j.config["params"].get("apply")), None)
    job = finished_job("dd_applying", run_id, key="dd_job")
    if job is None:
        return
    version = store().version(int(job.result["version_id"]))
    flash(f"Deduplicated into {version.ref} "
          f"({version.counts.get('kept', version.n_rows):,} rows kept).")
    st.rerun()


options = options_form()
engine = engine_setting("dd_engine", n_rows, "dedup",
                        note="Semantic duplicates are found on the local engine only (their "
                        "embeddings may be computed on Ray).")
embedded = embeddings_section(options, engine) if options.semantic else False
for kept in ("dd_explore", "dd_curve_method"):  # not drawn while an Apply waits (st.stop):
    if kept in st.session_state:  # Streamlit would forget them; the explorer stays as it was
        st.session_state[kept] = st.session_state[kept]
applied_notice(curate.dedup_jobs(store(), version_id))
explorer(options, embedded)
if st.button("Find duplicates", key="dd_find", disabled=options.semantic and not embedded,
             help="Runs as a background job: it survives a page reload"):
    start(options)
finds = [j for j in curate.dedup_jobs(store(), version_id)
         if not j.config["params"].get("apply")]
done = next((j for j in finds if j.state == "done"), None)
if finds and finds[0] is not done:
    job_panel(finds[0].run_id, key=f"dd_job_{finds[0].run_id}")  # running, failed, cancelled
if done is not None:
    try:
        found = curate.dedup_job_options(done)
        stale = found != options
        if stale:  # the clusters below are those of the options Find last ran with
            changed = md_escape(stale_options(found, options))
            st.warning(f"The options changed since Find ({changed}): "
                       "these clusters are for the old ones. Press Find duplicates to update "
                       "them before applying.", icon=":material/warning:")
        review(done, found, stale)
    except WorkbenchError as e:
        show_error(e)
