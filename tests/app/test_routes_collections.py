"""/v1/collections, /v1/index and /v1/jobs against a real engine, including every bad-input case."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_routes_search import make_client, upload  # also puts tests/indexer (the `hostile` kit) on sys.path

from hostile import image_bytes, write_images  # isort: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("collections")


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[TestClient]:
    yield from make_client(root, max_upload_bytes=64 * 1024)


def error(response, status: int) -> dict:  # noqa: ANN001 - httpx.Response
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "detail"} == set(body["error"])
    return body["error"]


def test_collection_life_cycle(client: TestClient) -> None:
    created = client.post("/v1/collections", json={"name": "life", "index_kind": "flat"})
    assert created.status_code == 201
    info = created.json()
    assert info["name"] == "life" and info["dim"] == 16 and len(info["fingerprint"]) == 64 and info["vectors"] == 0
    assert error(client.post("/v1/collections", json={"name": "life"}), 409)["code"] == "conflict"
    assert "life" in {c["name"] for c in client.get("/v1/collections").json()["collections"]}
    upload(client, "life", 2)
    assert client.get("/v1/collections/life").json()["images"]["indexed"] == 2
    assert client.delete("/v1/collections/life").status_code == 204
    assert error(client.get("/v1/collections/life"), 404)["code"] == "not_found"
    error(client.delete("/v1/collections/life"), 404)


@pytest.mark.parametrize(
    "body",
    [{}, {"name": 5}, {"name": "bad name!"}, {"name": "x", "index_kind": "magic"}, {"name": "x", "extra": 1}],
)
def test_bad_collection_requests(client: TestClient, body: dict) -> None:
    assert error(client.post("/v1/collections", json=body), 422)["code"] == "invalid_input"


def test_unknown_encoder_is_422(client: TestClient) -> None:
    assert error(client.post("/v1/collections", json={"name": "x", "encoder": "no-such"}), 422)["message"]


def test_unloadable_checkpoint_of_the_caller_is_422(client: TestClient, root: Path) -> None:
    body = {"name": "x", "encoder": "internvl-c", "checkpoint": str(root / "no-such-checkpoint")}
    assert "cannot be loaded" in error(client.post("/v1/collections", json=body), 422)["message"]


def test_index_jobs_and_failures(client: TestClient, root: Path) -> None:
    client.post("/v1/collections", json={"name": "jobs"})
    files = [("files", ("a.png", image_bytes(seed=1))), ("files", ("notes.txt", b"not an image"))]
    queued = client.post("/v1/index", data={"collection": "jobs"}, files=files)
    assert queued.status_code in (200, 202) and queued.json()["status_url"] == f"/v1/jobs/{queued.json()['job_id']}"
    job_id = queued.json()["job_id"]
    for _ in range(200):
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            break
    assert (job["state"], job["done"], job["failed"]) == ("done", 1, 1)
    assert job["failures"][0]["source"] == "upload:notes.txt" and "not an image" in job["failures"][0]["reason"]
    assert job_id in {j["id"] for j in client.get("/v1/jobs", params={"collection": "jobs"}).json()["jobs"]}
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "done"  # finished jobs stay as they are
    paths = write_images(root / "photos", 2)
    by_path = client.post("/v1/index?wait=true", json={"collection": "jobs", "paths": [str(p) for p in paths]})
    assert by_path.status_code == 200 and by_path.json()["job"]["done"] == 2
    outside = client.post("/v1/index?wait=true", json={"collection": "jobs", "paths": ["/etc/passwd"]})
    assert outside.json()["job"]["failed"] == 1  # refused per item: not under an allowed root


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": {"collection": "jobs"}}, 422),  # no files
        ({"data": {}, "files": [("files", ("a.png", b"x"))]}, 422),  # no collection
        ({"data": {"collection": "jobs", "metadata": "[1]"}, "files": [("files", ("a.png", b"x"))]}, 422),
        ({"data": {"collection": "jobs", "metadata": "{bad"}, "files": [("files", ("a.png", b"x"))]}, 422),
        ({"data": {"collection": "nope"}, "files": [("files", ("a.png", b"x"))]}, 404),
        ({"json": {"collection": "jobs"}}, 422),  # nothing to index
        ({"json": {"urls": ["http://example.org/a.png"]}}, 422),  # no collection
        ({"json": {"collection": "jobs", "urls": "http://x"}}, 422),  # wrong type
        ({"json": {"collection": "nope", "urls": ["http://example.org/a.png"]}}, 404),
        ({"content": b"collection=jobs", "headers": {"content-type": "text/plain"}}, 415),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422),
        ({"files": [("files", ("big.png", b"\0" * 70_000))], "data": {"collection": "jobs"}}, 413),
    ],
)
def test_bad_index_requests(client: TestClient, kwargs: dict, status: int) -> None:
    if not any(c["name"] == "jobs" for c in client.get("/v1/collections").json()["collections"]):
        client.post("/v1/collections", json={"name": "jobs"})
    error(client.post("/v1/index", **kwargs), status)


def test_body_limit_applies_to_streamed_bodies(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield json.dumps({"pad": "x" * 1000}).encode()

    response = client.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
    assert error(response, 413)["code"] == "too_large"


def test_unknown_job_is_404(client: TestClient) -> None:
    error(client.get("/v1/jobs/99999"), 404)
    error(client.post("/v1/jobs/99999/cancel"), 404)
    error(client.get("/v1/jobs/abc"), 422)
    error(client.get(f"/v1/jobs/{2**70}"), 422)
    error(client.get("/v1/jobs", params={"state": "bogus"}), 422)


def test_index_an_uploaded_manifest(client: TestClient, root: Path) -> None:
    client.post("/v1/collections", json={"name": "listed"})
    paths = write_images(root / "listed", 4)
    rows = [
        {"path": str(paths[0]), "year": 2019},
        {"path": str(paths[1]), "year": 2021, "metadata": {"tag": "nested"}},
        {"path": "relative.png"},  # means nothing in an uploaded manifest: fails as an item
        {"path": "/etc/passwd"},  # outside the allowed roots: fails as an item
    ]
    jsonl = "\n".join(json.dumps(row) for row in rows).encode()
    csv_text = f"path,year\n{paths[2]},2022\n{paths[3]},2023\n".encode()
    files = [("manifest", ("a.jsonl", jsonl, "application/jsonl")), ("manifest", ("b.csv", csv_text, "text/csv"))]
    files.append(("files", ("up.png", image_bytes(seed=40), "image/png")))
    response = client.post(
        "/v1/index?wait=true", data={"collection": "listed", "metadata": '{"batch": 7}'}, files=files
    )
    assert response.status_code == 200, response.text
    job = response.json()["job"]
    assert (job["state"], job["done"], job["failed"]) == ("done", 5, 2)
    assert {f["source"] for f in job["failures"]} == {"relative.png", "/etc/passwd"}
    assert any("relative paths" in f["reason"] for f in job["failures"])

    def count(filter_: dict) -> int:
        body = {"collection": "listed", "text": "a shape", "k": 10, "filter": filter_}
        found = client.post("/v1/search", json=body)
        assert found.status_code == 200, found.text
        return len(found.json()["results"])

    assert count({"batch": 7}) == 5  # the form's metadata reaches every item, manifest rows included
    assert count({"year": {"gte": 2021}}) == 3  # CSV numbers are numbers
    assert count({"tag": "nested"}) == 1


@pytest.mark.parametrize(
    ("manifest", "status", "words"),
    [
        (b"", 422, "empty"),
        (b"  \n\n", 422, "empty"),
        (image_bytes(seed=3), 422, "not UTF-8"),
        (b"name,year\ncat.png,2020\n", 422, "location column"),
        (b"path,year\n", 422, "no rows"),
        (b"\xef\xbb\xbfpath\n\n", 422, "no rows"),  # a byte-order mark and blank lines only
        (b"path\n" + b"x" * 70_000, 413, "too large"),
    ],
)
def test_bad_uploaded_manifests(client: TestClient, manifest: bytes, status: int, words: str) -> None:
    client.post("/v1/collections", json={"name": "listed_bad"})
    files = {"manifest": ("m.jsonl", manifest, "application/octet-stream")}
    body = error(client.post("/v1/index", data={"collection": "listed_bad"}, files=files), status)
    assert words in body["message"] or words in body["code"].replace("_", " "), body


def test_manifest_form_field_must_be_a_file(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "listed_bad"})
    form = {"collection": "listed_bad", "manifest": '{"path": "/a.png"}'}
    message = error(client.post("/v1/index", data=form), 422)["message"]
    assert "uploaded file" in message
    files = {"manifest": ("m.jsonl", b'{"path": "/a.png"}', "application/jsonl")}
    error(client.post("/v1/index", data={"collection": "nope"}, files=files), 404)
