"""recipes.py: export a version's lineage as a YAML recipe, replay it on new data, bad files."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from curation import SAMPLE, curate_chain

from workbench import curate, recipes
from workbench.cli import main
from workbench.store import Store


@pytest.fixture
def curated(store: Store):
    """The sample training data imported and curated; returns (store, versions in order)."""
    root, _ = store.import_file(SAMPLE / "support_train.jsonl", "train")
    return store, [root, *curate_chain(store, root.version_id, label_good=2)]


def test_a_recipe_replays_on_rows_it_has_not_seen(curated, tmp_path):
    store, chain = curated
    path = recipes.export_recipe(store, chain[-1].version_id, tmp_path / "recipe.yaml")
    recipe = recipes.load(path)
    assert recipe["recipe_version"] == recipes.RECIPE_VERSION
    assert [s["step"] for s in recipe["steps"]] == ["import", "clean", "drop_flagged", "dedup",
                                                    "select"]
    result = recipes.apply_recipe(store, recipe, SAMPLE / "support_pool.jsonl", "pool")
    new = store.frame(result.versions[0].version_id)
    assert not set(new["id"]) & set(store.frame(chain[0].version_id)["id"])  # unseen rows
    # The same library calls, made by hand on the same new file, give the same chain.
    root, _ = store.import_file(SAMPLE / "support_pool.jsonl", "by-hand")
    expected = [root, *curate_chain(store, root.version_id)]
    assert [v.operation for v in result.versions] == [v.operation for v in expected]
    assert [v.n_rows for v in result.versions] == [v.n_rows for v in expected] == \
        [200, 200, 200, 200, 150]
    assert [v.counts for v in result.versions[1:]] == [v.counts for v in expected[1:]]
    assert [v.params["recipe"]["step"] for v in result.versions] == [1, 2, 3, 4, 5]
    assert all(v.params["recipe"]["from"] == chain[-1].ref for v in result.versions)
    assert result.not_replayed == [] and result.import_report.imported == 200


def test_replaying_on_the_same_data_gives_the_same_row_ids(curated):
    store, chain = curated
    recipe = recipes.parse(recipes.to_yaml(recipes.build(store, chain[-1].version_id)))
    result = recipes.apply_recipe(store, recipe, SAMPLE / "support_train.jsonl", "again")
    assert [v.n_rows for v in result.versions] == [v.n_rows for v in chain] == \
        [400, 400, 380, 358, 150]
    for mine, theirs in zip(result.versions, chain):
        assert store.frame(mine.version_id)["id"].tolist() == \
            store.frame(theirs.version_id)["id"].tolist()
    assert result.versions[2].counts == {"truncated": 20, "kept": 380}  # 2 labelled good kept


def test_manual_steps_are_listed_and_reported_never_skipped_silently(curated):
    store, chain = curated
    frame = store.frame(chain[1].version_id)
    options = curate.DedupOptions()
    clusters = curate.find_duplicates(store, frame, options)
    first = int(clusters["cluster_id"].iloc[0])
    other = clusters[(clusters["cluster_id"] == first) & ~clusters["kept"]]["row_key"].iloc[0]
    dedup = curate.apply_dedup(store, chain[1].version_id, frame, clusters, options,
                               overrides={first: int(other)})
    tagged = store.tag_rows(dedup.version_id, frame["row_key"].head(3).tolist(), add=["x"])
    recipe = recipes.build(store, tagged.version_id)
    steps = recipe["steps"]
    assert steps[-1]["step"] == "manual" and steps[-1]["operation"] == "tag"
    assert "cluster override" in steps[2]["not_replayed"]
    result = recipes.apply_recipe(store, recipes.parse(recipes.to_yaml(recipe)),
                                  SAMPLE / "support_train.jsonl", "replayed")
    assert [v.operation for v in result.versions] == ["import", "clean", "dedup"]
    assert len(result.not_replayed) == 2
    assert result.not_replayed[0].startswith("step 3 (dedup): 1 cluster override")
    assert result.not_replayed[1].startswith("step 4 (tag): tags put on hand-picked rows")
    assert any(line.startswith("not replayed: step 4 (tag)") for line in result.lines())


GOOD = """recipe_version: 1
steps:
- step: import
  shape: auto
