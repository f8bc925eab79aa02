"""Datasets: import, browse and edit rows, version history and diffs, export.

Dataset text is shown with st.text, st.json, st.text_area and tables, never as markdown, so a
row holding a markdown image or HTML cannot make the browser fetch anything.
"""

from __future__ import annotations

import streamlit as st

from pages.common import (
    current_dataset,
    flash,
    ref_of,
    show_error,
    show_flash,
    store,
    switch_dataset,
)
from workbench.exceptions import WorkbenchError
from workbench.io import EXPORT_FORMATS
from workbench.recipes import import_with_recipe, recipe_download
from workbench.schema import SHAPES
from workbench.store import RowFilter, Store
from workbench.views import (
    ALLOW_ANY_PATH_ENV,
    dataset_name_for,
    diff_tables,
    export_bytes,
    import_source,
    lineage_table,
    md_escape,
    page_count,
    page_table,
    path_import_root,
    plural,
    selected_row_keys,
)

EXPORT_LABELS = {"openai": "OpenAI chat JSONL", "alpaca_json": "Alpaca JSON",
                 "alpaca_jsonl": "Alpaca JSONL", "sharegpt": "ShareGPT JSON",
                 "sharegpt_jsonl": "ShareGPT JSONL", "parquet": "Parquet",
                 "hf": "Hugging Face dataset (zip)"}


# --- import ---------------------------------------------------------------------------------
def import_section() -> None:
    st.subheader("Import a dataset")
    upload = st.file_uploader("File", type=["jsonl", "ndjson", "json", "csv", "tsv", "parquet",
                                            "txt"], key="import_upload")
    label, why = path_label()
    local = st.text_input(label, key="import_path", help=why)
    suggest_name(upload.name if upload else local)
    name = st.text_input("Dataset name (new, or existing to add a version)", key="import_name")
    shape = st.selectbox("Shape", ["auto", *SHAPES], key="import_shape",
                         help="auto detects Alpaca, OpenAI chat, ShareGPT, prompt/completion "
                              "or text per row")
    recipe = st.file_uploader("Apply a recipe (optional): replay its steps on the imported "
                              "rows", type=["yaml", "yml"], key="import_recipe")
    ready = bool((upload or local.strip()) and name.strip())
    if st.button("Import", type="primary", disabled=not ready, key="import_button"):
        if recipe is not None:
            run_recipe(upload, local, name.strip(), (recipe.name, recipe.getvalue()))
        else:
            run_import(upload, local, name.strip(), shape)
    if "import_report" in st.session_state:
        show_report(st.session_state["import_report"])
    for line in st.session_state.get("recipe_lines", []):
        st.text(line)  # text: version refs and reasons, never markdown


def run_recipe(upload, local: str, name: str, recipe: tuple[str, bytes]) -> None:
    try:
        with st.spinner("Importing and replaying the recipe…"):
            result = import_with_recipe(
                store(), name, recipe, path=local,
                upload=(upload.name, upload.getvalue()) if upload else None)
    except (WorkbenchError, OSError) as e:
        st.session_state.pop("import_report", None)
        st.session_state.pop("recipe_lines", None)
        show_error(str(e))
        return
    st.session_state["import_report"] = result.import_report
    st.session_state["recipe_lines"] = result.lines()
    switch_dataset(name)
    flash(f"Replayed the recipe into {result.versions[-1].ref} "
          f"({len(result.versions)} versions, {len(result.not_replayed)} steps not replayed).")
    st.rerun()


def path_label() -> tuple[str, str]:
    """Return the path box's label and help: where the app may read files from, and why."""
    root = path_import_root()
    if root is None:
        return ("…or a path on this machine (a file or a HF `save_to_disk` folder)",
                f"Any path is allowed: `{ALLOW_ANY_PATH_ENV}=1` is set where the app runs.")
    label = (f"…or a path in the data folder {md_escape(root)} (a file or a HF "
             "`save_to_disk` folder; a relative path starts there)")
    why = ("Whoever opens this app can import what the server can read, so paths outside the "
           f"data folder are refused. To allow any path, start the app with "
           f"`{ALLOW_ANY_PATH_ENV}=1` set.")
    return label, why


