"""Recipes: the chain of steps that made a version, as a YAML file, replayed on new data.

``build`` reads a version's lineage (every version records its operation and parameters) and
turns it into steps: the import's shape, each cleaning rule with its options, the dedup
settings, the scorers and selection rule, and label-based filters. ``apply_recipe`` imports a
new file and runs each step through the same wiring functions the CLI and the pages call
(curate, quality, labelling), so a replay and a click make the same version; every version it
makes records ``recipe`` in its params.

Steps that depend on particular rows of the original data (hand edits, tags, hand-picked
drops, restores, targeted rows, dedup cluster overrides, an LLM judge's scores) cannot be
replayed on other data: the recipe lists them (``step: manual``, or a ``not_replayed`` note)
and ``apply_recipe`` reports each one; nothing is skipped silently.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from . import curate, quality
from . import labels as LB
from . import score as S
from .cache import params_hash
from .exceptions import ConfigError, ExportError, WorkbenchError
from .io import ImportReport
from .store import Store, VersionInfo
from .views import allowed_import_path, safe_file_stem, uploaded_file

RECIPE_VERSION = 1
KIND = "workbench-recipe"
STEPS = ("import", "clean", "dedup", "select", "drop_flagged", "manual")
# Keys any step may carry to say what it made originally; a replay ignores them.
INFO_KEYS = {"step": str, "made": str, "rows": int, "note": str, "not_replayed": str}
# Operations that name particular rows, and why they cannot be replayed on other data.
MANUAL = {"edit": "a hand edit of particular rows", "tag": "tags put on hand-picked rows",
          "drop": "rows dropped by hand", "restore": "dropped rows put back by hand",
          "targeted": "rows written from an evaluation run's failures"}
_HEADER = ("# A workbench recipe: the steps that made {ref}.\n"
           "# Replay it on new data: workbench recipe apply THIS_FILE NEW_FILE --dataset NAME\n"
           "# 'made' and 'rows' say what each step made originally; a replay ignores them.\n")


class RecipeError(WorkbenchError):
    """A recipe file that cannot be read or replayed; the message names the step and field."""


# --- export ------------------------------------------------------------------------------------

def build(store: Store, version_id: int) -> dict[str, Any]:
    """Return the recipe (a plain dict, ready for YAML) of the steps that made a version."""
    chain = store.lineage(version_id)
    if chain[0].operation != "import":
        raise ConfigError(f"{chain[0].ref} was made by '{chain[0].operation}', not an import: "
                          "a recipe starts from an imported file")
    target = chain[-1]
    steps = [_step(store, v) | {"made": v.ref, "rows": v.n_rows} for v in chain]
    return {"recipe_version": RECIPE_VERSION, "kind": KIND, "name": f"recipe of {target.ref}",
            "source": {"version": target.ref, "rows": target.n_rows,
                       "exported_at": dt.datetime.now(dt.UTC).isoformat(
                           timespec="seconds")},
            "steps": steps}


def to_yaml(recipe: Mapping[str, Any]) -> str:
    """Return the recipe as YAML text, with a header saying how to replay it."""
    body = yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True, width=100)
    return _HEADER.format(ref=recipe.get("source", {}).get("version", "?")) + body


def export_recipe(store: Store, version_id: int, path: str | Path, *,
                  overwrite: bool = False) -> Path:
    """Write a version's recipe to a YAML file (an existing file only with overwrite)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path}: already exists; choose another name, or pass --force to "
                          "replace it")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; name a file such as {path / 'recipe.yaml'}")
    path.write_text(to_yaml(build(store, version_id)), encoding="utf-8")
    return path


def _step(store: Store, v: VersionInfo) -> dict[str, Any]:
    p = v.params
    if v.operation == "import" and v.parent_id is None:
        return {"step": "import", "shape": p.get("shape", "auto"),
                "source_file": Path(str(p.get("file", "?"))).name}
    if v.operation == "clean":
        return _clean_step(store, p)
    if v.operation == "dedup":
        return _dedup_step(p)
    if v.operation == "select":
        return _select_step(store, v)
    if v.operation == "drop_flagged":
        return {"step": "drop_flagged", "rule": p["rule"], "keep_good": bool(p["kept_good"]),
                "label_set": p.get("label_set", LB.DEFAULT_SET)}
    why = MANUAL.get(v.operation, f"operation '{v.operation}' has no replay")
    return _manual(v.operation, p, why)


