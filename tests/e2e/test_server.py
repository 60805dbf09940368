"""The service as a user runs it: a real `internvl-search serve` process (uvicorn) on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent / "internvl-search"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    env |= {"INTERNVL_SEARCH_DATA_DIR": str(tmp_path / "data"), "INTERNVL_SEARCH_PORT": str(port)}
    proc = subprocess.Popen([str(BIN), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"server exited early:\n{proc.stdout.read() if proc.stdout else ''}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.fail("server did not answer /healthz within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


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
