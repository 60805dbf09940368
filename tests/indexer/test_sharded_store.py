"""Sharded vector stores (indexer/vector_store/sharded.py) against one exact index on the same vectors.

Exact kinds sharded must return the very ids and scores a single flat index returns, with removals and filters
too; approximate kinds sharded must recall what the same kind unsharded recalls. Persistence round-trips, in one
file or as shard files, and a memory-mapped load answers as the store it was saved from, and stays writable.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import Conflict, CorruptData, InvalidInput
from indexer.vector_store import (
    EmbeddingStore,
    ShardedStore,
    auto_shards,
    create_vector_store,
    load_vector_store,
    rebuild_vector_store,
    remove_store_files,
)
from indexer.vector_store.base import FaissStore
from indexer.vector_store.sharded import AUTO_SHARD_FROM, AUTO_SHARD_VECTORS, shard_directory, shard_of

# One OpenMP thread (tests/indexer/conftest.py): small faiss builds on a busy 2-core box.
pytestmark = pytest.mark.usefixtures("one_faiss_thread")

N, DIM, NQ, K = 12_000, 32, 60, 10


def clustered(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around 40 centres; ids strided by 2 (as one of two collections ingesting in turn gets)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, nq)] + 0.2 * rng.normal(size=(nq, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return np.arange(n, dtype=np.int64) * 2 + 500, x, q


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]))


def assert_same(got, want, *, bitwise: bool = False) -> None:  # noqa: ANN001
    """The same ids, best first, and the same scores: bitwise, or to float32 rounding (1e-6). A batch of queries
    is scored by a BLAS matrix product whose kernel, hence last bit, depends on the matrix shape and on where a
    vector sits in it, which differ between one index and a shard of it (or the same index after a removal). One
    query is scored vector by vector (faiss `fvec_inner_product`), which is the same wherever the vector sits."""
    np.testing.assert_array_equal(got.ids, want.ids)
    if bitwise:
        np.testing.assert_array_equal(got.scores, want.scores)
    else:
        np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def data():
    return clustered(N, NQ)


@pytest.fixture(scope="module")
def reference(data):
    ids, x, _ = data
    store = create_vector_store("flat", DIM, use_gpu=False)
    store.add(ids, x)
    return store


def test_shards_are_balanced_for_strided_ids() -> None:
    for stride in (1, 2, 3, 8):
        owners = shard_of(np.arange(40_000, dtype=np.int64) * stride, 8)
        counts = np.bincount(owners, minlength=8)
        assert counts.min() > 0.9 * 40_000 / 8, (stride, counts)


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_exact_shards_return_the_single_index_top_k(data, reference, shards: int) -> None:
    ids, x, q = data
    store = create_vector_store("flat", DIM, use_gpu=False, params={"shards": shards})
    assert isinstance(store, ShardedStore) and store.kind == "flat" and store.exact
    # Added in three batches, as ingestion does.
    for part in np.array_split(np.arange(N), 3):
        store.add(ids[part], x[part])
    assert len(store) == N and np.array_equal(store.ids(), ids)
    assert sum(store.shard_sizes()) == N and min(store.shard_sizes()) > 0
    for k in (1, K, 100):
        assert_same(store.search(q, k), reference.search(q, k))
    for query in q[:10]:  # one query at a time, the engine's case: bitwise the same scores
        assert_same(store.search(query[None], K), reference.search(query[None], K), bitwise=True)


@pytest.mark.parametrize("n_allowed", [3, 40, 2_000, 9_000])
def test_exact_shards_filtered(data, reference, n_allowed: int) -> None:
    ids, x, q = data
    store = create_vector_store("flat", DIM, use_gpu=False, params={"shards": 4})
    store.add(ids, x)
    allowed = np.random.default_rng(n_allowed).choice(ids, n_allowed, replace=False)
    with_strangers = np.concatenate([allowed, [1, 3, 10**12]])
    got = store.search(q, K, with_strangers)
    assert_same(got, reference.search(q, K, with_strangers))
    assert ((got.ids >= 0).sum(axis=1) == min(K, n_allowed)).all()
    assert_same(store.search(q, K, set(allowed.tolist())), reference.search(q, K, allowed))


def test_exact_shards_with_removals(data) -> None:
    ids, x, q = data
    single = create_vector_store("flat", DIM, use_gpu=False)
    sharded = create_vector_store("flat", DIM, use_gpu=False, params={"shards": 5})
    for store in (single, sharded):
        store.add(ids, x)
    gone = np.random.default_rng(1).choice(ids, N // 4, replace=False)
    assert sharded.remove(np.concatenate([gone, [10**12]])) == single.remove(gone) == len(gone)
    kept = np.flatnonzero(~np.isin(ids, gone))[:10]
    assert sharded.add(ids[kept], x[kept]) == 0  # idempotent
    assert np.array_equal(sharded.ids(), single.ids())
    assert_same(sharded.search(q, K), single.search(q, K))
    allowed = ids[:3_000]  # a quarter of them removed
    assert_same(sharded.search(q, K, allowed), single.search(q, K, allowed))
    back = np.flatnonzero(np.isin(ids, gone))[:50]  # removed ids come back (flat removes in place)
    assert sharded.add(ids[back], x[back]) == single.add(ids[back], x[back]) == 50
    assert_same(sharded.search(q, K), single.search(q, K))


def test_exhaustive_ivf_shards_match_flat(data, reference) -> None:
    """IVF-Flat probing every list is exact: sharded, it must find the flat ids (scores to float rounding)."""
    ids, x, q = data
    store = create_vector_store("ivf_flat", DIM, params={"shards": 3, "nlist": 32, "nprobe": 32})
    store.add(ids, x)
    got, want = store.search(q, K), reference.search(q, K)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq"])
def test_approximate_shards_recall_like_one_index(data, reference, kind: str) -> None:
    ids, x, q = data
    single = create_vector_store(kind, DIM)
    sharded = create_vector_store(kind, DIM, params={"shards": 4})
    single.add(ids, x)
    sharded.add(ids, x)
    truth = reference.search(q, K).ids
    one, many = recall(single.search(q, K).ids, truth), recall(sharded.search(q, K).ids, truth)
    assert many >= 0.9 and many >= one - 0.03, (one, many)
    if kind.startswith("ivf"):
        # Trained once, on the whole first batch: every shard has the same lists and sizing.
        assert len({(s.params["nlist"], s.params["trained_on"]) for s in sharded._shards}) == 1
        assert sharded.params["trained_on"] == N
    allowed = ids[::50]
    filtered = sharded.search(q, K, allowed)
    assert ((filtered.ids >= 0).sum(axis=1) == K).all() and np.isin(filtered.ids, allowed).all()
    assert recall(filtered.ids, reference.search(q, K, allowed).ids) >= 0.9


def test_hnsw_shards_refuse_a_removed_id_whole_batch(data) -> None:
    ids, x, _ = data
    store = create_vector_store("hnsw", DIM, params={"shards": 3})
    store.add(ids[:2_000], x[:2_000])
    store.remove(ids[:1])
    before = len(store)
    with pytest.raises(Conflict, match="rebuild"):
        store.add(ids[:3_000], x[:3_000])  # the new ids of this batch are refused with the removed one
    assert len(store) == before
    assert store.removed_fraction == pytest.approx(1 / 2_000)


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("kind", ["flat", "ivf_pq"])
def test_save_and_load_round_trip(data, tmp_path: Path, kind: str, on_disk: bool) -> None:
    ids, x, q = data
    store = create_vector_store(kind, DIM, use_gpu=False, params={"shards": 3, "on_disk": on_disk})
    store.add(ids, x)
    store.remove(ids[:100])
    store.version = 7
    path = tmp_path / "index.ivs"
    store.save(path)
    assert shard_directory(path).is_dir() == on_disk
    for mmap in (False, True):
        loaded = load_vector_store(path, use_gpu=False, mmap=mmap)
        assert isinstance(loaded, ShardedStore) and loaded.kind == kind and loaded.version == 7
        assert loaded.mapped == (mmap and on_disk)
        assert loaded.params == store.params and np.array_equal(loaded.ids(), store.ids())
        assert_same(loaded.search(q, K), store.search(q, K))
        assert_same(loaded.search(q, K, ids[::7]), store.search(q, K, ids[::7]))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "ivf_pq"])
def test_mapped_store_answers_alike_and_stays_writable(data, tmp_path: Path, kind: str) -> None:
    ids, x, q = data
    store = create_vector_store(kind, DIM, use_gpu=False, params={"shards": 2, "on_disk": True})
    store.add(ids[:10_000], x[:10_000])
    path = tmp_path / "index.ivs"
    store.save(path)
    mapped = load_vector_store(path, use_gpu=False, mmap=True)
    assert mapped.mapped
    assert_same(mapped.search(q, K), store.search(q, K))
    # Writes read the touched shards into memory first; the results follow the in-memory store's.
    for s in (store, mapped):
        s.add(ids[10_000:11_000], x[10_000:11_000])
        if kind != "hnsw":
            s.remove(ids[:500])
    assert not mapped.mapped
    assert_same(mapped.search(q, K), store.search(q, K))
    first = set(os.listdir(shard_directory(path)))
    mapped.save(path)
    again = load_vector_store(path, mmap=True)
    assert_same(again.search(q, K), store.search(q, K))
    second = set(os.listdir(shard_directory(path)))
    assert first < second  # the previous manifest's files stay for readers that still hold it
    again.add(ids[11_000:], x[11_000:])
    again.save(path)
    third = set(os.listdir(shard_directory(path)))
    assert not (first - second) & third and (second - first) <= third  # older ones go
    remove_store_files(path)
    assert not path.exists() and not shard_directory(path).exists()


def test_unchanged_shards_are_not_rewritten(data, tmp_path: Path) -> None:
    ids, x, _ = data
    store = create_vector_store("ivf_flat", DIM, params={"shards": 4, "on_disk": True})
    store.add(ids, x)
    path = tmp_path / "index.ivs"
    store.save(path)
    stamps = {p.name: p.stat().st_mtime_ns for p in shard_directory(path).iterdir()}
    store.remove(ids[:1])  # touches one shard
    store.save(path)
    now = {p.name for p in shard_directory(path).iterdir()}
    assert len(now - set(stamps)) == 1  # one new shard file, three reused
    # Saving a loaded store elsewhere copies its files (a mapped index cannot be re-serialised).
    mapped = load_vector_store(path, mmap=True)
    mapped.save(tmp_path / "copy" / "index.ivs")
    copy = load_vector_store(tmp_path / "copy" / "index.ivs", mmap=True)
    np.testing.assert_array_equal(copy.ids(), store.ids())


def test_damaged_shard_files_are_reported(data, tmp_path: Path) -> None:
    ids, x, _ = data
    store = create_vector_store("flat", DIM, use_gpu=False, params={"shards": 2, "on_disk": True})
    store.add(ids[:1_000], x[:1_000])
    path = tmp_path / "index.ivs"
    store.save(path)
    victim = sorted(shard_directory(path).iterdir())[0]
    data_bytes = bytearray(victim.read_bytes())
    data_bytes[-1] ^= 0xFF
    victim.write_bytes(bytes(data_bytes))
    with pytest.raises(CorruptData, match="checksum"):
        load_vector_store(path)
    victim.write_bytes(bytes(data_bytes[:-10]))
    with pytest.raises(CorruptData, match="size"):
        load_vector_store(path, verify=False)
    victim.unlink()
    with pytest.raises(CorruptData, match="missing"):
        load_vector_store(path)


def test_rebuild_and_auto_sharding(data, tmp_path: Path) -> None:
    ids, x, q = data
    embeddings = EmbeddingStore(tmp_path / "emb", DIM)
    embeddings.append(ids, x)
    store = rebuild_vector_store("flat", embeddings, use_gpu=False, params={"shards": 3})
    assert isinstance(store, ShardedStore) and len(store) == N
    # Small collections stay single indexes; the size rules shard IVF kinds past AUTO_SHARD_FROM.
    assert isinstance(create_vector_store("auto", DIM, expected_size=N), FaissStore)
    assert isinstance(create_vector_store("ivf_pq", DIM, expected_size=N, params={"shards": "auto"}), FaissStore)
    assert auto_shards("ivf_pq", AUTO_SHARD_FROM - 1) == 1
    assert auto_shards("ivf_pq", 100_000_000) == 100_000_000 // AUTO_SHARD_VECTORS
    assert auto_shards("hnsw", 100_000_000) == 1 and auto_shards("flat", 5_000_000, gpus=4) == 4
    big = create_vector_store("auto", DIM, expected_size=10**9)
    assert isinstance(big, ShardedStore) and big.kind == "ivf_pq" and big.shards == 40
    for bad in (0, -1, 2.5, True, "many"):
        with pytest.raises(InvalidInput):
            create_vector_store("flat", DIM, params={"shards": bad})