- step: dedup
  near_threshold: 0.7
"""


@pytest.mark.parametrize("text, message", [
    (GOOD.replace("recipe_version: 1", "recipe_version: 2"),
     r"recipe_version 2 is newer than this workbench reads \(1\)"),
    (GOOD.replace("recipe_version: 1", "recipe_version: one"), "'recipe_version' must be an"),
    (GOOD.replace("step: dedup", "step: shuffle"), r"step 2: unknown step 'shuffle'; use one"),
    (GOOD.replace("near_threshold: 0.7", "near_threshold: high"),
     r"step 2 \(dedup\): field 'near_threshold' must be a number or an integer, got 'high'"),
    (GOOD.replace("near_threshold: 0.7", "near: yes please"),
     r"step 2 \(dedup\): field 'near' must be true or false"),
    (GOOD.replace("near_threshold: 0.7", "treshold: 0.7"),
     r"step 2 \(dedup\): unknown field 'treshold'"),
    (GOOD.replace("near_threshold: 0.7", "field: answers"),
     r"step 2 \(dedup\): field='answers': use conversation"),
    (GOOD + "- step: clean\n  rules:\n  - rule: bogus\n",
     r"step 3 \(clean\): field 'rules\[0\].rule': unknown rule 'bogus'"),
    (GOOD + "- step: clean\n  rules:\n  - rule: too_short\n    mode: explode\n",
     r"step 3 \(clean\): field 'rules\[0\]' \(too_short\): TooShort.mode: must be one of"),
    (GOOD + "- step: clean\n  rules:\n  - rule: too_short\n    minimum: 3\n",
     r"step 3 \(clean\): field 'rules\[0\]': unknown option 'minimum' of rule 'too_short'"),
    (GOOD + "- step: select\n  options: {method: top_k, k: 5}\n",
     r"step 3 \(select\): method='top_k': name the score"),
    (GOOD + "- step: select\n  scores: [{scorer: judge}]\n  options: {method: top_k, k: 5, "
     "score: judge}\n", r"step 3 \(select\): field 'scores\[0\].scorer': the LLM judge"),
    (GOOD.replace("- step: import\n  shape: auto\n", ""), "step 1 must be 'import'"),
    ("steps: [", "not valid YAML at line 1"),
    ("- a\n- b\n", "a recipe is a mapping"),
])
def test_bad_recipes_name_the_step_and_field(text, message):
    with pytest.raises(recipes.RecipeError, match=message):
        recipes.parse(text, "recipe.yaml")


def test_cli_exports_and_applies_a_recipe(tmp_path, monkeypatch):
    path = tmp_path / "wb.duckdb"
    store = Store(path)
    root, _ = store.import_file(SAMPLE / "support_train.jsonl", "train")
    curate_chain(store, root.version_id)
    runner = CliRunner()
    out = tmp_path / "recipe.yaml"
    ok = runner.invoke(main, ["--store", str(path), "recipe", "export", "train", str(out)])
    assert ok.exit_code == 0 and "wrote 5 steps of train@5" in ok.output
    again = runner.invoke(main, ["--store", str(path), "recipe", "export", "train", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output
    applied = runner.invoke(main, ["--store", str(path), "recipe", "apply", str(out),
                                   str(SAMPLE / "support_pool.jsonl"), "--dataset", "pool"])
    assert applied.exit_code == 0, applied.output
    assert "pool@5: select, 150 rows" in applied.output
    out.write_text(GOOD.replace("step: dedup", "step: shuffle"))
    bad = runner.invoke(main, ["--store", str(path), "recipe", "apply", str(out),
                               str(SAMPLE / "support_pool.jsonl"), "--dataset", "p2"])
    assert bad.exit_code == 1 and "step 2: unknown step 'shuffle'" in bad.output
