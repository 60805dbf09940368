"""API keys: scopes, both header forms, constant-time comparison, 401/403 in the one error schema; and timeouts."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_routes_search import make_client

from app.auth import granted_rank

READ = "r" * 20
WRITE = "w" * 20


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("auth"), api_keys=f"read:{READ},write:{WRITE}")


def test_every_v1_route_needs_a_key(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method in operations:
            url = path.replace("{name}", "x").replace("{image_id}", "1").replace("{job_id}", "1")
            response = client.request(method.upper(), url)
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200  # probes and the page stay open
    assert client.get("/").status_code == 200


def test_scopes_and_header_forms(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bearer = {"Authorization": f"Bearer {READ}"}
    assert client.get("/v1/collections", headers=bearer).status_code == 200
    assert client.get("/v1/collections", headers={"X-API-Key": READ}).status_code == 200
    denied = client.post("/v1/collections", json={"name": "a"}, headers=bearer)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    created = client.post("/v1/collections", json={"name": "a"}, headers={"X-API-Key": WRITE})
    assert created.status_code == 201
    assert client.get("/v1/collections", headers={"X-API-Key": WRITE}).status_code == 200  # write includes read
    wrong = client.get("/v1/collections", headers={"Authorization": "Bearer " + "x" * 20})
    assert wrong.status_code == 401 and READ not in wrong.text
    assert READ not in caplog.text and WRITE not in caplog.text  # keys never reach the logs


def test_key_comparison() -> None:
    pairs = [("read", READ), ("write", WRITE), ("admin", "a" * 20)]
    assert granted_rank(pairs, READ) == 0 and granted_rank(pairs, "a" * 20) == 2
    assert granted_rank(pairs, READ[:-1]) is None and granted_rank(pairs, "") is None


def test_request_timeout_answers_504(tmp_path_factory: pytest.TempPathFactory) -> None:
    for client in make_client(tmp_path_factory.mktemp("slow"), request_timeout_s=0.001):
        client.post("/v1/collections", json={"name": "t"})  # may itself time out; the collection exists anyway
        response = client.post("/v1/search", json={"collection": "t", "text": "a red circle " * 50})
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
