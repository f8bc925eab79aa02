"""End to end in a real browser: the app served by `streamlit run`, driven through Chromium.

Uses Debian's chromium through the Playwright package (never `playwright install`); skipped
when either is missing. Waits for text, not for time, because every widget change reruns the
script and redraws asynchronously.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from helpers_app import (CHROMIUM_ARGS, chat_file, free_port, start_server, stop_server,
                         wait_until_up, write_jsonl)
from workbench.store import Store

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
expect = sync_api.expect
TIMEOUT_MS = 20_000


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
    server = start_server(store_path, port, tmp_path / "server.log")
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
        page.locator("input[type=file]").set_input_files(str(data))
        name = page.get_by_label("Dataset name (new, or existing to add a version)")
        expect(name).to_have_value("tickets")  # suggested once the upload reran the script
        page.get_by_role("button", name="Import", exact=True).click()

        metrics = page.get_by_test_id("stMetric")
        expect(metrics.nth(0)).to_be_visible()  # the rerun after the import stays on this tab
        expect(metrics.nth(0)).to_contain_text("61")
        expect(metrics.nth(1)).to_contain_text("60")
        expect(metrics.nth(2)).to_contain_text("1")
        expect(page.get_by_text("Imported 60 rows into 'tickets' as version v1.")).to_be_visible()
        expect(page.get_by_test_id("stDataFrame").filter(has_text="bad JSON")).to_have_count(1)

        page.get_by_role("tab", name="Browse").click()
        expect(page.get_by_text("60 matching rows · page 1 of 2 · version v1")).to_be_visible()
        expect(grid(page)).to_contain_text("question 0: how do I reset item 0?")
        expect(grid(page)).to_contain_text("question 9: how do I reset item 9?")

        page_number = page.get_by_label("Page", exact=True)
        page_number.fill("2")
        page_number.press("Enter")
        expect(page.get_by_text("60 matching rows · page 2 of 2 · version v1")).to_be_visible()
        expect(grid(page)).to_contain_text("question 50: how do I reset item 50?")
        expect(grid(page)).not_to_contain_text("question 0: how do I reset item 0?")
    assert Store(store_path).version(1).n_rows == 60


HOSTILE = "see ![x](http://example.com/a.png) and <b>bold</b>"


def test_dataset_text_is_shown_as_text_and_fetches_nothing(app, page, tmp_path):
    url, store_path = app
    record = {"messages": [{"role": "user", "content": HOSTILE},
                           {"role": "assistant", "content": "<img src=http://example.com/b.png>"}],
              "link": "![m](http://example.com/m.png)"}
    Store(store_path).import_file(write_jsonl(tmp_path / "x.jsonl", [record]),
                                  "![d](http://example.com/d.png)")
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
        expect(page.get_by_test_id("stMetric").nth(1)).to_contain_text("Rows dropped")
        page.get_by_role("button", name="Apply as a new version").click()
        expect(page.get_by_text("Cleaned into version v2")).to_be_visible()

        page.goto(url + "/dedup")
        expect(page.get_by_text("Version v2 of train")).to_be_visible()
        page.get_by_role("button", name="Find duplicates").click()
        expect(page.get_by_test_id("stMetric").nth(1)).to_contain_text("Rows to drop")
        page.get_by_role("button", name="Apply: drop").click()
        expect(page.get_by_text("Deduplicated into version v3")).to_be_visible()
    store = Store(store_path)
    ops = [v.operation for v in store.versions("train")]
    assert ops == ["import", "clean", "dedup"]
    assert set(store.removed(store.active_version("train"))["reason"]) >= {
        "placeholder", "refusal", "exact_duplicate"}
