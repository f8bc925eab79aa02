"""The cleaning rules and dedup find the defects planted in the sample data (defects.json)."""

from __future__ import annotations

import json

import pytest

from workbench import clean, dedup
from workbench.sample import SAMPLE_DIR
from workbench.store import Store

MANIFEST = json.loads((SAMPLE_DIR / "defects.json").read_text())["support_train.jsonl"]


@pytest.fixture(scope="module")
def train():
    store = Store(":memory:")
    version, _ = store.import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    frame = store.frame(version.version_id)
    line_of = dict(zip(frame["row_key"], range(1, len(frame) + 1)))
    return frame, line_of


def planted(defect: str) -> set[int]:
    return {d["line"] for d in MANIFEST["defects"] if d["defect"] == defect}


@pytest.mark.parametrize("rule,defect", [
    (clean.Placeholder(), "placeholder"),
    (clean.Refusal(), "refusal"),
    (clean.Truncated(), "truncated"),
    (clean.Repetition(), "overlong"),
    (clean.MissingContext(), "missing_context"),
    (clean.Language(), "non_english"),
    (clean.PII(mode="drop"), "pii"),
])
def test_each_rule_finds_every_planted_row(train, rule, defect):
    frame, line_of = train
    hit = {line_of[k] for k in clean.apply(frame, [rule]).dropped["row_key"]}
    want = planted(defect)
    assert want <= hit, f"{defect}: missed lines {sorted(want - hit)}"
    # Clean rows are never hit; only rows with some planted defect may be.
    flagged = {d["line"] for d in MANIFEST["defects"]}
    assert hit <= flagged, f"{defect}: clean lines hit {sorted(hit - flagged)}"


def test_dedup_finds_exactly_the_planted_duplicates(train):
    frame, line_of = train
    clusters = dedup.find_duplicates(frame, near=dedup.MinHashConfig(threshold=0.8))
    dropped = clusters[~clusters["kept"]]
    hit = {line_of[k] for k in dropped["row_key"]}
    assert hit == planted("exact_duplicate") | planted("near_duplicate")


def test_contamination_with_the_eval_prompts_finds_the_planted_copies(train):
    from workbench import curate

    frame, line_of = train
    store = Store(":memory:")
    version, _ = store.import_file(SAMPLE_DIR / "support_eval.jsonl", "eval")
    texts, ids = curate.eval_texts(store, version.version_id)
    rule = clean.Contamination(eval_texts=texts, eval_ids=ids, roles=("user",))
    hit = {line_of[k] for k in clean.apply(frame, [rule]).dropped["row_key"]}
    assert planted("contamination") <= hit
    # The generator reuses filler phrases ("I couldn't find this in the help center"), so a
    # few unplanted prompts share a 13-gram with an eval prompt; answers are not compared.
    assert len(hit) <= 2 * len(planted("contamination"))
