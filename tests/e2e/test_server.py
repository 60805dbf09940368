"""The service as a user runs it: a real `internvl-search serve` process (uvicorn) on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serving import serve


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    with serve(tmp_path / "data", ready_path="/healthz", timeout_s=60) as base:
        yield base


def test_health_and_readiness(server: str) -> None:
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_request_ids_and_error_schema(server: str) -> None:
    response = httpx.get(f"{server}/no/such/route", headers={"X-Request-ID": "abc-123"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "abc-123"
    body = response.json()
    assert body["error"]["code"] == "not_found" and body["error"]["message"]
    # An id a caller could use to forge log lines is replaced by a fresh one.
    forged = httpx.get(f"{server}/healthz", headers={"X-Request-ID": "x y=z"})
    assert forged.headers["X-Request-ID"] != "x y=z"


def test_openapi_is_served(server: str) -> None:
    spec = httpx.get(f"{server}/openapi.json").json()
    assert "/healthz" in spec["paths"]


def test_metrics_count_requests_by_route(server: str) -> None:
    for _ in range(3):
        httpx.get(f"{server}/healthz")
    text = httpx.get(f"{server}/metrics").text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("internvl_search_request_seconds_count") and 'route="/healthz"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3
