"""Start-up reconciliation: the saved index is derived data, and every way it can disagree with the catalog is
repaired from the catalog, the embedding shards and the stored originals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile import cached_encoder_factory, engine_config, write_images

from indexer import Engine, IngestItem
from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.vector_store import load_vector_store

N = 8


@pytest.fixture
def setup(tmp_path: Path, catalog_url: str):  # noqa: ANN201
    """A collection of N images, closed again; returns (config, collection folder, the ids, a text query's ids)."""
    write_images(tmp_path / "imgs", N)
    config = engine_config(tmp_path, catalog_url)
    with Engine(config, cached_encoder_factory).open() as engine:
        engine.create_collection("c")
        assert engine.run_job(engine.submit("c", [IngestItem.path(tmp_path / "imgs")])).done == N
        live = engine._live_by_name("c")
        ids = live.store.ids()
        ranking = [h.id for h in engine.search("c", text="blue square", k=N)]
    return config, live.files, ids, ranking


def _reopen(config):  # noqa: ANN001, ANN202
    return Engine(config, cached_encoder_factory).open()


def _check(engine: Engine, ids: np.ndarray, ranking: list[int]) -> None:
    live = engine._live_by_name("c")
    with session_scope(engine.sessions) as session:
        np.testing.assert_array_equal(repo.image_ids(session, live.id), ids)
    np.testing.assert_array_equal(live.store.ids(), ids)
    assert [h.id for h in engine.search("c", text="blue square", k=N)] == ranking
    # The repaired index was saved: a second start finds nothing left to do.
    engine.close()
    again = _reopen(engine.config)
    try:
        (report,) = again.reports
        assert report.loaded == "file" and not report.changed
    finally:
        again.close()


def test_missing_index_file_is_rebuilt(setup) -> None:  # noqa: ANN001
    config, files, ids, ranking = setup
    files.index_path.unlink()
    engine = _reopen(config)
    (report,) = engine.reports
    assert (report.loaded, report.rebuilt) == ("missing", True)
    _check(engine, ids, ranking)


def test_truncated_or_altered_index_file_is_rebuilt(setup) -> None:  # noqa: ANN001
    config, files, ids, ranking = setup
    data = files.index_path.read_bytes()
    files.index_path.write_bytes(data[: len(data) // 2])
    engine = _reopen(config)
    assert engine.reports[0].loaded == "corrupt" and engine.reports[0].rebuilt
    _check(engine, ids, ranking)
    flipped = bytearray(files.index_path.read_bytes())
    flipped[100] ^= 0xFF
    files.index_path.write_bytes(bytes(flipped))
    engine = _reopen(config)
    assert engine.reports[0].loaded == "corrupt"
    _check(engine, ids, ranking)


def test_stray_vectors_are_dropped_and_missing_ones_restored(setup) -> None:  # noqa: ANN001
    config, files, ids, ranking = setup
    store = load_vector_store(files.index_path)
    store.remove(ids[:3])  # an index saved before the last batches were committed
    store.add([10_000, 10_001], np.eye(2, store.dim, dtype=np.float32))  # vectors the catalog never committed
    store.save(files.index_path)
    engine = _reopen(config)
    (report,) = engine.reports
    assert (report.loaded, report.removed, report.restored, report.rebuilt) == ("file", 2, 3, False)
    _check(engine, ids, ranking)


def test_vectors_lost_everywhere_are_re_encoded_from_the_originals(setup) -> None:  # noqa: ANN001
    config, files, ids, ranking = setup
    shutil.rmtree(files.embeddings_dir)
    files.index_path.unlink()
    engine = _reopen(config)
    (report,) = engine.reports
    assert (report.requeued, report.failed) == (N, 0) and report.requeue_job is not None
    assert engine.wait_job(report.requeue_job, timeout_s=60).done == N
    _check(engine, ids, ranking)


def test_lost_originals_mark_images_failed_and_orphan_folders_go(setup, tmp_path: Path) -> None:  # noqa: ANN001
    config, files, ids, _ = setup
    shutil.rmtree(files.embeddings_dir)
    shutil.rmtree(files.root / "originals")
    files.index_path.unlink()
    # Left by interrupted deletes: an older id and renamed-aside trash. A newer id may be mid-creation: kept.
    orphans = [files.root.parent / "0", files.root.parent / ".deleted-7"]
    for folder in [*orphans, files.root.parent / "999"]:
        folder.mkdir()
    with _reopen(config) as engine:
        (report,) = engine.reports
        assert (report.requeued, report.failed) == (0, N)
        info = engine.get_collection("c")
        assert (info.images["failed"], info.images["indexed"], info.vectors) == (N, 0, 0)
        assert engine.search("c", text="x") == []
    assert not any(folder.exists() for folder in orphans) and (files.root.parent / "999").is_dir()
