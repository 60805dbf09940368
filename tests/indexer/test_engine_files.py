"""What the engine keeps beside the vectors, on SQLite and PostgreSQL with the tiny real encoder: the checkpoint of a
collection lives in the catalog (and is taken over from a legacy collection.json), and the originals stored for
items of a stopped or cancelled job that never got committed are swept."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, tiny_checkpoint, write_images

from indexer import Engine, IngestItem
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.jobs import JobInfo
from indexer.vector_store import EmbeddingStore


@pytest.fixture
def config(tmp_path: Path, catalog_url: str):  # noqa: ANN201 - EngineConfig
    # Two images per batch and up to eight decoded ahead: a stop after the first batch leaves originals of
    # decoded but uncommitted items behind unless they are swept.
    return engine_config(tmp_path, catalog_url, image_batch_size=2, decode_workers=2)


@pytest.fixture
def engine(config) -> Iterator[Engine]:  # noqa: ANN001
    with Engine(config, cached_encoder_factory).open() as engine:
        yield engine


def stored_originals(engine: Engine, name: str) -> set[str]:
    root = engine._live_by_name(name).files.originals.root
    return {p.name for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()


def indexed_shas(engine: Engine, name: str) -> set[str]:
    with session_scope(engine.sessions) as session:
        collection_id = repo.get_collection(session, name).id
        ids = repo.image_ids(session, collection_id)
        return {image.sha256 for image in repo.get_images(session, ids.tolist())}


def test_cancelled_job_leaves_no_stray_originals(engine: Engine, tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 12)
    engine.create_collection("c")
    job = engine.submit("c", [IngestItem.path(tmp_path / "photos")], start=False)

    def cancel_after_first_batch(info: JobInfo) -> None:
        if info.done >= 2:
            engine.cancel_job(job)

    info = engine.run_job(job, progress=cancel_after_first_batch)
    assert info.state == "cancelled" and 2 <= info.done < 12
    indexed = indexed_shas(engine, "c")
    assert len(indexed) == info.done
    assert stored_originals(engine, "c") == indexed


def test_stopped_job_sweeps_then_resumes_with_every_original(engine: Engine, tmp_path: Path) -> None:
    write_images(tmp_path / "photos", 12)
    engine.create_collection("c")
    job = engine.submit("c", [IngestItem.path(tmp_path / "photos")], start=False)
    stop = threading.Event()
    engine._runtime.execute(job, stop, lambda info: stop.set())  # a shutdown right after the first batch
    first = engine.get_job(job)
    assert first.state == "queued" and 0 < first.done < 12
    assert stored_originals(engine, "c") == indexed_shas(engine, "c")

    info = engine.run_job(job)  # the resumed run stores the swept originals again
    assert (info.state, info.done) == ("done", 12)
    indexed = indexed_shas(engine, "c")
    assert len(indexed) == 12 and stored_originals(engine, "c") == indexed
    assert all(engine.image_path("c", hit.id).is_file() for hit in engine.search("c", text="a shape", k=12))


def test_a_job_leaves_its_embedding_shards_merged(engine: Engine, tmp_path: Path) -> None:
    """A job writes a shard per batch (here 8 of 2 images); the job's end merges them (EmbeddingStore.settle),
    and the merged shards still rebuild the very index the job built."""
    write_images(tmp_path / "photos", 16)
    engine.create_collection("c")
    info = engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "photos")], start=False))
    assert (info.state, info.done) == ("done", 16)
    live = engine._live_by_name("c")
    embeddings = EmbeddingStore(live.files.embeddings_dir, live.dim)
    assert embeddings.stats().shards <= 3  # O(log n) by the merge rule; one per batch would be 8
    ids, _ = embeddings.load_all()
    np.testing.assert_array_equal(ids, live.store.ids())
    assert embeddings.settle() == 0


def test_checkpoint_is_a_catalog_column(config, engine: Engine) -> None:  # noqa: ANN001
    checkpoint = str(tiny_checkpoint())
    info = engine.create_collection("c", checkpoint=checkpoint)
    assert info.checkpoint == checkpoint
    with session_scope(engine.sessions) as session:
        row = repo.get_collection(session, "c")
        assert row.checkpoint == checkpoint
    assert not (Path(config.data_dir) / "collections" / str(row.id) / "collection.json").exists()


def test_legacy_collection_json_is_taken_over(config, tmp_path: Path) -> None:  # noqa: ANN001
    """A collection created before the column existed (NULL column, checkpoint in collection.json): the engine
    serves it with the recorded weights and copies them into the catalog."""
    checkpoint = str(tiny_checkpoint())
    write_images(tmp_path / "photos", 3)
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("c", checkpoint=checkpoint)
        engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "photos")], start=False))
        with session_scope(engine.sessions) as session:
            collection_id = repo.get_collection(session, "c").id
            repo.set_checkpoint(session, collection_id, None)
    legacy = Path(config.data_dir) / "collections" / str(collection_id) / "collection.json"
    legacy.write_text(json.dumps({"checkpoint": checkpoint, "encoder": "internvl-c"}))

    with Engine(config, cached_encoder_factory).open() as engine:
        assert engine.get_collection("c").checkpoint == checkpoint
        with session_scope(engine.sessions) as session:
            assert repo.get_collection(session, "c").checkpoint == checkpoint
        assert len(engine.search("c", text="a red circle", k=3)) == 3


def test_the_engine_builds_encoders_with_its_compile_setting(tmp_path: Path) -> None:
    options: list[dict] = []

    def recording_factory(name: str, checkpoint: str | None = None, **given: object):  # noqa: ANN202 - Encoder
        options.append(given)
        return cached_encoder_factory(name, checkpoint)

    config = engine_config(tmp_path, f"sqlite:///{tmp_path / 'catalog.db'}", compile_images=True)
    with Engine(config, recording_factory).open() as engine:
        engine.encoder()
    assert [o["compile_images"] for o in options] == [True]
