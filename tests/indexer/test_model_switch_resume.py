"""Crash safety of an encoder switch: a migration SIGKILLed while re-embedding, inside the switch's transaction, or
right after its commit leaves the collection serving one consistent space, and resuming finishes the job without
re-embedding what was already durable."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, tiny_checkpoint

from indexer import Engine
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.vector_store import EmbeddingStore
from internvl_models.shapes_world import write_demo_corpus

SCRIPT = Path(__file__).parent / "hostile" / "crash_migrate.py"
SHIPPED = Path(__file__).resolve().parents[2] / "internvl_models" / "shapes_world" / "weights" / "internvl-shapes"
IMAGES, BATCH = 8, 4
# Each kill costs a process start (torch import, two model loads), so each engine gets the points where its own
# behaviour matters: SQLite the durable shards and the committed switch, PostgreSQL the uncommitted switch.
KILLS = {"sqlite": ("embeddings:1", "committed"), "postgresql": ("swapped",)}
pytestmark = pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="no shipped shapes encoder")


def _kill(args: list[str], kill_at: str) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--kill-at", kill_at], capture_output=True, timeout=600)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]


def _shadow_rows(engine: Engine, name: str) -> int:
    """Rows appended to the collection's shadow space (an image embedded twice counts twice)."""
    state = engine.migration_state(name)
    live = engine._live_by_name(name)
    return EmbeddingStore(live.files.embeddings_dir_of(state.shadow.generation), 128).stats().added_rows


def test_sigkill_during_migration_then_resume(tmp_path: Path, catalog_url: str) -> None:
    write_demo_corpus(tmp_path / "corpus", IMAGES, languages=("en",))
    images = tmp_path / "corpus" / "images"
    config = engine_config(tmp_path, catalog_url)
    for kill_at in KILLS[catalog_url.split(":")[0].split("+")[0]]:
        name = kill_at.split(":")[0]
        _kill([str(config.data_dir), catalog_url, str(tiny_checkpoint()), str(SHIPPED), str(images), name], kill_at)
        with Engine(config, cached_encoder_factory).open(resume_jobs=False) as engine:
            (job,) = [j for j in engine.list_jobs(name) if j.kind == "migrate"]
            collection = engine.get_collection(name)
            if kill_at == "committed":  # the switch is durable: the new space serves from its saved index
                assert (job.state, collection.dim, collection.vectors) == ("done", 128, IMAGES)
            else:  # the old space still serves; the shadow holds what was durable when the process died
                assert (job.state, collection.dim, collection.vectors) == ("running", 16, IMAGES)
                assert _shadow_rows(engine, name) == (BATCH if kill_at == "embeddings:1" else IMAGES)
                assert engine.search(name, text="a red circle", k=3)
                resumed = engine.run_job(job.id)
                assert (resumed.state, resumed.done, resumed.total) == ("done", IMAGES, IMAGES), resumed.error
            _assert_consistent(engine, name, images)


def _assert_consistent(engine: Engine, name: str, images: Path) -> None:
    state = engine.migration_state(name)
    assert state.shadow is None and state.serving.dim == 128 and state.previous.dim == 16
    live = engine._live_by_name(name)
    with session_scope(engine.sessions) as session:
        indexed = repo.image_ids(session, live.id)
    np.testing.assert_array_equal(live.store.ids(), indexed)
    stats = EmbeddingStore(live.files.embeddings_dir, 128).stats()
    assert stats.added_rows == IMAGES  # every image embedded exactly once, across the kill and the resume
    for path in sorted(images.iterdir())[:3]:
        data = path.read_bytes()
        assert engine.search(name, image=data, k=1)[0].sha256 == hashlib.sha256(data).hexdigest()
