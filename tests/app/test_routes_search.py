"""/v1/search and /v1/images against a real engine (tiny InternVL checkpoint, SQLite, FAISS) through TestClient."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import cached_encoder_factory, engine_config, image_bytes, tiny_checkpoint  # noqa: E402

from app.main import create_app  # noqa: E402
from app.settings import load_settings  # noqa: E402
from indexer import Engine  # noqa: E402


def make_client(root: Path, **settings: object) -> Iterator[TestClient]:
    """A TestClient on a real engine in `root` (tiny encoder); no INTERNVL_SEARCH_* variable leaks in."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("INTERNVL_SEARCH_")]:
            mp.delenv(name)
        config = {"data_dir": root / "data", "encoder_checkpoint": str(tiny_checkpoint()), "device": "cpu"}
        app_settings = load_settings(**{**config, **settings})
    with Engine(engine_config(root, f"sqlite:///{root / 'catalog.db'}"), cached_encoder_factory).open() as engine:
        with TestClient(create_app(app_settings, engine=engine)) as client:
            yield client


def upload(client: TestClient, collection: str, n: int, start: int = 0) -> dict:
    files = [("files", (f"img{i}.png", image_bytes("red", (40, 30), seed=i), "image/png")) for i in range(start, n)]
    response = client.post("/v1/index?wait=true", data={"collection": collection, "metadata": '{"n": 1}'}, files=files)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("search"), max_k=50, max_text_chars=100)


@pytest.fixture(scope="module")
def corpus(client: TestClient) -> str:
    assert client.post("/v1/collections", json={"name": "pics"}).status_code == 201
    assert upload(client, "pics", 8)["job"]["done"] == 8
    return "pics"


def search(client: TestClient, **body: object) -> dict:
    response = client.post("/v1/search", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_text_image_and_id_queries(client: TestClient, corpus: str) -> None:
    found = search(client, collection=corpus, text="ein roter Kreis", k=5)
    assert len(found["results"]) == 5 and found["took_ms"] > 0
    scores = [hit["score"] for hit in found["results"]]
    assert scores == sorted(scores, reverse=True)
    top = found["results"][0]
    assert top["image_url"] == f"/v1/images/{top['id']}/content?collection={corpus}"
    assert top["metadata"] == {"n": 1} and (top["width"], top["height"]) == (40, 30)
    query = image_bytes("red", (40, 30), seed=3)
    inline = search(client, collection=corpus, image_base64=base64.b64encode(query).decode(), k=1)["results"][0]
    assert inline["source"] == "upload:img3.png" and inline["score"] == pytest.approx(1.0, abs=2e-3)
    uploaded = client.post("/v1/search/image", data={"collection": corpus, "k": "1"}, files={"file": ("q.png", query)})
    assert uploaded.status_code == 200 and uploaded.json()["results"][0]["id"] == inline["id"]
    similar = search(client, collection=corpus, image_id=inline["id"], k=8)["results"]
    assert len(similar) == 7 and inline["id"] not in {hit["id"] for hit in similar}
    page = search(client, collection=corpus, text="red", k=2, offset=2)["results"]
    assert [h["id"] for h in page] == [h["id"] for h in search(client, collection=corpus, text="red", k=4)["results"]][
        2:
    ]
    assert search(client, collection=corpus, text="red", k=8, collapse_duplicates=True)["results"]


def test_an_indexed_image_is_a_query_without_its_original(client: TestClient) -> None:
    """Its vector comes from the index, so a collection that keeps no originals serves "more like this" too."""
    assert client.post("/v1/collections", json={"name": "bare", "storage": "none"}).status_code == 201
    upload(client, "bare", 6)
    first = search(client, collection="bare", text="red", k=1)["results"][0]
    assert client.get(f"/v1/images/{first['id']}/content?collection=bare").status_code == 404  # nothing stored
    similar = search(client, collection="bare", image_id=first["id"], k=5)["results"]
    assert len(similar) == 5 and first["id"] not in {hit["id"] for hit in similar}


def server_timing(response) -> dict[str, float]:  # noqa: ANN001 - httpx.Response
    """{"engine": ms, "total": ms} from a Server-Timing header."""
    parts = (part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    return {name: float(value) for name, value in parts}


def test_server_timing_splits_engine_work_from_the_total(client: TestClient, corpus: str) -> None:
    """A batched text query (its batch's pass + the nearest/catalog work) and an unbatched image upload (one trip
    to the pool) both report their engine work, which lies inside the total the body states as took_ms."""
    text = client.post("/v1/search", json={"collection": corpus, "text": "a red circle", "k": 3})
    query = image_bytes("red", (40, 30), seed=3)
    image = client.post("/v1/search/image", data={"collection": corpus, "k": "1"}, files={"file": ("q.png", query)})
    for response in (text, image):
        assert response.status_code == 200, response.text
        timing = server_timing(response)
        assert set(timing) == {"engine", "total"}
        assert timing["total"] == pytest.approx(response.json()["took_ms"], abs=1e-3)
        assert 0 < timing["engine"] <= timing["total"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"text": "red"}, 422, "collection"),  # missing field
        ({"collection": "pics"}, 422, "exactly one of"),
        ({"collection": "pics", "text": "red", "image_id": 1}, 422, "exactly one of"),
        ({"collection": "pics", "text": "red", "k": "many"}, 422, "k"),  # wrong type
        ({"collection": "pics", "text": "red", "k": 51}, 422, "at most 50"),  # over settings.max_k
        ({"collection": "pics", "text": "x" * 101}, 422, "limit is 100"),  # over settings.max_text_chars
        ({"collection": "pics", "text": "red", "filter": {"n": {"near": 1}}}, 422, "Unknown filter operator"),
        ({"collection": "pics", "text": "red", "filter": [1]}, 422, "filter"),
        ({"collection": "pics", "text": "red", "surprise": 1}, 422, "surprise"),  # unknown field
        ({"collection": "nope", "text": "red"}, 404, "not found"),
        ({"collection": "pics", "image_base64": "%%%"}, 422, "base64"),
        ({"collection": "pics", "image_base64": base64.b64encode(b"plain text").decode()}, 422, "not an image"),
        ({"collection": "pics", "image_url": "http://127.0.0.1:9/x.png"}, 422, "image_url"),  # private: refused
        ({"collection": "pics", "image_id": 999}, 404, "not found"),
        ({"collection": "pics", "image_id": 2**70}, 422, "less than or equal"),  # past the catalog's int64
    ],
)
def test_bad_search_requests(client: TestClient, corpus: str, body: dict, status: int, fragment: str) -> None:
    response = client.post("/v1/search", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] + str(error["detail"]) and error["code"]


