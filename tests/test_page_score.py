"""AppTest: the Score & select page scores rows, plots them, filters and applies a selection."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_app import APP, chat_file, open_on_empty_store, page_store
from helpers_app import page_ok as ok
from streamlit.testing.v1 import AppTest

from workbench import jobs, judge, quality
from workbench.curate import embed_frame
from workbench.models import tiny_embedder, tiny_lm
from workbench.sample import SAMPLE_DIR
from workbench.store import Store

TRAIN = SAMPLE_DIR / "support_train.jsonl"
PAGE = "pages/score.py"


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"train": TRAIN})


def open_page() -> AppTest:
    at = ok(AppTest.from_file(str(APP), default_timeout=60).run())
    return ok(at.switch_page(PAGE).run())


def finish(at: AppTest) -> AppTest:
    """Wait for the jobs the page started, then run the page again (the job panel's refresh
    would do it in a browser)."""
    for job in jobs.list_runs():
        assert jobs.wait(job.run_id, timeout=180).state == "done", jobs.log_tail(job.run_id)
    return ok(at.run())


def score_now(at: AppTest) -> AppTest:
    """Press Score now (a background job) and wait for it."""
    return finish(ok(at.button(key="sc_run").click().run()))


def scored_page() -> AppTest:
    return score_now(open_page())


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def test_page_without_dataset_says_what_to_do(tmp_path, monkeypatch):
    at = open_on_empty_store(tmp_path, monkeypatch, PAGE)
    assert any("Import a dataset first" in i.value for i in at.info)


def test_scoring_heuristics_shows_histograms_and_a_reopen_reads_the_cache(store):
    at = open_page()
    assert any("No scores yet" in i.value for i in at.info) and charts(at) == 0
    at = ok(at.button(key="sc_run").click().run())
    [job] = jobs.list_runs()  # scoring runs as a background job, shown in the job panel
    assert job.kind == "heuristics" and job.config["params"]["specs"][0]["name"] == "length"
    at = finish(at)
    assert any("Scored 400 rows" in s.value for s in at.success)
    assert any("Scored 400 rows with length" in c.value for c in at.caption)  # the panel
    assert charts(at) == 3 + 1  # one histogram per score and the scatter of two
    assert at.get("plotly_chart")[0].proto.spec  # a real figure
    reopened = open_page()  # a new session: scores come back from the store's cache
    assert charts(reopened) == 4


def test_user_format_check_adds_a_format_score(store):
    at = open_page()
    at.text_input(key="sc_prefix").input("Thanks for reaching out")
    at = score_now(at)
    frame = quality.with_cached_scores(store, store.frame(store.active_version("train")))
    assert 0 < frame["format_score"].mean() < 1


def test_threshold_slider_counts_the_rows_kept(store):
    at = scored_page()
    at = ok(at.multiselect(key="sc_filter_on").set_value(["length_score"]).run())
    slider = at.slider(key="sc_t_length_score")
    at = ok(slider.set_value((20.0, slider.value[1])).run())
    frame = quality.with_cached_scores(store, store.frame(store.active_version("train")))
    expected = int((frame["length_score"] >= 20).sum())
    metric = next(m for m in at.metric if m.label == "Rows within the thresholds")
    assert metric.value == f"{expected:,} of 400" and 0 < expected < 400
    dropped = at.dataframe[1].value  # after the score summary: the threshold drop sample
    assert len(dropped) and dropped["reason"].eq("below_threshold").all()


def test_apply_top_k_makes_a_version_with_the_rule_and_reasons(store):
    at = scored_page()
    at = ok(at.radio(key="sc_method").set_value("top_k").run())  # the page opens on "none"
    at = ok(at.selectbox(key="sc_rank").set_value("repetition_score").run())
    at = ok(at.number_input(key="sc_kk").set_value(50).run())
    kept = next(m for m in at.metric if m.label == "Rows kept")
    assert kept.value == "50"
    at = ok(at.button(key="sc_apply").click().run())
    latest = store.versions("train")[-1]
    assert latest.operation == "select" and latest.n_rows == 50
    assert latest.params["method"] == "top_k" and latest.params["score"] == "repetition_score"
    assert latest.params["higher_is_better"] is False  # less repetition is better
    removed = store.removed(latest.version_id)
    assert len(removed) == 350 and set(removed["reason"]) == {"not_selected"}
    assert removed["detail"].str.startswith("top_k: rank").all()


def test_combined_score_and_longest_k(store):
    at = scored_page()
    at = ok(at.radio(key="sc_method").set_value("top_k").run())  # the page opens on "none"
    at = ok(at.number_input(key="sc_w_length_score").set_value(1.0).run())
    at = ok(at.selectbox(key="sc_rank").set_value(quality.COMBINED).run())
    at = ok(at.number_input(key="sc_kk").set_value(10).run())
    at = ok(at.button(key="sc_apply").click().run())
    combined = store.versions("train")[-1]
    assert combined.params["score"] == quality.COMBINED and combined.n_rows == 10
    assert combined.params["options"]["weights"] == {"length_score": 1.0}
    at = ok(at.radio(key="sc_method").set_value("longest").run())
    at = ok(at.number_input(key="sc_kk").set_value(4).run())
    assert next(m for m in at.metric if m.label == "Rows kept").value == "4"
    at = ok(at.button(key="sc_apply").click().run())
    longest = store.versions("train")[-1]
    assert longest.params["method"] == "longest_k"
    expected = quality.preview_selection(  # ranked on the texts, as before the score table
        store, quality.scored_version(store, longest.parent_id),
        quality.SelectOptions("longest", k=longest.params["k"]))
    assert len(expected.dropped) > 0, (longest.params["k"], longest.n_rows)
    assert store.frame(longest.version_id)["row_key"].tolist() == \
        expected.kept["row_key"].tolist()


def test_the_page_opens_on_a_look_only_default_that_drops_nothing(store):
    at = scored_page()
    assert at.radio(key="sc_method").value == "none"
    assert not any(b.key == "sc_apply" for b in at.button)  # nothing to apply yet
    assert not {m.label for m in at.metric} & {"Rows kept", "Rows dropped"}
    assert store.versions("train")[-1].operation == "import"
    shown = lambda at: {w.key for w in [*at.number_input, *at.selectbox, *at.slider]}  # noqa: E731
    assert not shown(at) & {"sc_kk", "sc_rank", "sc_sim", "sc_clusters"}
    options = {"top_k": {"sc_kk", "sc_rank"}, "diverse": {"sc_kk", "sc_rank", "sc_sim"},
               "quota": {"sc_kk", "sc_rank", "sc_clusters"}, "longest": {"sc_kk"},
               "threshold": set()}
    for method, keys in options.items():  # only the chosen method's options show
        at = at.radio(key="sc_method").set_value(method).run()
        assert shown(at) & {"sc_kk", "sc_rank", "sc_sim", "sc_clusters"} == keys, method


def test_scatter_is_webgl_and_states_the_rows_it_draws(store):
    at = scored_page()
    scatter = at.get("plotly_chart")[3].proto.spec
    assert '"scattergl"' in scatter and "All 400 rows." in [c.value for c in at.caption]
    assert all('"histogram"' not in h.proto.spec and '"bar"' in h.proto.spec
               for h in at.get("plotly_chart")[:3])  # bins, not every value
    at = ok(at.selectbox(key="sc_y").set_value("length_score").run())
    assert at.get("plotly_chart")[3].proto.spec != scatter  # the axis follows the widget


def test_diverse_top_k_without_embeddings_asks_for_them(store):
    at = scored_page()
    assert at.button(key="sc_embed_start")
    at = at.radio(key="sc_method").set_value("diverse").run()
    assert any("no embedding yet" in e.value for e in at.error) and not at.exception


def test_the_embedding_section_counts_missing_rows_again_only_when_a_run_starts(
        store, tmp_path, monkeypatch):
    import json
    import time

    from workbench import curate

    monkeypatch.setattr(jobs, "SETTLE_S", 0.0)  # trust the runs folder's time at once
    counted, count = [], curate.missing_embeddings
    monkeypatch.setattr(curate, "missing_embeddings",
                        lambda *a, **k: counted.append(1) or count(*a, **k))
    at = scored_page()
    seen = len(counted)
    at = ok(at.selectbox(key="sc_y").set_value("length_score").run())
    assert len(counted) == seen and not at.button(key="sc_embed_start").disabled
    time.sleep(0.05)  # past the clock tick of the folder times
    run = tmp_path / "runs" / "20990101-000000-000-tab2"  # a job another tab started (queued)
    run.mkdir()
    params = {"store": str(store.path), "version_id": store.active_version("train"),
              "field": "conversation", "model": "default", "device": "auto"}
    (run / "config.json").write_text(json.dumps({"task": "embed", "kind": "embed",
                                                 "params": params}))
    at = ok(at.run())
    assert len(counted) == seen + 1 and at.button(key="sc_embed_start").disabled
    assert at.button(key="sc_embed_cancel")  # its panel follows it here


def test_embedding_map_click_shows_the_row(store):
    version = store.active_version("train")
    embed_frame(store, store.frame(version), encoder=tiny_embedder())  # cached as "default"
    at = scored_page()
    assert charts(at) == 5  # histograms, scatter, map
    row_key = int(store.frame(version)["row_key"].iloc[3])
    at.session_state["sc_map"] = {"selection": {"points": [{"customdata": [row_key]}],
                                                "point_indices": [3], "box": [], "lasso": []}}
    at = ok(at.run())
    assert any(c.value == f"row {row_key}" for c in at.caption)
    assert store.frame(version)["response"].iloc[3][:50] in "".join(t.value for t in at.text)


@pytest.fixture
def small(tmp_path: Path, monkeypatch) -> Store:
    yield from page_store(tmp_path, monkeypatch, {"small": chat_file(tmp_path / "s.jsonl", 8)})


def test_model_score_job_runs_in_the_background(small, tmp_path):
    folder = tmp_path / "tiny"
    model, tokenizer = tiny_lm()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    at = open_page()
    at.text_input(key="sc_model").input(str(folder))
    at = ok(at.button(key="sc_mstart").click().run())
    version = small.active_version("small")
    [job] = quality.scoring_jobs(small, version)
    assert jobs.wait(job.run_id, timeout=120).state == "done"
    at = ok(at.run())
    frame = quality.with_cached_scores(small, small.frame(version))
    assert frame[["perplexity_score", "ifd_score"]].notna().all().all()
    assert charts(at) == 3  # perplexity and ifd histograms, and their scatter


def test_judge_reasons_and_unscored_rows_are_shown(store, tmp_path):
    from workbench import score as S
    from workbench.cache import put_scores

    frame = store.frame(1)
    config = {"rubric": "Rate {response}", "model": "x"}
    params = quality.judge_params(store, 1, config)["judge"]
    put_scores(store, frame["id"][:3].tolist(), [2.0, 9.0, 5.0], "judge",
               S.SCORERS["judge"].cache_params(params), ["too vague", "clear", "partly"])
    run = tmp_path / "runs" / "judge-run"  # a finished judge job that could not score one row
    run.mkdir(parents=True)
    jobs._write_json(run / "config.json", {"task": "workbench.quality.judge_task",
                                           "kind": "judge", "created": 0.0,
                                           "params": {"version_id": 1}})
    jobs._write_json(run / "status.json", {"state": "done"})
    jobs._write_json(run / "result.json", {
        "failed": 1, "errors": [{"row_key": 4, "error": "HTTP 429: rate limited"}]})
    at = open_page()
    reasons = next(d.value for d in at.dataframe if "judge_reason" in d.value.columns)
    assert reasons["judge_reason"].tolist()[:3] == ["too vague", "partly", "clear"]
    assert any("1 rows were not scored by the judge" in w.value for w in at.warning)
    errors = next(d.value for d in at.dataframe if "error" in d.value.columns)
    assert errors.to_dict("records") == [{"row_key": 4, "error": "HTTP 429: rate limited"}]


def label_short_answers(store: Store) -> int:
    """Label the sample's placeholder-like short answers bad and 60 others good."""
    from workbench import labelling

    version = store.active_version("train")
    frame = store.frame(version)
    short = frame["response"].str.len() < 15
    labelling.label_rows(store, version, frame["row_key"][short].tolist(), "bad")
    labelling.label_rows(store, version, frame["row_key"][~short].tolist()[:60], "good")
    return int(short.sum())


