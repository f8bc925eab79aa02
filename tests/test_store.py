"""The store: immutable versions, lineage, diff, restore, edits, tags and notes, browsing,
migrations, where the file lives, and several processes sharing one file."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import chat
from helpers_app import chat_file

from workbench import store as store_module
from workbench.exceptions import ExportError, NotFoundError, StoreBusyError, WorkbenchError
from workbench.migrations import MIGRATIONS
from workbench.schema import MAX_CHARS, MAX_METADATA_BYTES, MAX_TURNS, StepResult, content_id
from workbench.store import RowFilter, Store, default_home, default_store_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def v1(store, examples) -> int:
    """A dataset 'd' of the five fixture examples; returns its first version id."""
    return store.add_examples("d", examples)


def dropped(keys, reason="too_short", duplicate_of=None):
    return pd.DataFrame({"row_key": keys, "reason": [reason] * len(keys),
                         "duplicate_of": [duplicate_of] * len(keys),
                         "detail": ["why"] * len(keys)})


def drop_step(store, vid, keys, **kw):
    frame = store.frame(vid)
    result = StepResult(kept=frame[~frame.row_key.isin(keys)], dropped=dropped(keys, **kw))
    return store.apply_step(vid, result, operation="filter", params={"rule": "x"})


def contents(store, vid):
    return [m[-1]["content"] for m in store.frame(vid)["messages"]]


def test_add_examples_makes_a_version(store, v1, examples):
    info = store.version(v1)
    assert (info.dataset, info.parent_id, info.operation, info.n_rows) == ("d", None, "import", 5)
    assert info.counts == {"added": 5}
    frame = store.frame(v1)
    assert frame["id"].tolist() == [e.id for e in examples]  # SQL ids == content_id
    assert frame["messages"].tolist() == [list(e.messages) for e in examples]
    assert frame["metadata"].tolist() == [e.metadata for e in examples]
    assert store.examples(v1) == examples
    assert store.datasets()["n_rows"].tolist() == [5]


def test_child_versions_never_change_their_parent(store, v1):
    before = store.frame(v1)
    keys = before.row_key.tolist()
    v2 = drop_step(store, v1, keys[:2]).version_id
    v3 = store.edit_row(v2, keys[3], messages=[{"role": "user", "content": "new q"},
                                               {"role": "assistant", "content": "new a"}]
                        ).version_id
    v4 = store.tag_rows(v3, [keys[4]], add=["check"]).version_id
    pd.testing.assert_frame_equal(store.frame(v1), before)
    assert store.version(v1).n_rows == 5 and store.version(v2).n_rows == 3
    assert contents(store, v2) == contents(store, v1)[2:]
    assert contents(store, v3)[1] == "new a" and contents(store, v2)[1] != "new a"
    assert store.frame(v3)["tags"].tolist() == [[], [], []]
    assert store.frame(v4)["tags"].tolist()[2] == ["check"]
    shared = set(store.frame(v2).row_key) & set(store.frame(v3).row_key)
    assert len(shared) == 2  # unchanged rows are shared, not copied


def test_lineage_versions_resolve_and_active(store, v1):
    v2 = drop_step(store, v1, store.frame(v1).row_key.tolist()[:1]).version_id
    v3 = store.add_examples("d", [chat(("user", "x"), ("assistant", "y"))], parent=v2)
    assert [v.version_id for v in store.lineage(v3)] == [v1, v2, v3]
    assert [v.operation for v in store.versions("d")] == ["import", "filter", "import"]
    assert store.version(v2).params == {"rule": "x"}
    assert store.version(v2).counts == {"too_short": 1, "kept": 4}
    assert store.active_version("d") == v3
    assert store.resolve("d") == v3 and store.resolve("d@1") == v1 and store.resolve(v2) == v2
    assert store.resolve(str(v2)) == v2
    store.set_active(v1)
    assert store.active_version("d") == v1 == store.resolve("d")
    assert contents(store, v3)[-1] == "y" and store.version(v3).n_rows == 5
    for bad in ("d@9", "nope", 999, "d@0"):
        with pytest.raises(NotFoundError):
            store.resolve(bad)


def test_diff_added_removed_changed_with_reasons(store, v1):
    keys = store.frame(v1).row_key.tolist()
    v2 = drop_step(store, v1, [keys[0]], reason="exact_duplicate", duplicate_of=keys[1])
    v3 = store.edit_row(v2.version_id, keys[2], note="looked at it")
    v4 = store.add_examples("d", [chat(("user", "new"), ("assistant", "row"))],
                            parent=v3.version_id)
    diff = store.diff(v1, v4)
    assert diff.counts() == {"added": 1, "removed": 1, "changed": 1}
    assert diff.removed.iloc[0][["row_key", "reason", "duplicate_of"]].tolist() == [
        keys[0], "exact_duplicate", keys[1]]
    assert diff.changed.iloc[0]["reason"] == "edit"
    assert diff.changed.iloc[0][["old_note", "new_note"]].tolist() == ["", "looked at it"]
    assert diff.added.iloc[0]["response"] == "row"
    assert store.diff(v4, v1).counts() == {"added": 1, "removed": 1, "changed": 1}
    assert store.diff(v1, v1).counts() == {"added": 0, "removed": 0, "changed": 0}


def test_restore_puts_rows_back_in_their_places(store, v1):
    keys = store.frame(v1).row_key.tolist()
    v2 = drop_step(store, v1, [keys[1], keys[3]]).version_id
    gone = store.removed(v2)
    assert gone["row_key"].tolist() == [keys[1], keys[3]]
    assert set(gone["reason"]) == {"too_short"} and gone["prompt"].tolist()[0]
    v3 = store.restore(v2, [keys[3]]).version_id
    assert store.frame(v3).row_key.tolist() == [keys[0], keys[2], keys[3], keys[4]]
    v4 = store.restore(v3, [keys[1]]).version_id
    assert store.frame(v4).row_key.tolist() == keys
    assert store.removed(v4).empty
    with pytest.raises(NotFoundError, match="were not dropped"):
        store.restore(v4, [keys[0]])


def test_a_row_dropped_twice_is_listed_once(store, v1):
    key = store.frame(v1).row_key.tolist()[0]
    v2 = drop_step(store, v1, [key], reason="first").version_id
    v3 = store.restore(v2, [key]).version_id
    v4 = drop_step(store, v3, [key], reason="second").version_id
    gone = store.removed(v4)
    assert gone[["row_key", "reason"]].values.tolist() == [[key, "second"]]
    assert store.diff(v1, v4).removed["reason"].tolist() == ["second"]


def test_restored_edited_rows_keep_their_position(store, v1):
    keys = store.frame(v1).row_key.tolist()
    v2 = store.edit_row(v1, keys[1], messages=[{"role": "user", "content": "q"},
                                               {"role": "assistant", "content": "edited"}])
    new_key = store.frame(v2.version_id).row_key.tolist()[1]
    v3 = drop_step(store, v2.version_id, [new_key]).version_id
    v4 = store.restore(v3, [new_key]).version_id
    assert contents(store, v4)[1] == "edited"
    assert store.frame(v4).row_key.tolist() == [keys[0], new_key, *keys[2:]]


@pytest.mark.parametrize("messages, error", [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "empty content"),
    ([{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}], "unknown role"),
    ([{"role": "user", "content": "q"}], "no assistant turn"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}], "wrong type"),
    (["q", "a"], "wrong type"),
])
def test_edit_validation(store, v1, messages, error):
    key = store.frame(v1).row_key.tolist()[0]
    with pytest.raises(WorkbenchError, match=f"edit rejected: .*{error}"):
        store.edit_row(v1, key, messages=messages)
    assert len(store.versions("d")) == 1


def test_edit_rejects_bad_fields_and_foreign_rows(store, v1):
    key = store.frame(v1).row_key.tolist()[0]
    with pytest.raises(WorkbenchError, match="metadata must be a dict"):
        store.edit_row(v1, key, metadata=["x"])
    with pytest.raises(WorkbenchError, match="tags must be a list"):
        store.edit_row(v1, key, tags="x")
    with pytest.raises(WorkbenchError, match="nothing to change"):
        store.edit_row(v1, key)
    other = store.add_examples("e", [chat(("user", "q"), ("assistant", "a"))])
    foreign = store.frame(other).row_key.tolist()[0]
    with pytest.raises(NotFoundError, match="not in version"):
        store.edit_row(v1, foreign, note="x")
    with pytest.raises(NotFoundError):
        store.tag_rows(v1, [foreign], add=["x"])


def test_edit_keeps_id_rules_and_metadata(store, v1):
    key = store.frame(v1).row_key.tolist()[0]
    v2 = store.edit_row(v1, key, metadata={"category": "arith"}, note="n", tags=["t"])
    row = store.frame(v2.version_id).iloc[0]
    assert (row["metadata"], row["note"], row["tags"]) == ({"category": "arith"}, "n", ["t"])
    assert row["id"] == store.frame(v1).iloc[0]["id"]  # the id hashes the conversation only
    v3 = store.edit_row(v2.version_id, int(row["row_key"]),
                        messages=[{"role": "user", "content": "2+2?"},
                                  {"role": "assistant", "content": "four"}])
    edited = store.frame(v3.version_id).iloc[0]
    assert edited["id"] == content_id(edited["messages"]) != row["id"]
    assert (edited["note"], edited["tags"]) == ("n", ["t"])
    assert store.version(v3.version_id).params == {"row_key": int(row["row_key"]),
                                                   "fields": ["messages"]}


def test_tags_and_notes(store, v1):
    keys = store.frame(v1).row_key.tolist()
    v2 = store.tag_rows(v1, keys[:3], add=["review", "math"]).version_id
    v3 = store.tag_rows(v2, store.frame(v2).row_key.tolist()[:1], remove=["math"]).version_id
    assert store.frame(v3)["tags"].tolist()[:3] == [["review"], ["math", "review"],
                                                     ["math", "review"]]
    assert store.page(v3, filters=RowFilter(tag="math")).total == 2
    v4 = store.edit_row(v3, store.frame(v3).row_key.tolist()[4], note="check the German"
                        ).version_id
    assert store.page(v4, filters=RowFilter(has_note=True)).total == 1
    assert store.page(v4, filters=RowFilter(search="the german")).total == 1
    assert store.row(store.frame(v4).row_key.tolist()[4]).note == "check the German"
    with pytest.raises(WorkbenchError, match="tags must be"):
        store.tag_rows(v1, keys[:1], add=[""])


def test_page_plain(store):
    vid = store.add_examples("big", [chat(("user", f"q{i}"), ("assistant", f"a{i}"), i=i)
                                     for i in range(120)])
    page = store.page(vid, offset=50, limit=50)
    assert (page.total, len(page.rows)) == (120, 50)
    assert page.rows["pos"].tolist() == list(range(50, 100))
    assert page.rows["response"].tolist()[0] == "a50"
    assert {"row_key", "prompt", "response", "n_turns", "n_chars", "tags", "note"} <= set(
        page.rows.columns)
    last = store.page(vid, offset=100, limit=50)
    assert len(last.rows) == 20
    assert store.page(vid, offset=500).rows.empty and store.page(vid, offset=500).total == 120
    with pytest.raises(NotFoundError):
        store.page(999)


def test_page_filters(store, v1):
    def total(**kw):
        return store.page(v1, filters=RowFilter(**kw)).total
    assert total(metadata=(("category", "geo"),)) == 1
    assert total(metadata=(("level", 1),)) == 1 and total(metadata=(("level", "1"),)) == 1
    assert total(min_turns=3) == 2 and total(max_turns=2) == 3
    assert total(min_chars=30) == 3 and total(max_chars=20) == 1  # 13, 32, 51, 45, 23
    assert total(metadata=(("category", "fun"),), min_turns=4) == 1
    filtered = store.page(v1, filters=RowFilter(min_turns=3), offset=1, limit=1)
    assert (filtered.total, filtered.rows["pos"].tolist()) == (2, [2])
    assert store.page(v1, filters=RowFilter(min_turns=3), offset=5).total == 2


@pytest.mark.parametrize("term, hits", [
    ('"this"', 1), ("100%", 1), ("%", 1), ("of_that", 1), ("_", 1), ("f%t", 0), ("0%_", 0),
    ("\\n", 1),       # a literal backslash-n typed by the user, in row 4's user turn
    ("\"ok\"\nbye", 1),  # quotes and a real newline
    ("STRASSE", 0), ("straße", 1), ("ÜBERSETZE", 1), ("🐔", 1),
    ("role", 0), ("content", 0), ("assistant", 0), ("alpaca", 0),  # JSON keys never match
    ("math", 1), ("tags_src", 0),  # metadata values match, keys do not
    ("", 5), ("   ", 5),
])
def test_search_is_literal_and_case_insensitive(store, v1, term, hits):
    assert store.page(v1, filters=RowFilter(search=term)).total == hits


def test_metadata_fields_give_filterable_values(store):
    vid = store.add_examples("m", [chat(("user", "q"), ("assistant", "a"), ok=True, n=2,
                                        name='a "b"', _hidden=1)])
    fields = store.metadata_fields(vid)
    assert fields == {"n": ["2"], "name": ['a "b"'], "ok": ["true"]}
    for key, values in fields.items():
        assert store.page(vid, filters=RowFilter(metadata=((key, values[0]),))).total == 1


def test_metadata_filter_values_of_every_type(store):
    values = ["billing", 'say "hi"\n', 3, 1.5, 1e20, True, None, "3"]
    vid = store.add_examples("t", [chat(("user", "q"), ("assistant", "a"), v=v, other="billing")
                                   for v in values])
    for value, hits in [("billing", 1), ('say "hi"\n', 1), (3, 2), ("3", 2), (1.5, 1),
                        ("1.5", 1), (1e20, 1), ("1e+20", 1), (True, 1), ("true", 1),
                        ("false", 0), ("bill", 0)]:
        page = store.page(vid, filters=RowFilter(metadata=(("v", value),)))
        assert page.total == hits, value


def test_metadata_filter_keys_with_odd_characters(store):
    vid = store.add_examples("k", [chat(("user", "q"), ("assistant", "a"),
                                        **{'a.b': "1", 'q"k': "2", "sp ace": "3", "é": "4",
                                           "back\\slash": "5"})])
    for key, value in [("a.b", "1"), ('q"k', "2"), ("sp ace", "3"), ("é", "4"),
                       ("back\\slash", "5")]:
        assert store.page(vid, filters=RowFilter(metadata=((key, value),))).total == 1, key


def test_apply_step_checks_the_result(store, v1):
    frame = store.frame(v1)
    for result, message in [
        (StepResult(kept=frame.iloc[1:], dropped=dropped([])), "covers 4 rows"),
        (StepResult(kept=frame, dropped=dropped(frame.row_key.tolist()[:1])), "twice"),
        (StepResult(kept=frame.iloc[1:], dropped=dropped(frame.row_key.tolist()[:1], None)),
         "needs a reason"),
        (StepResult(kept=frame.iloc[1:], dropped=dropped(frame.row_key.tolist()[:1]),
                    changed=pd.DataFrame({"row_key": frame.row_key.tolist()[:1],
                                          "reason": ["x"]})), "must also be kept"),
    ]:
        with pytest.raises(WorkbenchError, match=message):
            store.apply_step(v1, result, operation="bad")
    assert len(store.versions("d")) == 1


def test_apply_step_with_changed_rows(store, v1):
    frame = store.frame(v1)
    frame.at[0, "messages"] = [{"role": "user", "content": "q"},
                               {"role": "assistant", "content": "cleaned"}]
    changed = pd.DataFrame({"row_key": [frame.row_key[0]], "reason": ["whitespace"],
                            "detail": ["trimmed"]})
    info = store.apply_step(v1, StepResult(kept=frame, dropped=None, changed=changed),
                            operation="clean")
    assert info.counts == {"changed:whitespace": 1, "kept": 5}
    assert contents(store, info.version_id)[0] == "cleaned"
    bad = frame.copy()
    bad.at[0, "messages"] = [{"role": "user", "content": "q"}]
    with pytest.raises(WorkbenchError, match="no assistant turn"):
        store.apply_step(v1, StepResult(kept=bad, dropped=None, changed=changed),
                         operation="clean")


def test_add_examples_refuses_invalid_rows_atomically(store, v1):
    with pytest.raises(WorkbenchError, match="example 2 rejected: .*no assistant"):
        store.add_examples("d", [chat(("user", "q"), ("assistant", "a")), chat(("user", "q"))])
    with pytest.raises(WorkbenchError, match="another dataset"):
        store.add_examples("e", [chat(("user", "q"), ("assistant", "a"))], parent=v1)
    assert store.datasets()["name"].tolist() == ["d"] and len(store.versions("d")) == 1
    with store.connect() as con:
        assert con.execute("SELECT count(*) FROM rows").fetchall() == [(5,)]


def test_delete_dataset(store, v1):
    store.add_examples("other", [chat(("user", "q"), ("assistant", "a"))])
    store.delete_dataset("d")
    assert store.datasets()["name"].tolist() == ["other"]
    with pytest.raises(NotFoundError, match="known: other"):
        store.versions("d")


def test_migrations_recorded_and_idempotent(tmp_path):
    path = tmp_path / "m.duckdb"
    first = Store(path).migrations()
    assert [n for n, _ in first] == [n for n, _, _ in MIGRATIONS]
    assert [n for n, _, _ in MIGRATIONS] == sorted({n for n, _, _ in MIGRATIONS})
    Store(path).add_examples("d", [chat(("user", "q"), ("assistant", "a"))])
    assert Store(path).migrations() == first
    assert Store(path).datasets()["n_rows"].tolist() == [1]


def test_store_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_STORE", raising=False)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    assert default_home() == tmp_path / "home"
    assert Store().path == str((tmp_path / "home" / "workbench.duckdb").resolve())
    monkeypatch.setenv("WORKBENCH_STORE", str(tmp_path / "explicit.duckdb"))
    assert default_store_path() == tmp_path / "explicit.duckdb"
    assert Store().path == str(tmp_path / "explicit.duckdb")
    assert Path(Store().path).exists()
    assert Store(tmp_path / "flag.duckdb").path == str(tmp_path / "flag.duckdb")


def test_file_store_round_trip_and_nested_calls(file_store, examples, tmp_path):
    vid = file_store.add_examples("d", examples)
    with file_store.transaction() as con:  # nested calls share this thread's connection
        assert file_store.version(vid).n_rows == 5
        with file_store.transaction():
            con.execute("UPDATE datasets SET description = 'x'")
    assert file_store.datasets()["description"].tolist() == ["x"]
    with pytest.raises(RuntimeError):
        with file_store.transaction() as con:
            con.execute("UPDATE datasets SET description = 'y'")
            raise RuntimeError("boom")
    assert file_store.datasets()["description"].tolist() == ["x"]
    assert Store(file_store.path).examples(vid) == examples


def test_threads_in_one_process_take_turns(file_store):
    errors: list[Exception] = []

    def work(name: str) -> None:
        try:
            for i in range(3):
                file_store.add_examples(name, [chat(("user", f"{name}{i}-{j}"),
                                                    ("assistant", "a")) for j in range(20)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"t{n}",)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with file_store.connect() as con:
        assert con.execute("SELECT count(*), count(DISTINCT row_key) FROM rows").fetchall() == [
            (180, 180)]


HOLD = """
import duckdb, sys, time
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(path: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_waits_for_another_process_then_gives_up(file_store):
    holder = _hold(file_store.path, 1.5)
    try:
        with pytest.raises(StoreBusyError, match="kept the store locked"):
            Store(file_store.path, lock_timeout=0.2).datasets()
        start = time.monotonic()
        assert file_store.datasets().empty  # retried until the other process let go
        assert time.monotonic() - start > 0.3
    finally:
        holder.wait(timeout=30)


def test_waits_for_a_direct_connection_in_this_process(file_store):
    import duckdb

    con = duckdb.connect(file_store.path)  # e.g. a notebook poking at the file
    try:
        with pytest.raises(StoreBusyError):
            Store(file_store.path, lock_timeout=0.2).datasets()
    finally:
        con.close()
    assert file_store.datasets().empty


WORKER = """
import sys, orjson
from pathlib import Path
from workbench.store import RowFilter, Store

path, name, rounds, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = Store(path, lock_timeout=60)
for i in range(rounds):
    data = folder / f"{name}-{i}.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"{name} {i} {j}"},
                          {"role": "assistant", "content": "answer"}], "w": name}
            for j in range(30)]
    data.write_bytes(b"\\n".join(orjson.dumps(r) for r in rows))
    version, report = store.import_file(data, name)
    assert report.imported == 30, report.summary()
    key = int(store.page(version.version_id, limit=5).rows["row_key"].iloc[2])
    edited = store.edit_row(version.version_id, key, note=f"note {i}")
    page = store.page(edited.version_id, filters=RowFilter(search=f"{name} {i} 1"))
    assert page.total == 11, page.total  # j = 1 and 10..19
    assert store.page(edited.version_id, filters=RowFilter(has_note=True)).total == 1
print("ok", flush=True)
"""


def test_processes_share_one_store(tmp_path):
    """Two processes import, edit and page in a loop while this one reads and writes too."""
    path = str(tmp_path / "shared.duckdb")
    store = Store(path, lock_timeout=60)
    rounds = 4
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, path, f"w{n}", str(rounds),
                                 str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for n in range(2)]
    mine = 0
    while any(w.poll() is None for w in workers) or mine < 3:
        vid = store.add_examples("main", [chat(("user", f"main {mine}"), ("assistant", "a"))],
                                 parent=store.active_version("main") if mine else None)
        assert store.page(vid).total == mine + 1
        store.datasets()
        mine += 1
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err[-3000:]
        assert out.strip() == "ok"
    assert sorted(store.datasets()["name"]) == ["main", "w0", "w1"]
    for name in ("w0", "w1"):
        ops = [v.operation for v in store.versions(name)]
        assert ops == ["import", "edit"] * rounds
    assert store.version(store.active_version("main")).n_rows == mine
    with store.connect() as con:
        keys = con.execute("SELECT count(*), count(DISTINCT row_key) FROM rows").fetchall()[0]
        assert keys[0] == keys[1] == 2 * rounds * 31 + mine
        bad = con.execute("""SELECT v.version_id FROM versions v LEFT JOIN (SELECT version_id,
            count(*) n FROM version_rows GROUP BY 1) c USING (version_id)
            WHERE v.n_rows <> coalesce(c.n, 0)""").fetchall()
        assert bad == []


