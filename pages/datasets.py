"""Datasets: import, browse and edit rows, version history and diffs, export."""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from pages.common import current_dataset, show_error, store
from workbench.exceptions import WorkbenchError
from workbench.io import EXPORT_FORMATS
from workbench.schema import SHAPES
from workbench.store import RowFilter, default_home
from workbench.views import (cleanup_upload, diff_tables, export_bytes, lineage_table,
                             page_table, save_upload)

st.title("Datasets")
browse_tab, import_tab, history_tab, export_tab = st.tabs(
    ["Browse", "Import", "History", "Export"])


def import_section() -> None:
    st.subheader("Import a dataset")
    upload = st.file_uploader("File", type=["jsonl", "ndjson", "json", "csv", "tsv", "parquet",
                                            "txt"], key="import_upload")
    local = st.text_input("…or a path on this machine (a file or a HF `save_to_disk` folder)",
                          key="import_path")
    default_name = Path(upload.name).stem if upload else (Path(local).stem if local else "")
    name = st.text_input("Dataset name (new, or existing to add a version)", value=default_name,
                         key="import_name")
    shape = st.selectbox("Shape", ["auto", *SHAPES], key="import_shape",
                         help="auto detects Alpaca, OpenAI chat, ShareGPT, prompt/completion "
                              "or text per row")
    if st.button("Import", type="primary", disabled=not (upload or local) or not name):
        run_import(upload, local, name, shape)
    if "import_report" in st.session_state:
        show_report(st.session_state["import_report"])


def run_import(upload, local: str, name: str, shape: str) -> None:
    path = save_upload(upload.name, upload.getvalue(), default_home() / "uploads") \
        if upload else Path(local)
    try:
        with st.spinner("Importing…"):
            version, report = store().import_file(path, name, shape=shape,
                                                  display_name=upload.name if upload else None)
    except WorkbenchError as e:
        show_error(e)
        return
    finally:
        if upload:
            cleanup_upload(path)
    st.session_state["import_report"] = report
    st.session_state["pending_dataset"] = name
    st.toast(f"Imported into '{name}' as version v{version.version_id}.")
    st.rerun()


def show_report(report) -> None:
    read, imported, rejected = st.columns(3)
    read.metric("Rows read", f"{report.rows_read:,}")
    imported.metric("Imported", f"{report.imported:,}")
    rejected.metric("Rejected", f"{len(report.rejected):,}")
    st.caption(report.summary())
    if report.rejected:
        st.dataframe([{report.unit: r.line, "field": r.field, "reason": r.reason, "fix": r.fix,
                       "raw": r.raw} for r in report.rejected], hide_index=True,
                     key="import_rejects")


def filters_form(version_id: int) -> RowFilter:
    fields = store().metadata_fields(version_id)
    search_col, field_col, value_col = st.columns([2, 1, 1])
    search = search_col.text_input("Search text", key="browse_search")
    field = field_col.selectbox("Metadata field", ["(any)", *fields], key="browse_field")
    value = value_col.selectbox("Value", fields.get(field, []), key="browse_value",
                                disabled=field == "(any)")
    lo_col, hi_col, turns_col, tag_col = st.columns(4)
    min_chars = lo_col.number_input("Min characters", min_value=0, value=0, key="browse_min")
    max_chars = hi_col.number_input("Max characters (0 = no limit)", min_value=0, value=0,
                                    key="browse_max")
    min_turns = turns_col.number_input("Min turns", min_value=0, value=0, key="browse_turns")
    tag = tag_col.text_input("Tag", key="browse_tag")
    metadata = ((field, value),) if field != "(any)" and value is not None else ()
    return RowFilter(search=search, metadata=metadata, min_chars=min_chars or None,
                     max_chars=max_chars or None, min_turns=min_turns or None,
                     tag=tag.strip() or None)


def browse_section(dataset: str) -> None:
    version_id = store().active_version(dataset)
    filters = filters_form(version_id)
    size_col, page_col, info_col = st.columns([1, 1, 2])
    size = size_col.selectbox("Rows per page", [25, 50, 100, 200], index=1, key="browse_size")
    number = page_col.number_input("Page", min_value=1, value=1, key="browse_page")
    page = store().page(version_id, offset=(number - 1) * size, limit=size, filters=filters)
    info_col.caption(f"{page.total:,} matching rows · page {number} of "
                     f"{max(1, math.ceil(page.total / size))} · version v{version_id}")
    event = st.dataframe(page_table(page), hide_index=True, on_select="rerun",
                         selection_mode="multi-row", key="browse_table", width="stretch")
    chosen = [int(page.rows.iloc[i]["row_key"]) for i in event.selection.rows]
    if len(chosen) == 1:
        row_detail(version_id, chosen[0])
    elif chosen:
        tag_rows_form(version_id, chosen)


