"""Six-language search with the shipped shapes-world InternVL-C (the default encoder) through a real server:
held-out scenes uploaded over HTTP, searched with their all-object captions in English, Chinese, Japanese, German,
French and Spanish, and a hit counted when a top-5 result satisfies the caption (as the model card counts)."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
import serving

from internvl_models.registry import default_internvl_checkpoint
from internvl_models.shapes_world import LANGUAGES
from internvl_models.shapes_world.captions import describe_scene
from internvl_models.shapes_world.content import scene_satisfies
from internvl_models.shapes_world.scene import generate_scene, split_seeds
from internvl_models.shapes_world.vocab import COLOURS

N_SCENES = 40
TOP5_FLOOR = 0.9  # the model card's held-out R@5 is ~1.0 over 500 scenes; 40 scenes make this an easy bar


@pytest.fixture(scope="module")
def scenes() -> list:
    if "shapes_world" not in str(default_internvl_checkpoint()):
        pytest.skip("the shapes-world checkpoint is not shipped in this checkout")
    return [generate_scene(seed) for seed in split_seeds("test", N_SCENES, seed=7)]


def test_six_language_search_and_image_search(tmp_path, scenes) -> None:
    images = {f"scene-{s.seed}.png": s for s in scenes}
    uploads = []
    for name, scene in images.items():
        path = tmp_path / name
        scene.image.save(path)
        uploads.append(("files", (name, path.read_bytes(), "image/png")))
    with serving.serve(tmp_path / "data", device="cpu") as base:  # no checkpoint setting: the default encoder
        assert httpx.post(f"{base}/v1/collections", json={"name": "shapes"}).status_code == 201
        job = httpx.post(
            f"{base}/v1/index", params={"wait": True}, data={"collection": "shapes"}, files=uploads, timeout=300
        ).json()["job"]
        assert (job["state"], job["done"]) == ("done", N_SCENES), job
        for language in LANGUAGES:
            hits = []
            for scene in scenes:
                caption = describe_scene(scene, language, seed=3)
                body = {"collection": "shapes", "text": caption.text, "k": 5}
                results = httpx.post(f"{base}/v1/search", json=body, timeout=60).json()["results"]
                found = [images[r["source"].removeprefix("upload:")] for r in results]
                hits.append(any(scene_satisfies(s, caption.content) for s in found))
            assert sum(hits) / len(hits) >= TOP5_FLOOR, (language, sum(hits), len(hits))
        name, scene = next(iter(images.items()))
        upload = {"file": (name, (tmp_path / name).read_bytes(), "image/png")}
        top = httpx.post(f"{base}/v1/search/image", data={"collection": "shapes", "k": "1"}, files=upload).json()
        assert top["results"][0]["source"] == f"upload:{name}"
        _classify_colours(base)


def _classify_colours(base: str) -> None:
    """Zero-shot over the eight colours on held-out one-object scenes, several images in one request. (Colour: the
    shipped tower has not learned shape yet, see its model card.)"""
    singles = [generate_scene(s, min_objects=1, max_objects=1) for s in split_seeds("test", 16, seed=11)]
    images = []
    for scene in singles:
        buffer = io.BytesIO()
        scene.image.save(buffer, format="PNG")
        images.append({"image_base64": base64.b64encode(buffer.getvalue()).decode()})
    labels = [f"a {colour} shape" for colour in COLOURS]
    body = {"images": images, "labels": labels, "language": "en"}
    response = httpx.post(f"{base}/v1/classify", json=body, timeout=120)
    assert response.status_code == 200, response.text
    best = [ranking["labels"][0]["label"] for ranking in response.json()["results"]]
    right = [label == f"a {scene.objects[0].colour} shape" for label, scene in zip(best, singles, strict=True)]
    assert sum(right) >= 14, list(zip(best, [s.objects[0].colour for s in singles], strict=True))
