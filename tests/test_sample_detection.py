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


# The default rule set and the reason under which it must find each planted defect.
DEFAULT_FINDS = {"placeholder": "placeholder", "refusal": "refusal", "truncated": "truncated",
                 "overlong": "repetition", "missing_context": "missing_context", "pii": "pii"}


def test_default_rules_find_every_planted_row(train):
    # Most default rules flag rather than drop (rows people kept dominate their hits on real
    # Alpaca labels), so a planted row counts as found when the defaults drop, flag or (PII)
    # redact it; the planted rows of these kinds are all flagged, none dropped.
    frame, line_of = train
    result = clean.apply(frame, clean.default_rules())
    found: dict[int, set[str]] = {}
    for part in (result.dropped, result.flagged, result.changed):
        for key, reason in zip(part["row_key"], part["reason"]):
            found.setdefault(line_of[key], set()).add(reason)
    for defect, reason in DEFAULT_FINDS.items():
        missed = sorted(line for line in planted(defect) if reason not in found.get(line, ()))
        assert not missed, f"{defect}: missed lines {missed}"
    every = {d["line"] for d in MANIFEST["defects"]}
    assert set(found) <= every, f"clean lines hit {sorted(set(found) - every)}"


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
