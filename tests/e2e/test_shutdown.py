"""Graceful shutdown of a real `internvl-search serve`: SIGTERM while an ingestion job runs stops the job at a batch
boundary and puts it back in the queue (nothing acknowledged is lost), the process exits cleanly, and the next
start finishes the job: every image indexed exactly once."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import serving
from factories import make_tiny_internvl_checkpoint

from indexer.catalog import repo
from indexer.catalog.db import make_engine, make_sessionmaker, session_scope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import image_bytes  # noqa: E402

IMAGES = 120


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_internvl_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _job(base: str, job_id: int) -> dict:
    return httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()


def test_sigterm_requeues_the_running_job_and_a_restart_finishes_it(tmp_path: Path, checkpoint: Path) -> None:
    images = {f"im{i:03d}.png": image_bytes("gray", (96, 96), seed=5000 + i) for i in range(IMAGES)}
    # Small batches and one decode thread: many batch boundaries, so the signal lands mid-job.
    settings = {"encoder_checkpoint": str(checkpoint), "device": "cpu", "image_batch_size": "2",
                "decode_workers": "1"}  # fmt: skip
    data = tmp_path / "data"
    with serving.serve_process(data, **settings) as (process, base):
        assert httpx.post(f"{base}/v1/collections", json={"name": "s"}).status_code == 201
        files = [("files", (name, blob, "image/png")) for name, blob in images.items()]
        job_id = httpx.post(f"{base}/v1/index", data={"collection": "s"}, files=files, timeout=120).json()["job_id"]
        deadline = time.monotonic() + 120
        while (seen := _job(base, job_id))["done"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once its shutdown is complete, so the status is -SIGTERM either way; what
        # tells a graceful stop from a kill is the lifespan finishing and the job's state in the catalog.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
        stop_s = time.monotonic() - started
        assert "Application shutdown complete" in process.stdout.read()
    assert seen["done"] >= 4 and stop_s < 60
    catalog = make_engine(f"sqlite:///{data / 'catalog.db'}")
    try:
        with session_scope(make_sessionmaker(catalog)) as session:
            job = repo.get_job(session, job_id)
            state, done = job.state, job.done
    finally:
        catalog.dispose()
    # Stopped at a batch boundary and put back in the queue (a killed process would leave it `running`).
    assert (state == "queued" and seen["done"] <= done < IMAGES) or (state, done) == ("done", IMAGES), (state, done)

    with serving.serve_process(data, **settings) as (_, base):
        assert _job(base, job_id)["done"] >= done  # resumed by the new process, from where it stopped
        deadline = time.monotonic() + 180
        while (job := _job(base, job_id))["state"] != "done" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (job["state"], job["done"], job["failed"], job["skipped"]) == ("done", IMAGES, 0, 0), job
        collection = httpx.get(f"{base}/v1/collections/s").json()
        assert collection["vectors"] == IMAGES and collection["images"]["indexed"] == IMAGES
        for name in list(images)[:: IMAGES // 6]:
            upload = {"file": (name, images[name], "image/png")}
            hits = httpx.post(f"{base}/v1/search/image", data={"collection": "s", "k": "5"}, files=upload).json()
            # The tiny random encoder barely separates look-alike noise, so "itself among the nearest" is the check.
            mine = [hit for hit in hits["results"] if hit["source"] == f"upload:{name}"]
            assert len(mine) == 1 and mine[0]["score"] > 0.999
