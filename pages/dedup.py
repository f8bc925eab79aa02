"""Deduplicate: exact, near (MinHash LSH) and semantic duplicates as reviewable clusters."""

from __future__ import annotations

import plotly.express as px
import streamlit as st

from pages.common import (
    curation_title,
    engine_setting,
    flash,
    job_panel,
    progress_bar,
    session_cached,
    show_error,
    store,
    version_frame,
)
from workbench import curate
from workbench.dedup import KEEP_ALL
from workbench.exceptions import WorkbenchError
from workbench.views import md_escape

_, version_id, n_rows = curation_title("Deduplicate")


def rows():
    """The version's rows, read when finding or applying duplicates (not to open the page)."""
    return version_frame(str(store().path), version_id)


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
    # row on every rerun. The curve is computed once per version and options, then reused.
    if not methods or not st.toggle("Threshold explorer: rows removed at each threshold",
                                    key="dd_explore"):
        return
    with st.container(border=True):
        method = st.radio("Method", methods, horizontal=True, key="dd_curve_method")
        grid = [round(0.5 + 0.05 * i, 2) for i in range(11)] if method == "near" else \
            [round(0.80 + 0.02 * i, 2) for i in range(11)]
        key = (version_id, method, options.field, options.ngram, options.num_perm, options.model)
        curve = session_cached("dd_curve", key, lambda: computed_curve(options, method, grid))
        chosen = options.near_threshold if method == "near" else options.semantic_threshold
        fig = px.line(curve, x="threshold", y="rows_removed", markers=True,
                      hover_data=["clusters"], title=f"{method} duplicates")
        fig.add_vline(x=chosen, line_dash="dash", annotation_text="chosen")
        st.plotly_chart(fig, key="dd_curve")


def computed_curve(options: curate.DedupOptions, method: str, grid: list[float]):
    with progress_bar("Threshold explorer: rows hashed") as progress:
        return curate.duplicate_curve(store(), rows(), options, method, grid, progress=progress)


def review(clusters, options: curate.DedupOptions, stale: bool) -> None:
    summary = curate.cluster_summary(rows(), clusters)
    dropped = int((~clusters["kept"]).sum())
    a, b = st.columns(2)
    a.metric("Clusters", f"{len(summary):,}")
    b.metric("Rows to drop", f"{dropped:,}")
    event = st.dataframe(summary, hide_index=True, on_select="rerun",
                         selection_mode="single-row", key="dd_clusters")
    overrides = st.session_state.setdefault("dd_overrides", {})
    if event.selection.rows:
        cluster_id = int(summary.iloc[event.selection.rows[0]]["cluster_id"])
        member_view(clusters, cluster_id, overrides)
    if st.button(f"Apply: drop {dropped:,} rows into a new version", type="primary",
                 disabled=clusters.empty or stale, key="dd_apply"):
        try:
            version = curate.apply_dedup(store(), version_id, rows(), clusters, options,
                                         overrides)
        except WorkbenchError as e:
            show_error(e)
            return
        st.session_state.pop("dd_result", None)
        st.session_state.pop("dd_overrides", None)
        flash(f"Deduplicated into {version.ref} "
              f"({version.counts.get('kept', version.n_rows):,} rows kept).")
        st.rerun()


def member_view(clusters, cluster_id: int, overrides: dict) -> None:
    members = curate.cluster_members(rows(), clusters, cluster_id)
    st.subheader(f"Cluster {cluster_id}: {len(members)} rows")
    columns = st.columns(min(len(members), 4))
    for i, row in members.head(4).iterrows():
        with columns[i]:
            label = "kept" if row["kept"] else f"drop · similarity {row['similarity']:.2f}"
            st.caption(f"row {row['row_key']} · {label} · {row['keep_reason']}")
            st.text(row["prompt"][:600])  # dataset text stays text
            st.text(row["response"][:1200])
    if len(members) > 4:
        st.caption(f"{len(members) - 4} more members not shown side by side")
    choices = ["policy", KEEP_ALL, *members["row_key"].astype(int).tolist()]
    current = overrides.get(cluster_id, "policy")
    pick = st.radio("Keep", choices, index=choices.index(current), horizontal=True,
                    key=f"dd_keep_{cluster_id}",
                    format_func=lambda c: {"policy": "as the policy chose",
                                           KEEP_ALL: "keep all"}.get(c, f"row {c}"))
    if pick == "policy":
        overrides.pop(cluster_id, None)
    else:
        overrides[cluster_id] = pick


def stale_options(found: curate.DedupOptions, now: curate.DedupOptions) -> str:
    return ", ".join(f"{k} {v} → {getattr(now, k)}" for k, v in found.params().items()
                     if getattr(now, k) != v)


options = options_form()
engine = engine_setting("dd_engine", n_rows, "dedup",
                        note="Semantic duplicates are found on the local engine only (their "
                        "embeddings may be computed on Ray).")
embedded = embeddings_section(options, engine) if options.semantic else False
explorer(options, embedded)
if st.button("Find duplicates", key="dd_find", disabled=options.semantic and not embedded):
    try:
        with progress_bar("Finding duplicates: rows hashed") as progress:
            st.session_state["dd_result"] = (version_id, options, curate.find_duplicates(
                store(), rows(), options, progress=progress, engine=engine))
        st.session_state["dd_overrides"] = {}
    except WorkbenchError as e:
        show_error(e)
result = st.session_state.get("dd_result")
if result and result[0] == version_id:
    stale = result[1] != options
    if stale:  # the clusters below are those of the options Find last ran with
        changed = md_escape(stale_options(result[1], options))
        st.warning(f"The options changed since Find ({changed}): "
                   "these clusters are for the old ones. Press Find duplicates to update them "
                   "before applying.", icon=":material/warning:")
    review(result[2], result[1], stale)
