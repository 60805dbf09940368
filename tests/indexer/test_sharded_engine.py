"""The engine serves a collection whose saved index is sharded (and kept as shard files): it loads it as it is,
searches it like the single index, and repairs it on start-up like any other store."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from hostile import cached_encoder_factory, engine_config, write_images

from indexer import Engine, IngestItem
from indexer.vector_store import ShardedStore, create_vector_store, load_vector_store
from indexer.vector_store.sharded import shard_directory

N = 8


def test_engine_serves_and_repairs_a_sharded_index(tmp_path: Path, catalog_url: str) -> None:
    write_images(tmp_path / "imgs", N)
    config = engine_config(tmp_path, catalog_url)
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("c")
        assert engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "imgs")])).done == N
        live = engine._live_by_name("c")
        ranking = [h.id for h in engine.search("c", text="blue square", k=N)]
        single = live.store
        ids, vectors = live.embeddings().load_all()
    # The same vectors, sharded and saved as shard files, replace the saved index; one vector is left out (a
    # store saved before the last batch), which start-up must restore.
    sharded = create_vector_store(single.kind, single.dim, use_gpu=False, params={"shards": 3, "on_disk": True})
    sharded.add(ids[1:], vectors[1:])
    sharded.version = single.version
    sharded.save(live.files.index_path)
    with Engine(config, cached_encoder_factory).open() as engine:
        (report,) = engine.reports
        assert report.loaded == "file" and report.restored == 1
        store = engine._live_by_name("c").store
        assert isinstance(store, ShardedStore) and store.kind == single.kind
        np.testing.assert_array_equal(store.ids(), ids)
        assert [h.id for h in engine.search("c", text="blue square", k=N)] == ranking
    assert shard_directory(live.files.index_path).is_dir()
    with Engine(config, cached_encoder_factory).open() as engine:
        (report,) = engine.reports
        assert report.loaded == "file" and not report.changed
        assert [h.id for h in engine.search("c", text="blue square", k=N)] == ranking
    mapped = load_vector_store(live.files.index_path, mmap=True)
    assert mapped.mapped and np.array_equal(mapped.ids(), ids)


def _ranked(engine: Engine, collection: str) -> list[str]:
    """The search's ranking as content hashes (catalog ids differ between collections)."""
    return [engine.get_image(collection, h.id).sha256 for h in engine.search(collection, text="blue square", k=N)]


def test_engine_config_shards_every_store_of_a_collection(tmp_path: Path, catalog_url: str) -> None:
    """EngineConfig.index_shards / index_on_disk / index_mmap reach the stores the engine builds, loads and
    removes: the sharded collection ranks like an unsharded one, reloads mapped, and leaves no shard files behind."""
    write_images(tmp_path / "imgs", N)
    plain = engine_config(tmp_path, catalog_url)
    with Engine(plain, cached_encoder_factory).open() as engine:
        engine.create_collection("c")
        engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "imgs")]))
        ranking = _ranked(engine, "c")
    sharded = replace(plain, index_shards=3, index_on_disk=True, index_mmap=True)
    with Engine(sharded, cached_encoder_factory).open() as engine:
        engine.create_collection("d")
        assert engine.run_job(engine.submit("d", [IngestItem.path(tmp_path / "imgs")])).done == N
        live = engine._live_by_name("d")
        assert isinstance(live.store, ShardedStore) and live.store.shards == 3
        assert _ranked(engine, "d") == ranking
        index_path = live.files.index_path
    assert shard_directory(index_path).is_dir()
    with Engine(sharded, cached_encoder_factory).open() as engine:
        store = engine._live_by_name("d").store
        assert isinstance(store, ShardedStore) and store.mapped
        assert _ranked(engine, "d") == ranking
        engine.delete_collection("d")
    assert not index_path.exists() and not shard_directory(index_path).exists()
