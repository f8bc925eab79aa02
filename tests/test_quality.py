"""Tests of workbench.quality: scoring a version with the cache, jobs, the map, selections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench import jobs, tasks
from workbench import quality as Q
from workbench.curate import embed_frame
from workbench.exceptions import ConfigError
from workbench.models import tiny_embedder
from workbench.schema import Example
from workbench.store import Store

ANSWERS = ["ok", "Reset the router, then wait one minute before you log in again.",
           "yes yes yes yes yes yes yes yes", "Open Settings, choose Billing and press Refund.",
           "I cannot help.", "First unplug it. Then plug it back in. Then try the app again."]


def example(i: int, answer: str) -> Example:
    return Example(({"role": "user", "content": f"question {i}: how do I fix thing {i}?"},
                    {"role": "assistant", "content": answer}))


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "q.duckdb")


@pytest.fixture
def version(store) -> int:
    return store.add_examples("demo", [example(i, a) for i, a in enumerate(ANSWERS)])


def scored(store: Store, version: int, names=("length", "repetition")):
    frame = store.frame(version)
    Q.score_heuristics(store, frame, Q.heuristic_specs(names))
    return Q.with_cached_scores(store, frame)


def test_heuristics_are_cached_and_reloaded_without_rescoring(store, version, monkeypatch):
    frame = scored(store, version)
    assert frame["length_score"].tolist()[:2] == [1.0, 12.0]
    assert frame["repetition_score"].iloc[2] > 0.5
    monkeypatch.setattr(Q.S, "length_score", lambda *a, **k: pytest.fail("rescored"))
    again = Q.with_cached_scores(store, store.frame(version))  # a reopen reads the cache only
    assert again["length_score"].tolist() == frame["length_score"].tolist()


def test_heuristics_in_chunks_match_one_pass_report_progress_and_move_the_fingerprint(
        store, version):
    from workbench.cache import scores_fingerprint

    frame, specs = store.frame(version), Q.heuristic_specs(["length", "repetition", "overlap"])
    before = scores_fingerprint(store)
    seen = []
    chunked = Q.score_heuristics(store, frame, specs, chunk_rows=4,
                                 progress=lambda *a: seen.append(a))
    assert seen == [(4, 6), (6, 6)] and scores_fingerprint(store) != before
    whole = Q.S.score_frame(frame, specs)  # no store: computed again, in one pass
    pd.testing.assert_frame_equal(chunked, whole)
    same = scores_fingerprint(store)
    Q.with_cached_scores(store, frame)  # reading moves nothing
    assert scores_fingerprint(store) == same


def test_the_newest_parameters_of_a_scorer_win(store, version):
    frame = store.frame(version)
    Q.score_heuristics(store, frame, Q.heuristic_specs(["length"], {"length": {"unit": "chars"}}))
    assert Q.with_cached_scores(store, frame)["length_score"].iloc[0] == 2.0
    Q.score_heuristics(store, frame, Q.heuristic_specs(["length"]))
    assert Q.with_cached_scores(store, frame)["length_score"].iloc[0] == 1.0
    Q.score_heuristics(store, frame, Q.heuristic_specs(["length"], {"length": {"unit": "chars"}}))
    assert Q.with_cached_scores(store, frame)["length_score"].iloc[0] == 2.0


def test_aliases_user_format_checks_and_summary(store, version):
    frame = store.frame(version)
    specs = Q.heuristic_specs(["diversity", "format"], {"format": {"prefix": "Open"}})
    out = Q.score_heuristics(store, frame, specs)
    assert out["format_score"].tolist() == [0, 0, 0, 1, 0, 0]
    summary = Q.score_summary(out)
    assert summary["score"].tolist() == ["lexical_diversity_score", "format_score"]
    assert summary["scored"].tolist() == [6, 6]


@pytest.mark.parametrize("names, message", [(["bleu"], "unknown scorer 'bleu'"),
                                            (["perplexity"], "background job"),
                                            ([], "at least one scorer")])
def test_bad_scorers_are_named(store, version, names, message):
    with pytest.raises(ConfigError, match=message):
        Q.score_heuristics(store, store.frame(version), Q.heuristic_specs(names))


def test_an_empty_version_has_no_scores_and_nothing_to_select(store):
    empty = store.add_examples("empty", [])
    frame = Q.with_cached_scores(store, store.frame(empty))
    assert frame.empty and Q.score_columns(frame) == []
    with pytest.raises(ConfigError, match="no rows"):
        Q.select_rows(frame, Q.SelectOptions("longest", k=1))


# --- selection ----------------------------------------------------------------------------------

def test_top_k_selection_is_a_new_version_with_the_rule_and_reasons(store, version):
    frame = scored(store, version)
    child = Q.apply_selection(store, version, frame, Q.SelectOptions("top_k", k=2,
                                                                     score="length"))
    assert child.operation == "select" and child.n_rows == 2
    assert child.params["method"] == "top_k" and child.params["score"] == "length_score"
    assert child.params["options"]["k"] == 2
    removed = store.removed(child.version_id)
    assert len(removed) == 4 and set(removed["reason"]) == {"not_selected"}
    assert store.versions("demo")[0].n_rows == 6  # the parent is untouched


def test_thresholds_run_first_and_each_drop_names_its_bound(store, version):
    frame = scored(store, version)
    options = Q.SelectOptions("longest", k=2, bounds={"repetition": (None, 0.2)})
    sel = Q.select_rows(frame, options)
    assert len(sel.kept) == 2 and len(sel.kept) + len(sel.dropped) == 6
    reasons = dict(zip(sel.dropped["row_key"], sel.dropped["reason"]))
    assert reasons[frame["row_key"].iloc[2]] == "above_threshold"
    assert sel.rule["thresholds"] == {"repetition_score": [None, 0.2]}
    only = Q.select_rows(frame, Q.SelectOptions("threshold", bounds={"length": (5, None)}))
    assert len(only.kept) == 4 and set(only.dropped["reason"]) == {"below_threshold"}


def test_combined_score_with_weights_ranks_the_selection(store, version):
    frame = scored(store, version)
    options = Q.SelectOptions("top_k", k=1, score=Q.COMBINED,
                              weights={"length": 1.0, "repetition": 1.0})
    sel = Q.select_rows(frame, options)
    assert sel.kept["row_key"].tolist() == [frame["row_key"].iloc[5]]  # longest, no repeats
    assert sel.rule["options"]["weights"] == {"length": 1.0, "repetition": 1.0}


@pytest.mark.parametrize("options, message", [
    (dict(method="top_k", k=2, score="nope"), "score='nope': no such column"),
    (dict(method="top_k", k=0, score="length"), "k=0"),
    (dict(method="longest", k=-1), "k=-1"),
    (dict(method="top_k", k=2), "name the score"),
    (dict(method="threshold"), "at least one bound"),
    (dict(method="sample", k=2), "method='sample'"),
    (dict(method="longest", k=2, bounds={"length": (5, 1)}), "min is above max")])
def test_bad_selection_options_are_named(store, version, options, message):
    frame = scored(store, version)
    with pytest.raises(ConfigError, match=message):
        Q.apply_selection(store, version, frame, Q.SelectOptions(**options))
    assert len(store.versions("demo")) == 1


# --- embeddings: map, diverse top-k, quotas -----------------------------------------------------

@pytest.fixture
def embedded(store, version) -> int:
    embed_frame(store, store.frame(version), encoder=tiny_embedder())  # cached as "default"
    return version


def test_selection_without_embeddings_says_to_embed(store, version):
    frame = scored(store, version)
    with pytest.raises(ConfigError, match="6 rows have no embedding"):
        Q.preview_selection(store, frame, Q.SelectOptions("diverse", k=2, score="length"))
    assert Q.embedding_map(store, frame) == (None, 6)


def test_embedding_map_diverse_and_quota_selections(store, embedded):
    frame = scored(store, embedded)
    points, missing = Q.embedding_map(store, frame, k=3)
    assert missing == 0 and len(points) == 6 and points["cluster"].nunique() <= 3
    diverse = Q.apply_selection(store, embedded, frame,
                                Q.SelectOptions("diverse", k=3, score="length", similarity=0.5))
    assert diverse.params["method"] == "diverse_top_k" and diverse.n_rows <= 3
    quota = Q.preview_selection(store, frame, Q.SelectOptions("quota", k=3, score="length",
                                                              n_clusters=2))
    assert len(quota.kept) == 3 and quota.rule["n_clusters"] == 2


def test_embedding_map_reopens_from_its_cache_without_loading_vectors(store, embedded,
                                                                       monkeypatch):
    frame = scored(store, embedded)
    first, _ = Q.embedding_map(store, frame, k=3)
    monkeypatch.setattr(Q.curate, "version_embeddings",
                        lambda *a, **k: pytest.fail("a cached map must not load vectors"))
    again, missing = Q.embedding_map(store, frame, k=3)
    pd.testing.assert_frame_equal(first, again)
    assert missing == 0
    with pytest.raises(pytest.fail.Exception):  # other parameters are another map
        Q.embedding_map(store, frame, k=2)


def test_a_maps_cache_file_is_named_by_the_digest_of_its_rows_ids_one_per_line(store, version):
    import xxhash

    frame = store.frame(version)
    digest = xxhash.xxh3_128()
    for row_id in frame["id"]:  # how the names were made before: map files keep their names
        digest.update(row_id.encode() + b"\n")
    assert Q._map_file(store, frame, k=3).name.startswith(f"{digest.hexdigest()}-")
    assert Q._map_file(store, frame.iloc[:0], k=3) != Q._map_file(store, frame, k=3)


def test_judge_reasons_come_only_with_the_rows_newest_judge_scores(store, version):
    from workbench.cache import put_scores

    frame = scored(store, version)
    assert "judge_reason" not in frame  # no judge score: no reasons column
    ids = store.frame(version)["id"].tolist()
    put_scores(store, ids[:2], [4.0, 2.0], "judge", {"rubric": "r"}, ["clear", "vague"])
    frame = Q.with_cached_scores(store, store.frame(version))
    assert frame["judge_reason"].tolist()[:3] == ["clear", "vague", ""]
    assert frame["judge_score"].tolist()[:2] == [4.0, 2.0]


# --- model scores as a job ----------------------------------------------------------------------

def test_model_scores_run_inline_then_load_from_the_cache(store, version, tiny_folder):
    seen = []
    result = Q.run_model_scoring(store, version, model=tiny_folder, scores=["ppl", "ifd"],
                                 progress=lambda d, t: seen.append((d, t)))
    assert result["scored"] == 6 and seen[-1][0] == seen[-1][1]
    frame = Q.with_cached_scores(store, store.frame(version))
    assert np.isfinite(frame[["perplexity_score", "ifd_score"]].to_numpy()).all()


def test_model_scoring_job_runs_in_the_background(store, version, tiny_folder, tmp_path,
                                                  monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    job = Q.start_model_scoring(store, version, model=tiny_folder, scores=["perplexity"])
    assert [j.run_id for j in Q.scoring_jobs(store, version)] == [job.run_id]
    done = jobs.wait(job.run_id, timeout=120)
    assert done.state == "done", done.error
    frame = Q.with_cached_scores(store, store.frame(version))
    assert frame["perplexity_score"].notna().all()


@pytest.mark.parametrize("options, message", [
    (dict(scores=["bleu"]), "unknown scorer"), (dict(scores=["length"]), "choose from"),
    (dict(max_length=1), "max_length=1"), (dict(model=" "), "model:")])
def test_bad_model_options_fail_before_a_job_starts(store, version, options, message):
    with pytest.raises(ConfigError, match=message):
        Q.model_params(store, version, **options)


def test_judge_job_caches_scores_and_leaves_failures_unscored(store, version, monkeypatch):
    def fake_judge(frame, config, **_):
        import pandas as pd
        bad = ["cannot" in r for r in frame["response"]]
        return pd.DataFrame({
            "judge_score": [np.nan if b else float(len(r) % 10 + 1)
                            for b, r in zip(bad, frame["response"])],
            "judge_reason": ["" if b else f"{len(r)} characters" for b, r in
                             zip(bad, frame["response"])],
            "judge_error": ["HTTP 500: try later" if b else "" for b in bad]},
            index=frame.index)

    monkeypatch.setattr("workbench.judge.judge_frame", fake_judge)
    params = Q.judge_params(store, version, {"rubric": "Rate {response}", "model": "x"})
    result = tasks.judge({**params, "chunk_rows": 4}, jobs.InlineContext())
    failed_row = int(store.frame(version).query("response.str.contains('cannot')")["row_key"]
                     .iloc[0])
    assert result == {"rows": 6, "cached": 0, "judged": 6, "failed": 1,
                      "errors": [{"row_key": failed_row, "error": "HTTP 500: try later"}]}
    frame = Q.with_cached_scores(store, store.frame(version))
    assert frame["judge_score"].isna().sum() == 1
    # The one-line reason is cached with its score; the failed row has neither.
    scored = frame[frame["judge_score"].notna()]
    assert (scored["judge_reason"] == scored["response"].str.len().astype(str)
            + " characters").all()
    assert frame.loc[frame["row_key"] == failed_row, "judge_reason"].item() == ""
    with pytest.raises(ConfigError, match="rubric"):
        Q.judge_params(store, version, {"rubric": "no placeholder"})


def test_judge_job_learns_the_mode_once_and_warns_when_most_rows_fail(store, version,
                                                                     monkeypatch):
    seen = []

    def fake_judge(frame, config, **_):
        import pandas as pd
        seen.append(config.response_format)
        out = pd.DataFrame({"judge_score": np.nan, "judge_reason": "",
                            "judge_error": "no score in the judge's answer: 'ok'"},
                           index=frame.index)
        out.attrs["judge_mode"] = "json_object"
        return out

    monkeypatch.setattr("workbench.judge.judge_frame", fake_judge)
    params = Q.judge_params(store, version, {"backend": "openai", "model": "x",
                                             "base_url": "http://127.0.0.1:9/v1"})
    messages = []
    result = tasks.judge({**params, "chunk_rows": 4}, jobs.InlineContext(None, messages.append))
    assert seen == ["auto", "json_object"]  # probed in the first chunk only
    assert result["mode"] == "json_object" and result["failed"] == 6
    assert result["warning"].startswith("6 of 6 rows (100%) were not judged. Most common error "
                                        "(6 rows): no score in the judge's answer")
    assert any(m.startswith("warning: 6 of 6 rows") for m in messages)


# --- the score table: what Score & select reads instead of the whole version -------------------

def test_score_table_has_the_scores_of_the_full_frame_without_any_text(store, version):
    full = scored(store, version)
    table = Q.score_table(store, version)
    assert list(table.columns) == ["row_key", "id", "length_score", "repetition_score"]
    pd.testing.assert_frame_equal(table, full[list(table.columns)])
    pd.testing.assert_frame_equal(Q.score_summary(table), Q.score_summary(full))


def test_threshold_preview_counts_and_drops_what_the_full_filter_does(store, version):
    full = scored(store, version)
    table = Q.score_table(store, version)
    bounds = {"length_score": (2.0, 12.0), "repetition": (None, 0.5)}
    selection = Q.select_rows(full, Q.SelectOptions("threshold", bounds=bounds))
    passed, dropped = Q.threshold_preview(store, version, table, bounds, n=3)
    assert passed == len(selection.kept) == 3
    expected = Q.dropped_sample(full, selection, n=3)
    pd.testing.assert_frame_equal(dropped[["row_key", "reason", "detail"]],
                                  expected[["row_key", "reason", "detail"]])
    assert dropped["response"].tolist() == expected["response"].tolist()  # short: not cut


def test_top_k_on_the_score_table_keeps_the_rows_the_full_frame_keeps(store, version):
    full = scored(store, version)
    table = Q.score_table(store, version)
    options = Q.SelectOptions("top_k", k=2, score="length")
    on_table = Q.preview_selection(store, table, options)
    on_full = Q.preview_selection(store, full, options)
    assert on_table.kept["row_key"].tolist() == on_full.kept["row_key"].tolist()
    assert len(on_table.kept) == 2
    pd.testing.assert_frame_equal(Q.dropped_preview(store, version, on_table, n=4),
                                  Q.dropped_sample(full, on_full, n=4))


def test_scatter_points_sample_with_the_full_count_and_only_their_texts(store, version):
    scored(store, version)
    table = Q.score_table(store, version)
    sample = Q.scatter_points(store, version, table, "length_score", "repetition_score", n=4)
    assert (len(sample.rows), sample.total) == (4, len(ANSWERS))
    assert "4 of 6 rows" in sample.caption
    by_key = dict(zip(table["row_key"], ANSWERS))
    assert sample.rows["text"].tolist() == [by_key[k][:100] for k in sample.rows["row_key"]]
    everything = Q.scatter_points(store, version, table, "length_score", "length_score")
    assert everything.total == len(ANSWERS) and everything.caption == "All 6 rows."


def test_changing_the_scatter_s_axes_reads_no_text_again(store, version, monkeypatch):
    scored(store, version)
    table = Q.score_table(store, version)
    first = Q.scatter_points(store, version, table, "length_score", "repetition_score", n=4)
    monkeypatch.setattr(Q, "row_texts", lambda *a: pytest.fail("the same rows' texts again"))
    swapped = Q.scatter_points(store, version, table, "repetition_score", "length_score", n=4)
    assert swapped.rows["text"].tolist() == first.rows["text"].tolist()


def test_embedding_map_of_a_version_counts_missing_rows_without_loading_vectors(
        store, version, monkeypatch):
    table = Q.score_table(store, version)
    embed_frame(store, store.frame(version).head(4), encoder=tiny_embedder())
    monkeypatch.setattr(Q.curate, "version_embeddings",
                        lambda *a, **k: pytest.fail("rows lack embeddings: no vector loads"))
    assert Q.embedding_map(store, table, version_id=version) == (None, 2)