def _manual(operation: str, params: Mapping[str, Any], why: str) -> dict[str, Any]:
    return {"step": "manual", "operation": operation, "params": dict(params),
            "not_replayed": f"{why}: it names rows of the original data"}


def _clean_step(store: Store, p: Mapping[str, Any]) -> dict[str, Any]:
    # Eval texts and tokenizers are inputs, not options: a replay fetches them again.
    rules = [{k: v for k, v in r.items() if k not in curate.RULE_INPUTS} for r in p["rules"]]
    out: dict[str, Any] = {"step": "clean", "rules": rules}
    if p.get("eval_version") is not None:
        out["eval_version"] = store.refs().get(int(p["eval_version"]), str(p["eval_version"]))
    return out


def _dedup_step(p: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(curate.DedupOptions)}
    out = {"step": "dedup", **{k: v for k, v in p.items() if k in names}}
    if p.get("overrides"):
        out["not_replayed"] = (f"{len(p['overrides'])} cluster override(s) chose rows of the "
                               "original data by hand; a replay keeps each cluster's automatic "
                               f"choice (keep={p.get('keep', 'first')})")
    return out


def _select_step(store: Store, v: VersionInfo) -> dict[str, Any]:
    options = dict(v.params.get("options") or {})
    scorers = _scorers_of(store, options)
    if any(s["scorer"] == "judge" for s in scorers):
        return _manual("select", v.params, "it ranks by an LLM judge's scores, which a replay "
                       "cannot reproduce offline")
    out: dict[str, Any] = {"step": "select", "scores": scorers, "options": options}
    changed = _non_default_scorers(store, v.parent_id, scorers)
    if changed:
        out["note"] = (f"the cached {', '.join(changed)} scores were made with options the "
                       "lineage does not record; this recipe scores with each scorer's "
                       "defaults (edit 'params' to match)")
    return out


def _scorers_of(store: Store, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the scorers whose columns a selection reads, in a stable order."""
    names = [options.get("score")] if options.get("score") else []
    names += list(options.get("bounds") or {}) + list(options.get("weights") or {})
    out: list[dict[str, Any]] = []
    for name in names:
        if name == quality.COMBINED:
            continue
        entry = _scorer_of_column(store, name)
        if entry not in out:
            out.append(entry)
    return out


def _scorer_of_column(store: Store, name: str) -> dict[str, Any]:
    column = name if name.endswith("_score") else f"{name}_score"
    for scorer in S.SCORERS.values():
        if scorer.column == column:
            return {"scorer": scorer.name, "params": {}}
    for label_set in LB.label_sets(store):
        from .labelling import learned_column

        if learned_column(label_set) == column:
            return {"scorer": "learned", "params": {"label_set": label_set}}
    raise ConfigError(f"the selection ranks by {name!r}, which no scorer writes")


def _non_default_scorers(store: Store, parent: int | None, scorers: list[dict]) -> list[str]:
    """Return the scorers whose newest cached values on the parent's rows used non-default
    options (the cache keeps a hash of the options, not the options)."""
    names = [s["scorer"] for s in scorers if S.SCORERS[s["scorer"]].kind == "heuristic"]
    if parent is None or not names:
        return []
    ids = store.frame(parent)["id"].tolist()
    with store.connect() as con:
        con.register("_ids", pd.DataFrame({"id": ids}))
        rows = con.execute("""SELECT scorer, arg_max(params_hash, created_at) FROM scores
            SEMI JOIN _ids USING (id) WHERE scorer IN (SELECT unnest(?::VARCHAR[]))
            GROUP BY scorer""", [names]).fetchall()
        con.unregister("_ids")
    return sorted(n for n, h in rows if h != params_hash(S.SCORERS[n].cache_params({})))


# --- reading and checking a recipe file --------------------------------------------------------

# Fields each step may have beyond INFO_KEYS: name -> (types, required).
_FIELDS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "import": {"shape": ((str,), False), "source_file": ((str,), False)},
    "clean": {"rules": ((list,), True), "eval_version": ((str, int), False)},
    "dedup": {"field": ((str,), False), "near": ((bool,), False),
              "near_threshold": ((float, int), False), "ngram": ((int,), False),
              "num_perm": ((int,), False), "semantic": ((bool,), False),
              "semantic_threshold": ((float, int), False), "keep": ((str,), False),
              "score_column": ((str, type(None)), False), "model": ((str,), False)},
    "select": {"scores": ((list,), False), "options": ((dict,), True)},
    "drop_flagged": {"rule": ((str,), True), "keep_good": ((bool,), False),
                     "label_set": ((str,), False)},
    "manual": {"operation": ((str,), True), "params": ((dict,), False)},
}


def load(path: str | Path) -> dict[str, Any]:
    """Return the checked recipe read from a YAML file; RecipeError names the step and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a UTF-8 text file; a recipe is YAML text") from None
    return parse(text, str(path))


def parse(text: str, source: str = "recipe") -> dict[str, Any]:
    """Return the checked recipe in YAML text; RecipeError names the step and field."""
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{source}: not valid YAML{where}: "
                          f"{getattr(e, 'problem', None) or e}") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with recipe_version and steps; "
                          "export one with `workbench recipe export REF recipe.yaml`")
    _check_version(recipe.get("recipe_version"), source)
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not steps:
        raise RecipeError(f"{source}: field 'steps' must be a non-empty list of steps")
    for i, step in enumerate(steps, start=1):
        _check_step(step, i, source)
    if steps[0]["step"] != "import":
        raise RecipeError(f"{source}: step 1 must be 'import' (how the new file is read), "
                          f"got {steps[0]['step']!r}")
    for i, step in enumerate(steps[1:], start=2):
        if step["step"] == "import":
            raise RecipeError(f"{source}: step {i}: 'import' may only be the first step")
    return recipe


