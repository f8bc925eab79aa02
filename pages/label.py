"""Label: mark rows good or bad in a review queue or in bulk; train the learned score on them."""

from __future__ import annotations

import streamlit as st

from pages.common import (
    curation_title,
    flash,
    job_panel,
    job_watched,
    show_error,
    store,
    version_frame,
)
from workbench import curate, jobs, labelling
from workbench import labels as LB
from workbench.exceptions import NotFoundError, WorkbenchError
from workbench.learn import MIN_PER_CLASS
from workbench.views import md_escape

_, version_id, n_rows = curation_title(
    "Label", " · labels are kept by row content, so they survive new versions")
LABEL_FIELDS = ("user", "assistant")


@st.cache_resource(max_entries=2, show_spinner="Reading rows for the review queue…")
def queue_sample(store_path: str, version: int):
    """The rows the review queue draws from, keys and ids only: all of a version up to
    QUEUE_ROWS, else a fixed sample (versions are immutable, so the id is the key)."""
    from workbench.store import Store

    return labelling.queue_rows(Store(store_path), version)


def whole_version():
    """Every row of the version: read only for a bulk label by cluster."""
    return version_frame(str(store().path), version_id)


@st.cache_resource(max_entries=2, show_spinner="Reading the version's row ids…")
def version_ids(store_path: str, version: int):
    """Keys and ids of every row of a version, no texts: what its cached rule hits are
    found by (versions are immutable, so the id is the key)."""
    from workbench.store import Store

    return Store(store_path).row_ids(version)


def label_set_picker() -> str:
    sets = LB.label_sets(store())
    a, b = st.columns([1, 2])
    chosen = a.selectbox("Label set", [*sets, "new…"], key="lb_set",
                         help="One learned score per label set: 'quality' by default, or your "
                              "own (off-topic, wrong-answer, ...)")
    if chosen != "new…":
        return chosen
    name = b.text_input("New label set name", key="lb_new_set").strip()
    try:
        return LB.check_label_set(name) if name else LB.DEFAULT_SET
    except WorkbenchError as e:
        show_error(e)
        return LB.DEFAULT_SET


def progress_panel(label_set: str, info: labelling.LabelSummary) -> None:
    result = labelling.last_result(store(), label_set)
    a, b, c, d = st.columns(4)
    a.metric("Good", f"{info.good:,}", help=f"{info.total_good:,} in all versions")
    b.metric("Bad", f"{info.bad:,}", help=f"{info.total_bad:,} in all versions")
    c.metric("Unlabelled", f"{info.unlabelled:,}")
    if result is not None and result.auroc == result.auroc:
        d.metric("Learned score AUROC", f"{result.auroc:.2f}",
                 help="Cross-validated on the labelled rows. The queue picks rows on purpose, "
                      "so this is a guide, not the AUROC on all rows.")
        st.caption(f"95% CI {result.low:.2f}–{result.high:.2f} · {result.n_good} good + "
                   f"{result.n_bad} bad labels · features: {', '.join(result.features)} · "
                   f"trained {result.trained_at} in {result.seconds:.1f} s "
                   f"{md_escape(result.note)}")
    else:
        d.metric("Learned score AUROC", "–", help="Appears once both classes have labels")
    if len(info.actions) and not bool(info.actions["undone"].iloc[0]) and st.button(
            f"Undo: {info.actions['description'].iloc[0]}", key="lb_undo",
            icon=":material/undo:"):
        action = LB.undo_last(store(), label_set)
        st.session_state.pop("lb_batch", None)
        flash(f"Undid: {action.description}")
        st.rerun()


def embedding_state() -> tuple[list[str], list[jobs.JobStatus]]:
    """Return the fields not embedded on every row yet and the newest embedding job of each;
    reruns reuse them until a run starts anywhere or one of those jobs changes state."""
    def read() -> tuple[list[str], list[jobs.JobStatus]]:
        missing = [f for f in LABEL_FIELDS
                   if not labelling.version_embedded(store(), version_id, f)]
        found = {j.run_id: j for f in missing
                 for j in curate.embedding_jobs(store(), version_id, f)[:1]}
        return missing, list(found.values())

    return job_watched("lb_embed", (version_id,), read)


