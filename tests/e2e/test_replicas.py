"""Replicas (#10): two real `internvl-search serve` processes on one machine share one PostgreSQL catalog and one
data directory, with the shipped shapes-world encoder. Process A ingests; process B, searched without pause by a
client thread, serves the new images once A has written them (when a search finds the catalog's index version ahead,
a background thread loads the new index and swaps it in whole; the searches meanwhile are answered from the old one)
and never fails a request on the way. That a second process cannot
write a collection another one holds, across hosts too, is tests/indexer/test_replica_locks.py."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import serving

from indexer.catalog import migrate
from internvl_models.registry import default_internvl_checkpoint
from internvl_models.shapes_world.scene import generate_scene, split_seeds

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)]

N_FIRST, N_SECOND = 4, 12
SEARCH = {"collection": "shapes", "text": "a red circle at the top", "k": 100}


@pytest.fixture(scope="module")
def scenes() -> list:
    if "shapes_world" not in str(default_internvl_checkpoint()):
        pytest.skip("the shapes-world checkpoint is not shipped in this checkout")
    return [generate_scene(seed) for seed in split_seeds("test", N_FIRST + N_SECOND, seed=10)]


def _index(base: str, scenes: list, tmp_path: Path) -> set[str]:
    uploads = []
    for scene in scenes:
        path = tmp_path / f"scene-{scene.seed}.png"
        scene.image.save(path)
        uploads.append(("files", (path.name, path.read_bytes(), "image/png")))
    response = httpx.post(
        f"{base}/v1/index", params={"wait": True}, data={"collection": "shapes"}, files=uploads, timeout=120
    )
    job = response.json()["job"]
    assert (job["state"], job["done"]) == ("done", len(scenes)), job
    return {f"upload:{name}" for _, (name, _, _) in uploads}


def _sources(response: httpx.Response) -> frozenset[str]:
    return frozenset(hit["source"] for hit in response.json()["results"])


def test_a_reader_replica_follows_the_writer_without_a_failed_request(tmp_path, catalog_url, scenes) -> None:
    migrate.upgrade(catalog_url)  # a configured database is migrated by the operator (`db upgrade`), not by serve
    # Warnings only: the client searches without pause, and a request log line per search is only noise here.
    settings = {"device": "cpu", "database_url": catalog_url, "log_level": "warning"}
    data = tmp_path / "data"
    with serving.serve(data, **settings) as writer, serving.serve(data, **settings) as reader:
        assert httpx.post(f"{writer}/v1/collections", json={"name": "shapes"}).status_code == 201
        first = _index(writer, scenes[:N_FIRST], tmp_path)
        assert _sources(httpx.post(f"{reader}/v1/search", json=SEARCH, timeout=60)) == first

        outcomes: list[object] = []  # status code, or the exception's name when no response came
        seen: list[frozenset[str]] = []
        stop = threading.Event()

        def search_forever() -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    try:
                        response = client.post(f"{reader}/v1/search", json=SEARCH)
                    except httpx.HTTPError as exc:
                        outcomes.append(type(exc).__name__)
                        continue
                    outcomes.append(response.status_code)
                    if response.status_code == 200:
                        seen.append(_sources(response))

        client = threading.Thread(target=search_forever, daemon=True)
        client.start()
        try:
            deadline = time.monotonic() + 30
            while len(outcomes) < 5 and time.monotonic() < deadline:  # the reader is under load before A writes
                time.sleep(0.05)
            assert client.is_alive() and len(outcomes) >= 5, outcomes
            second = _index(writer, scenes[N_FIRST:], tmp_path)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (seen and seen[-1] == first | second):
                time.sleep(0.1)
            time.sleep(0.5)  # a few more searches after the switch
        finally:
            stop.set()
            client.join(60)

    counts = Counter(outcomes)
    assert set(counts) == {200}, counts  # no failed request, before, during or after the switch
    assert seen[0] == first and seen[-1] == first | second, (len(seen), sorted(len(s) for s in seen)[-5:])
    # The index is swapped whole: no search ever saw fewer images than one before it.
    assert all(a <= b for a, b in zip(seen, seen[1:], strict=False)), [len(s) for s in seen]