def test_a_file_that_is_no_store_is_refused(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(WorkbenchError, match="cannot open the store"):
        Store(path)
    assert path.read_text().startswith("these are my notes")


# --- hardening (issue 12) -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../../x/ESCAPED", "a" * 300, "a/b", "-x", "x.", " ",
                                  "con\x00", "tab\there"])
def test_dataset_names_are_checked_on_creation(store, examples, name):
    with pytest.raises(WorkbenchError, match="not allowed|non-empty"):
        store.add_examples(name, examples)
    assert store.datasets().empty  # nothing was created


def test_a_valid_name_is_accepted(store, examples):
    vid = store.add_examples("support-eval v2.1_x", examples)
    assert store.version(vid).n_rows == len(examples)


def _count(store, table: str) -> int:
    with store.connect() as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_version_ids_and_row_keys_are_never_reused_after_a_delete(store, examples):
    store.add_examples("a", examples[:2])
    gone = store.add_examples("b", examples[2:])
    gone_keys = set(store.frame(gone)["row_key"])
    store.delete_dataset("b")
    assert _count(store, "rows") == 2  # the deleted dataset's rows are cleaned up
    new = store.add_examples("c", examples[2:])
    assert new > gone  # a run folder that recorded v2 keeps meaning it
    assert not set(store.frame(new)["row_key"]) & gone_keys
    with pytest.raises(NotFoundError):
        store.version(gone)


