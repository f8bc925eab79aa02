"""End to end in a real browser: the app served by `streamlit run`, driven through Chromium.

Uses Debian's chromium through the Playwright package (never `playwright install`); skipped
when either is missing. Waits for text, not for time, because every widget change reruns the
script and redraws asynchronously.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers_app import (
    CHROMIUM_ARGS,
    chat_file,
    chat_record,
    free_port,
    start_server,
    stop_server,
    wait_until_up,
    write_jsonl,
)

from workbench.store import Store

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
expect = sync_api.expect
TIMEOUT_MS = 20_000
expect.set_options(timeout=TIMEOUT_MS)  # reruns on a shared, busy CPU can take a few seconds


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (workbench setup --dev installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A live app on a free port over an empty store: yields its URL and store path."""
    store_path, port = tmp_path / "store.duckdb", free_port()
    Store(store_path)  # create it, so the server's first run finds a migrated store
    # Jobs (training, evaluation) inherit the server's environment: one thread each on a shared
    # CPU, and their run folders under tmp_path/runs (WORKBENCH_HOME is tmp_path).
    server = start_server(store_path, port, tmp_path / "server.log", home=tmp_path,
                          env={"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, server)
        yield url, store_path
    finally:
        stop_server(server)


@pytest.fixture
def page(browser, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1400, "height": 1200})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@contextmanager
def screenshot_on_failure(page, tmp_path: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the failure: {shot}")
        raise


def grid(page):
    return page.get_by_test_id("stDataFrame").first


def test_upload_import_and_page_through_rows(app, page, tmp_path):
    url, store_path = app
    data = chat_file(tmp_path / "tickets.jsonl", 60, bad_lines=["{not json"])
    with screenshot_on_failure(page, tmp_path):
        page.goto(url)
        expect(page.get_by_text("Import a dataset first (Import tab).").first).to_be_visible()

        page.get_by_role("tab", name="Import").click()
        # The data file's uploader, not the recipe's (it takes .yaml).
        page.locator("input[type=file][accept*='.jsonl']").set_input_files(str(data))
        name = page.get_by_label("Dataset name (new, or existing to add a version)")
        expect(name).to_have_value("tickets")  # suggested once the upload reran the script
        page.get_by_role("button", name="Import", exact=True).click()

        metrics = page.get_by_test_id("stMetric")
        expect(metrics.nth(0)).to_be_visible()  # the rerun after the import stays on this tab
        expect(metrics.nth(0)).to_contain_text("61")
        expect(metrics.nth(1)).to_contain_text("60")
        expect(metrics.nth(2)).to_contain_text("1")
        expect(page.get_by_text("Imported 60 rows as tickets@1.")).to_be_visible()
        expect(page.get_by_test_id("stDataFrame").filter(has_text="bad JSON")).to_have_count(1)

        page.get_by_role("tab", name="Browse").click()
        expect(page.get_by_text("60 matching rows · page 1 of 2 · tickets@1")).to_be_visible()
        expect(grid(page)).to_contain_text("question 0: how do I reset item 0?")
        expect(grid(page)).to_contain_text("question 9: how do I reset item 9?")

        page_number = page.get_by_label("Page", exact=True)
        page_number.fill("2")
        page_number.press("Enter")
        expect(page.get_by_text("60 matching rows · page 2 of 2 · tickets@1")).to_be_visible()
        expect(grid(page)).to_contain_text("question 50: how do I reset item 50?")
        expect(grid(page)).not_to_contain_text("question 0: how do I reset item 0?")
    assert Store(store_path).version(1).n_rows == 60


HOSTILE = "see ![x](http://example.com/a.png) and <b>bold</b>"


def test_dataset_text_is_shown_as_text_and_fetches_nothing(app, page, tmp_path):
    url, store_path = app
    record = {"messages": [{"role": "user", "content": HOSTILE},
                           {"role": "assistant", "content": "<img src=http://example.com/b.png>"}],
              "link": "![m](http://example.com/m.png)"}
    # (a dataset name cannot hold such text: names are checked when a dataset is created)
    Store(store_path).import_file(write_jsonl(tmp_path / "x.jsonl", [record]), "hostile")
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    with screenshot_on_failure(page, tmp_path):
        page.goto(url)
        expect(page.get_by_text("1 matching row ")).to_be_visible()
        # The caption can draw before the grid: wait for the grid itself before measuring it.
        expect(grid(page)).to_be_visible()
        page.wait_for_function(
            "() => { const g = document.querySelector('[data-testid=stDataFrame] canvas');"
            " return g && g.getBoundingClientRect().height > 60; }")
        box = grid(page).bounding_box()
        page.mouse.click(box["x"] + 18, box["y"] + 52)  # the first row's selection checkbox
        texts = page.get_by_test_id("stText")
        expect(texts.nth(0)).to_have_text(HOSTILE)
        expect(texts.nth(1)).to_have_text("<img src=http://example.com/b.png>")
        page.get_by_text("Metadata", exact=True).click()
        expect(page.get_by_test_id("stJson")).to_contain_text("example.com/m.png")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(tmp_path / "hostile.png"), full_page=True)
    assert page.locator("img[src*='example.com']").count() == 0
    assert page.locator("[data-testid=stMain] b", has_text="bold").count() == 0
    assert not [u for u in requests if "example.com" in u], requests


def test_clean_then_dedup_the_sample_data(app, page, tmp_path):
    """Deep-link to Clean, preview and apply the default rules, then deduplicate."""
    from workbench.sample import SAMPLE_DIR

    url, store_path = app
    Store(store_path).import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    with screenshot_on_failure(page, tmp_path):
        page.goto(url + "/clean")
        expect(page.get_by_role("heading", name="Clean")).to_be_visible()
        page.get_by_role("button", name="Preview").click()
        expect(page.get_by_test_id("stMetric").nth(2)).to_contain_text("Rows flagged for review")
        page.get_by_role("button", name="Apply as a new version").click()
        expect(page.get_by_text("Cleaned into train@2")).to_be_visible()
        # The defaults flag most rules' rows; after review, one rule's rows go at once.
        expect(page.get_by_role("heading", name=re.compile("Flagged for review"))).to_be_visible()
        page.get_by_role("button", name=re.compile("Drop .* rows flagged by")).click()
        expect(page.get_by_text(re.compile(r"Dropped \d+ reviewed rows into train@3"))
               ).to_be_visible()

        page.goto(url + "/dedup")
        expect(page.get_by_text(re.compile(r"^Version train@3 · "))).to_be_visible()
        page.get_by_role("button", name="Find duplicates").click()
        expect(page.get_by_test_id("stMetric").nth(1)).to_contain_text("Rows to drop")
        page.get_by_role("button", name="Apply: drop").click()
        expect(page.get_by_text("Deduplicated into train@4")).to_be_visible()
    store = Store(store_path)
    ops = [v.operation for v in store.versions("train")]
    assert ops == ["import", "clean", "drop_flagged", "dedup"]
    removed = set(store.removed(store.active_version("train"))["reason"])
    assert "exact_duplicate" in removed and len(removed) >= 2
    assert set(store.flagged(store.versions("train")[1].version_id)["reason"]) >= {
        "placeholder", "refusal"}


def test_score_the_sample_data_and_select_the_top_k(app, page, tmp_path):
    """Score with the default heuristics, see the histograms, keep the top 5 as a new version."""
    from workbench.sample import SAMPLE_DIR

    url, store_path = app
    Store(store_path).import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    with screenshot_on_failure(page, tmp_path):
        page.goto(url + "/score")
        expect(page.get_by_role("heading", name="Score & select")).to_be_visible()
        expect(page.get_by_text("No scores yet: pick scorers above and press Score now.")
               ).to_be_visible()
        page.get_by_role("button", name="Score now").click()
        # Scoring is a job: its panel and the flash both say so when it ends.
        expect(page.get_by_text("Scored 400 rows with length, lexical_diversity, repetition "
                                "(390 computed, 10 from the cache).").first).to_be_visible()
        charts = page.get_by_test_id("stPlotlyChart")
        expect(charts.first).to_be_visible()
        expect(charts.first.locator(".main-svg").first).to_be_attached()  # plotly drew it
        expect(page.get_by_role("heading", name="Select a subset")).to_be_visible()
        # The page opens on "none yet" (drops nothing, no Apply): top-k is picked on purpose.
        expect(page.get_by_text("Nothing is dropped yet")).to_be_visible()
        expect(page.get_by_role("button", name="Apply as a new version")).to_have_count(0)
        page.get_by_text("top-k by a score").click()

        k = page.get_by_label("k (rows to keep)")
        k.fill("5")
        k.press("Enter")
        metrics = page.get_by_test_id("stMetric")
        expect(metrics.filter(has_text="Rows kept")).to_contain_text("5")
        expect(metrics.filter(has_text="Rows dropped")).to_contain_text("395")
        page.get_by_role("button", name="Apply as a new version").click()
        expect(page.get_by_text("Selected 5 rows into train@2.")).to_be_visible()
    store = Store(store_path)
    active = store.version(store.active_version("train"))
    assert (active.version_id, active.operation, active.n_rows) == (2, "select", 5)
    assert len(store.frame(active.version_id)) == 5


def test_label_rows_in_the_queue_then_see_the_learned_score_on_score_and_select(app, page,
                                                                                 tmp_path):
    """Label a dozen rows one at a time, then train and inspect the learned score."""
    from workbench import labels as LB
    from workbench.sample import SAMPLE_DIR

    url, store_path = app
    Store(store_path).import_file(SAMPLE_DIR / "support_train.jsonl", "train")
    with screenshot_on_failure(page, tmp_path):
        page.goto(url + "/label")
        expect(page.get_by_role("heading", name="Label")).to_be_visible()
        expect(page.get_by_text("why:").first).to_be_visible()
        shown = page.get_by_text("why:").first
        for i in range(12):
            expect(page.get_by_text(re.compile(r"row \d+ of 20 in this round"))).to_be_visible()
            before = shown.inner_text()
            if i % 2:
                page.get_by_role("button", name=re.compile(r"^\S*\s*Bad")).first.click()
            else:
                page.keyboard.press("g")  # the Good button's keyboard shortcut
            expect(shown).not_to_have_text(before)  # the next row is up
        expect(page.get_by_text("Active learning")).to_be_visible()  # the model took over
        metric = page.get_by_test_id("stMetric").filter(has_text="Learned score AUROC")
        expect(metric).to_contain_text(re.compile(r"0\.\d\d|1\.00"))

        page.goto(url + "/score")
        page.get_by_role("button", name="Score now").click()
        expect(page.get_by_role("heading", name="Scores against your labels")).to_be_visible()
        expect(page.get_by_text("6 good and 6 bad labels on this version")).to_be_visible()
        page.get_by_role("button", name="Train the learned score").click()
        # A background job (a worker process starts, imports, trains): give it a loaded
        # machine's time.
        expect(page.get_by_text(re.compile("Learned score trained on 6 good \\+ 6 bad")).first
               ).to_be_visible(timeout=60_000)
        charts = page.get_by_test_id("stPlotlyChart").filter(has_text="learned_score")
        expect(charts.first).to_be_visible()
    store = Store(store_path)
    assert len(LB.current_labels(store)) == 12


def test_train_the_tiny_model_and_follow_the_run(app, page, tmp_path):
    """Start a 4-step run of the tiny model, follow it to done, see the loss curve."""
    from workbench import training

    url, store_path = app
    Store(store_path).import_file(chat_file(tmp_path / "chats.jsonl", 8), "chats")
    with screenshot_on_failure(page, tmp_path):
        page.goto(url + "/train")
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        expect(page.get_by_text("No training runs yet: start one above.")).to_be_visible()
        page.get_by_text("tiny (random weights, for tests)").click()
        # The LoRA defaults of the tiny model's architecture show once the choice reran.
        expect(page.get_by_role("textbox", name="Target modules")).to_have_attribute(
            "placeholder", "q_proj, v_proj")
        for label, value in (("Max steps (0 = by epochs)", "4"), ("Batch size", "4"),
                             ("Max sequence length", "128")):
            field = page.get_by_label(label, exact=True)
            field.fill(value)
            field.press("Tab")  # Enter would submit the form
        page.get_by_role("button", name="Start training").click()
        expect(page.get_by_text("Started training run")).to_be_visible()

        # The job panel and the Step metric refresh live until the run ends (model load + 4 steps).
        expect(page.get_by_text("train · done · 4/4")).to_be_visible(timeout=90_000)
        expect(page.get_by_test_id("stMetric").first).to_contain_text("4/4")
        curve = page.get_by_test_id("stPlotlyChart")
        expect(curve).to_have_count(1)
        expect(curve.locator(".main-svg").first).to_be_attached()
        expect(curve).to_contain_text("Loss per step")
        runs_grid = grid(page)  # the runs table, the page's only grid
        expect(runs_grid).to_contain_text("done")
        expect(runs_grid).to_contain_text("4/4")
        expect(runs_grid).to_contain_text("chats@1")
    [run_id] = training.training_runs(Store(store_path), home=tmp_path / "runs")["run_id"]
    run = training.get_run(run_id, home=tmp_path / "runs")
    assert (run.state, run.step, run.total) == ("done", 4, 4)
    assert len(training.loss_frame(run).query("split == 'train'")) == 4
    assert training.adapter_dir(run) is not None


def pick(page, label: str, option: str) -> None:
    """Choose an option of a selectbox (its list opens in a popover outside the widget).

    The popover closes on any scroll, including the one that brings the box into view for the
    click (its scroll event comes a frame later): scroll first, let that event pass, then open
    it, and open it again should something else scroll the page meanwhile.
    """
    box = page.get_by_role("combobox", name=label, exact=True)
    choice = page.get_by_role("option", name=option, exact=True)
    box.scroll_into_view_if_needed()
    page.evaluate("() => new Promise(done => requestAnimationFrame("
                  "() => requestAnimationFrame(done)))")
    for attempt in range(3):
        if box.get_attribute("aria-expanded") != "true":
            box.click()
        try:
            choice.click(timeout=3_000)
            break
        except sync_api.TimeoutError:
            if attempt == 2:
                raise
            print(f"the options of {label!r} closed before the click: opening them again")
    expect(box).to_have_value(option)


def select_first_grid_row(page, table) -> None:
    """Tick the first row's selection checkbox of a grid (cells are drawn on a canvas)."""
    expect(table).to_be_visible()
    page.wait_for_function(
        "() => { const g = document.querySelector('[data-testid=stDataFrame] canvas');"
        " return g && g.getBoundingClientRect().height > 60; }")
    box = table.bounding_box()
    page.mouse.click(box["x"] + 18, box["y"] + 52)


def test_evaluate_tag_a_failure_make_targeted_data_retrain_and_compare(app, page, tmp_path):
    """The loop on the tiny model: evaluate, tag a failure, correct it into a targeted version
    of the training data, retrain (2 steps) and re-evaluate, then read the before/after."""
    from workbench import evaluate as ev
    from workbench import jobs, loop

    url, store_path = app
    store = Store(store_path)
    store.import_file(chat_file(tmp_path / "eval.jsonl", 4), "evalset")
    train_rows = [chat_record(i, topic="billing") for i in range(100, 106)]
    train, _ = store.import_file(write_jsonl(tmp_path / "train.jsonl", train_rows), "train")
    with screenshot_on_failure(page, tmp_path):
        page.goto(url + "/evaluate")
        expect(page.get_by_role("heading", name="Evaluate")).to_be_visible()
        expect(page.get_by_role("combobox", name="Eval dataset")).to_have_value("evalset")
        pick(page, "Model", "tiny random model (for tests)")
        max_new = page.get_by_label("Max new tokens", exact=True)
        max_new.fill("2")
        max_new.press("Enter")
        page.get_by_text("Embedding similarity to the reference").click()  # no MiniLM load
        expect(page.get_by_role("checkbox", name="Embedding similarity to the reference")
               ).not_to_be_checked()
        expect(max_new).to_have_value("2")
        page.get_by_role("button", name="Run evaluation").click()
        expect(page.get_by_text("Started eval run")).to_be_visible()
        [eval_job] = jobs.list_runs("eval", home=tmp_path / "runs")
        # The run's panel (its label, progress and log) refreshes until the run ends; then
        # the whole page reruns without it. That rerun also resets the tabs to the first one,
        # so open Results only afterwards: it offers the finished run.
        running = page.get_by_text(eval_job.run_id)
        expect(running.first).to_be_visible()
        expect(running).to_have_count(0, timeout=90_000)
        page.get_by_role("tab", name="Results").click()
        expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(
            re.compile(re.escape(eval_job.run_id)))

        page.goto(url + "/errors")
        expect(page.get_by_role("heading", name="Errors")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Eval rows")).to_contain_text(
            "4", timeout=30_000)  # the first run of the page reads the run and its checks
        failures = loop.failures(eval_job.run_id, home=tmp_path / "runs")
        assert len(failures), "the tiny random model should fail the automatic checks"
        worst = int(failures["row_key"].iloc[0])  # the Failure picker starts on the worst one

        tags = page.get_by_label("Manual tags (comma-separated)")
        tags.fill("tone")
        page.get_by_role("button", name="Save tags and note").click()
        expect(page.get_by_text(f"Saved the tags and note of row {worst}.")).to_be_visible()

        select_first_grid_row(page, grid(page))  # the failures table, worst first
        expect(page.get_by_text(f"1 failures chosen: rows {worst}")).to_be_visible()
        # The answers editor starts with the references as the expected answers: keep them.
        editor = page.get_by_test_id("stDataFrame").filter(has_text="expected answer")
        expect(editor).to_contain_text(str(failures["reference"].iloc[0]))
        pick(page, "Training dataset to extend", "train")
        page.get_by_role("button", name="Make targeted version").click()
        expect(page.get_by_text("Made targeted version train@2 (7 rows); it is now the active version of train.")).to_be_visible()

        expect(page.get_by_role("heading", name="Retrain and re-evaluate")).to_be_visible()
        expect(page.get_by_label("Base model", exact=True)).to_have_value("tiny")
        steps = page.get_by_label("Steps", exact=True)
        steps.fill("2")
        steps.press("Enter")
        expect(steps).to_have_value("2")
        page.get_by_role("button", name="Retrain and re-evaluate").click()
        # Training 2 steps, then evaluating the adapter on the 4 eval rows, in one job.
        expect(page.get_by_role("heading", name="Before / after")).to_be_visible(
            timeout=150_000)
        expect(page.get_by_text("1 rows left out (their prompts were trained on)")
               ).to_be_visible()
        expect(page.get_by_test_id("stPlotlyChart").filter(
            has_text="Share of rows with each failure tag")).to_be_visible()

        # The retrained model is a training run like any other: on Train with its loss
        # curve, and first among Evaluate's models, where it is evaluated.
        [retrain] = loop.retrain_jobs(store, eval_job.run_id, home=tmp_path / "runs")
        child = f"{retrain.run_id}-train"
        page.goto(url + "/train")
        expect(page.get_by_role("heading", name="Train")).to_be_visible()
        expect(page.get_by_role("combobox", name="Run", exact=True)).to_have_value(
            re.compile(re.escape(child) + ".*retrained by loop " + re.escape(retrain.run_id)))
        expect(page.get_by_test_id("stPlotlyChart").filter(has_text="Loss per step")
               ).to_be_visible()
        page.goto(url + "/evaluate")
        expect(page.get_by_role("combobox", name="Model")).to_have_value(
            re.compile(f"trained run {re.escape(child)} \\(train@2, tiny"))
        max_new = page.get_by_label("Max new tokens", exact=True)
        max_new.fill("2")
        max_new.press("Enter")
        page.get_by_text("Embedding similarity to the reference").click()
        expect(max_new).to_have_value("2")
        page.get_by_role("button", name="Run evaluation").click()
        expect(page.get_by_text("Started eval run")).to_be_visible()
        second = next(j for j in jobs.list_runs("eval", home=tmp_path / "runs")
                      if j.run_id != eval_job.run_id)
        expect(page.get_by_text(second.run_id)).to_have_count(0, timeout=90_000)
    assert jobs.status(second.run_id, home=tmp_path / "runs").state == "done"
    assert ev.read_summary(second.run_dir)["model"] == {
        "run_dir": str((tmp_path / "runs" / child).resolve())}
    tagged = loop.failures(eval_job.run_id, home=tmp_path / "runs").set_index("row_key")
    assert tagged.at[worst, "manual_tags"] == ["tone"]
    targeted = store.version(store.active_version("train"))
    assert (targeted.operation, targeted.parent_id, targeted.n_rows) == (
        "targeted", train.version_id, 7)  # the 6 training rows and the corrected failure
    assert targeted.params["eval_run"] == eval_job.run_id
    [retrain] = loop.retrain_jobs(store, eval_job.run_id, home=tmp_path / "runs")
    assert retrain.state == "done"
    from workbench import runs

    registry = runs.table(store, home=tmp_path / "runs").set_index("run_id")
    assert registry.loc[child, "parent"] == retrain.run_id


EVIL_IMAGE = "![x](http://evil.example/a.png)"
EVIL_SCRIPT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
EVIL = f"{EVIL_IMAGE} {EVIL_SCRIPT}"


def hostile_store(store_path: Path, tmp_path: Path) -> str:
    """Fill the store and the runs folder with hostile text everywhere; return the run id."""
    from workbench import evaluation, loop

    # The last list item below is cut off, so the truncation rule quotes its last words, the
    # hostile ones, in its detail; "N/A" is a placeholder the placeholder rule hits.
    truncated = f"Steps:\n1. Open the page.\n2. see {EVIL_SCRIPT} {EVIL_IMAGE} then"
    rows = [{"messages": [{"role": "user", "content": f"How do I see {EVIL}?"},
                          {"role": "assistant", "content": truncated}],
             EVIL_IMAGE: EVIL_SCRIPT, "topic": EVIL},
            {"messages": [{"role": "user", "content": f"Question {EVIL}"},
                          {"role": "assistant", "content": "N/A"}], "topic": EVIL_IMAGE}]
    rows += [rows[0]]  # a duplicate, so Deduplicate shows a hostile cluster
    rows += [chat_record(i, topic=EVIL if i % 2 else "plain") for i in range(12)]
    store = Store(store_path)
    # (dataset names cannot hold such text any more: they are checked on creation)
    store.import_file(write_jsonl(tmp_path / "evil.jsonl", rows), "hostile")
    predictions = [{"prompt": f"Q{i} {EVIL}", "reference": "yes", "prediction": f"no {EVIL}",
                    "model": f"m {EVIL_IMAGE}", EVIL_IMAGE: EVIL_SCRIPT,
                    "topic": EVIL if i % 2 else "plain"} for i in range(4)]
    job, _ = evaluation.import_run(write_jsonl(tmp_path / "p.jsonl", predictions), store=store,
                                   similarity=False, home=tmp_path / "runs")
    loop.annotate(job.run_id, 1, tags=[f"tag {EVIL_IMAGE}", EVIL_SCRIPT, "<b>bold tag</b>"],
                  note=EVIL, home=tmp_path / "runs")
    return job.run_id


def test_hostile_rows_metadata_and_rule_details_fetch_nothing_and_run_nothing_anywhere(
        app, page, tmp_path):
    """Every page, with hostile text in rows, metadata, rule details, run labels, manual tags
    and slice names: no request leaves the app, no script runs."""
    url, store_path = app
    hostile_store(store_path, tmp_path)
    requests: list[str] = []
    console: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("console", lambda message: console.append(message.text))

    def settle(name: str) -> None:
        page.wait_for_load_state("networkidle")
        page.evaluate("() => new Promise(done => setTimeout(done, 500))")  # late redraws
        assert page.evaluate("() => window.__pwned") is None, f"a script ran on {name}"
        assert page.locator("img[src*='evil.example'], img[src='x']").count() == 0, name

    with screenshot_on_failure(page, tmp_path):
        page.goto(url)
        expect(page.get_by_role("heading", name="Datasets")).to_be_visible()
        select_first_grid_row(page, grid(page))
        expect(page.get_by_test_id("stText").first).to_contain_text("evil.example")
        page.get_by_text("Metadata", exact=True).click()
        expect(page.get_by_test_id("stJson")).to_contain_text("evil.example")
        settle("Datasets")

        page.goto(url + "/clean")
        expect(page.get_by_role("heading", name="Clean")).to_be_visible()
        page.get_by_role("button", name="Preview").click()
        samples = page.get_by_text(re.compile(r"^truncated: .* samples$"))
        samples.click()
        detail = page.get_by_text(re.compile("last list item stops mid-sentence at"))
        expect(detail.first).to_contain_text(EVIL_IMAGE)  # the detail, shown as text
        expect(page.get_by_text(re.compile(r"^placeholder: "))).to_be_visible()
        settle("Clean preview")

        page.goto(url + "/dedup")
        expect(page.get_by_role("heading", name="Deduplicate")).to_be_visible()
        page.get_by_role("button", name="Find duplicates").click()
        expect(page.get_by_test_id("stMetric").nth(1)).to_contain_text("Rows to drop")
        settle("Deduplicate")

        page.goto(url + "/score")
        expect(page.get_by_role("heading", name="Score & select")).to_be_visible()
        page.get_by_role("button", name="Score now").click()
        expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
        settle("Score & select")

        for path, heading in (("/label", "Label"), ("/train", "Train"),
                              ("/evaluate", "Evaluate"), ("/errors", "Errors"),
                              ("/loop", "Iterations")):
            page.goto(url + path)
            expect(page.get_by_role("heading", name=heading)).to_be_visible()
            if path == "/errors":  # the slice chart's labels are the hostile manual tags
                chart = page.get_by_test_id("stPlotlyChart").first
                expect(chart.locator(".main-svg").first).to_be_attached()
                expect(chart).to_contain_text(EVIL_IMAGE)
                # shown as written: plotly would otherwise read them as its HTML-like markup
                expect(chart).to_contain_text("<b>bold tag</b>")
                expect(chart).to_contain_text("<script>window.__pwned = 1</script>")
            settle(heading)

    outside = [u for u in requests if not u.startswith((url, "data:", "blob:"))]
    assert not outside, outside
    assert not [u for u in requests if u.rstrip("/").endswith("/x")], "an <img src=x> loaded"
    assert not [m for m in console if "pwned" in m], console
