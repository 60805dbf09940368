"""Scopes of the evaluation and encoder-switching routes: reading the migration state needs a read key, evaluating,
migrating and rolling back a write key, and the irreversible purge an admin key. (The routes' behaviour runs
against a real server in tests/e2e/test_model_switch_e2e.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_routes_search import make_client

READ, WRITE, ADMIN = "r" * 20, "w" * 20, "a" * 20


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("lifecycle"), api_keys=f"read:{READ},write:{WRITE},admin:{ADMIN}")


def _call(client: TestClient, key: str, method: str, path: str, body: dict | None = None) -> int:
    return client.request(method, path, json=body, headers={"X-API-Key": key}).status_code


def test_scopes(client: TestClient) -> None:
    assert _call(client, WRITE, "POST", "/v1/collections", {"name": "c"}) == 201
    assert _call(client, READ, "GET", "/v1/collections/c/migration") == 200
    for method, path, body in [
        ("POST", "/v1/eval", {"retrieval": "/nowhere.jsonl"}),
        ("POST", "/v1/collections/c/migrate", {"encoder": "internvl-c"}),
        ("POST", "/v1/collections/c/rollback", None),
    ]:
        assert _call(client, READ, method, path, body) == 403, path
        assert _call(client, WRITE, method, path, body) in (409, 422), path  # past the scope check: the engine says no
    assert _call(client, WRITE, "DELETE", "/v1/collections/c/previous") == 403
    assert _call(client, ADMIN, "DELETE", "/v1/collections/c/previous") == 409  # nothing kept to purge


def test_migration_state_of_a_new_collection(client: TestClient) -> None:
    assert _call(client, WRITE, "POST", "/v1/collections", {"name": "fresh", "storage": "none"}) == 201
    state = client.get("/v1/collections/fresh/migration", headers={"X-API-Key": READ}).json()
    assert state["storage"] == "none" and state["serving"]["generation"] == 0
    assert (state["shadow"], state["previous"], state["job"], state["gate"]) == (None, None, None, None)
    assert client.get("/v1/collections/missing/migration", headers={"X-API-Key": READ}).status_code == 404
    bad = client.post("/v1/collections", json={"name": "x", "storage": "all"}, headers={"X-API-Key": WRITE})
    assert bad.status_code == 422 and "storage" in bad.text
