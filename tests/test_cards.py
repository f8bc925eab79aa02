"""cards.py: the dataset card written with an export and the model card of an adapter."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import re

import pytest
from curation import SAMPLE, curate_chain

from workbench import cards, evaluation, jobs, labelling, recipes, training
from workbench.exceptions import ExportError
from workbench.store import Store

TINY = dict(model="tiny", max_steps=3, batch_size=4, learning_rate=5e-3, warmup_ratio=0.0,
            eval_every=1, checkpoint_every=3, val_fraction=0.25, max_seq_len=64)


def section(card: str, title: str) -> str:
    """Return the text of one '## title' section of a card."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", card, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_export_writes_a_dataset_card_with_sections_and_counts(store, tmp_path):
    root, _ = store.import_file(SAMPLE / "support_train.jsonl", "train")
    chain = [root, *curate_chain(store, root.version_id, label_good=2)]
    data, card_file = cards.export_with_card(store, chain[-1].version_id,
                                             tmp_path / "train.jsonl", "openai")
    assert card_file == tmp_path / "train.README.md" and data.is_file()
    card = card_file.read_text()
    assert "| support_train.jsonl | jsonl | auto | 400 | 400 | 0 |" in \
        section(card, "Source files")
    steps = section(card, "Row counts per step")
    for i, v in enumerate(chain, start=1):
        assert f"| {i} | {v.ref} | {v.operation} | {v.n_rows:,} |" in steps
    drops = section(card, "Drop reasons")
    assert "250 rows were dropped" in drops  # 20 truncated, 22 duplicates, 208 by selection
    for reason, n in store.removed(chain[-1].version_id)["reason"].value_counts().items():
        assert f"| {reason} | {n} |" in drops
    assert "- too_short (flag):" in section(card, "Cleaning settings")
    assert "dropped the rows rule 'truncated' flagged, keeping rows labelled good" in \
        section(card, "Cleaning settings")
    assert "Jaccard >= 0.8" in section(card, "Dedup settings")
    assert "top_k k=150 by length; thresholds repetition in [-inf, 0.5]" in \
        section(card, "Scores used for selection")
    labels = section(card, "Labels")
    good = int((labelling.with_labels(store, store.frame(chain[-1].version_id))["label"]
                == "good").sum())
    assert (f"| quality | {good} | 0 | {150 - good} |" if good else
            "No row of this version is labelled.") in labels
    assert f"- {chain[2].ref} (drop_flagged) used the labels" in labels
    yaml_block = section(card, "Recipe").split("```yaml\n")[1].split("```")[0]
    assert [s["step"] for s in recipes.parse(yaml_block)["steps"]] == \
        ["import", "clean", "drop_flagged", "dedup", "select"]
    assert "flagged for review and are still in" in section(card, "Known limitations")
    with pytest.raises(ExportError, match="train.README.md: the dataset card.s file already exists"):
        cards.export_with_card(store, chain[-1].version_id, tmp_path / "train.jsonl", "openai")
    (tmp_path / "other.jsonl").unlink(missing_ok=True)
    (tmp_path / "other.README.md").write_text("mine")
    with pytest.raises(ExportError, match="other.README.md: the dataset card's file already"):
        cards.export_with_card(store, chain[-1].version_id, tmp_path / "other.jsonl", "openai")
    assert (tmp_path / "other.README.md").read_text() == "mine"
    assert not (tmp_path / "other.jsonl").exists()  # refused before anything was written
    folder, inside = cards.export_with_card(store, chain[-1].version_id, tmp_path / "hf", "hf")
    assert inside == folder / "README.md" and "# Dataset card: train@5" in inside.read_text()


def test_model_card_of_a_tiny_run_with_an_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    store = Store(tmp_path / "wb.duckdb")
    root, _ = store.import_file(SAMPLE / "support_train.jsonl", "train")
    small = store.drop_rows(root.version_id, store.frame(root.version_id)["row_key"][16:],
                            reason="not_selected")
    eval_version, _ = store.import_file(SAMPLE / "support_eval.jsonl", "support-eval")
    params = {"store": str(store.path), "version_id": small.version_id, "config": TINY}
    run = jobs.run_inline(training.TASK, params, home=tmp_path)
    assert run.state == "done", run.error
    ev = evaluation.start_eval(store, eval_version.version_id, model=run.run_id, limit=4,
                               similarity=False, inline=True, home=tmp_path,
                               generation=evaluation.ev.GenerationConfig(max_new_tokens=4))
    card = cards.model_card(store, run.run_id, home=tmp_path)
    assert "`tiny`" in section(card, "Base model")
    data = section(card, "Training data")
    assert "- data version: train@2" in data and "### Row counts per step" in data
    assert "| 2 | train@2 | drop | 16 | -384 | 384 |" in data
    assert "| lora_r | 8 |" in section(card, "LoRA configuration")
    curve = section(card, "Training curve")
    losses = training.loss_frame(run)
    for split, part in losses.groupby("split"):  # first and last point of each logged curve
        first, last = part.iloc[0], part.iloc[-1]
        assert (f"| {split} | {first['loss']:.4f} ({int(first['step'])}) | "
                f"{last['loss']:.4f} ({int(last['step'])}) |") in curve
    assert "| train |" in curve
    evals = section(card, "Evaluation")
    assert ev.run_id in evals and "support-eval@1" in evals and "[" in evals
    check = section(card, "Eval set contamination check")
    assert re.search(r"support-eval@1: \d+ of 60 eval prompts share", check)
    peft_card = training.adapter_dir(run) / "README.md"
    assert "library_name: peft" in peft_card.read_text()  # PEFT's placeholder, replaced
    path = cards.adapter_card(store, run.run_id, home=tmp_path)
    assert path.parent == training.adapter_dir(run) and "# Model card" in path.read_text()
    with pytest.raises(ExportError, match="already exists"):
        cards.adapter_card(store, run.run_id, home=tmp_path)
    merged = cards.merge_with_card(store, run.run_id, tmp_path / "out" / "merged", home=tmp_path)
    assert "merged model (base + LoRA adapter)" in (merged / "README.md").read_text()
