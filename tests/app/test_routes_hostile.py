"""Hostile input over HTTP, against a real engine (tiny encoder, SQLite, FAISS) through TestClient: the hostile-image
corpus as query images (each a 422 with its reason) and as uploads (each a failed ledger row with its reason),
SSRF through every URL entry point, metadata caps, deep and odd JSON bodies; then per-key rate limits and hashed
API keys with their scopes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import cached_encoder_factory, engine_config, http_server, image_bytes, send_bytes  # noqa: E402
from hostile.images import hostile_images  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexer import Engine  # noqa: E402

CORPUS = hostile_images()


def hostile_client(root: Path, **settings: object) -> Iterator[TestClient]:
    """A TestClient on a real engine whose limits match the corpus (max_frames=5); no INTERNVL_SEARCH_* leaks in."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("INTERNVL_SEARCH_")]:
            mp.delenv(name)
        app_settings = load_settings(data_dir=root / "data", device="cpu", **settings)
    config = engine_config(root, f"sqlite:///{root / 'catalog.db'}", max_frames=5)
    with Engine(config, cached_encoder_factory).open() as engine:
        with TestClient(create_app(app_settings, engine=engine)) as client:
            yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    for client in hostile_client(tmp_path_factory.mktemp("hostile")):
        assert client.post("/v1/collections", json={"name": "h"}).status_code == 201
        files = [("files", (f"seed{i}.png", image_bytes("red", seed=i), "image/png")) for i in range(3)]
        assert client.post("/v1/index?wait=true", data={"collection": "h"}, files=files).status_code == 200
        yield client


def refusal(response, status: int = 422) -> str:  # noqa: ANN001 - httpx.Response
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "detail"}
    return body["error"]["message"]


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_hostile_query_images_are_422_with_their_reason(client: TestClient, name: str) -> None:
    data, reason = CORPUS[name]
    response = client.post("/v1/search/image", data={"collection": "h", "k": "2"}, files={"file": (name, data)})
    if reason is None:
        assert response.status_code == 200, response.text
    else:
        assert reason in refusal(response)


def test_hostile_uploads_become_failed_rows_with_their_reasons(client: TestClient) -> None:
    names = sorted(CORPUS)
    for part in (names[::2], names[1::2]):  # a job lists 20 failures at most: two jobs
        files = [("files", (name, CORPUS[name][0], "image/png")) for name in part]
        job = client.post("/v1/index?wait=true", data={"collection": "h"}, files=files).json()["job"]
        assert job["state"] == "done" and job["total"] == len(part)
        reasons = {f["source"].removeprefix("upload:"): f["reason"] for f in job["failures"]}
        for name in part:
            expected = CORPUS[name][1]
            assert (name not in reasons) if expected is None else (expected in reasons[name]), (name, reasons)


def test_blocked_urls_are_refused_at_every_entry_point(client: TestClient) -> None:
    png = image_bytes("teal", seed=40)
    with http_server({"/a.png": send_bytes(png)}) as local:
        urls = {
            "http://169.254.169.254/latest/meta-data/": "metadata",
            f"{local}/a.png": "loopback",
            f"http://[::ffff:127.0.0.1]:{local.rsplit(':', 1)[1]}/a.png": "loopback",
            "http://10.1.2.3/a.png": "private",
            "http://[fd00::1]/a.png": "private",
            "file:///etc/passwd": "scheme 'file'",
        }
        for url, reason in urls.items():
            assert reason in refusal(client.post("/v1/search", json={"collection": "h", "image_url": url}))
            assert reason in refusal(client.post("/v1/classify", json={"image_url": url, "labels": ["a", "b"]}))
        job = client.post("/v1/index?wait=true", json={"collection": "h", "urls": list(urls)}).json()["job"]
    assert job["failed"] == len(urls) and job["done"] == 0
    for failure in job["failures"]:
        assert urls[failure["source"]] in failure["reason"]


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (_nested(9), "nested more than 8 levels"),
        ({"blob": "x" * 70_000}, "the limit is 65,536"),
        ({"a\u0000b": 1}, "NUL"),
        ({"a": ["ok", "nul\u0000"]}, "NUL"),
    ],
)
def test_metadata_over_the_caps_is_422(client: TestClient, metadata: dict, reason: str) -> None:
    body = {"collection": "h", "urls": ["http://10.0.0.1/a.png"], "metadata": metadata}
    assert reason in refusal(client.post("/v1/index", json=body))
    form = {"collection": "h", "metadata": json.dumps(metadata)}
    files = [("files", ("x.png", image_bytes(seed=50), "image/png"))]
    assert reason in refusal(client.post("/v1/index", data=form, files=files))
    image_id = client.post("/v1/search", json={"collection": "h", "text": "red", "k": 1}).json()["results"][0]["id"]
    assert reason in refusal(client.patch(f"/v1/images/{image_id}?collection=h", json={"metadata": metadata}))