def suggest_name(source: str) -> None:
    # A keyed text input ignores a changed default value, so a new file sets the name itself,
    # unless the user has typed a name of their own.
    previous = st.session_state.get("import_source", "")
    if source == previous:
        return
    st.session_state["import_source"] = source
    if st.session_state.get("import_name", "") in ("", dataset_name_for(previous)):
        st.session_state["import_name"] = dataset_name_for(source)


def run_import(upload, local: str, name: str, shape: str) -> None:
    try:
        with st.spinner("Importing…"):
            version, report = import_source(
                store(), name, shape=shape, path=local,
                upload=(upload.name, upload.getvalue()) if upload else None)
    except (WorkbenchError, OSError) as e:
        st.session_state.pop("import_report", None)  # an old report would look like this one's
        show_error(str(e))
        return
    st.session_state["import_report"] = report
    st.session_state.pop("recipe_lines", None)
    switch_dataset(name)
    flash(f"Imported {report.imported:,} rows as {version.ref}.")
    st.rerun()


def show_report(report) -> None:
    read, imported, rejected = st.columns(3)
    read.metric("Rows read", f"{report.rows_read:,}")
    imported.metric("Imported", f"{report.imported:,}")
    rejected.metric("Rejected", f"{len(report.rejected):,}")
    st.caption(md_escape(report.summary()))
    if report.rejected:
        st.dataframe([{report.unit: r.line, "field": r.field, "reason": r.reason, "fix": r.fix,
                       "raw": r.raw} for r in report.rejected], hide_index=True,
                     key="import_rejects", width="stretch",
                     column_config=REJECT_COLUMN_CONFIG)


REJECT_COLUMN_CONFIG = {"field": st.column_config.TextColumn(width=140),
                        "reason": st.column_config.TextColumn(width=300),
                        "fix": st.column_config.TextColumn(width=260),
                        "raw": st.column_config.TextColumn(width=300)}


# --- browse and edit ------------------------------------------------------------------------
def first_page() -> None:
    # A new filter or page size starts again from page 1.
    st.session_state["browse_page"] = 1


def new_field() -> None:
    # The old value belongs to another field: start from the new field's commonest value.
    st.session_state.pop("browse_value", None)
    first_page()


def filters_form(version_id: int) -> RowFilter:
    fields = store().metadata_fields(version_id)
    search_col, field_col, value_col = st.columns([2, 1, 1])
    search = search_col.text_input("Search text", key="browse_search", on_change=first_page)
    field = field_col.selectbox("Metadata field", ["(any)", *fields], key="browse_field",
                                on_change=new_field)
    value = value_col.selectbox("Value", fields.get(field, []), key="browse_value",
                                disabled=field == "(any)", on_change=first_page)
    # The rarer filters fold away so the table starts near the top of the screen.
    with st.expander("More filters"):
        lo_col, hi_col, turns_col, tag_col, label_col = st.columns(5)
        min_chars = lo_col.number_input("Min characters", min_value=0, key="browse_min",
                                        on_change=first_page)
        max_chars = hi_col.number_input("Max characters (0 = no limit)", min_value=0,
                                        key="browse_max", on_change=first_page)
        min_turns = turns_col.number_input("Min turns", min_value=0, key="browse_turns",
                                           on_change=first_page)
        tag = tag_col.text_input("Tag", key="browse_tag", on_change=first_page)
        label = label_col.selectbox("Label", [None, "good", "bad", "labelled", "unlabelled"],
                                    key="browse_label", on_change=first_page,
                                    format_func=lambda v: "(any)" if v is None else v)
    metadata = ((field, value),) if field != "(any)" and value is not None else ()
    return RowFilter(search=search, metadata=metadata, min_chars=min_chars or None,
                     max_chars=max_chars or None, min_turns=min_turns or None,
                     tag=tag.strip() or None, label=label)


