"""A Dolly-style fixture: four systems' predictions on one eval set that differ mainly in
length, as FLAN-T5 small/base/large/xl's did on Dolly (xl answered in a third of the words).

Each answer is the reference cut to a system-specific share of its words (a log-normal share
around the system's mean, at most the whole reference) with the same 15% of words swapped for
wrong ones in every system, so at equal length the four are equally good: any gap between them
is length. Deterministic (fixed seeds), written as the JSONL files `workbench eval-import` and
the Evaluate page read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers_app import write_jsonl

# system -> mean share of the reference's words in its answers
SYSTEMS = {"flan-t5-small": 1.0, "flan-t5-base": 0.9, "flan-t5-large": 0.8, "flan-t5-xl": 0.33}
ROWS = 60
NOISE = 0.15
TOPICS = ("the river", "a lighthouse", "the printing press", "coffee", "the violin",
          "a glacier", "the railway", "honey bees", "the compass", "a volcano")
FACTS = ("was first described by travellers who crossed the northern plains",
         "is known for its long history in trade between coastal towns",
         "changed how people in small villages shared news and stories",
         "depends on steady weather and careful work through the seasons",
         "became popular after a famous engineer wrote about it in a letter",
         "is still studied by students who want to understand old maps",
         "gives a clear example of how simple tools shape daily life")
WRONG = ("banana", "purple", "quickly", "seventeen", "umbrella", "never", "galaxy", "soup")


def eval_rows(n: int = ROWS) -> list[tuple[str, str]]:
    """Return n (instruction, reference) pairs of 20-40 words in the manner of Dolly."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        facts = rng.choice(FACTS, size=int(rng.integers(2, 4)), replace=False)
        reference = " ".join(f"{topic.capitalize()} {fact}." for fact in facts)
        rows.append((f"Question {i}: tell me about {topic}.", reference))
    return rows


def answer(reference: str, share: float, rng: np.random.Generator) -> str:
    """Return the reference's first share of words with NOISE of them replaced."""
    tokens = reference.split()
    kept = tokens[:max(1, round(len(tokens) * share))]
    return " ".join(str(rng.choice(WRONG)) if rng.random() < NOISE else t for t in kept)


def write_runs(folder: Path, n: int = ROWS) -> dict[str, Path]:
    """Write one predictions JSONL per system into folder; return {system: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for seed, (system, mean) in enumerate(SYSTEMS.items(), start=1):
        rng = np.random.default_rng(seed)
        records = [{"prompt": prompt, "reference": reference, "model": system,
                    "prediction": answer(reference, min(1.0, rng.lognormal(np.log(mean), 0.6)),
                                         rng)}
                   for prompt, reference in eval_rows(n)]
        paths[system] = write_jsonl(folder / f"{system}.jsonl", records)
    return paths