def test_bad_upload_search(client: TestClient, corpus: str) -> None:
    bad = client.post("/v1/search/image", data={"collection": corpus}, files={"file": ("x.png", b"not an image")})
    assert bad.status_code == 422 and "not an image" in bad.json()["error"]["message"]
    missing = client.post("/v1/search/image", data={"collection": corpus})
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "invalid_input"
    bad_filter = client.post(
        "/v1/search/image", data={"collection": corpus, "filter": "[1"}, files={"file": ("q.png", image_bytes())}
    )
    assert bad_filter.status_code == 422 and "filter" in bad_filter.json()["error"]["message"]


def test_image_routes(client: TestClient, corpus: str) -> None:
    hit = search(client, collection=corpus, text="red", k=1)["results"][0]
    record = client.get(f"/v1/images/{hit['id']}", params={"collection": corpus}).json()
    assert record["source"] == hit["source"] and len(record["sha256"]) == 64
    content = client.get(hit["image_url"])
    assert content.status_code == 200 and content.headers["content-type"] == "image/png"
    thumb = client.get(hit["thumbnail_url"] + "&size=64")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"  # a JPEG
    assert client.get(hit["thumbnail_url"] + "&size=7").status_code == 422
    patched = client.patch(
        f"/v1/images/{hit['id']}?collection={corpus}", json={"metadata": {"tag": "x"}, "merge": True}
    )
    assert patched.status_code == 200 and patched.json()["metadata"] == {"n": 1, "tag": "x"}
    assert client.patch(f"/v1/images/{hit['id']}?collection={corpus}", json={"metadata": 3}).status_code == 422
    assert client.get(f"/v1/images/{hit['id']}").status_code == 422  # the collection is required
    assert client.get(f"/v1/images/{hit['id']}?collection=nope").status_code == 404
    assert client.get(f"/v1/images/abc?collection={corpus}").status_code == 422
    assert client.get(f"/v1/images/{2**70}?collection={corpus}").status_code == 422


def test_delete_removes_from_search(client: TestClient, corpus: str) -> None:
    upload(client, corpus, 10, start=8)
    victim = search(client, collection=corpus, text="red", k=1)["results"][0]["id"]
    assert client.delete(f"/v1/images/{victim}?collection={corpus}").status_code == 204
    assert victim not in {h["id"] for h in search(client, collection=corpus, text="red", k=20)["results"]}
    assert client.get(f"/v1/images/{victim}?collection={corpus}").status_code == 404
    assert client.delete(f"/v1/images/{victim}?collection={corpus}").status_code == 404