def browse_section(dataset: str) -> None:
    if st.session_state.get("browse_dataset") != dataset:  # another dataset: start afresh
        st.session_state["browse_dataset"] = dataset
        new_field()
    offer_active(dataset)
    version_id = store().active_version(dataset)
    filters = filters_form(version_id)
    size_col, page_col, info_col = st.columns([1, 1, 2], vertical_alignment="bottom")
    size = size_col.selectbox("Rows per page", [25, 50, 100, 200], index=1, key="browse_size",
                              on_change=first_page)
    number = page_col.number_input("Page", min_value=1, step=1, key="browse_page")
    # A search reads every row's text (1M rows: seconds); the spinner shows only past 0.5 s.
    with st.spinner("Filtering the rows…"):
        page = rows_page(version_id, filters, number, size)
        if page.rows.empty and page.total:  # past the last page: show the last one instead
            number = page_count(page.total, size)
            page = rows_page(version_id, filters, number, size)
    info_col.caption(f"{plural(page.total, 'matching row')} · page {number} of "
                     f"{page_count(page.total, size)} · "
                     f"{md_escape(store().version(version_id).ref)}")
    # The key names the view, so a selection made on one page never picks rows of another.
    event = st.dataframe(page_table(page), hide_index=True, on_select="rerun",
                         selection_mode="multi-row", width="stretch",
                         key=f"browse_table_{number}_{size}_{abs(hash(filters))}",
                         column_config=BROWSE_COLUMN_CONFIG)
    chosen = selected_row_keys(page, event.selection.rows)
    if len(chosen) == 1:
        row_detail(version_id, chosen[0])
    elif chosen:
        tag_rows_form(version_id, chosen)
    else:
        st.caption("Select a row to read and edit it; select several to tag them.")


def rows_page(version_id: int, filters: RowFilter, number: int, size: int):
    """Page `number` of the rows the filters match. A version's rows never change, so the
    matches of a filter that does not read labels are found once and paged from then on."""
    offset = (number - 1) * size
    if filters == RowFilter() or filters.label is not None:
        return store().page(version_id, offset=offset, limit=size, filters=filters)
    keys = matching_keys(str(store().path), version_id, filters)
    return store().page_of(version_id, keys, offset=offset, limit=size,
                           label_set=filters.label_set)


@st.cache_data(max_entries=4, show_spinner=False)
def matching_keys(store_path: str, version_id: int, filters: RowFilter):
    return Store(store_path).matches(version_id, filters)


# Pixel widths that fit a laptop screen: the two text columns get the room, the rest stays
# visible without scrolling sideways.
BROWSE_COLUMN_CONFIG = {
    "row_key": st.column_config.NumberColumn("row", width=60),
    "label": st.column_config.TextColumn("label", width=55,
                                         help="good / bad: your label (Label page)"),
    "user": st.column_config.TextColumn("last user turn", width=250),
    "response": st.column_config.TextColumn("response", width=250),
    "system": st.column_config.TextColumn("system", width=55,
                                          help="the row has a system prompt"),
    "n_turns": st.column_config.NumberColumn("turns", width=50),
    "n_chars": st.column_config.NumberColumn("chars", width=60),
    "tags": st.column_config.TextColumn("tags", width=80),
    "note": st.column_config.TextColumn("note", width=80),
}


def row_detail(version_id: int, row_key: int) -> None:
    row = store().row(row_key)
    st.subheader(f"Row {row_key}")
    st.caption(f"id {row.example.id} · tags: {md_escape(', '.join(row.tags) or 'none')}")
    read_col, edit_col = st.columns(2, gap="large")
    with read_col:
        for message in row.example.messages:
            avatar = ":material/settings:" if message["role"] == "system" else None
            with st.chat_message(message["role"], avatar=avatar):
                st.text(message["content"])  # text, never markdown/HTML
        with st.expander("Metadata"):
            st.json(row.example.metadata)
    with edit_col:
        label_rows_form(version_id, [row_key], f"row_label_{row_key}")
        edit_form(version_id, row_key, row)