def embeddings_panel() -> None:
    """Offer the embeddings the learned score and the queue's diversity use, as jobs."""
    missing, runs = embedding_state()
    if not missing:
        return
    for job in runs:
        if job.active:
            job_panel(job.run_id, key=f"lb_embed_{job.run_id}")
    st.info("The learned score works from the words of each row now; embeddings of the "
            "prompts and responses (computed once in the background, cached) usually make it "
            "better.", icon=":material/lightbulb:")
    if st.button("Embed prompts and responses in the background", key="lb_embed",
                 disabled=any(j.active for j in runs)):
        curate.start_embedding(store(), version_id, fields=missing)
        st.rerun()


# --- the review queue -------------------------------------------------------------------------

def current_batch(label_set: str, info: labelling.LabelSummary) -> dict | None:
    """Return this round of the queue, choosing a new one when it is done or out of date.

    Runs before anything is drawn, so the metrics above show the model this round trained.
    """
    search = st.session_state.get("lb_search", "")
    batch = st.session_state.get("lb_batch")
    sample = queue_sample(str(store().path), version_id)
    # A new round when this one is done, when what feeds it changed, as soon as both classes
    # have enough labels for the learned score to take over from the seeds, and when the rule
    # scan it went without has finished (its rows join).
    can_learn = min(info.total_good, info.total_bad) >= MIN_PER_CLASS
    stale = batch is None or batch["version"] != version_id or batch["set"] != label_set \
        or batch["search"] != search or batch["at"] >= len(batch["rows"]) \
        or (batch["stage"] == "seeds" and can_learn) or st.session_state.pop("lb_new", False) \
        or (batch.get("rules_pending") and not scan_running()
            and not labelling.rule_scan_pending(store(), version_id, sample))
    if not stale:
        return batch
    status = st.status("Choosing rows to label…")
    try:
        # The rule scan of a big version runs as a job (rule_scan_panel): the queue opens now.
        queue = labelling.next_rows(store(), version_id, sample, labelling.QueueOptions(
            n=20, search=search, label_set=label_set,
            skip=st.session_state.get("lb_skipped", []), scan_rules=False),
            progress=lambda text: status.update(label=text.capitalize() + "…"))
    except WorkbenchError as e:
        status.update(state="error")
        show_error(e)
        return None
    status.update(label=f"{len(queue.rows)} rows chosen", state="complete")
    batch = {"version": version_id, "set": label_set, "search": search, "at": 0,
             "rows": queue.rows.to_dict("records"), "stage": queue.stage,
             "message": queue.message, "rules_pending": queue.rules_pending}
    st.session_state["lb_batch"] = batch
    return batch


def queue_tab(batch: dict | None, label_set: str) -> None:
    st.text_input("Also suggest rows matching (optional)", key="lb_search")
    if st.button("New round", key="lb_refresh", icon=":material/refresh:"):
        st.session_state["lb_new"] = True
        st.rerun()
    if batch is None:
        return
    if not batch["rows"]:
        st.success("Every row of this version is labelled (or skipped).")
        return
    st.caption(md_escape(batch["message"]) if batch["stage"] == "seeds" else
               "Active learning: rows the learned score thinks likely bad, rows it is unsure "
               "of, and a few random ones; never two near-identical rows in a round.")
    if batch.get("rules_pending"):
        rule_scan_panel()
    if n_rows > labelling.QUEUE_ROWS:
        st.caption(f"The queue draws from a fixed random sample of {labelling.QUEUE_ROWS:,} of "
                   f"the {n_rows:,} rows, and its rounds do not save the learned score (train "
                   "it on Score & select to score every row); bulk labels cover every row.")
    st.progress(batch["at"] / len(batch["rows"]),
                text=f"row {batch['at'] + 1} of {len(batch['rows'])} in this round")
    review(batch, label_set)