def test_with_labels_every_score_shows_its_auroc_and_the_learned_score_trains(store):
    bad = label_short_answers(store)
    at = scored_page()
    table = next(d.value for d in at.dataframe if "bad_rows_score" in d.value.columns)
    table = table.set_index("score")
    assert {"auroc", "low", "high", "bad_rows_score"} <= set(table.columns)
    assert table.loc["length_score", "auroc"] > 0.9  # short answers were labelled bad
    assert table.loc["length_score", "bad_rows_score"] == "lower (as declared)"
    at = ok(at.button(key="sc_learn").click().run())
    assert jobs.list_runs()[0].kind == "learn"  # trained as a background job
    at = finish(at)
    assert any("Learned score trained" in s.value for s in at.success)
    assert any("learned_score = P(bad)" in c.value for c in at.caption)
    frame = quality.with_cached_scores(store, store.frame(store.active_version("train")))
    assert frame["learned_score"].notna().all()
    assert any(h.proto.spec and "learned_score" in h.proto.spec for h in at.get("plotly_chart"))
    assert bad >= 5


def test_weights_fitted_to_labels_fill_the_weight_inputs(store):
    label_short_answers(store)
    at = scored_page()
    at = ok(at.button(key="sc_fit_weights").click().run())
    assert at.number_input(key="sc_w_length_score").value > 0
    assert any("Weights fitted to your labels" in s.value for s in at.success)