def _check_version(value: Any, source: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RecipeError(f"{source}: field 'recipe_version' must be an integer (this workbench "
                          f"writes {RECIPE_VERSION}), got {value!r}")
    if value > RECIPE_VERSION:
        raise RecipeError(f"{source}: recipe_version {value} is newer than this workbench "
                          f"reads ({RECIPE_VERSION}); upgrade workbench to apply it")
    if value < 1:
        raise RecipeError(f"{source}: recipe_version must be 1 or more, got {value}")


def _check_step(step: Any, i: int, source: str) -> None:
    if not isinstance(step, dict):
        raise RecipeError(f"{source}: step {i}: must be a mapping with a 'step' field, "
                          f"got {type(step).__name__}")
    kind = step.get("step")
    if kind not in STEPS:
        raise RecipeError(f"{source}: step {i}: unknown step {kind!r}; use one of "
                          f"{', '.join(STEPS)}")
    where = f"{source}: step {i} ({kind})"
    allowed = _FIELDS[kind]
    for name, value in step.items():
        types = INFO_KEYS.get(name) or (allowed[name][0] if name in allowed else None)
        if types is None:
            raise RecipeError(f"{where}: unknown field {name!r}; a {kind} step has "
                              f"{', '.join([*allowed, *INFO_KEYS])}")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in
                                              (types if isinstance(types, tuple) else (types,))):
            raise RecipeError(f"{where}: field {name!r} must be {_type_name(types)}, "
                              f"got {value!r}")
    missing = [n for n, (_, required) in allowed.items() if required and n not in step]
    if missing:
        raise RecipeError(f"{where}: missing field {missing[0]!r}")
    try:
        _CHECKS.get(kind, lambda s: None)(step)
    except (ConfigError, TypeError, ValueError) as e:
        raise RecipeError(f"{where}: {e}") from None


def _type_name(types: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping", type(None): "null"}
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def clean_rules(step: Mapping[str, Any], store: Store | None = None) -> list:
    """Return the cleaning rules a clean step names, with their options (eval texts and the
    token counter fetched again when a store is given)."""
    from . import clean

    classes = {**clean.rule_classes(), "contamination": clean.Contamination}
    rules = []
    for j, spec in enumerate(step["rules"]):
        if not isinstance(spec, dict) or not isinstance(spec.get("rule"), str):
            raise ConfigError(f"field 'rules[{j}]': must be a mapping with a 'rule' name")
        name = spec["rule"]
        if name not in classes:
            raise ConfigError(f"field 'rules[{j}].rule': unknown rule {name!r}; use "
                              f"{', '.join(classes)}")
        options = {k: v for k, v in spec.items() if k != "rule"}
        rules.append(_rule(classes[name], options, step, j, store))
    if not rules:
        raise ConfigError("field 'rules': name at least one rule")
    return rules


def _rule(cls: type, options: dict, step: Mapping[str, Any], j: int, store: Store | None):
    known = {f.name for f in fields(cls)} - set(curate.RULE_INPUTS)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"field 'rules[{j}]': unknown option {unknown[0]!r} of rule "
                          f"{cls.name!r}; it has {', '.join(sorted(known))}")
    if options.get("unit") == "tokens":
        options["count_tokens"] = (curate.default_token_counter() if store is not None
                                   else (lambda texts: [len(t.split()) for t in texts]))
    if cls.name == "contamination":
        if "eval_version" not in step:
            raise ConfigError(f"field 'rules[{j}]': the contamination rule needs the step's "
                              "eval_version (the evaluation dataset, e.g. support-eval@1)")
        texts, ids = (curate.eval_texts(store, store.resolve(step["eval_version"]))
                      if store is not None else (["placeholder"], []))
        options.update(eval_texts=texts, eval_ids=ids)
    try:
        return cls(**options)
    except ConfigError as e:
        raise ConfigError(f"field 'rules[{j}]' ({cls.name}): {e}") from None


