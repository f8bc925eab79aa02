"""AppTest: the app shell and the Datasets page over a temporary store."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import streamlit as st
from helpers_app import APP, chat_file, chat_record, emulate_running_server, write_jsonl
from streamlit.testing.v1 import AppTest

from workbench.schema import StepResult
from workbench.store import Store
from workbench.views import lineage_table


def plain(text: str) -> str:
    """Undo markdown escaping, to compare what the user reads."""
    return re.sub(r"\\(.)", r"\1", text)


def texts(elements) -> list[str]:
    return [plain(e.value) for e in elements]


def no_exception(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "store.duckdb"
    monkeypatch.setenv("WORKBENCH_STORE", str(path))
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    emulate_running_server(monkeypatch)
    st.cache_resource.clear()  # get_store is cached per path; start from a fresh handle
    yield path
    st.cache_resource.clear()


@pytest.fixture
def store(store_path: Path) -> Store:
    """A store holding dataset 'support': 120 chat rows with topic billing/login."""
    s = Store(store_path)
    s.import_file(chat_file(store_path.parent / "support.jsonl", 120), "support")
    return s


def start(store_path: Path) -> AppTest:
    return no_exception(AppTest.from_file(str(APP), default_timeout=30).run())


def browse_table(at: AppTest):
    (table,) = [d for d in at.dataframe if (d.key or "").startswith("browse_table")]
    return table


def select_rows(at: AppTest, *positions: int) -> AppTest:
    """Select rows of the browse table the way a click does: through its selection state."""
    at.session_state[browse_table(at).key] = {
        "selection": {"rows": list(positions), "columns": [], "cells": []}}
    return no_exception(at.run())


def tab(at: AppTest, label: str):
    return next(t for t in at.tabs if t.label == label)


def browse_caption(at: AppTest) -> str:
    return next(c for c in texts(at.caption) if " matching row" in c)


# --- shell --------------------------------------------------------------------------------------
def test_empty_store_asks_for_an_import(store_path):
    at = start(store_path)
    assert "Import a dataset first (Import tab)." in texts(at.info)
    assert any("No datasets yet" in t for t in texts(at.sidebar.info))
    assert any(str(store_path) in t for t in texts(at.sidebar.caption))


def test_unopenable_store_shows_an_error_not_a_traceback(store_path, monkeypatch):
    store_path.mkdir()  # a folder where the store file should be
    at = AppTest.from_file(str(APP), default_timeout=30).run()
    assert not at.exception
    assert any("cannot open the store" in t for t in texts(at.error))


def test_sidebar_shows_the_active_version(store):
    at = start(Path(store.path))
    assert at.sidebar.selectbox(key="dataset").value == "support"
    assert "active version support@1 · 120 rows · import" in texts(at.sidebar.caption)


# --- browse ---------------------------------------------------------------------------------------
def test_browse_shows_the_first_page_and_the_total(store):
    at = start(Path(store.path))
    table = browse_table(at).value
    assert len(table) == 50
    assert table["user"].iloc[0].startswith("question 0:")
    assert table["user"].iloc[49].startswith("question 49:")
    assert browse_caption(at) == "120 matching rows · page 1 of 3 · support@1"


def test_search_filters_rows(store):
    at = start(Path(store.path))
    at.text_input(key="browse_search").input("item 7?").run()
    no_exception(at)
    assert list(browse_table(at).value["user"]) == ["question 7: how do I reset item 7?"]
    assert browse_caption(at).startswith("1 matching row ")


def test_metadata_filter_applies_the_fields_commonest_value(store):
    at = start(Path(store.path))
    at.selectbox(key="browse_field").select("topic").run()
    value = no_exception(at).selectbox(key="browse_value")
    assert sorted(value.options) == ["billing", "login"] and value.value in value.options
    at.selectbox(key="browse_value").select("billing").run()
    table = browse_table(no_exception(at)).value
    assert browse_caption(at).startswith("60 matching rows")
    assert table["user"].iloc[0].startswith("question 1:")  # odd rows are billing


def test_paging_shows_the_next_rows_and_a_filter_goes_back_to_page_1(store):
    at = start(Path(store.path))
    at.number_input(key="browse_page").set_value(2).run()
    table = browse_table(no_exception(at)).value
    assert table["user"].iloc[0].startswith("question 50:")
    assert browse_caption(at) == "120 matching rows · page 2 of 3 · support@1"
    at.number_input(key="browse_page").set_value(3).run()
    assert len(browse_table(no_exception(at)).value) == 20
    at.text_input(key="browse_search").input("reset").run()
    assert at.number_input(key="browse_page").value == 1
    assert browse_caption(no_exception(at)).startswith("120 matching rows · page 1 of 3")


def test_a_page_past_the_end_shows_the_last_page(store):
    at = start(Path(store.path))
    at.number_input(key="browse_page").set_value(9).run()
    assert browse_caption(no_exception(at)) == "120 matching rows · page 3 of 3 · support@1"
    assert browse_table(at).value["user"].iloc[0].startswith("question 100:")


def test_selecting_a_row_shows_its_chat_view(store):
    at = select_rows(start(Path(store.path)), 3)
    row_key = int(browse_table(at).value["row_key"].iloc[3])
    assert f"Row {row_key}" in texts(at.subheader)
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert texts(at.text) == ["question 3: how do I reset item 3?",
                              "answer 3: press reset 3 times."]


def test_a_selection_from_another_page_does_not_follow_to_the_next(store):
    at = select_rows(start(Path(store.path)), 40)
    at.text_input(key="browse_search").input("item 7?").run()  # one row left: index 40 is gone
    no_exception(at)
    assert not at.chat_message
    at.number_input(key="browse_page").set_value(2).run()
    assert not no_exception(at).chat_message


def test_editing_a_row_saves_a_new_version_and_keeps_the_old(store):
    at = select_rows(start(Path(store.path)), 0)
    old_key = int(browse_table(at).value["row_key"].iloc[0])
    at.text_area(key=f"e_{old_key}_1").input("a better answer")
    at.text_input(key=f"t_{old_key}").input("reviewed")
    at.button(key=f"FormSubmitter:edit_{old_key}-Save as new version").click().run()
    no_exception(at)
    assert store.active_version("support") == 2
    assert any("as support@2" in t for t in texts(at.success))
    assert "active version support@2 · 120 rows · edit" in texts(at.sidebar.caption)
    new_first = store.page(2, limit=1).rows.iloc[0]
    assert new_first.response == "a better answer" and list(new_first.tags) == ["reviewed"]
    old_first = store.page(1, limit=1).rows.iloc[0]
    assert old_first.row_key == old_key and old_first.response.startswith("answer 0:")


def test_selecting_several_rows_tags_them(store):
    at = select_rows(start(Path(store.path)), 0, 2)
    assert "2 rows selected" in texts(at.subheader)
    at.text_input(key="bulk_tag").input("check").run()
    at.button(key="bulk_add").click().run()
    no_exception(at)
    tagged = store.page(store.active_version("support"), filters=None).rows
    assert [list(t) for t in tagged["tags"].iloc[:3]] == [["check"], [], ["check"]]


def test_selected_rows_are_labelled_and_the_grid_shows_and_filters_labels(store):
    at = select_rows(start(Path(store.path)), 0, 2)
    at = no_exception(at.button(key="bulk_label_bad").click().run())
    assert any("-> bad" in s for s in texts(at.success))
    table = browse_table(at).value
    assert table["label"].tolist()[:3] == ["bad", "", "bad"]
    at = no_exception(at.selectbox(key="browse_label").set_value("bad").run())
    assert browse_table(at).value["label"].tolist() == ["bad", "bad"]
    assert "2 matching rows" in browse_caption(at)


def test_one_selected_row_can_be_labelled_next_to_its_edit_form(store):
    at = select_rows(start(Path(store.path)), 1)
    row_key = int(browse_table(at).value["row_key"].iloc[1])
    at = no_exception(at.button(key=f"row_label_{row_key}_good").click().run())
    assert browse_table(at).value["label"].tolist()[1] == "good"


# --- history ----------------------------------------------------------------------------------
def drop_first_row(store: Store):
    frame = store.frame(1)
    dropped = pd.DataFrame({"row_key": [int(frame.row_key.iloc[0])], "reason": ["too_short"],
                            "duplicate_of": pd.array([None], dtype="Int64"),
                            "detail": ["planted for the test"]})
    return store.apply_step(1, StepResult(kept=frame.iloc[1:], dropped=dropped),
                            operation="filter", params={"min_chars": 5})


def test_history_shows_lineage_and_diff_and_switches_versions(store):
    drop_first_row(store)
    at = start(Path(store.path))
    lineage = tab(at, "History").dataframe[0].value  # tables without selection have no key
    assert list(lineage["version"]) == ["support@1", "support@2"]
    assert list(lineage["operation"]) == ["import", "filter"]
    assert lineage["parent"].iloc[1] == "support@1" and lineage["active"].iloc[1] == "●"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Rows added": "0", "Rows removed": "1", "Rows changed": "0"}
    at.selectbox(key="history_pick").select(1).run()
    at.button(key="make_active").click().run()
    no_exception(at)
    assert store.active_version("support") == 1
    assert "active version support@1 · 120 rows · import" in texts(at.sidebar.caption)


def test_a_lineage_parent_that_is_gone_is_named_as_deleted(store):
    drop_first_row(store)
    child = store.versions("support")[1]
    table = lineage_table([child], active=child.version_id)
    assert table["parent"].iloc[0] == f"deleted version (id {child.parent_id})"
    assert lineage_table(store.versions("support"))["parent"].tolist() == ["", "support@1"]


def test_dropped_rows_show_their_reason_and_can_be_restored(store):
    drop_first_row(store)
    at = start(Path(store.path))
    assert "Dropped rows (1)" in texts(at.subheader)
    removed = tab(at, "History").dataframe[-1].value
    assert list(removed["reason"]) == ["too_short"]
    at.multiselect(key="restore_keys").select(int(removed["row_key"].iloc[0])).run()
    at.button(key="restore").click().run()
    no_exception(at)
    assert store.active_version("support") == 3
    assert store.version(3).n_rows == 120 and store.version(3).operation == "restore"
    assert "Dropped rows (0)" in texts(at.subheader)


# --- export -------------------------------------------------------------------------------------
def test_export_prepares_a_download_of_the_active_version(store):
    at = start(Path(store.path))
    at.button(key="export_prepare").click().run()
    no_exception(at)
    assert at.download_button(key="export_download").label == "Download support-v1.jsonl"
    _, _, name, data, card = at.session_state["export_file"]
    rows = [json.loads(line) for line in data.decode().splitlines()]
    assert len(rows) == 120 and rows[0]["messages"][0]["content"].startswith("question 0:")
    assert at.download_button(key="export_card").label == "Download its dataset card (README.md)"
    assert card.startswith("# Dataset card: support@1") and "120 rows" in card
    at.selectbox(key="export_format").select("parquet").run()
    # The prepared JSONL (and its card) are not offered as Parquet; the recipe stays.
    assert [b.key for b in at.download_button] == ["recipe_download"]


def test_export_a_multi_turn_row_as_alpaca_shows_the_error(store_path):
    record = {"messages": [{"role": "assistant", "content": "hi"}]}
    Store(store_path).import_file(write_jsonl(store_path.parent / "a.jsonl", [record]), "odd")
    at = start(store_path)
    at.selectbox(key="export_format").select("alpaca_json").run()
    at.button(key="export_prepare").click().run()
    assert not at.exception and any("Alpaca needs" in t for t in texts(at.error))


# --- import -------------------------------------------------------------------------------------
def test_import_from_a_path_reports_rejected_lines(store_path):
    source = chat_file(store_path.parent / "mixed.jsonl", 5, bad_lines=["{oops", '{"foo": 1}'])
    at = start(store_path)
    at.text_input(key="import_path").input(str(source)).run()
    assert at.text_input(key="import_name").value == "mixed"  # suggested from the file name
    at.button(key="import_button").click().run()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {"Rows read": "7", "Imported": "5", "Rejected": "2"}
    rejects = tab(at, "Import").dataframe[0].value
    assert list(rejects["line"]) == [6, 7]
    assert list(rejects["field"]) == ["(line)", "(row)"]
    assert rejects["reason"].iloc[0].startswith("bad JSON")
    assert at.sidebar.selectbox(key="dataset").value == "mixed"
    assert any("Imported 5 rows as mixed@1." in t for t in texts(at.success))
    assert len(browse_table(at).value) == 5


def test_an_import_switches_the_dataset_visibly_with_a_way_back(store_path):
    Store(store_path).import_file(chat_file(store_path.parent / "first.jsonl", 2), "first")
    at = start(store_path)
    source = chat_file(store_path.parent / "second.jsonl", 3)
    at.text_input(key="import_path").input(str(source)).run()
    at.button(key="import_button").click().run()
    no_exception(at)
    assert at.sidebar.selectbox(key="dataset").value == "second"
    assert "Now working on second (was first)." in texts(at.sidebar.info)
    at.sidebar.button(key="switch_back").click().run()
    no_exception(at.run())  # the switch back lands on the next run, quietly
    assert at.sidebar.selectbox(key="dataset").value == "first"
    assert not at.sidebar.info and not [b for b in at.sidebar.button if b.key == "switch_back"]


def test_import_an_uploaded_file(store_path):
    at = start(store_path)
    data = "\n".join(json.dumps(chat_record(i)) for i in range(3)).encode()
    at.file_uploader(key="import_upload").upload("upload me.jsonl", data, "application/json")
    at.run()
    assert at.text_input(key="import_name").value == "upload me"
    at.button(key="import_button").click().run()
    no_exception(at)
    assert {m.label: m.value for m in at.metric}["Imported"] == "3"
    assert any(t.startswith("upload me.jsonl: read 3 rows") for t in texts(at.caption))
    assert Store(store_path).active_version("upload me") == 1


def test_a_typed_name_is_kept_when_the_file_changes(store_path):
    at = start(store_path)
    at.text_input(key="import_name").input("mine").run()
    at.text_input(key="import_path").input("/somewhere/else.jsonl").run()
    assert at.text_input(key="import_name").value == "mine"


@pytest.mark.parametrize("content, message", [
    (b"\x00\x01\x02binary\x00", "looks like a binary file"),
    (b"", "the file is empty"),
    (b'{"foo": 1}\n', "no row could be imported"),
])
def test_a_file_that_is_no_dataset_shows_an_error_and_the_app_goes_on(store_path, content,
                                                                      message):
    bad = store_path.parent / "bad.jsonl"
    bad.write_bytes(content)
    at = start(store_path)
    at.text_input(key="import_path").input(str(bad)).run()
    at.button(key="import_button").click().run()
    assert not at.exception
    assert any(message in t for t in texts(at.error))
    assert "Import a dataset first (Import tab)." in texts(at.info)
    at.text_input(key="import_path").input(str(chat_file(store_path.parent / "ok.jsonl", 2)))
    at.run()
    at.button(key="import_button").click().run()
    assert {m.label: m.value for m in no_exception(at).metric}["Imported"] == "2"


# --- dataset text is text -------------------------------------------------------------------------
HOSTILE = "look ![x](http://example.com/a.png) and <b>bold</b> :red[alert] $x^2$"


def test_dataset_text_renders_literally(store_path):
    record = {"messages": [{"role": "user", "content": HOSTILE},
                           {"role": "assistant", "content": "<img src=http://example.com/b.png>"}],
              "source": "![m](http://example.com/m.png)"}
    # (a dataset name cannot hold markdown any more: names are checked on creation)
    Store(store_path).import_file(write_jsonl(store_path.parent / "evil[1].jsonl", [record]),
                                  "evil")
    at = select_rows(start(store_path), 0)
    assert texts(at.text) == [HOSTILE, "<img src=http://example.com/b.png>"]
    # Whatever else shows dataset-derived strings through markdown escapes them.
    for element in [*at.markdown, *at.caption, *at.subheader, *at.success, *at.info]:
        assert "](http" not in element.value and "<b>" not in element.value


def test_switching_datasets_resets_the_history_pickers(store):
    drop_first_row(store)
    store.import_file(chat_file(Path(store.path).parent / "other.jsonl", 3), "other")
    at = start(Path(store.path))
    at.sidebar.selectbox(key="dataset").select("support").run()
    at.selectbox(key="diff_a").select(2).run()
    at.selectbox(key="history_pick").select(1).run()
    at.sidebar.selectbox(key="dataset").select("other").run()
    no_exception(at)
    assert at.selectbox(key="diff_a").options == ["other@1"]
    assert at.selectbox(key="history_pick").value == 3
    assert browse_caption(at).startswith("3 matching rows")


def test_switching_datasets_starts_browsing_at_page_1(store):
    store.import_file(chat_file(Path(store.path).parent / "other.jsonl", 80), "other")
    at = start(Path(store.path))
    at.number_input(key="browse_page").set_value(3).run()
    at.sidebar.selectbox(key="dataset").select("other").run()
    assert browse_caption(no_exception(at)) == "80 matching rows · page 1 of 2 · other@1"  # numbered per dataset


@pytest.mark.parametrize("text", [HOSTILE, "a_b*c", "[x](y)", "<script>", "1. item", "# head"])
def test_md_escape_escapes_every_markdown_character(text):
    from workbench.views import md_escape

    escaped = md_escape(text)
    assert plain(escaped) == text
    assert not re.findall(r"(?<!\\)[!\[\]()<>*_#`$:]", escaped)


# --- exposure: what the app reads, sends and listens on -----------------------------------------
def import_by_path(at: AppTest, typed: str, name: str) -> AppTest:
    at.text_input(key="import_path").input(typed).run()
    at.text_input(key="import_name").input(name).run()
    return at.button(key="import_button").click().run()


def test_import_by_path_reads_only_the_data_folder_unless_allowed(store_path, tmp_path_factory,
                                                                   monkeypatch):
    monkeypatch.delenv("WORKBENCH_ALLOW_ANY_PATH", raising=False)
    home = store_path.parent  # WORKBENCH_HOME, the data folder
    outside = chat_file(tmp_path_factory.mktemp("outside") / "secret.jsonl", 3)
    (home / "link.jsonl").symlink_to(outside)
    chat_file(home / "inside.jsonl", 2)
    at = start(store_path)
    box = at.text_input(key="import_path")
    assert "data folder" in plain(box.label) and str(home.resolve()) in plain(box.label)
    assert "WORKBENCH_ALLOW_ANY_PATH=1" in box.help  # the page says how to allow any path
    for typed in (str(outside), f"../{outside.parent.name}/secret.jsonl", "link.jsonl",
                  "/etc/hostname"):
        at = import_by_path(at, typed, "stolen")
        assert not at.exception
        assert any("only from the data folder" in t and "WORKBENCH_ALLOW_ANY_PATH=1" in t
                   for t in texts(at.error)), (typed, texts(at.error))
    assert Store(store_path).datasets().empty
    at = no_exception(import_by_path(at, "inside.jsonl", "inside"))  # relative to the folder
    assert {m.label: m.value for m in at.metric}["Imported"] == "2"

    monkeypatch.setenv("WORKBENCH_ALLOW_ANY_PATH", "1")
    at = start(store_path)
    assert "path on this machine" in at.text_input(key="import_path").label
    at = no_exception(import_by_path(at, str(outside), "outside"))
    assert Store(store_path).active_version("outside") == 2


def test_the_judge_form_offers_only_allowed_key_variables(store, monkeypatch):
    monkeypatch.delenv("WORKBENCH_JUDGE_KEY_VARS", raising=False)
    at = no_exception(start(Path(store.path)).switch_page("pages/score.py").run())
    at = no_exception(at.radio(key="sc_jbackend").set_value("openai").run())
    key = at.selectbox(key="sc_jkey")
    assert key.options == ["OPENAI_API_KEY", "(no key)"]  # no free text: no other secret
    assert "WORKBENCH_JUDGE_KEY_VARS" in key.help
    monkeypatch.setenv("WORKBENCH_JUDGE_KEY_VARS", "MY_JUDGE_KEY")
    at = no_exception(at.run())
    assert at.selectbox(key="sc_jkey").options == ["MY_JUDGE_KEY", "(no key)"]


def test_the_app_listens_on_loopback_only_from_any_folder(tmp_path):
    import socket
    import subprocess
    import sys

    from helpers_app import free_port, stop_server, wait_until_up

    port = free_port()
    # `python app.py`, as its docstring says, started from another folder and with no
    # address given: the shipped .streamlit/config.toml must still apply.
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAMLIT_")}
    env.update(HOME=str(tmp_path), WORKBENCH_STORE=str(tmp_path / "s.duckdb"),
               WORKBENCH_HOME=str(tmp_path))
    server = subprocess.Popen([sys.executable, str(APP), "--server.port", str(port),
                               "--server.headless", "true", "--server.fileWatcherType", "none"],
                              cwd=tmp_path, env=env, stdout=(tmp_path / "log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", server)
        with pytest.raises(ConnectionRefusedError):  # another address of this machine
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
    finally:
        stop_server(server)


def test_the_shipped_streamlit_config_is_private(tmp_path):
    import subprocess
    import sys

    code = ("import streamlit.config as c; c._main_script_path = {app!r}; "
            "c.get_config_options(force_reparse=True); print(*[c.get_option(k) for k in "
            "('server.address', 'browser.gatherUsageStats', 'client.showErrorDetails', "
            "'client.toolbarMode')])")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([sys.executable, "-c", code.format(app=str(APP))], cwd=tmp_path,
                         env={**env, "HOME": str(tmp_path)}, capture_output=True, text=True,
                         check=True)
    # Loopback only; no usage statistics; tracebacks stay in the server's log; no developer
    # menu, but the "Running..." indicator shows ("minimal" would hide it).
    assert out.stdout.split() == ["127.0.0.1", "False", "none", "viewer"]


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False),
                                          ("::1", False), ("0.0.0.0", True),
                                          ("192.168.1.5", True), ("myhost.lan", True)])
def test_workbench_app_warns_when_it_listens_beyond_this_machine(tmp_path, monkeypatch, host,
                                                                  warned):
    from click.testing import CliRunner

    from workbench import cli

    commands: list[list[str]] = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env: commands.append(cmd) or 0)
    result = CliRunner().invoke(cli.main, ["--store", str(tmp_path / "s.duckdb"), "app",
                                           "--host", host, "--no-sample"])
    assert result.exit_code == 0, result.stderr
    assert ("is not a loopback address" in result.stderr) == warned, result.stderr
    assert commands[0][commands[0].index("--server.address") + 1] == host


@pytest.mark.parametrize("legacy", ["../../../../x/ESCAPED", "a" * 300, "<b>x</b>/..", "..."])
def test_a_download_name_from_a_legacy_dataset_name_is_never_a_path(tmp_path, legacy,
                                                                     monkeypatch):
    from workbench.views import export_bytes

    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "s.duckdb")
    store.import_file(chat_file(tmp_path / "d.jsonl", 2), "d")
    with store.connect() as con:  # a name from before names were checked
        con.execute("UPDATE datasets SET name = ? WHERE name = 'd'", [legacy])
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for fmt in ("openai", "hf"):
        name, data = export_bytes(store, store.active_version(legacy), fmt)
        assert "/" not in name and ".." not in name and len(name) <= 80 and data
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written on the server


def test_progress_text_counts_and_estimates_the_time_left():
    from workbench.views import progress_text

    assert progress_text("Checking rules", 0, 4, 0.2) == "Checking rules 0/4 · 0 s"
    assert progress_text("Checking rules", 1, 4, 10.0, "pii") == \
        "Checking rules 1/4 · pii · 10 s, about 30 s left"
    assert progress_text("Scoring rows", 52_000, 52_000, 8.0) == "Scoring rows 52,000/52,000 · 8 s"


def test_plot_sample_draws_at_most_n_rows_and_states_the_full_count():
    import numpy as np
    import pandas as pd

    from workbench.views import PLOT_POINTS, plot_sample

    frame = pd.DataFrame({"x": np.arange(52_000.0), "y": [np.nan] * 2_000 + [1.0] * 50_000})
    sample = plot_sample(frame, ["x", "y"])
    assert len(sample.rows) == PLOT_POINTS and sample.total == 50_000  # rows with both values
    assert sample.rows["y"].notna().all() and sample.rows.index.is_monotonic_increasing
    assert sample.caption.startswith("5,000 of 50,000 rows, a random sample")
    assert plot_sample(frame, ["x", "y"]).rows.index.equals(sample.rows.index)  # fixed seed
    small = plot_sample(frame.head(10), ["x"])
    assert small.total == 10 and small.caption == "All 10 rows."


def test_histogram_table_and_hover_texts_send_little_and_stay_text():
    from workbench.views import histogram_table, hover_texts

    bins = histogram_table([1.0, 2.0, 2.0, float("nan"), 3.0], bins=2)
    assert bins["rows"].tolist() == [1, 3] and bins["start"].iloc[0] == 1.0
    assert histogram_table([5.0, 5.0])["rows"].tolist() == [2]  # one value: one bin
    assert histogram_table([float("nan")]).empty
    # one line, cut at 30 characters of text, then escaped
    assert hover_texts(["<img src=x>  two\nlines " + "a" * 500], 30) == \
        ["&lt;img src=x&gt; two lines " + "a" * 8]


# --- recipes ------------------------------------------------------------------------------------
def test_save_as_recipe_then_apply_it_on_import(store):
    store.drop_rows(1, [1, 2], reason="too_short")  # a manual step: listed, reported
    at = start(Path(store.path))
    button = at.get("download_button")
    (saved,) = [b for b in button if b.proto.label == "Save as recipe"]
    from workbench import recipes

    name, data = recipes.recipe_download(store, store.active_version("support"))
    assert name == "support-v2-recipe.yaml"
    assert [s["step"] for s in recipes.parse(data.decode())["steps"]] == ["import", "manual"]
    source = chat_file(Path(store.path).parent / "next.jsonl", 4)
    at.text_input(key="import_path").input(str(source)).run()
    at.file_uploader(key="import_recipe").upload("recipe.yaml", data, "application/yaml")
    at.run()
    at.button(key="import_button").click().run()
    no_exception(at)
    assert Store(store.path).version(Store(store.path).active_version("next")).params[
        "recipe"]["step"] == 1
    shown = [t.value for t in at.text]
    assert "next@1: import, 4 rows" in shown
    assert any(t.startswith("not replayed: step 2 (drop): rows dropped by hand") for t in shown)