def test_non_finite_numbers_and_manifest_rows_over_the_caps(client: TestClient) -> None:
    # Python's JSON parser accepts NaN; JSON (and PostgreSQL's jsonb) do not: refused before anything is stored.
    body = '{"collection": "h", "urls": ["http://10.0.0.1/a.png"], "metadata": {"x": NaN}}'
    headers = {"Content-Type": "application/json"}
    assert "JSON cannot represent" in refusal(client.post("/v1/index", content=body, headers=headers))
    rows = [{"url": "http://10.0.0.1/a.png", "metadata": _nested(12)}, {"url": "http://10.0.0.1/b.png", "n": 1}]
    manifest = "\n".join(json.dumps(row) for row in rows).encode()
    job = client.post("/v1/index?wait=true", data={"collection": "h"}, files={"manifest": ("m.jsonl", manifest)})
    failures = {f["source"]: f["reason"] for f in job.json()["job"]["failures"]}
    assert "nested more than 8 levels" in failures["manifest line 1"]
    assert "private" in failures["http://10.0.0.1/b.png"]  # the other row went on to its own (refused) fetch


@pytest.mark.parametrize(
    "body",
    [
        "[" * 50_000 + "]" * 50_000,  # deeper than any JSON parser's recursion limit
        '{"collection": "h", "text": "a", "k": 1e400}',
        '{"collection": "h", "text": "a", "k": 123456789012345678901234567890}',
        '{"collection": "h", "text": "a", "filter": {"year": {"gte": 1e999}}}',
        '{"collection": "h", "text": "a", "filter": {"tag": "nul\\u0000"}}',
        '{"collection": "h", "text": "\\ud800"}',  # a lone surrogate
    ],
)
def test_odd_json_bodies_are_4xx(client: TestClient, body: str) -> None:
    response = client.post("/v1/search", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


# --- per-key rate limits and hashed keys --------------------------------------------------------------------------

ALICE, BOB, WRITER, ADMIN = (
    "alice-key-0123456789",
    "bob-key-0123456789ab",
    "writer-key-0123456789",
    "admin-key-012345678",
)


def digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_each_key_has_its_own_rate_limit(tmp_path: Path) -> None:
    keys = f"read:{digest(ALICE)},read:{digest(BOB)}"
    for client in hostile_client(tmp_path, api_keys=keys, rate_limit_per_s=0.5, rate_limit_burst=2):
        alice, bob = {"X-API-Key": ALICE}, {"Authorization": f"Bearer {BOB}"}
        assert [client.get("/v1/collections", headers=alice).status_code for _ in range(2)] == [200, 200]
        limited = client.get("/v1/collections", headers=alice)
        assert refusal(limited, 429).startswith("rate limit") and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        assert client.get("/v1/collections", headers=bob).status_code == 200  # another key, another bucket
        assert client.get("/healthz").status_code == 200  # probes are not limited


def test_without_keys_the_limit_is_per_client_address(tmp_path: Path) -> None:
    for client in hostile_client(tmp_path, rate_limit_per_s=0.5, rate_limit_burst=1):
        assert client.get("/v1/collections").status_code == 200
        assert client.get("/v1/collections").status_code == 429


def test_hashed_keys_from_settings_and_a_key_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key_file = tmp_path / "keys"
    key_file.write_text(f"# service keys\nwrite:{digest(WRITER)}  # the indexer\n\nadmin:{digest(ADMIN)}\n")
    for client in hostile_client(tmp_path, api_keys=f"read:{digest(ALICE)}", api_keys_file=str(key_file)):
        read, write, admin = ({"X-API-Key": k} for k in (ALICE, WRITER, ADMIN))
        assert client.get("/v1/collections", headers=read).status_code == 200
        assert refusal(client.post("/v1/collections", json={"name": "k"}, headers=read), 403)
        assert client.post("/v1/collections", json={"name": "k"}, headers=write).status_code == 201
        assert "'admin'" in refusal(client.delete("/v1/collections/k", headers=write), 403)
        assert client.delete("/v1/collections/k", headers=admin).status_code == 204
        # The digest itself is not a key: knowing the configuration does not let anyone in.
        assert refusal(client.get("/v1/collections", headers={"X-API-Key": digest(ALICE)}), 401)
    for key in (ALICE, WRITER, ADMIN):
        assert key not in caplog.text