def rule_scan_job(scope: labelling.RuleScope = "queue", *, start: bool = True
                  ) -> jobs.JobStatus | None:
    """Return the newest scan of the cleaning rules on this version's queue seed rows (scope
    "queue") or every row ("version"), starting it the first time (once per version; a
    cancelled or failed one waits for the button). Its run id is kept in the session: reruns
    read its run folder, not the store."""
    known, key = st.session_state.setdefault("lb_scan_runs", {}), (version_id, scope)
    if key in known:
        try:
            return jobs.status(known[key])
        except NotFoundError:  # its run folder was removed
            del known[key]
    scans = labelling.rule_scan_jobs(store(), version_id, scope)
    if not scans and not start:
        return None
    job = scans[0] if scans else labelling.start_rule_scan(store(), version_id, scope)
    known[key] = job.run_id
    return job


def scan_running(scope: labelling.RuleScope = "queue") -> bool:
    job = rule_scan_job(scope, start=False)
    return job is not None and job.active


def rule_scan_panel(scope: labelling.RuleScope = "queue") -> None:
    """Follow a rule scan the page waits for, as a job panel (progress, cancel)."""
    job = rule_scan_job(scope)
    job_panel(job.run_id, key=f"lb_scan_{job.run_id}")
    if not job.active and st.button("Scan the cleaning rules again", key=f"lb_rule_scan_{scope}",
                                    icon=":material/refresh:"):
        st.session_state["lb_scan_runs"][(version_id, scope)] = labelling.start_rule_scan(
            store(), version_id, scope).run_id
        st.rerun()


def review(batch: dict, label_set: str) -> None:
    row = batch["rows"][batch["at"]]
    st.markdown(f"**Row {row['row_key']}** · why: {md_escape(row['why'])}")
    for message in row["messages"]:
        avatar = ":material/settings:" if message["role"] == "system" else None
        with st.chat_message(message["role"], avatar=avatar):
            st.text(message["content"])  # dataset text stays text, never markdown
    reason = st.text_input("Reason (optional, kept with the label)", key=f"lb_reason_{row['id']}")
    good, bad, skip = st.columns(3)
    if good.button("Good", key="lb_good", icon=":material/thumb_up:", shortcut="G",
                   width="stretch"):
        record(batch, row, "good", reason, label_set)
    if bad.button("Bad", key="lb_bad", icon=":material/thumb_down:", shortcut="B",
                  type="primary", width="stretch"):
        record(batch, row, "bad", reason, label_set)
    if skip.button("Skip", key="lb_skip", icon=":material/skip_next:", shortcut="S",
                   width="stretch"):
        st.session_state.setdefault("lb_skipped", []).append(row["id"])
        batch["at"] += 1
        st.rerun()
    st.caption("Keys: G good · B bad · S skip")


def record(batch: dict, row: dict, label: str, reason: str, label_set: str) -> None:
    try:
        LB.set_labels(store(), [row["id"]], label, reasons=reason, label_set=label_set,
                      kind="queue", description=f"row {row['row_key']} -> {label}")
    except WorkbenchError as e:
        show_error(e)
        return
    batch["at"] += 1
    st.rerun()


# --- bulk labels ---------------------------------------------------------------------------

def bulk_tab(label_set: str) -> None:
    sources = {"search": "rows matching a search", "rule": "rows a cleaning rule hits",
               "cluster": "an embedding cluster"}
    source = st.radio("Label in bulk", list(sources), format_func=sources.get,
                      horizontal=True, key="lb_bulk_source")
    value = bulk_value(source)
    if value is None:
        return
    try:
        keys = labelling.bulk_rows(store(), version_id, whole_version() if source == "cluster"
                                   else version_ids(str(store().path), version_id)
                                   if source == "rule" else None, source, value)
    except WorkbenchError as e:
        show_error(e)
        return
    st.metric("Rows", f"{len(keys):,}")
    if not keys:
        return
    st.caption("A random sample of them: check before labelling them all")
    st.dataframe(labelling.bulk_preview(store(), version_id, keys), hide_index=True,
                 key="lb_bulk_sample")
    a, b = st.columns([1, 2])
    label = a.radio("Label", ["bad", "good"], horizontal=True, key="lb_bulk_label")
    reason = b.text_input("Reason", key="lb_bulk_reason")
    if st.button(f"Label {len(keys):,} rows {label}", type="primary", key="lb_bulk_apply"):
        action = labelling.label_rows(store(), version_id, keys, label, reason=reason,
                                      label_set=label_set, kind="bulk",
                                      description=f"{len(keys)} rows ({source}: {value}) -> "
                                                  f"{label}")
        st.session_state.pop("lb_batch", None)
        flash(f"Labelled {action.n_rows:,} rows {label}; undo is at the top of the page.")
        st.rerun()