def edit_form(version_id: int, row_key: int, row) -> None:
    with st.form(f"edit_{row_key}"):
        st.caption("Edit: saving makes a new version; the current one stays unchanged.")
        contents = [st.text_area(f"{m['role']} turn {i + 1}", m["content"], height="content",
                                 key=f"e_{row_key}_{i}")
                    for i, m in enumerate(row.example.messages)]
        tags = st.text_input("Tags (comma-separated)", ", ".join(row.tags), key=f"t_{row_key}")
        note = st.text_area("Note", row.note, key=f"n_{row_key}", height=68)
        if st.form_submit_button("Save as new version", type="primary"):
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
    saved_message(version, f"Saved row {row_key}")
    st.rerun()


def saved_message(version, what: str) -> None:
    """Say which version an edit saved; if it did not become the active one (it was made from
    an older version), say which stays active and offer to switch."""
    active = store().active_version(version.dataset)
    if active == version.version_id:
        flash(f"{what} as {version.ref}, now the active version.")
        return
    flash(f"{what} as {version.ref}; {ref_of(active)} stays the active version.")
    st.session_state["offer_active"] = (version.dataset, version.version_id)


def offer_active(dataset: str) -> None:
    offer = st.session_state.get("offer_active")
    if not offer or offer[0] != dataset or offer[1] == store().active_version(dataset):
        return
    text_col, button_col = st.columns([3, 1], vertical_alignment="center")
    text_col.info(f"{md_escape(ref_of(offer[1]))} holds your edit but is not the active "
                  "version.")
    if button_col.button(f"Make {ref_of(offer[1])} active", key="offer_make_active"):
        store().set_active(offer[1])
        st.session_state.pop("offer_active")
        flash(f"{ref_of(offer[1])} is now the active version.")
        st.rerun()


def label_rows_form(version_id: int, row_keys: list[int], key: str) -> None:
    """Good / Bad / Clear buttons for the selected rows (labels live by content, not version)."""
    good, bad, clear = st.columns(3)
    chosen = ("good" if good.button("Label good", key=f"{key}_good", icon=":material/thumb_up:")
              else "bad" if bad.button("Label bad", key=f"{key}_bad",
                                       icon=":material/thumb_down:")
              else "clear" if clear.button("Clear label", key=f"{key}_clear") else None)
    if chosen is None:
        return
    from workbench import labelling  # its model code loads only when a label is set

    try:
        action = labelling.label_rows(store(), version_id, row_keys,
                                      None if chosen == "clear" else chosen)
    except WorkbenchError as e:
        show_error(e)
        return
    flash(f"{action.description} (undo on the Label page).")
    st.rerun()


def tag_rows_form(version_id: int, row_keys: list[int]) -> None:
    st.subheader(f"{len(row_keys)} rows selected")
    label_rows_form(version_id, row_keys, "bulk_label")
    tag = st.text_input("Tag", key="bulk_tag").strip()
    add_col, remove_col = st.columns(2)
    add = add_col.button("Add tag", disabled=not tag, key="bulk_add")
    remove = remove_col.button("Remove tag", disabled=not tag, key="bulk_remove")
    if not (add or remove):
        return
    try:
        version = store().tag_rows(version_id, row_keys, **({"add": [tag]} if add
                                                            else {"remove": [tag]}))
    except WorkbenchError as e:
        show_error(e)
        return
    saved_message(version, f"Tagged {len(row_keys)} rows")
    st.rerun()


# --- history --------------------------------------------------------------------------------
ROLE_LABELS = {"": "not said", "train": "training data", "eval": "eval set (Evaluate picks it)",
               "pool": "pool to draw rows from"}


def role_form(dataset: str) -> None:
    roles = store().datasets().set_index("name")["role"]
    current = roles.get(dataset) or ""
    role = st.selectbox("This dataset is", list(ROLE_LABELS), index=list(ROLE_LABELS)
                        .index(current), format_func=ROLE_LABELS.get, key=f"role_{dataset}")
    if role != current:
        store().set_role(dataset, role)
        flash(f"{dataset} is now marked as {ROLE_LABELS[role]}.")
        st.rerun()