def dedup_options(step: Mapping[str, Any]) -> curate.DedupOptions:
    """Return the DedupOptions a dedup step holds."""
    return curate.DedupOptions(**{k: v for k, v in step.items() if k not in INFO_KEYS})


def select_options(step: Mapping[str, Any]) -> quality.SelectOptions:
    """Return the SelectOptions a select step holds (bounds as (min, max) pairs)."""
    options = dict(step["options"])
    known = {f.name for f in fields(quality.SelectOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"field 'options.{unknown[0]}': unknown; a selection has "
                          f"{', '.join(sorted(known))}")
    bounds = options.get("bounds") or {}
    if not isinstance(bounds, dict):
        raise ConfigError(f"field 'options.bounds': must be a mapping, got {bounds!r}")
    for name, pair in bounds.items():
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ConfigError(f"field 'options.bounds.{name}': must be [min, max], got {pair!r}")
    options["bounds"] = {k: tuple(v) for k, v in bounds.items()}
    return quality.SelectOptions(**options)


def _check_scores(step: Mapping[str, Any]) -> None:
    for j, entry in enumerate(step.get("scores") or []):
        if not isinstance(entry, dict) or not isinstance(entry.get("scorer"), str):
            raise ConfigError(f"field 'scores[{j}]': must be a mapping with a 'scorer' name")
        if not isinstance(entry.get("params", {}), dict):
            raise ConfigError(f"field 'scores[{j}].params': must be a mapping")
        try:
            name = quality.scorer_name(entry["scorer"])
        except ConfigError as e:
            raise ConfigError(f"field 'scores[{j}].scorer': {e}") from None
        if name == "judge":
            raise ConfigError(f"field 'scores[{j}].scorer': the LLM judge cannot be replayed "
                              "by a recipe; run it from the Score & select page")
    select_options(step)


_CHECKS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "clean": clean_rules, "dedup": dedup_options, "select": _check_scores}


# --- replay ------------------------------------------------------------------------------------

@dataclass
class ReplayReport:
    """What a replay made: the new versions in order, the import report, and every step it
    could not replay (or replayed only in part), with why."""

    versions: list[VersionInfo]
    import_report: ImportReport | None = None
    not_replayed: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Return one line per new version, then one per step not (fully) replayed."""
        out = [f"{v.ref}: {v.operation}, {v.n_rows:,} rows" for v in self.versions]
        return out + [f"not replayed: {why}" for why in self.not_replayed]


def apply_recipe(store: Store, recipe: Mapping[str, Any], path: str | Path, dataset: str, *,
                 display_name: str | None = None,
                 progress: Callable[[str], None] | None = None) -> ReplayReport:
    """Import a file into ``dataset`` and replay the recipe's steps on it; return the report."""
    steps = recipe["steps"]
    mark = _marker(recipe)
    version, report = store.import_file(path, dataset, shape=steps[0].get("shape", "auto"),
                                        display_name=display_name,
                                        extra_params={"recipe": {**mark, "step": 1}})
    result = replay(store, recipe, version.version_id, progress=progress)
    result.versions.insert(0, version)
    result.import_report = report
    return result


def replay(store: Store, recipe: Mapping[str, Any], version_id: int, *,
           progress: Callable[[str], None] | None = None) -> ReplayReport:
    """Replay the recipe's steps after its import on a version; return what it made."""
    out = ReplayReport(versions=[])
    mark = _marker(recipe)
    current = version_id
    for i, step in enumerate(recipe["steps"][1:], start=2):
        kind = step["step"]
        if progress:
            progress(f"step {i}: {kind}")
        if kind == "manual":
            out.not_replayed.append(f"step {i} ({step['operation']}): "
                                    f"{step.get('not_replayed') or 'a manual step'}")
            continue
        if step.get("not_replayed"):
            out.not_replayed.append(f"step {i} ({kind}): {step['not_replayed']}")
        try:
            made = _RUN[kind](store, current, step, {"recipe": {**mark, "step": i}})
        except WorkbenchError as e:
            raise RecipeError(f"step {i} ({kind}) failed on {store.version(current).ref}: "
                              f"{e}") from None
        out.versions.append(made)
        current = made.version_id
    return out


