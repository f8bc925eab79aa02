"""A curation of the sample data through the library (import, clean, a label-based filter,
dedup, score and select), shared by the recipe and card tests."""

from __future__ import annotations

from pathlib import Path

from workbench import clean, curate, labelling, quality
from workbench.store import Store, VersionInfo

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data"
SELECT = quality.SelectOptions(method="top_k", k=150, score="length",
                               bounds={"repetition": (None, 0.5)})


def curate_chain(store: Store, version_id: int, *, label_good: int = 0) -> list[VersionInfo]:
    """Clean (default rules), drop the rows 'truncated' flagged (after labelling the first
    ``label_good`` of them good, which keeps them), dedup, score and select; return the
    versions made, in order."""
    made = [curate.apply_clean(store, version_id, store.frame(version_id), clean.default_rules())]
    flagged = store.flagged(made[-1].version_id)
    keys = flagged[flagged["reason"] == "truncated"]["row_key"].tolist()[:label_good]
    if keys:
        labelling.label_rows(store, made[-1].version_id, keys, "good")
    made.append(labelling.drop_flagged(store, made[-1].version_id, "truncated", keep_good=True))
    options = curate.DedupOptions()
    frame = store.frame(made[-1].version_id)
    made.append(curate.apply_dedup(store, made[-1].version_id, frame,
                                   curate.find_duplicates(store, frame, options), options))
    frame = store.frame(made[-1].version_id)
    quality.score_heuristics(store, frame, quality.heuristic_specs(["length", "repetition"]))
    made.append(quality.apply_selection(store, made[-1].version_id,
                                        quality.with_cached_scores(store, frame), SELECT))
    return made