def test_without_labels_the_page_points_to_the_queue(store):
    at = scored_page()
    assert any("No labels on this version yet" in c.value for c in at.caption)


def test_a_judge_run_that_mostly_failed_says_so_first(store, tmp_path):
    run = tmp_path / "runs" / "judge-bad"  # a finished judge job where 4 of 5 rows failed
    run.mkdir(parents=True)
    jobs._write_json(run / "config.json", {"task": "workbench.quality.judge_task",
                                           "kind": "judge", "created": 0.0,
                                           "params": {"version_id": 1}})
    jobs._write_json(run / "status.json", {"state": "done"})
    errors = [{"row_key": k, "error": "no score in the judge's answer: 'Fine.'"} for k in range(4)]
    warning = judge.failure_warning([e["error"] for e in errors], 5, mode="text")
    jobs._write_json(run / "result.json", {"failed": 4, "errors": errors, "mode": "text",
                                           "warning": warning})
    at = open_page()
    from workbench.views import md_escape

    assert "4 of 5 rows (80%) were not judged" in warning and "larger model" in warning
    assert any(w.value == md_escape(warning) for w in at.warning)
    assert any("Judge answers: free text" in c.value for c in at.caption)
    assert any("4 rows were not scored by the judge" in w.value for w in at.warning)
