"""Crash safety: an ingestion SIGKILLed at several points of the write order, then resumed, ends with every
acknowledged image in the catalog, the embeddings and the index exactly once, and nothing lost."""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from hostile import cached_encoder_factory, engine_config, tiny_checkpoint, write_images

from indexer import Engine
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.vector_store import EmbeddingStore

SCRIPT = Path(__file__).parent / "hostile" / "crash_ingest.py"
UNIQUE, COPIES, BROKEN = 36, 2, 2
# Each kill costs a process start (torch import, model load), so PostgreSQL repeats only the two points where the
# write order matters most: shards durable but not committed, and committed but the index not saved.
KILLS = {
    "sqlite": (("encode:2", False), ("embeddings:2", False), ("committed:8", False), ("never", True)),
    "postgresql": (("embeddings:2", False), ("committed:8", False)),
}


def _corpus(directory: Path) -> None:
    paths = write_images(directory, UNIQUE)
    for i in range(COPIES):
        shutil.copy(paths[i * 7], directory / f"copy_{i}.png")
    for i in range(BROKEN):
        (directory / f"broken_{i}.png").write_text("not a picture")


def _run(args: list[str], kill_at: str, timed: bool = False) -> str:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args, "--kill-at", kill_at], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    if timed:
        process.stdout.readline()  # "job N": the job exists; kill somewhere in the middle of its batches
        time.sleep(random.Random(0).uniform(0.2, 0.6))
        process.send_signal(signal.SIGKILL)
    out, err = process.communicate(timeout=120)
    assert process.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    return out.decode()


def _acknowledged(engine: Engine) -> dict[int, int]:
    """position -> image id of every ledger item the catalog says is done."""
    with session_scope(engine.sessions) as session:
        (job,) = repo.list_jobs(session)
        return {item.position: item.image_id for item in repo.job_items(session, job.id, state="done", limit=10_000)}


def test_sigkill_at_every_write_step_then_resume(tmp_path: Path, catalog_url: str) -> None:
    _corpus(tmp_path / "imgs")
    config = engine_config(tmp_path, catalog_url)
    args = [str(config.data_dir), catalog_url, str(tiny_checkpoint()), str(tmp_path / "imgs")]
    acknowledged: dict[int, int] = {}
    for kill_at, timed in KILLS[catalog_url.split(":")[0].split("+")[0]]:
        output = _run(args, kill_at, timed)
        assert "finished" not in output or timed, output
        with Engine(config, cached_encoder_factory).open(resume_jobs=False) as engine:
            now = _acknowledged(engine)
        # What was acknowledged before a kill is still acknowledged after it, as the same image.
        assert {p: now[p] for p in acknowledged} == acknowledged
        acknowledged = now
    assert 0 < len(acknowledged) < UNIQUE + COPIES + BROKEN or "finished" in output

    with Engine(config, cached_encoder_factory).open(resume_jobs=False) as engine:
        (report,) = engine.reports  # the index was last saved long ago: reconciliation restored the rest
        assert report.loaded in ("file", "missing") and not report.requeued
        (job,) = engine.list_jobs("c")
        info = engine.run_job(job.id)
        assert (info.state, info.done, info.skipped, info.failed) == ("done", UNIQUE, COPIES, BROKEN)
        final = _acknowledged(engine)
        assert {p: final[p] for p in acknowledged} == acknowledged
        assert len(set(final.values())) == UNIQUE  # each image once
        live = engine._live_by_name("c")
        with session_scope(engine.sessions) as session:
            indexed = repo.image_ids(session, live.id)
            assert repo.image_counts(session, live.id)["pending"] == 0
        np.testing.assert_array_equal(indexed, sorted(final.values()))
        np.testing.assert_array_equal(live.store.ids(), indexed)
        stored, _ = EmbeddingStore(live.files.embeddings_dir, live.dim).load_all()
        assert set(indexed) <= set(stored)
        for path in sorted((tmp_path / "imgs").glob("img_00*.png"))[:4]:
            # The tiny random encoder barely separates look-alike images, so "itself among the nearest" is the check.
            hits = {h.sha256: h.score for h in engine.search("c", image=path.read_bytes(), k=5)}
            assert hits[hashlib.sha256(path.read_bytes()).hexdigest()] > 0.999
