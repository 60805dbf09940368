"""Switching a collection's encoder through a real server: searches over HTTP keep answering 200 throughout the
migration and change answer at one moment, the evaluation gate passes a better encoder, /v1/eval compares two
encoders, rollback and purge work, and mistakes are clear 4xx errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import serving

from internvl_models.shapes_world import write_demo_corpus
from internvl_models.shapes_world.eval_sets import write_caption_manifest

SHIPPED = Path(__file__).resolve().parents[2] / "internvl_models" / "shapes_world" / "weights" / "internvl-shapes"
QUERY = {"collection": "c", "text": "a red circle", "k": 5}
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped shapes encoder")


class Searches(threading.Thread):
    """Searches over HTTP until stopped, recording (start, end, status, ids)."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.results, self.stop = base, [], threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                response = client.post("/v1/search", json=QUERY)
                ids = [hit["id"] for hit in response.json().get("results", [])] if response.status_code == 200 else []
                self.results.append((start, time.monotonic(), response.status_code, ids))


def _ids(base: str) -> list[int]:
    return [hit["id"] for hit in httpx.post(f"{base}/v1/search", json=QUERY, timeout=60).json()["results"]]


def _wait_for_migration(base: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = httpx.get(f"{base}/v1/collections/c/migration", timeout=30).json()
        if state["job"]["state"] in ("done", "failed", "cancelled"):
            return state
        time.sleep(0.2)
    pytest.fail("the migration did not finish in time")


def test_migrate_over_http_while_searching_then_rollback(tmp_path: Path) -> None:
    from factories import make_tiny_internvl_checkpoint

    write_demo_corpus(tmp_path / "corpus", 12, languages=("en",))
    manifest = write_caption_manifest(tmp_path / "eval", 10, ("en",))
    tiny = make_tiny_internvl_checkpoint(tmp_path / "tiny")
    settings = {"device": "cpu", "encoder_checkpoint": str(tiny), "allowed_roots": str(tmp_path)}
    with serving.serve(tmp_path / "data", timeout_s=300, **settings) as base:
        assert httpx.post(f"{base}/v1/collections", json={"name": "c", "storage": "thumbnails"}).status_code == 201
        body = {"collection": "c", "paths": [str(tmp_path / "corpus" / "images")]}
        job = httpx.post(f"{base}/v1/index", params={"wait": True}, json=body, timeout=300).json()["job"]
        assert (job["state"], job["done"]) == ("done", 12), job
        old = _ids(base)
        searches = Searches(base)
        searches.start()
        request = {"encoder": "internvl-c", "checkpoint": str(SHIPPED), "evaluation": {"retrieval": str(manifest)}}
        accepted = httpx.post(f"{base}/v1/collections/c/migrate", json=request, timeout=120)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["job"]["kind"] == "migrate"
        state = _wait_for_migration(base)
        switched_at, deadline = time.monotonic(), time.monotonic() + 60
        while sum(start > switched_at for start, *_ in searches.results) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        searches.stop.set()
        searches.join(60)
        assert state["job"]["state"] == "done", state["job"]
        assert state["gate"]["passed"] and state["serving"]["dim"] == 128 and state["previous"]["dim"] == 16
        _assert_switched_once(searches.results, old, _ids(base))
        _evaluate_side_by_side(base, manifest, tiny)
        _refusals(base, tmp_path)
        rolled = httpx.post(f"{base}/v1/collections/c/rollback", timeout=120)
        assert rolled.status_code == 200 and rolled.json()["dim"] == 16 and _ids(base) == old
        purged = httpx.delete(f"{base}/v1/collections/c/previous", timeout=60)
        assert purged.status_code == 200 and purged.json()["storage"] == "thumbnails"
        assert httpx.get(f"{base}/v1/collections/c/migration").json()["previous"] is None
        again = httpx.post(f"{base}/v1/collections/c/rollback")
        assert again.status_code == 409 and "no previous encoder" in again.json()["error"]["message"]


def _assert_switched_once(results: list, old: list[int], new: list[int]) -> None:
    assert old != new
    assert [r for r in results if r[2] != 200] == [], "every search during the migration succeeded"
    assert {tuple(ids) for *_, ids in results} <= {tuple(old), tuple(new)}
    old_starts = [start for start, _, _, ids in results if ids == old]
    new_ends = [end for _, end, _, ids in results if ids == new]
    assert old_starts and new_ends and max(old_starts) <= min(new_ends)


def _evaluate_side_by_side(base: str, manifest: Path, tiny: Path) -> None:
    body = {"retrieval": str(manifest), "encoders": [{"collection": "c"}, {"checkpoint": str(tiny)}]}
    response = httpx.post(f"{base}/v1/eval", json=body, timeout=300)
    assert response.status_code == 200, response.text
    result = response.json()
    assert [r["retrieval"]["n_images"] for r in result["reports"]] == [10, 10]
    assert result["comparison"]["retrieval.text_to_image.R@1"]["delta"] < 0  # the random tiny encoder is worse


def _refusals(base: str, tmp_path: Path) -> None:
    cases = [
        ("/v1/collections/c/migrate", {"encoder": "internvl-c", "checkpoint": str(SHIPPED)}, 409, "already uses"),
        ("/v1/collections/nope/migrate", {"encoder": "internvl-c"}, 404, "not found"),
        ("/v1/collections/c/migrate", {"encoder": "internvl-c", "checkpoint": str(tmp_path / "x")}, 422, "cannot be"),
        ("/v1/collections/c/migrate", {"encoder": "no-such-encoder"}, 422, "Unknown encoder"),
        ("/v1/collections/c/migrate", {"encoder": "internvl-c", "max_regression": 2}, 422, "max_regression"),
        ("/v1/eval", {"classification": "/etc"}, 422, "outside the allowed roots"),
        ("/v1/eval", {}, 422, "classification"),
        ("/v1/eval", {"retrieval": str(tmp_path / "eval"), "encoders": [{}, {}, {}]}, 422, "encoders"),
    ]
    for path, body, status, message in cases:
        response = httpx.post(f"{base}{path}", json=body, timeout=60)
        assert response.status_code == status, (path, body, response.text)
        assert message in response.text, (path, body, response.text)