def history_section(dataset: str) -> None:
    role_form(dataset)
    active = store().active_version(dataset)
    versions = store().versions(dataset)
    st.dataframe(lineage_table(versions, active), hide_index=True, key="lineage",
                 width="stretch")
    ids, refs = [v.version_id for v in versions], {v.version_id: v.ref for v in versions}
    pick_col, button_col = st.columns([3, 1], vertical_alignment="bottom")
    pick = pick_col.selectbox("Version", ids, index=ids.index(active), key="history_pick",
                              format_func=refs.get)
    if button_col.button("Make active", disabled=pick == active, key="make_active"):
        store().set_active(pick)
        flash(f"{refs[pick]} is now the active version.")
        st.rerun()
    recipe_button(pick)
    diff_section(ids, active, refs)
    removed_section(active)


def recipe_button(version_id: int) -> None:
    try:
        name, data = recipe_download(store(), version_id)
    except WorkbenchError as e:
        st.caption(f"No recipe for this version: {md_escape(str(e))}")
        return
    st.download_button("Save as recipe", data, file_name=name, key="recipe_download",
                       help="A YAML file of the steps that made this version; apply it to new "
                            "data on the Import tab or with `workbench recipe apply`.")


def diff_section(ids: list[int], active: int, refs: dict[int, str]) -> None:
    st.subheader("Diff two versions")
    parent = store().version(active).parent_id
    a_col, b_col = st.columns(2)
    a = a_col.selectbox("From", ids, index=ids.index(parent) if parent in ids else 0,
                        key="diff_a", format_func=refs.get)
    b = b_col.selectbox("To", ids, index=ids.index(active), key="diff_b",
                        format_func=refs.get)
    if a == b:
        st.caption("Pick two different versions to compare.")
        return
    counts, tables = version_diff(str(store().path), a, b)
    for col, (kind, n) in zip(st.columns(3), counts.items()):
        col.metric(f"Rows {kind}", f"{n:,}")
    for kind, table in tables.items():
        if len(table):
            with st.expander(f"{kind} ({counts[kind]:,})"):
                st.dataframe(table, hide_index=True, key=f"diff_{kind}", width="stretch")
                shown_caption(len(table), counts[kind])


SHOWN_ROWS = 1000  # rows a history table shows; its count covers all of them


# Versions are immutable, so what two version ids give never changes: reruns reuse it.
@st.cache_data(max_entries=4, show_spinner="Comparing the versions…")  # 1M rows: ~0.4 s
def version_diff(store_path: str, a: int, b: int):
    """Every count of a diff and the first SHOWN_ROWS rows of each kind, as display tables."""
    diff = Store(store_path).diff(a, b, limit=SHOWN_ROWS)
    return diff.counts(), diff_tables(diff)


@st.cache_data(max_entries=8, show_spinner="Finding the dropped rows…")
def dropped_rows(store_path: str, version_id: int, reason: str | None, search: str, page: int):
    """How many dropped rows match the reason and search, and the page of SHOWN_ROWS of them
    (DuckDB filters and pages them, so any dropped row of a big version can be reached)."""
    found = Store(store_path)
    return (found.removed_count(version_id, reason=reason, search=search),
            found.removed(version_id, limit=SHOWN_ROWS, offset=(page - 1) * SHOWN_ROWS,
                          reason=reason, search=search))


@st.cache_data(max_entries=4, show_spinner=False)
def dropped_reasons(store_path: str, version_id: int):
    """The reasons rows were dropped on the way to a version, with their counts."""
    return Store(store_path).removed_reasons(version_id)


def shown_caption(shown: int, total: int) -> None:
    if shown < total:
        st.caption(f"The first {shown:,} of {total:,} rows, in row order.")


def _new_removed_filter() -> None:
    st.session_state["removed_page"] = 1  # a new filter starts at its first page
    st.session_state.pop("restore_keys", None)  # and picks from its own rows


