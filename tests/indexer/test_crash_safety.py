"""Crash suite: ingestion SIGKILLed at seeded random points of its write order (real subprocesses), the latest
index file truncated as by a power loss, and a disk that fills up mid-job. After each, everything acknowledged is
still acknowledged, as the same image, and every acknowledged image is searchable exactly once.

"Acknowledged" means what a caller could have been told: a ledger item in state `done` with its image id.
test_jobs_resume.py kills at fixed points on both catalog engines; this file draws the points at random (seeded, so
a failure replays) and adds the truncation and the full disk.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, image_bytes, tiny_checkpoint, write_images

from indexer import Engine, IngestItem
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.vector_store import EmbeddingStore

SCRIPT = Path(__file__).parent / "hostile" / "crash_ingest.py"
SEED = 20261124
POINT_KINDS = ("encode", "original", "embeddings", "commit", "committed", "save")
BATCH = 4  # engine_config's image_batch_size
POINTS, TIMED = 10, 1


def _kill_plan(seed: int) -> list[tuple[str, float, float]]:
    """(kind, where in the remaining work as a fraction, index save interval) per round: POINTS kills at points of
    the write order and TIMED kills after a random delay, in a seeded random order."""
    rng = random.Random(seed)
    plan = [(rng.choice(POINT_KINDS), rng.random(), 0.0 if rng.random() < 0.3 else 3600.0) for _ in range(POINTS)]
    plan += [("timed", rng.uniform(0.3, 1.2), 3600.0) for _ in range(TIMED)]
    rng.shuffle(plan)
    return [(kind, where, 0.0 if kind == "save" else interval) for kind, where, interval in plan]


def _kill_point(kind: str, where: float, items: int) -> str:
    """The concrete kill point for `kind` at fraction `where` of `items` items of work still to do: counted in items
    for per-item hooks and in batches for per-batch ones, always inside the work, so the kill happens."""
    if kind == "timed":
        return f"timed:{where:.2f}"
    units = items - 1 if kind in ("original", "committed") else items // BATCH
    return f"{kind}:{1 + int(where * max(0, units - 1))}"


def _run(args: list[str], kill_at: str, save_interval: float) -> str:
    timed = kill_at.startswith("timed:")
    command = [sys.executable, str(SCRIPT), *args, "--kill-at", "never" if timed else kill_at]
    process = subprocess.Popen([*command, "--save-interval", str(save_interval)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)  # fmt: skip
    if timed:
        process.stdout.readline()  # "job N": the job exists; kill somewhere in its batches
        time.sleep(float(kill_at.split(":")[1]))
        process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=180)
    assert process.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    return out.decode()


def _acknowledged(engine: Engine) -> dict[tuple[int, int], int]:
    """(job id, position) -> image id of every ledger item the catalog says is done."""
    found = {}
    with session_scope(engine.sessions) as session:
        for job in repo.list_jobs(session, limit=1000):
            for item in repo.job_items(session, job.id, state="done", limit=100_000):
                found[(job.id, item.position)] = item.image_id
    return found


def assert_consistent(engine: Engine, collection: str = "c") -> list[int]:
    """Catalog, index and embeddings agree, with no image twice; returns the indexed ids."""
    live = engine._live_by_name(collection)
    with session_scope(engine.sessions) as session:
        indexed = repo.image_ids(session, live.id)
        shas = [image.sha256 for image in repo.get_images(session, indexed.tolist())]
    assert len(set(shas)) == len(shas), "an image is indexed twice"
    np.testing.assert_array_equal(live.store.ids(), indexed)
    stored, _ = EmbeddingStore(live.files.embeddings_dir, live.dim).load_all()
    assert set(indexed.tolist()) <= set(stored.tolist())
    return indexed.tolist()


def assert_searchable_once(engine: Engine, images: dict[str, bytes], acknowledged: dict, collection: str = "c") -> None:
    """Each acknowledged image, searched by its own bytes, comes back as itself, and only once."""
    by_sha = {hashlib.sha256(data).hexdigest(): data for data in images.values()}
    with session_scope(engine.sessions) as session:
        rows = {im.id: im.sha256 for im in repo.get_images(session, sorted(set(acknowledged.values())))}
    for image_id, sha in rows.items():
        hits = engine.search(collection, image=by_sha[sha], k=10)
        ids = [h.id for h in hits]
        assert len(ids) == len(set(ids))
        # The tiny random encoder barely separates look-alikes, so "itself among the nearest" is the check.
        assert image_id in ids and next(h.score for h in hits if h.id == image_id) > 0.999


def _pictures_not_indexed(engine: Engine, directory: Path) -> int:
    """Pictures of `directory` not indexed yet: the work an interrupted job still has that reaches the encoder and
    the writer (its duplicates and the broken file settle without either)."""
    live = engine._live_by_name("c")
    with session_scope(engine.sessions) as session:
        indexed = {im.sha256 for im in repo.get_images(session, repo.image_ids(session, live.id).tolist())}
    shas = {hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.glob("img_*.png")}
    return len(shas - indexed)


def _add_images(directory: Path, start: int, n: int) -> None:
    write_images(directory, n, start=start)


def test_sigkill_at_seeded_random_points_then_truncation_and_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    images_dir = tmp_path / "imgs"
    images_dir.mkdir()
    (images_dir / "broken.png").write_text("not a picture")  # sorts first: fails in the first batch of the first job
    config = engine_config(tmp_path, url)
    args = [str(config.data_dir), url, str(tiny_checkpoint()), str(images_dir)]
    rng = random.Random(SEED + 1)
    acknowledged: dict[tuple[int, int], int] = {}
    next_image, left, point_kills, log = 0, 0, 0, []
    for round_no, (kind, where, interval) in enumerate(_kill_plan(SEED)):
        if left == 0:  # no interrupted job: the next run starts a new one over 16 new pictures (and the old ones)
            _add_images(images_dir, next_image, 16)
            next_image, left = next_image + 16, 16
        kill_at = _kill_point(kind, where, left)
        output = _run(args, kill_at, interval)
        point_kills += kind != "timed" and "finished" not in output
        log.append(f"{kill_at} with {left} left: {(output.strip().splitlines() or ['-'])[-1]}")
        index_file = config.data_dir / "collections" / "1" / "index.ivs"
        truncated = round_no % 4 == 3 and index_file.exists()
        if truncated:  # the latest index file cut short, as a power loss can leave it
            index_file.write_bytes(index_file.read_bytes()[: rng.randrange(index_file.stat().st_size)])
        with Engine(config, cached_encoder_factory).open(resume_jobs=False) as engine:
            if truncated:
                assert engine.reports[0].loaded == "corrupt" and engine.reports[0].rebuilt
            now = _acknowledged(engine)
            assert {k: now[k] for k in acknowledged} == acknowledged, f"round {round_no} ({kill_at}) lost data"
            assert_consistent(engine)
            pending = engine.list_jobs("c", states=["queued", "running"])
            left = _pictures_not_indexed(engine, images_dir) if pending else 0
            if pending and left == 0:  # killed after its last picture: finish it here, so the next run has work
                assert engine.run_job(pending[0].id).state == "done"
        acknowledged = now
    assert point_kills == POINTS, f"only {point_kills} of {POINTS} runs were killed at their point: {log}"

    with Engine(config, cached_encoder_factory).open(resume_jobs=False) as engine:
        for job in engine.list_jobs("c", states=["queued", "running"]):
            assert engine.run_job(job.id).state == "done"
        final = _acknowledged(engine)
        assert {k: final[k] for k in acknowledged} == acknowledged
        indexed = assert_consistent(engine)
        assert len(indexed) == next_image  # every distinct picture once; the broken file never
        images = {p.name: p.read_bytes() for p in images_dir.glob("img_*.png")}
        assert_searchable_once(engine, images, final)


def _mount_small_disk(mountpoint: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("simulating a full disk mounts a small tmpfs, which needs root")
    mountpoint.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); a full disk cannot be simulated")


def _noisy_images(directory: Path, n: int) -> dict[str, bytes]:
    """n incompressible 64x64 PNGs (~12 KB each), so a small disk fills after a known share of them."""
    directory.mkdir(parents=True)
    images = {}
    for i in range(n):
        data = image_bytes("gray", (64, 64), seed=1000 + i)
        (directory / f"noise_{i:03d}.png").write_bytes(data)
        images[f"noise_{i:03d}.png"] = data
    return images


def test_a_full_disk_fails_cleanly_loses_nothing_and_recovers(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _mount_small_disk(disk, "1m")
    try:
        _full_disk_scenario(tmp_path, disk)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _full_disk_scenario(tmp_path: Path, disk: Path) -> None:
    images = _noisy_images(tmp_path / "imgs", 120)
    # The whole data directory, SQLite catalog included, on the small disk: the default layout.
    config = engine_config(tmp_path, f"sqlite:///{disk / 'catalog.db'}", data_dir=disk / "data", job_workers=1)
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("c")
        job_id = engine.submit("c", [IngestItem.path(tmp_path / "imgs")])
        job = engine.wait_job(job_id, timeout_s=120)
        assert job.state == "failed" and "no space left" in (job.error or ""), (job.state, job.error)
        acknowledged = _acknowledged(engine)
        assert 0 < len(acknowledged) < len(images), "the disk should fill part-way through the job"
        assert_consistent(engine)
        assert_searchable_once(engine, images, acknowledged)
        _upload_refused_while_full(engine)

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # space comes back
        assert engine.retry_job(job_id).state in ("queued", "running", "done")
        job = engine.wait_job(job_id, timeout_s=180)
        assert (job.state, job.done) == ("done", len(images)), job
        final = _acknowledged(engine)
        assert {k: final[k] for k in acknowledged} == acknowledged
    with Engine(config, cached_encoder_factory).open() as engine:  # and after a restart
        assert len(assert_consistent(engine)) == len(images)
        assert_searchable_once(engine, images, final)


def _upload_refused_while_full(engine: Engine) -> None:
    """Over HTTP, a job whose upload cannot be staged is a 507 in the one error schema, and nothing is queued."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import load_settings

    jobs_before = len(engine.list_jobs("c"))
    settings = load_settings(data_dir=engine.config.data_dir, device="cpu")
    big = image_bytes("gray", (600, 600), seed=5)  # ~1 MB of noise: more than the disk has left
    with TestClient(create_app(settings, engine=engine)) as client:
        response = client.post("/v1/index", data={"collection": "c"}, files=[("files", ("big.png", big, "image/png"))])
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert len(engine.list_jobs("c")) == jobs_before