def test_an_edit_of_an_old_version_does_not_replace_the_active_one(store, v1):
    key = int(store.frame(v1)["row_key"].iloc[0])
    newer = store.edit_row(v1, key, note="newer work")
    assert store.active_version("d") == newer.version_id  # an edit of the active one moves it
    branch = store.edit_row(v1, key, note="a branch of v1")
    assert store.active_version("d") == newer.version_id  # the newer work stays the default
    store.set_active(branch.version_id)
    assert store.active_version("d") == branch.version_id


def test_edits_have_the_same_size_caps_as_an_import(store, v1):
    key = int(store.frame(v1)["row_key"].iloc[0])
    with pytest.raises(WorkbenchError, match=r"metadata\.blob.*metadata too large"):
        store.edit_row(v1, key, metadata={"blob": "m" * (MAX_METADATA_BYTES + 1)})
    with pytest.raises(WorkbenchError, match="too many turns"):
        store.edit_row(v1, key, messages=[{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "a"}] * MAX_TURNS)
    with pytest.raises(WorkbenchError, match="field too large"):
        store.edit_row(v1, key, messages=[{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "a" * (MAX_CHARS + 1)}])
    assert [v.operation for v in store.versions("d")] == ["import"]


def test_export_never_writes_the_store_or_the_data_folder_nor_replaces_without_consent(
        tmp_path, monkeypatch, examples):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    store = Store(tmp_path / "home" / "workbench.duckdb")
    vid = store.add_examples("d", examples)
    for target in (tmp_path / "home" / "workbench.duckdb", tmp_path / "home" / "runs" / "x.jsonl"):
        with pytest.raises(ExportError, match="store itself|inside the data folder"):
            store.export(vid, target, "openai")
    assert store.version(vid).n_rows == len(examples)  # the store still works
    out = tmp_path / "out.jsonl"
    out.write_text("the user's own file\n")
    with pytest.raises(ExportError, match="already exists.*--force"):
        store.export(vid, out, "openai")
    assert out.read_text() == "the user's own file\n"
    store.export(vid, out, "openai", overwrite=True)
    assert len(out.read_text().splitlines()) == len(examples)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_a_big_import_is_staged_invisibly_and_a_failed_one_leaves_nothing(file_store, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setattr(store_module, "IMPORT_CHUNK_BYTES", 1)  # every batch its own chunk
    path = chat_file(tmp_path / "big.jsonl", 40_000)
    seen = []

    def progress(n: int) -> None:  # runs between chunks, while earlier ones are committed
        if n >= 30_000 and not seen:
            seen.append((file_store.datasets()["name"].tolist(), _count(file_store, "rows")))
            raise KeyboardInterrupt  # the user presses Ctrl-C mid-import

    with pytest.raises(KeyboardInterrupt):
        file_store.import_file(path, "big", progress=progress)
    assert seen[0][0] == [] and seen[0][1] >= 16_384  # rows committed, no dataset visible
    assert _count(file_store, "rows") == 0 and _count(file_store, "staged_versions") == 0
    version, report = file_store.import_file(path, "big")
    assert version.n_rows == report.imported == 40_000
    questions = [m[0]["content"] for m in file_store.frame(version.version_id)["messages"]]
    assert questions == [f"question {i}: how do I reset item {i}?" for i in range(40_000)]
