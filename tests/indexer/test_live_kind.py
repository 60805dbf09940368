"""A collection's index follows the `auto` kind its size and vector width call for: after a job,
`LiveCollection.maintain` rebuilds it from the stored embeddings when the kind changes (the size rules are scaled
down here so that a few thousand vectors cross them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import indexer.vector_store.faiss_store as faiss_store
from indexer.catalog.tables import Collection
from indexer.config import EngineConfig
from indexer.live import LiveCollection


def grown_collection(tmp_path: Path, dim: int, n: int) -> LiveCollection:
    row = Collection(id=1, name="photos", encoder="test", dim=dim, fingerprint="f", index_kind="auto", generation=0)
    live = LiveCollection(EngineConfig(data_dir=tmp_path), row)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, n + 1, dtype=np.int64)
    live.embeddings().append(ids, vectors)
    live.store.add(ids, vectors)  # the store of the empty collection: flat
    return live


@pytest.mark.parametrize(("dim", "kind"), [(64, "hnsw"), (512, "ivf_pq")])
def test_a_grown_collection_moves_to_the_kind_its_width_calls_for(tmp_path, monkeypatch, dim, kind) -> None:
    # flat below 100 vectors; HNSW up to 1,500 for wide vectors (>= 512 dimensions), up to 3,000 for narrow ones.
    monkeypatch.setattr(faiss_store, "AUTO_FLAT_MAX", 100)
    monkeypatch.setattr(faiss_store, "AUTO_HNSW_MAX_WIDE", 1_500)
    monkeypatch.setattr(faiss_store, "AUTO_HNSW_MAX", 3_000)
    live = grown_collection(tmp_path, dim, 2_000)
    assert live.store.kind == "flat"
    assert live.maintain(live.embeddings()) is True
    assert live.store.kind == kind and len(live.store) == 2_000
    query = live.embeddings().load_all()[1][:1]
    assert live.store.search(query, 1).ids[0, 0] == 1  # the first vector finds itself
    assert live.maintain(live.embeddings()) is False  # settled: nothing more to rebuild
