"""Labels: stored by content id, survive new versions, undoable, imported all-or-nothing."""

from __future__ import annotations

import orjson
import pytest
from conftest import chat

from workbench import labelling
from workbench import labels as LB
from workbench.exceptions import ConfigError, NotFoundError, WorkbenchError
from workbench.store import RowFilter, Store


@pytest.fixture
def version(store: Store) -> int:
    rows = [chat(("user", f"question {i}"), ("assistant", f"answer {i}")) for i in range(10)]
    return store.add_examples("d", rows)


def keys(store: Store, vid: int) -> list[int]:
    return store.frame(vid)["row_key"].tolist()


def test_labels_round_trip_by_content_id_and_survive_a_new_version(store, version):
    k = keys(store, version)
    labelling.label_rows(store, version, k[:3], "bad", reason="wrong answer")
    labelling.label_rows(store, version, k[3:5], "good")
    child = store.drop_rows(version, [k[9]], reason="test").version_id
    frame = labelling.with_labels(store, store.frame(child))
    assert frame["label"].tolist()[:6] == ["bad", "bad", "bad", "good", "good", ""]
    current = LB.current_labels(store).set_index("id")
    assert current.loc[frame["id"][0], "reason"] == "wrong answer"
    assert str(current.loc[frame["id"][0], "labelled_at"]).startswith("20")


def test_a_new_label_replaces_the_old_one_and_undo_brings_it_back(store, version):
    k = keys(store, version)
    labelling.label_rows(store, version, k[:4], "good")
    bulk = labelling.label_rows(store, version, k[2:8], "bad", kind="bulk")
    assert bulk.n_rows == 6
    labels = labelling.with_labels(store, store.frame(version))["label"].tolist()
    assert labels == ["good", "good", "bad", "bad", "bad", "bad", "bad", "bad", "", ""]
    undone = LB.undo_last(store)
    assert undone.action_id == bulk.action_id and undone.undone
    labels = labelling.with_labels(store, store.frame(version))["label"].tolist()
    assert labels == ["good"] * 4 + [""] * 6
    LB.undo_last(store)
    with pytest.raises(NotFoundError, match="nothing to undo"):
        LB.undo_last(store)


def test_clearing_a_label_and_label_sets_are_separate(store, version):
    k = keys(store, version)
    labelling.label_rows(store, version, k[:2], "bad")
    labelling.label_rows(store, version, k[:1], "good", label_set="off-topic")
    labelling.label_rows(store, version, k[1:2], None)
    assert labelling.with_labels(store, store.frame(version))["label"].tolist()[:2] == ["bad", ""]
    assert LB.label_sets(store) == ["quality", "off-topic"]
    other = labelling.with_labels(store, store.frame(version), label_set="off-topic")
    assert other["label"].tolist()[:2] == ["good", ""]


@pytest.mark.parametrize("bad_call, message", [
    (lambda s, v, k: labelling.label_rows(s, v, k[:1], "meh"), "use 'good' or 'bad'"),
    (lambda s, v, k: labelling.label_rows(s, v, [999_999], "bad"), "not in version"),
    (lambda s, v, k: labelling.label_rows(s, v, [], "bad"), "no rows to label"),
    (lambda s, v, k: labelling.label_rows(s, v, k[:1], "bad", label_set="Bad Name!"),
     "label set"),
])
def test_bad_labelling_calls_say_what_to_fix(store, version, bad_call, message):
    with pytest.raises(WorkbenchError, match=message):
        bad_call(store, version, keys(store, version))
    assert LB.current_labels(store).empty


def test_browsing_filters_by_label_and_pages_carry_the_label(store, version):
    k = keys(store, version)
    labelling.label_rows(store, version, k[:2], "bad")
    labelling.label_rows(store, version, k[2:3], "good")
    assert store.page(version, filters=RowFilter(label="bad")).total == 2
    assert store.page(version, filters=RowFilter(label="good")).total == 1
    assert store.page(version, filters=RowFilter(label="labelled")).total == 3
    assert store.page(version, filters=RowFilter(label="unlabelled")).total == 7
    page = store.page(version, limit=4)
    assert page.rows["label"].tolist() == ["bad", "bad", "good", ""]
    with pytest.raises(WorkbenchError, match="label filter"):
        store.page(version, filters=RowFilter(label="maybe"))


def test_label_file_round_trip_by_id_and_by_row_key(store, version, tmp_path, write_jsonl):
    k = keys(store, version)
    frame = store.frame(version)
    path = write_jsonl([{"id": frame["id"][0], "label": "bad", "reason": "hallucinated"},
                        {"row_key": k[1], "label": "GOOD"}], "in.jsonl")
    action = labelling.import_labels(store, version, path)
    assert action.kind == "file" and action.n_rows == 2
    out = tmp_path / "out.jsonl"
    assert LB.write_label_file(store, out, frame=frame) == 2
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert {(r["row_key"], r["label"], r["reason"]) for r in lines} == \
        {(k[0], "bad", "hallucinated"), (k[1], "good", "")}
    with pytest.raises(WorkbenchError, match="exists"):
        LB.write_label_file(store, out, frame=frame)  # never overwrite without consent
    assert len(out.read_bytes().splitlines()) == 2


def test_a_label_file_with_any_bad_line_is_refused_whole(store, version, write_jsonl):
    k = keys(store, version)
    path = write_jsonl([{"row_key": k[0], "label": "bad"},
                        b"{not json",
                        {"row_key": k[1], "label": "maybe"},
                        {"row_key": 123456, "label": "good"},
                        {"id": "nope", "label": "good"},
                        {"label": "good"},
                        {"row_key": k[2]},
                        {"row_key": k[3], "label": "bad", "reason": 5},
                        b"[1, 2]"], "bad.jsonl")
    with pytest.raises(LB.LabelFileError) as caught:
        labelling.import_labels(store, version, path)
    problems = caught.value.problems
    assert [(p["line"], p["field"]) for p in problems] == [
        (2, "(line)"), (3, "label"), (4, "row_key"), (5, "id"), (6, "id"), (7, "label"),
        (8, "reason"), (9, "(line)")]
    assert all(p["fix"] for p in problems)
    assert "bad.jsonl" in str(caught.value) and "nothing imported" in str(caught.value)
    assert LB.current_labels(store).empty  # not even the good first line


def test_an_empty_or_missing_label_file_is_a_clear_error(store, version, write_bytes):
    with pytest.raises(LB.LabelFileError, match="no labels"):
        labelling.import_labels(store, version, write_bytes("empty.jsonl", b"\n\n"))
    with pytest.raises(WorkbenchError, match="cannot read"):
        labelling.import_labels(store, version, write_bytes("x.jsonl", b"") .parent / "none")


def test_summary_counts_rows_of_the_version_and_of_all_versions(store, version):
    k = keys(store, version)
    labelling.label_rows(store, version, k[:3], "bad")
    labelling.label_rows(store, version, k[3:4], "good")
    child = store.drop_rows(version, k[:3], reason="labelled_bad").version_id
    info = labelling.summary(store, store.frame(child))
    assert (info.good, info.bad, info.unlabelled) == (1, 0, 6)
    assert (info.total_good, info.total_bad) == (1, 3)
    assert info.actions["kind"].tolist() == ["label", "label"]


def test_check_label_accepts_any_case_and_nothing_else():
    assert LB.check_label(" Bad ") == "bad"
    for value in ("", "ok", 1, None, True):
        with pytest.raises(ConfigError):
            LB.check_label(value)
