"""A collection's index follows the `auto` kind its size and vector width call for: after a job,
`LiveCollection.maintain` rebuilds it from the stored embeddings when the kind changes (the size rules are scaled
down here so that a few thousand vectors cross them); a saved index known to be wrong is not loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import indexer.vector_store.faiss_store as faiss_store
from indexer.catalog.tables import Collection
from indexer.config import EngineConfig
from indexer.live import LiveCollection, load_saved
from indexer.vector_store import create_vector_store
from indexer.vector_store.base import read_store_file, write_store_file


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


def test_an_ivf_pq_file_with_spoilable_fast_scan_lists_is_not_served(tmp_path) -> None:
    """A fast-scan IVF-PQ store saved before removals cleared their slots may hold spoiled codes: `load_saved`
    turns it down (the caller rebuilds it from the embeddings, as for a damaged file)."""
    live = grown_collection(tmp_path, 64, 2_000)
    ids, vectors = live.embeddings().load_all()
    live.store = create_vector_store("ivf_pq", 64)
    live.store.add(ids, vectors)
    live.save()
    store, how = load_saved(live)
    assert how == "file" and store.kind == "ivf_pq" and len(store) == 2_000
    header, sections = read_store_file(live.files.index_path)
    del header["params"]["clean_removals"]
    write_store_file(live.files.index_path, header, {name: bytes(part) for name, part in sections.items()})
    assert load_saved(live) == (None, "outdated")