def _marker(recipe: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": str(recipe.get("name", "")), "recipe_version": recipe["recipe_version"],
            "from": str((recipe.get("source") or {}).get("version", ""))}


def _run_clean(store: Store, vid: int, step: Mapping[str, Any], mark: dict) -> VersionInfo:
    rules = clean_rules(step, store)
    extra = dict(mark)
    if "eval_version" in step:
        extra["eval_version"] = store.resolve(step["eval_version"])
    return curate.apply_clean(store, vid, store.frame(vid), rules, extra_params=extra)


def _run_dedup(store: Store, vid: int, step: Mapping[str, Any], mark: dict) -> VersionInfo:
    options = dedup_options(step)
    frame = store.frame(vid)
    if options.semantic:
        curate.embed_frame(store, frame, field=options.field, model=options.model)
    clusters = curate.find_duplicates(store, frame, options)
    return curate.apply_dedup(store, vid, frame, clusters, options, extra_params=mark)


def _run_select(store: Store, vid: int, step: Mapping[str, Any], mark: dict) -> VersionInfo:
    options = select_options(step)
    frame = store.frame(vid)
    score_version(store, vid, frame, step.get("scores") or [])
    scored = quality.with_cached_scores(store, frame)
    if options.needs_embeddings:
        curate.embed_frame(store, frame, field=options.field, model=options.model)
    return quality.apply_selection(store, vid, scored, options, extra_params=mark)


def score_version(store: Store, vid: int, frame: pd.DataFrame, scores: list[dict]) -> None:
    """Fill the score cache for a version's rows with the given scorers, as the CLI's score
    command does: heuristics inline, model scores in this process, the learned score last."""
    names = [quality.scorer_name(s["scorer"]) for s in scores]
    params = {quality.scorer_name(s["scorer"]): dict(s.get("params") or {}) for s in scores}
    heuristics = [n for n in names if S.SCORERS[n].kind == "heuristic"]
    if heuristics:
        quality.score_heuristics(store, frame, quality.heuristic_specs(heuristics, params))
    models = [n for n in names if n in S.MODEL_SCORES]
    if models:
        quality.run_model_scoring(store, vid, scores=models, **params[models[0]])
    if "learned" in names:  # last: it uses every cached score as a feature
        from .labelling import train_learned

        train_learned(store, vid, quality.with_cached_scores(store, frame),
                      label_set=params["learned"].get("label_set", LB.DEFAULT_SET))


def _run_drop_flagged(store: Store, vid: int, step: Mapping[str, Any], mark: dict
                      ) -> VersionInfo:
    from .labelling import drop_flagged

    return drop_flagged(store, vid, step["rule"], keep_good=step.get("keep_good", True),
                        label_set=step.get("label_set", LB.DEFAULT_SET), extra_params=mark)


_RUN: dict[str, Callable[..., VersionInfo]] = {
    "clean": _run_clean, "dedup": _run_dedup, "select": _run_select,
    "drop_flagged": _run_drop_flagged}


def import_with_recipe(store: Store, dataset: str, recipe: tuple[str, bytes], *,
                       upload: tuple[str, bytes] | None = None, path: str = ""):
    """Import an upload or an allowed path and replay a recipe (file name, bytes) on it;
    return the ReplayReport."""
    name, data = recipe
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{name}: not a UTF-8 text file; a recipe is YAML") from None
    checked = parse(text, name)
    if upload is not None:
        with uploaded_file(upload[0], upload[1]) as saved:
            return apply_recipe(store, checked, saved, dataset, display_name=upload[0])
    return apply_recipe(store, checked, allowed_import_path(path), dataset)


def recipe_download(store: Store, version_id: int) -> tuple[str, bytes]:
    """Return a file name and the YAML bytes of a version's recipe, for a download."""
    info = store.version(version_id)
    text = to_yaml(build(store, version_id))
    return f"{safe_file_stem(info.dataset)}-v{info.number}-recipe.yaml", text.encode("utf-8")