@st.cache_data(max_entries=4, show_spinner="Running the cleaning rules once for this version…")
def rule_counts(store_path: str, version: int) -> dict[str, int]:
    from workbench.store import Store

    hits = labelling.version_rule_hits(Store(store_path), version,
                                       version_ids(store_path, version))
    return hits["rule"].value_counts().to_dict()


def rules_ready() -> bool:
    """Return whether every row's rule hits are known (cached, or few enough to find now);
    else follow, as a job, the scan that finds them (started once per version)."""
    ready = st.session_state.setdefault("lb_rules_ready", set())
    if version_id in ready:
        return True
    if not scan_running("version") and not labelling.version_rules_pending(
            store(), version_ids(str(store().path), version_id)):
        ready.add(version_id)
        return True
    st.caption("Finding the rows each cleaning rule hits, once per version, in the background: "
               "labelling by rule opens when it ends.")
    rule_scan_panel("version")
    return False


def bulk_value(source: str):
    if source == "search":
        text = st.text_input("Search text", key="lb_bulk_search").strip()
        return text or None
    if source == "rule":
        if not rules_ready():
            return None
        counts = rule_counts(str(store().path), version_id)
        if not counts:
            st.caption("No cleaning rule hits any row of this version.")
            return None
        return st.selectbox("Rule", list(counts), key="lb_bulk_rule",
                            format_func=lambda r: f"{r} ({counts[r]:,} rows)")
    k = st.slider("Clusters (k-means on embeddings)", 2, 20, 8, key="lb_bulk_k")
    return (st.selectbox("Cluster", [str(i) for i in range(k)], key="lb_bulk_cluster"), k)


# --- labels: list, import, export ------------------------------------------------------------

def labels_tab(label_set: str) -> None:
    labelled = labelling.version_labels(store(), version_id, label_set=label_set)
    st.dataframe(labelled[["row_key", "label", "prompt", "response"]], hide_index=True,
                 key="lb_table", width="stretch")
    st.dataframe(LB.actions(store(), label_set=label_set), hide_index=True, key="lb_actions")
    upload = st.file_uploader("Import labels (JSONL: id or row_key, label, reason)",
                              type=["jsonl"], key="lb_upload")
    if upload is not None and st.button("Import", key="lb_import"):
        import_upload(upload, label_set)
    st.download_button("Download labels (JSONL)", labelling.labels_jsonl(store(), labelled,
                                                                         label_set),
                       file_name=f"labels-{label_set}.jsonl", key="lb_download")


def import_upload(upload, label_set: str) -> None:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.jsonl"
        path.write_bytes(upload.getvalue())
        try:
            action = labelling.import_labels(store(), version_id, path, label_set=label_set)
        except LB.LabelFileError as e:
            show_error(str(e).replace(str(path), upload.name))
            if e.problems:
                st.dataframe(e.problems, hide_index=True, key="lb_import_problems")
            return
        except WorkbenchError as e:
            show_error(e)
            return
    flash(f"Imported {action.n_rows:,} labels from {upload.name}.")
    st.rerun()


label_set = label_set_picker()
summary = labelling.version_summary(store(), version_id, label_set=label_set)
batch = current_batch(label_set, summary)
progress_panel(label_set, summary)
embeddings_panel()
queue_t, bulk_t, list_t = st.tabs(["Review queue", "Bulk label", "Labels"], key="lb_tabs")
with queue_t:
    queue_tab(batch, label_set)
with bulk_t:
    bulk_tab(label_set)
with list_t:
    labels_tab(label_set)
