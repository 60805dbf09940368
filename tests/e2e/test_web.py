"""The search page in a real headless Chromium (marker `browser`): search by text, results with thumbnails,
image search by file, and the classify panel, against a real server.

It needs the `playwright` Python package and its Chromium (`playwright install chromium`); where either is
missing it skips and says so. tests/app/test_routes_web.py checks the page without a browser on every run.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from test_api import checkpoint, corpus, index_files, serve  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.browser


@pytest.fixture
def browser():  # noqa: ANN201 - playwright Browser
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(headless=True)
        except Exception as exc:  # noqa: BLE001 - any launch failure means "no Chromium here"
            pytest.skip(f"headless Chromium cannot start (run `playwright install chromium`): {exc}".splitlines()[0])
        yield browser
        browser.close()


def test_search_page_end_to_end(browser, tmp_path: Path, checkpoint: Path, corpus: list[Path]) -> None:  # noqa: ANN001, F811
    with serve(tmp_path / "data", checkpoint) as base:
        httpx.post(f"{base}/v1/collections", json={"name": "shapes"})
        index_files(base, "shapes", corpus[:8])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_selector("#collection option[value=shapes]", state="attached")
        page.fill("#query", "ein roter Kreis")
        page.click("#search-form button")
        page.wait_for_selector("#results .card img[src^='blob:']")
        assert page.locator("#results .card").count() == 8
        assert "score" in page.inner_text("#results .card >> nth=0")
        page.set_input_files("#drop-file", str(corpus[3]))
        page.wait_for_function("document.querySelector('#status').textContent.includes('results in')")
        page.set_input_files("#classify-file", str(corpus[3]))
        page.fill("#labels", "red, blue, green")
        page.click("#classify-form button")
        page.wait_for_selector("#classify-results li")
        assert page.locator("#classify-results li").count() == 3
        page.goto(base + "/docs")
        page.wait_for_selector(".op")
        assert page.locator(".op").count() >= 10
        assert not errors, errors
