"""The search page and the offline docs without a browser: served, local assets only, JS calls documented routes;
and every /v1 operation carries OpenAPI examples."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_routes_search import make_client

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
JS_ROUTE = re.compile(r"""["'](/v1/[A-Za-z0-9_/{}.-]*)["']""")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("web"))


@pytest.mark.parametrize("page", ["/", "/docs"])
def test_pages_use_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assets = ASSET.findall(response.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for asset in assets:
        assert asset.startswith("/") and not asset.startswith("//"), f"{page} loads {asset} from elsewhere"
        fetched = client.get(asset)
        assert fetched.status_code == 200, asset
        if asset.endswith(".js"):
            assert "http://" not in fetched.text and "https://" not in fetched.text  # no CDN, no remote calls


def test_page_script_calls_only_documented_routes(client: TestClient) -> None:
    script = client.get("/web/app.js").text
    paths = set(client.get("/openapi.json").json()["paths"])
    called = set(JS_ROUTE.findall(script))
    assert {"/v1/collections", "/v1/search", "/v1/search/image", "/v1/classify"} <= called
    assert called <= paths, called - paths
    page = client.get("/").text
    for element in ("search-form", "drop", "collection", "results", "classify-form"):
        assert f'id="{element}"' in page


def test_ask_script_calls_only_documented_routes(client: TestClient) -> None:
    """The Ask panel (ask.js, loaded after app.js) posts to /v1/ask and loads images through the URLs it returns."""
    page = client.get("/").text
    assert page.index('src="/web/app.js"') < page.index('src="/web/ask.js"')  # ask.js uses app.js's helpers
    called = set(JS_ROUTE.findall(client.get("/web/ask.js").text))
    assert called == {"/v1/ask"} and called <= set(client.get("/openapi.json").json()["paths"])
    for element in ("ask-form", "question", "ask-threshold", "ask-status", "ask-answer", "ask-figures", "ask-images"):
        assert f'id="{element}"' in page
    assert '<label class="visually-hidden" for="question">' in page


def test_missing_asset_is_404_in_the_error_schema(client: TestClient) -> None:
    response = client.get("/web/nothing.js")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def _schema(spec: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else node


def test_every_v1_operation_has_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    missing = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if not path.startswith("/v1"):
                continue
            assert op.get("description") or op.get("summary"), (method, path)
            bodies = [m for m in op.get("requestBody", {}).get("content", {}).values() if "schema" in m]
            json_bodies = [m for c, m in op.get("requestBody", {}).get("content", {}).items() if c.endswith("json")]
            if json_bodies and not any(_schema(spec, m["schema"]).get("examples") for m in bodies):
                missing.append(f"{method} {path} request")
            for status, response in op["responses"].items():
                media = response.get("content", {}).get("application/json")
                if status.startswith("2") and media and not _schema(spec, media["schema"]).get("examples"):
                    missing.append(f"{method} {path} {status}")
    assert not missing, missing
