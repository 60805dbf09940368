"""The /v1 API as a user meets it: a real `internvl-search serve` process (uvicorn) on a free port, a tiny real
InternVL checkpoint, shapes-world images indexed over HTTP, searched, deleted, and found again after a restart."""

from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest
import serving
from factories import make_tiny_internvl_checkpoint

from internvl_models.shapes_world import write_demo_corpus


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_internvl_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    manifest = write_demo_corpus(tmp_path_factory.mktemp("corpus"), 20, size=64)
    return [manifest.parent / json.loads(line)["path"] for line in manifest.read_text().splitlines()]


def serve(data_dir: Path, checkpoint: Path) -> AbstractContextManager[str]:
    return serving.serve(data_dir, encoder_checkpoint=str(checkpoint), device="cpu")


def index_files(base: str, collection: str, paths: list[Path], wait: bool = True) -> dict:
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
    response = httpx.post(
        f"{base}/v1/index", params={"wait": wait}, data={"collection": collection}, files=files, timeout=120
    )
    assert response.status_code in (200, 202), response.text
    return response.json()


def search(base: str, **body: object) -> list[dict]:
    response = httpx.post(f"{base}/v1/search", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_index_search_delete_and_restart(tmp_path: Path, checkpoint: Path, corpus: list[Path]) -> None:
    data = tmp_path / "data"
    with serve(data, checkpoint) as base:
        assert httpx.post(f"{base}/v1/collections", json={"name": "shapes"}).status_code == 201
        job = index_files(base, "shapes", corpus)["job"]
        assert (job["state"], job["done"], job["failed"]) == ("done", 20, 0)
        assert len(search(base, collection="shapes", text="a red circle", k=5)) == 5
        assert len(search(base, collection="shapes", text="ein roter Kreis", k=5)) == 5
        upload = {"file": (corpus[7].name, corpus[7].read_bytes(), "image/png")}
        top = httpx.post(f"{base}/v1/search/image", data={"collection": "shapes", "k": "3"}, files=upload).json()
        first = top["results"][0]
        assert first["source"] == f"upload:{corpus[7].name}" and first["score"] == pytest.approx(1.0, abs=2e-3)
        assert httpx.get(f"{base}{first['thumbnail_url']}").headers["content-type"] == "image/jpeg"
        victim = search(base, collection="shapes", text="a blue square", k=1)[0]["id"]
        assert httpx.delete(f"{base}/v1/images/{victim}", params={"collection": "shapes"}).status_code == 204
        before = search(base, collection="shapes", text="a blue square", k=19)
        assert victim not in {hit["id"] for hit in before} and len(before) == 19
    with serve(data, checkpoint) as base:  # a fresh process on the same data dir
        info = httpx.get(f"{base}/v1/collections/shapes").json()
        assert info["images"]["indexed"] == 19 and info["vectors"] == 19
        after = search(base, collection="shapes", text="a blue square", k=19)
        assert [hit["id"] for hit in after] == [hit["id"] for hit in before]


def _histogram(text: str, name: str) -> tuple[float, float]:
    """(count, count of observations <= 1) summed over every label set of histogram `name`."""
    count = sum(float(m) for m in re.findall(rf"^{name}_count{{[^}}]*}} (\S+)$", text, re.M))
    ones = sum(float(m) for m in re.findall(rf'^{name}_bucket{{[^}}]*le="1.0"[^}}]*}} (\S+)$', text, re.M))
    return count, ones


def test_concurrent_searches_share_batches(tmp_path: Path, checkpoint: Path, corpus: list[Path]) -> None:
    with serve(tmp_path / "data", checkpoint) as base:
        httpx.post(f"{base}/v1/collections", json={"name": "shapes"})
        index_files(base, "shapes", corpus[:10])
        job_id = index_files(base, "shapes", corpus[10:], wait=False)["job_id"]  # runs during the searches

        async def run_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                queries = [{"collection": "shapes", "text": f"shape number {i}", "k": 5} for i in range(32)]
                return await asyncio.gather(*(client.post("/v1/search", json=q) for q in queries))

        responses = asyncio.run(run_all())
        assert [r.status_code for r in responses] == [200] * 32
        assert all(r.json()["results"] for r in responses)
        metrics = httpx.get(f"{base}/metrics").text
        count, ones = _histogram(metrics, "internvl_search_batch_size")
        assert count > 0 and ones < count, "no micro-batch held more than one query"
        assert count < 32  # fewer forward passes than queries
        assert "internvl_search_index_vectors" in metrics and "internvl_search_jobs" in metrics
        # 32 distinct texts were encoded once each; the same text again is a cache hit.
        httpx.post(f"{base}/v1/search", json={"collection": "shapes", "text": "shape number 3", "k": 5, "offset": 5})
        metrics = httpx.get(f"{base}/metrics").text
        lookups = dict(re.findall(r'^internvl_search_query_cache_lookups{result="(\w+)"} (\S+)$', metrics, re.M))
        assert float(lookups["miss"]) >= 32 and float(lookups["hit"]) >= 1
        for _ in range(300):
            if httpx.get(f"{base}/v1/jobs/{job_id}").json()["state"] == "done":
                break
            time.sleep(0.1)
        assert httpx.get(f"{base}/v1/collections/shapes").json()["vectors"] == 20