def row_detail(version_id: int, row_key: int) -> None:
    row = store().row(row_key)
    st.subheader(f"Row {row_key}")
    st.caption(f"id {row.example.id} · tags: {', '.join(row.tags) or 'none'}")
    for message in row.example.messages:
        with st.chat_message(message["role"]):
            st.text(message["content"])  # dataset text is shown as text, never markdown/HTML
    with st.expander("Metadata"):
        st.json(row.example.metadata)
    with st.form(f"edit_{row_key}"):
        st.caption("Edit: saving makes a new version")
        contents = [st.text_area(f"{m['role']} turn {i + 1}", m["content"], key=f"e_{row_key}_{i}")
                    for i, m in enumerate(row.example.messages)]
        tags = st.text_input("Tags (comma-separated)", ", ".join(row.tags))
        note = st.text_area("Note", row.note)
        if st.form_submit_button("Save as new version"):
            messages = [{"role": m["role"], "content": c}
                        for m, c in zip(row.example.messages, contents)]
            save_edit(version_id, row_key, messages, tags, note)


def save_edit(version_id: int, row_key: int, messages: list[dict], tags: str, note: str) -> None:
    tag_list = [t.strip() for t in tags.split(",") if t.strip()]
    try:
        version = store().edit_row(version_id, row_key, messages=messages, tags=tag_list,
                                   note=note)
    except WorkbenchError as e:
        show_error(e)
        return
    st.success(f"Saved as version v{version.version_id}.")
    st.rerun()


def tag_rows_form(version_id: int, row_keys: list[int]) -> None:
    st.subheader(f"{len(row_keys)} rows selected")
    tag = st.text_input("Tag", key="bulk_tag")
    add_col, remove_col = st.columns(2)
    add = add_col.button("Add tag", disabled=not tag.strip())
    remove = remove_col.button("Remove tag", disabled=not tag.strip())
    if add or remove:
        kwargs = {"add": [tag.strip()]} if add else {"remove": [tag.strip()]}
        try:
            version = store().tag_rows(version_id, row_keys, **kwargs)
        except WorkbenchError as e:
            show_error(e)
            return
        st.success(f"Tagged as version v{version.version_id}.")


def history_section(dataset: str) -> None:
    active = store().active_version(dataset)
    versions = store().versions(dataset)
    st.dataframe(lineage_table(versions, active), hide_index=True, key="lineage")
    ids = [v.version_id for v in versions]
    pick_col, button_col = st.columns([3, 1])
    pick = pick_col.selectbox("Version", ids, index=ids.index(active), key="history_pick",
                              format_func=lambda v: f"v{v}")
    if button_col.button("Make active", disabled=pick == active):
        store().set_active(pick)
        st.rerun()
    diff_section(ids, active)
    removed_section(active)


def diff_section(ids: list[int], active: int) -> None:
    st.subheader("Diff two versions")
    parent = store().version(active).parent_id
    a_col, b_col = st.columns(2)
    a = a_col.selectbox("From", ids, index=ids.index(parent) if parent in ids else 0,
                        key="diff_a", format_func=lambda v: f"v{v}")
    b = b_col.selectbox("To", ids, index=ids.index(active), key="diff_b",
                        format_func=lambda v: f"v{v}")
    if a == b:
        st.caption("Pick two different versions to compare.")
        return
    diff = store().diff(a, b)
    cols = st.columns(3)
    for col, (kind, n) in zip(cols, diff.counts().items()):
        col.metric(f"Rows {kind}", f"{n:,}")
    for kind, table in diff_tables(diff).items():
        if len(table):
            with st.expander(f"{kind} ({len(table):,})"):
                st.dataframe(table.head(1000), hide_index=True, key=f"diff_{kind}")


def removed_section(active: int) -> None:
    removed = store().removed(active)
    st.subheader(f"Dropped rows ({len(removed):,})")
    if removed.empty:
        st.caption("No rows were dropped on the way to this version.")
        return
    st.dataframe(removed[["row_key", "reason", "duplicate_of", "detail", "dropped_in", "prompt",
                          "response"]].head(1000), hide_index=True, key="removed_table")
    keys = st.multiselect("Rows to restore", removed["row_key"].tolist(), key="restore_keys")
    if st.button("Restore into a new version", disabled=not keys):
        version = store().restore(active, keys)
        st.success(f"Restored {len(keys)} rows as version v{version.version_id}.")
        st.rerun()


def export_section(dataset: str) -> None:
    version_id = store().active_version(dataset)
    fmt = st.selectbox("Format", EXPORT_FORMATS, key="export_format",
                       format_func=lambda f: {"openai": "OpenAI chat JSONL",
                                              "alpaca_json": "Alpaca JSON",
                                              "alpaca_jsonl": "Alpaca JSONL",
                                              "sharegpt": "ShareGPT JSON",
                                              "sharegpt_jsonl": "ShareGPT JSONL",
                                              "parquet": "Parquet",
                                              "hf": "Hugging Face dataset (zip)"}[f])
    if st.button("Prepare download", key="export_prepare"):
        try:
            st.session_state["export_file"] = export_bytes(store(), version_id, fmt)
        except WorkbenchError as e:
            show_error(e)
    if "export_file" in st.session_state:
        name, data = st.session_state["export_file"]
        st.download_button(f"Download {name}", data, file_name=name, key="export_download")


with import_tab:
    import_section()

dataset = current_dataset()
for tab, section in ((browse_tab, browse_section), (history_tab, history_section),
                     (export_tab, export_section)):
    with tab:
        if dataset is None:
            st.info("Import a dataset first.")
        else:
            section(dataset)
