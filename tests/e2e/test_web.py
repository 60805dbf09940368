"""The search page in a real headless Chromium (marker `browser`): search by text, results with thumbnails,
image search by file, and the classify panel, against a real server; screenshots land in the test's tmp dir.

It drives Debian's `chromium` package (/usr/bin/chromium, which `make test` installs with apt-get where it can)
through the `playwright` Python package (the dev extra) — never a browser build of Playwright's own. Where either
is missing it skips and says why. tests/app/test_routes_web.py checks the page without a browser on every run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
from test_api import checkpoint, corpus, index_files, serve  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.browser


CHROMIUM = "/usr/bin/chromium"  # Debian's package; the Makefile installs it


@pytest.fixture
def browser():  # noqa: ANN201 - playwright Browser
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed (it is in the dev extra: make setup)"
    )
    chromium = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if chromium is None:
        pytest.skip(
            f"Debian's chromium is not installed ({CHROMIUM}): `make test` installs it where apt-get runs as root"
        )
    with sync_api.sync_playwright() as p:
        # Playwright passes --no-sandbox itself (chromiumSandbox is off by default), which running as root needs.
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--disable-dev-shm-usage"])
        yield browser
        browser.close()


def test_search_page_end_to_end(browser, tmp_path: Path, checkpoint: Path, corpus: list[Path]) -> None:  # noqa: ANN001, F811
    with serve(tmp_path / "data", checkpoint) as base:
        httpx.post(f"{base}/v1/collections", json={"name": "shapes"})
        index_files(base, "shapes", corpus[:8])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(90_000)  # a busy two-core machine runs the encoder and the browser together
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(base + "/")
        page.wait_for_selector("#collection option[value=shapes]", state="attached")
        page.fill("#query", "ein roter Kreis")
        page.click("#search-form button")
        page.wait_for_selector("#results .card img[src^='blob:']")
        assert page.locator("#results .card").count() == 8
        assert "score" in page.inner_text("#results .card >> nth=0")
        page.wait_for_function(  # every thumbnail decoded, not just requested
            "[...document.querySelectorAll('#results .card img')].every((im) => im.complete && im.naturalWidth > 0)"
        )
        shot = page.screenshot(path=tmp_path / "search.png", full_page=True)
        assert shot.startswith(b"\x89PNG") and (tmp_path / "search.png").stat().st_size > 10_000
        page.set_input_files("#drop-file", str(corpus[3]))
        page.wait_for_function("document.querySelector('#status').textContent.includes('results in')")
        page.set_input_files("#classify-file", str(corpus[3]))
        page.fill("#labels", "red, blue, green")
        page.click("#classify-form button")
        page.wait_for_selector("#classify-results li")
        assert page.locator("#classify-results li").count() == 3
        page.screenshot(path=tmp_path / "classify.png", full_page=True)
        assert (tmp_path / "classify.png").stat().st_size > 10_000
        page.goto(base + "/docs")
        page.wait_for_selector(".op")
        assert page.locator(".op").count() >= 10
        assert not errors, errors
