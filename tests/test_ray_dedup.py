"""find_duplicates_ray returns exactly dedup.find_duplicates's clusters frame on a local Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest

from workbench import dedup
from workbench.dedup import MinHashConfig
from workbench.exceptions import ConfigError
from workbench.io import read_dataset
from workbench.schema import Example, examples_frame

ray = pytest.importorskip("ray")
from workbench.ray_dedup import component_labels, find_duplicates_ray  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
BASE = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch "
        "and wonders whether the fence needs painting before the long winter arrives")
OTHER = ("Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose and "
         "oxygen; the light reactions happen in the thylakoid membranes of the chloroplast")
NEAR = MinHashConfig(threshold=0.7)


pytestmark = pytest.mark.usefixtures("local_ray")  # the session's Ray (tests/conftest.py)


def as_dataset(frame: pd.DataFrame, blocks: int = 3):
    """Return the frame as a Ray Dataset of several blocks, in row order, with _pos."""
    frame = frame.drop(columns=["id", "metadata"]).assign(_pos=np.arange(len(frame)))
    bounds = np.linspace(0, len(frame), blocks + 1).astype(int)
    return ray.data.from_pandas([frame.iloc[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])
                                 if hi > lo])


def check_same(frame: pd.DataFrame, **options) -> pd.DataFrame:
    """Assert the Ray clusters equal the local ones; return them."""
    local = dedup.find_duplicates(frame, **options)
    distributed = find_duplicates_ray(as_dataset(frame), **options)
    pd.testing.assert_frame_equal(distributed, local)
    return local


def texts_frame(texts: list[str], scores: list[float] | None = None) -> pd.DataFrame:
    frame = examples_frame([Example(({"role": "user", "content": f"q{i % 3}"},
                                     {"role": "assistant", "content": t}))
                            for i, t in enumerate(texts)])
    if scores is not None:
        frame["quality"] = scores
    return frame


def planted() -> list[str]:
    words = BASE.split()
    edited = " ".join(words[:5] + ["purple"] + words[6:])
    return ["", OTHER, BASE, "unrelated short text", edited, BASE.upper(), "",
            OTHER + " Indeed!", "  " + BASE + "  ", "another unrelated line of words",
            OTHER.replace(",", ""), edited]


def test_sample_data_exact_and_near_match_local():
    frame = examples_frame(read_dataset(SAMPLE / "support_train.jsonl").examples)
    clusters = check_same(frame, near=MinHashConfig())
    assert len(clusters) > 0 and set(clusters["method"]) == {"exact", "near"}


@pytest.mark.parametrize("options", [
    {},
    {"near": NEAR},
    {"near": NEAR, "keep": "longest", "field": "assistant"},
    {"near": NEAR, "keep": "highest_score", "score_column": "quality",
     "strip_punctuation": True},
    {"near": MinHashConfig(threshold=0.7, strip_punctuation=True, shingle="word", ngram=2)},
], ids=["exact", "near", "longest", "highest_score_strip", "word_shingles"])
def test_planted_duplicates_match_local(options):
    texts = planted()
    frame = texts_frame(texts, scores=[float((i * 7) % 5) for i in range(len(texts))])
    clusters = check_same(frame, **options)
    assert clusters["cluster_id"].nunique() >= 2


@pytest.mark.parametrize("texts", [[BASE], [BASE, OTHER, "third"], [BASE] * 5, ["", "", ""]],
                         ids=["one_row", "no_duplicates", "all_identical", "all_empty"])
def test_edge_cases_match_local(texts):
    frame = examples_frame([Example(({"role": "assistant", "content": t or " "},))
                            for t in texts])
    check_same(frame, near=NEAR, field="assistant")


def test_messages_as_json_text_match_local():
    frame = texts_frame(planted())
    local = dedup.find_duplicates(frame, near=NEAR, keep="longest")
    shards = frame.assign(messages=[orjson.dumps(m).decode() for m in frame["messages"]])
    pd.testing.assert_frame_equal(
        find_duplicates_ray(as_dataset(shards), near=NEAR, keep="longest"), local)


def test_empty_dataset_and_bad_options():
    empty = ray.data.from_pandas(pd.DataFrame({"row_key": pd.Series(dtype=np.int64),
                                               "messages": pd.Series(dtype=object),
                                               "_pos": pd.Series(dtype=np.int64)}))
    assert find_duplicates_ray(empty).equals(dedup.empty_clusters())
    ds = as_dataset(texts_frame([BASE, OTHER]))
    with pytest.raises(ConfigError, match="score_column"):
        find_duplicates_ray(ds, keep="highest_score", score_column="nope")
    with pytest.raises(ConfigError, match="_pos"):
        find_duplicates_ray(ds.drop_columns(["_pos"]))


def _graphs() -> dict[str, tuple[list[int], list[int]]]:
    """Edge lists whose order and direction make min-label propagation slow or wrong."""
    chain = [(i, i + 1) for i in range(12)]
    star = [(leaf, 6) for leaf in (11, 0, 9, 2, 12, 4, 3, 10, 5, 1, 8, 7)]  # centre mid-range
    rng = np.random.default_rng(0)
    scattered = [(int(a), int(b)) for a, b in zip(rng.permutation(40)[:20] * 1000,
                                                   rng.permutation(40)[:20] * 1000)]
    return {
        "chain_reversed_and_flipped": chain[::-2] + [(b, a) for a, b in chain[-2::-2]],
        "chain_shuffled": [chain[i] for i in rng.permutation(len(chain))],
        "star_centre_not_smallest": star,
        "two_stars_joined_by_leaves": [(5, 20), (6, 20), (7, 20), (30, 1), (31, 1),
                                       (7, 31), (7, 31), (30, 30)],
        "sparse_ids_with_cycles": scattered + [(int(b), int(a)) for a, b in scattered[:5]],
    }


@pytest.mark.parametrize("name", list(_graphs()))
@pytest.mark.parametrize("driver_edges", [0, 1_000], ids=["distributed", "on_driver"])
def test_component_labels_equal_local_union_find(name, driver_edges):
    left, right = (np.array(side, dtype=np.int64) for side in zip(*_graphs()[name]))
    edges = ray.data.from_pandas([pd.DataFrame({"left": left[i::3], "right": right[i::3]})
                                  for i in range(3)])
    nodes, label = component_labels(edges, 3, driver_edges=driver_edges)
    left, right = left[left != right], right[left != right]  # a self-loop is no cluster
    expected_nodes = np.unique(np.concatenate([left, right]))
    local = dedup.connected_components(len(expected_nodes),
                                       np.searchsorted(expected_nodes, left),
                                       np.searchsorted(expected_nodes, right))
    np.testing.assert_array_equal(nodes, expected_nodes)
    np.testing.assert_array_equal(label, expected_nodes[local])


def test_a_chain_of_near_duplicates_matches_local():
    """Each text overlaps its neighbours (a sliding window), so clusters are long chains."""
    words = (BASE + " " + OTHER).split()
    texts = [" ".join(words[i:i + 24]) for i in range(0, 20)][::-1] + [OTHER, BASE]
    clusters = check_same(texts_frame(texts), near=MinHashConfig(threshold=0.6))
    assert (clusters["method"] == "near").any() and clusters["size"].max() >= 4
def test_dedup_file_on_ray_keeps_what_the_local_engine_keeps(tmp_path, monkeypatch):
    """`workbench dedup-file --engine ray` reads the Parquet row groups in Ray tasks and
    writes the same kept and removed files as the local engine."""
    from test_dedup_file import alpaca_files

    from workbench.dedup_file import dedup_files

    monkeypatch.setenv("WORKBENCH_RAY_MIN_ROWS", "0")  # tiny files still go to Ray
    inputs = alpaca_files(tmp_path)
    written = {}
    for engine in ("local", "ray"):
        out, removed = tmp_path / f"kept_{engine}.parquet", tmp_path / f"gone_{engine}.parquet"
        result = dedup_files(inputs, out, removed, near=NEAR, engine=engine)
        assert result.engine == engine
        written[engine] = (pd.read_parquet(out), pd.read_parquet(removed))
    assert len(written["local"][1]) == 3  # the planted copies
    for local, ray_made in zip(written["local"], written["ray"]):
        pd.testing.assert_frame_equal(ray_made, local)
