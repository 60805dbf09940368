"""/v1/classify and /v1/embed against a real engine: calibrated probabilities, prompt ensembles, bad input."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_routes_search import make_client, upload

from hostile import image_bytes  # isort: skip
from indexer.classify import DEFAULT_TEMPLATES

IMAGE = base64.b64encode(image_bytes("blue", (40, 30), seed=5)).decode()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    yield from make_client(tmp_path_factory.mktemp("classify"))


@pytest.mark.parametrize("language", sorted(DEFAULT_TEMPLATES))
def test_classify_in_every_language(client: TestClient, language: str) -> None:
    labels = ["red", "blue", "green"]
    response = client.post("/v1/classify", json={"image_base64": IMAGE, "labels": labels, "language": language})
    assert response.status_code == 200, response.text
    ranked = response.json()["labels"]
    probabilities = [row["probability"] for row in ranked]
    assert sorted(row["label"] for row in ranked) == sorted(labels)
    assert probabilities == sorted(probabilities, reverse=True) and math.isclose(sum(probabilities), 1, rel_tol=1e-5)


def test_probabilities_are_softmax_of_scaled_cosines(client: TestClient) -> None:
    body = {"image_base64": IMAGE, "labels": ["a", "b", "c", "d"], "templates": ["{label}"], "k": 2}
    ranked = client.post("/v1/classify", json=body).json()["labels"]
    assert len(ranked) == 2
    full = client.post("/v1/classify", json={**body, "k": None}).json()["labels"]
    cosines = np.array([row["cosine"] for row in full])
    scale = math.log(full[0]["probability"] / full[1]["probability"]) / (cosines[0] - cosines[1])
    expected = np.exp(scale * cosines) / np.exp(scale * cosines).sum()
    np.testing.assert_allclose([row["probability"] for row in full], expected, rtol=1e-4)


def test_classify_an_indexed_image(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "c"})
    upload(client, "c", 1)
    body = {"image_id": 1, "collection": "c", "labels": ["x", "y"]}
    assert client.post("/v1/classify", json=body).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"image_base64": IMAGE}, 422),  # no labels
        ({"image_base64": IMAGE, "labels": []}, 422),
        ({"image_base64": IMAGE, "labels": ["a", "a"]}, 422),
        ({"image_base64": IMAGE, "labels": ["a"], "language": "xx"}, 422),
        ({"image_base64": IMAGE, "labels": ["a"], "templates": ["no slot"]}, 422),
        ({"labels": ["a"]}, 422),  # no image
        ({"image_base64": "@@", "labels": ["a"]}, 422),
        ({"image_id": 1, "labels": ["a"]}, 422),  # an id without its collection
        ({"image_id": 1, "collection": "nope", "labels": ["a"]}, 404),
        ({"image_base64": IMAGE, "labels": ["a"], "encoder": "internvl-g-14b"}, 422),  # not served here
    ],
)
def test_bad_classify_requests(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_embed(client: TestClient) -> None:
    response = client.post("/v1/embed", json={"texts": ["a red circle", "赤い円"], "images_base64": [IMAGE]})
    assert response.status_code == 200, response.text
    body = response.json()
    texts, images = np.array(body["text_vectors"]), np.array(body["image_vectors"])
    assert texts.shape == (2, body["dim"]) and images.shape == (1, body["dim"])
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1, rtol=1e-5)
    for bad in ({}, {"texts": "a"}, {"images_base64": ["@@"]}, {"texts": ["a"], "encoder": "nope"}):
        assert client.post("/v1/embed", json=bad).status_code == 422


def test_classify_an_upload(client: TestClient) -> None:
    image = ("q.png", base64.b64decode(IMAGE), "image/png")
    for labels in ("cat, dog, car", '["cat", "dog", "car"]'):
        response = client.post("/v1/classify/image", data={"labels": labels, "k": "2"}, files={"file": image})
        assert response.status_code == 200, response.text
        assert len(response.json()["labels"]) == 2
    for data in (
        {"labels": ""},
        {"labels": "[1, 2]"},
        {"labels": "a", "templates": "[nope"},
        {"labels": "a", "k": "0"},
    ):
        assert client.post("/v1/classify/image", data=data, files={"file": image}).status_code == 422, data
    bad = client.post("/v1/classify/image", data={"labels": "a"}, files={"file": ("x.png", b"text", "image/png")})
    assert bad.status_code == 422 and "not an image" in bad.json()["error"]["message"]


OTHER = base64.b64encode(image_bytes("red", (30, 40), seed=9)).decode()


def test_classify_several_images(client: TestClient) -> None:
    client.post("/v1/collections", json={"name": "several"})
    upload(client, "several", 1)
    indexed = client.post("/v1/search", json={"collection": "several", "text": "red", "k": 1}).json()["results"][0]
    labels = ["red", "blue", "green"]
    refs = [{"image_base64": IMAGE}, {"image_base64": OTHER}, {"image_id": indexed["id"]}]
    response = client.post("/v1/classify", json={"images": refs, "collection": "several", "labels": labels})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row["image"] for row in body["results"]] == [0, 1, 2] and body["labels"] == body["results"][0]["labels"]
    for ref, result in zip(refs, body["results"], strict=True):  # each ranking is the one the image gets alone
        alone = client.post("/v1/classify", json={**ref, "collection": "several", "labels": labels}).json()
        assert [r["label"] for r in result["labels"]] == [r["label"] for r in alone["labels"]]
        np.testing.assert_allclose(
            [r["probability"] for r in result["labels"]], [r["probability"] for r in alone["labels"]], atol=1e-5
        )
    assert body["results"][0]["labels"] != body["results"][1]["labels"]  # two different pictures, two rankings


def test_single_image_response_keeps_its_shape(client: TestClient) -> None:
    body = client.post("/v1/classify", json={"image_base64": IMAGE, "labels": ["a", "b"]}).json()
    assert body["labels"] and body["results"] == [{"image": 0, "labels": body["labels"]}]


def test_classify_several_uploads(client: TestClient) -> None:
    first, second = base64.b64decode(IMAGE), base64.b64decode(OTHER)
    files = [("file", ("a.png", first, "image/png")), ("files", ("b.png", second, "image/png"))]
    files.append(("files", ("c.png", first, "image/png")))
    response = client.post("/v1/classify/image", data={"labels": "red, blue"}, files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3 and results[0]["labels"] == results[2]["labels"]  # the same picture twice
    only_files = client.post("/v1/classify/image", data={"labels": "red, blue"}, files=files[1:])
    assert only_files.status_code == 200 and len(only_files.json()["results"]) == 2
    too_many = [("files", (f"{i}.png", first, "image/png")) for i in range(65)]
    for bad in ([], too_many, [("files", ("x.png", b"text", "image/png"))]):
        response = client.post("/v1/classify/image", data={"labels": "a, b"}, files=bad or None)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"images": [], "labels": ["a"]}, 422),
        ({"images": [{}], "labels": ["a"]}, 422),  # an entry without an image
        ({"images": [{"image_base64": IMAGE, "image_id": 1}], "labels": ["a"]}, 422),  # two in one entry
        ({"images": [{"image_base64": IMAGE}], "image_base64": IMAGE, "labels": ["a"]}, 422),  # both shapes
        ({"images": [{"image_base64": IMAGE}] * 65, "labels": ["a"]}, 422),  # too many
        ({"images": [{"image_base64": IMAGE}, {"image_base64": "@@"}], "labels": ["a"]}, 422),
        ({"images": [{"image_base64": IMAGE}, {"image_id": 1}], "labels": ["a"]}, 422),  # id without collection
        ({"images": [{"image_id": 1}], "collection": "nope", "labels": ["a"]}, 404),
        ({"images": [{"image_base64": IMAGE, "extra": 1}], "labels": ["a"]}, 422),
        ({"images": {"image_base64": IMAGE}, "labels": ["a"]}, 422),  # not a list
    ],
)
def test_bad_multi_image_requests(client: TestClient, body: dict, status: int) -> None:
    response = client.post("/v1/classify", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
