"""The clean job: the same CleanRun and version as cleaning in the caller, and a cancel
that leaves no version."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from workbench import clean, curate, jobs
from workbench.sample import SAMPLE_DIR
from workbench.store import Store


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Store, int, list]:
    store = Store(tmp_path / "wb.duckdb", lock_timeout=30)
    store.import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    # Changes (normalize, PII redaction), drops and flags, all on the 400-row sample.
    rules = [clean.Normalize(), clean.PII(), clean.Placeholder(mode="drop"),
             clean.Refusal(mode="flag"), clean.TooShort(min_length=3, mode="drop")]
    return store, store.active_version("train"), rules


def params(store: Store, vid: int, rules: list, **extra) -> dict:
    return {"store": str(store.path), "version_id": vid, "rules": curate.rule_specs(rules),
            **extra}


def frames(run: clean.CleanRun) -> dict:
    r = run.result
    return {"kept": r.kept[["row_key", "id", "prompt", "response"]].to_dict("list"),
            "messages": [[dict(m) for m in ms] for ms in r.kept["messages"]],
            **{name: getattr(r, name).to_dict("list")
               for name in ("dropped", "changed", "flagged")}}


def test_the_jobs_result_equals_clean_preview(setup, tmp_path):
    store, vid, rules = setup
    job = jobs.run_inline("clean", params(store, vid, rules), home=tmp_path)
    assert job.state == "done" and job.kind == "clean"
    frame = store.frame(vid)
    expected = curate.clean_preview(frame, rules)
    got = curate.clean_job_run(job, frame)
    assert asdict(got.preview) == asdict(expected.preview)
    assert frames(got) == frames(expected)
    assert expected.preview.dropped_rows > 0 and len(expected.result.changed) > 0
    assert job.result["hits"] == {r.name: r.rows for r in expected.preview.rules}
    # Progress counted rows x rules and named the rule being run.
    last = jobs.events(job.run_dir)[-1]
    assert last["total"] == 400 * len(rules) and last["step"] == last["total"]
    assert last["phase"] == f"rule {len(rules)}/{len(rules)} · too_short"
    assert store.versions("train")[-1].version_id == vid  # a preview changes nothing
    assert curate.clean_jobs(store, vid, home=tmp_path)[0].run_id == job.run_id
    assert curate.job_matches(job, rules, None)
    assert not curate.job_matches(job, rules[:-1], None)


def test_an_apply_job_makes_the_version_apply_clean_makes(setup, tmp_path):
    store, vid, rules = setup
    job = jobs.run_inline("clean", params(store, vid, rules, apply=True), home=tmp_path)
    made = store.version(job.result["version_id"])
    direct = curate.apply_clean(store, vid, store.frame(vid), rules)
    assert made.parent_id == direct.parent_id == vid
    assert made.counts == direct.counts and made.n_rows == direct.n_rows
    assert made.params == direct.params
    a, b = store.frame(made.version_id), store.frame(direct.version_id)
    assert a["id"].tolist() == b["id"].tolist()
    assert store.flagged(made.version_id)["reason"].tolist() == \
        store.flagged(direct.version_id)["reason"].tolist()


def test_an_apply_job_saves_a_previews_result_without_running_the_rules(setup, tmp_path,
                                                                        monkeypatch):
    store, vid, rules = setup
    job = jobs.run_inline("clean", params(store, vid, rules), home=tmp_path)
    saved = curate.clean_job_run(job, store.frame(vid))
    monkeypatch.setattr(clean, "run", lambda *a, **k: pytest.fail("the rules ran again"))
    applied = jobs.run_inline("clean", params(store, vid, rules, apply=True,
                                              from_run=job.run_id), home=tmp_path)
    made = store.version(applied.result["version_id"])
    assert made.n_rows == saved.preview.total_rows - saved.preview.dropped_rows
    monkeypatch.undo()
    direct = curate.apply_clean(store, vid, store.frame(vid), rules)
    assert made.counts == direct.counts and made.params == direct.params
    assert store.frame(made.version_id)["id"].tolist() == \
        store.frame(direct.version_id)["id"].tolist()


def test_cancel_leaves_no_version_and_no_result(setup, tmp_path, monkeypatch):
    store, vid, rules = setup
    asked = []

    def cancelled(self) -> bool:  # the user presses Cancel while the third rule runs
        asked.append(self.run_dir)
        return self._phase.startswith("rule 3/")

    monkeypatch.setattr(jobs.JobContext, "cancelled", cancelled)
    before = [v.version_id for v in store.versions("train")]
    job = jobs.run_inline("clean", params(store, vid, rules, apply=True), home=tmp_path)
    assert job.state == "cancelled" and asked
    assert [v.version_id for v in store.versions("train")] == before
    assert not (job.run_dir / curate.CLEAN_RUN_FILE).exists()


def test_contamination_reads_its_eval_version_in_the_job(setup, tmp_path):
    store, vid, _ = setup
    store.import_file(SAMPLE_DIR / "support_eval.jsonl", "eval")
    ev = store.active_version("eval")
    texts, ids = curate.eval_texts(store, ev)
    rules = [clean.Contamination(eval_texts=texts, eval_ids=ids, roles=("user",))]
    job = jobs.run_inline("clean", params(store, vid, rules, eval_version=ev), home=tmp_path)
    expected = curate.clean_preview(store.frame(vid), rules)
    assert job.result["dropped"] == expected.preview.dropped_rows >= 8
    assert curate.job_matches(job, rules, ev) and not curate.job_matches(job, rules, ev + 1)


def test_a_bad_rule_option_fails_the_job_naming_it(setup, tmp_path):
    store, vid, rules = setup
    specs = curate.rule_specs(rules)
    specs[0]["nope"] = 1
    job = jobs.run_inline("clean", {"store": str(store.path), "version_id": vid,
                                    "rules": specs}, home=tmp_path)
    assert job.state == "failed" and "rules[0]" in job.error and "'nope'" in job.error
