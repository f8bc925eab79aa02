"""The bundled sample datasets: where they are and how they get into a new store."""

from __future__ import annotations

from pathlib import Path

from .store import Store

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
# dataset name -> file in sample_data/
SAMPLES: dict[str, str] = {
    "support-train": "support_train.jsonl",
    "support-eval": "support_eval.jsonl",
    "support-pool": "support_pool.jsonl",
}


def ensure_sample_data(store: Store, sample_dir: Path | None = None) -> list[str]:
    """Import the sample datasets into a store that has no datasets; return the names added."""
    if len(store.datasets()):
        return []
    added = []
    for name, filename in SAMPLES.items():
        path = (sample_dir or SAMPLE_DIR) / filename
        if path.exists():
            store.import_file(path, name)
            added.append(name)
    return added