def removed_section(active: int) -> None:
    reasons = dropped_reasons(str(store().path), active)
    total = int(reasons["rows"].sum())
    st.subheader(f"Dropped rows ({total:,})")
    if not total:
        st.caption("No rows were dropped on the way to this version.")
        return
    counts = dict(zip(reasons["reason"], reasons["rows"]))
    reason_col, search_col, page_col = st.columns([2, 3, 1], vertical_alignment="bottom")
    reason = reason_col.selectbox(
        "Reason", [None, *counts], key="removed_reason", on_change=_new_removed_filter,
        format_func=lambda r: f"all reasons ({total:,})" if r is None else f"{r} ({counts[r]:,})")
    search = search_col.text_input("Search the dropped rows' text", key="removed_search",
                                   on_change=_new_removed_filter).strip()
    page = int(page_col.number_input("Page", min_value=1, step=1, key="removed_page",
                                     on_change=lambda: st.session_state.pop("restore_keys",
                                                                            None)))
    matching, removed = dropped_rows(str(store().path), active, reason, search, page)
    pages = max(1, -(-matching // SHOWN_ROWS))
    if removed.empty:
        st.caption(f"No dropped row matches on page {page:,}: {matching:,} match, "
                   f"on {pages:,} page(s)." if matching else "No dropped row matches.")
        return
    st.dataframe(removed[["row_key", "reason", "duplicate_of", "detail", "dropped_in", "prompt",
                          "response"]], hide_index=True, key="removed_table", width="stretch")
    first = (page - 1) * SHOWN_ROWS
    if len(removed) < matching:
        st.caption(f"Rows {first + 1:,}–{first + len(removed):,} of {matching:,} matching, in "
                   f"row order (page {page:,} of {pages:,}).")
    keys = st.multiselect("Rows to restore (from this page)", removed["row_key"].tolist(),
                          key="restore_keys")
    if st.button("Restore into a new version", disabled=not keys, key="restore"):
        version = store().restore(active, keys)
        flash(f"Restored {len(keys)} rows as {version.ref}.")
        st.rerun()


# --- export ---------------------------------------------------------------------------------
def export_section(dataset: str) -> None:
    version_id = store().active_version(dataset)
    fmt = st.selectbox("Format", EXPORT_FORMATS, key="export_format",
                       format_func=EXPORT_LABELS.__getitem__)
    # A download: the browser saves it where the user says (and asks before replacing a
    # file); the server keeps nothing.
    st.caption(f"Exports the active version {md_escape(ref_of(version_id))} as a download.")
    if st.button("Prepare download", key="export_prepare"):
        from workbench.cards import dataset_card

        try:
            name, data = export_bytes(store(), version_id, fmt)
            card = dataset_card(store(), version_id, fmt=fmt)
        except WorkbenchError as e:
            show_error(e)
            return
        st.session_state["export_file"] = (version_id, fmt, name, data, card)
    prepared = st.session_state.get("export_file")
    # A file prepared for another version or format would be the wrong download.
    if prepared and prepared[:2] == (version_id, fmt):
        _, _, name, data, card = prepared
        st.download_button(f"Download {name}", data, file_name=name, key="export_download")
        # The dataset card says how the version was made: sources, steps, drops, the recipe.
        st.download_button("Download its dataset card (README.md)", card,
                           file_name=f"{name.split('.')[0]}.README.md", key="export_card")


# --- the page -------------------------------------------------------------------------------
st.title("Datasets")
# Always there, even when empty: a message appearing above the tabs must not shift them, or the
# browser would take them for new tabs and jump back to the first one.
with st.container():
    show_flash()
browse_tab, import_tab, history_tab, export_tab = st.tabs(
    ["Browse", "Import", "History", "Export"], key="datasets_tabs")

with import_tab:
    import_section()

dataset = current_dataset()
for tab, section in ((browse_tab, browse_section), (history_tab, history_section),
                     (export_tab, export_section)):
    with tab:
        if dataset is None:
            st.info("Import a dataset first (Import tab).")
            continue
        try:
            section(dataset)
        except WorkbenchError as e:  # e.g. the store stayed locked by another process
            show_error(e)
