"""Every vector-store kind against the exact `flat` reference, on the same clustered data.

Exact kinds must return the very ids flat returns; approximate kinds must reach recall@10 >= 0.9. Every kind must
honour filters (k results when k allowed vectors exist, and only allowed ids), removal, persistence and rebuilds.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.errors import Conflict, CorruptData, InvalidInput
from indexer.live import target_kind
from indexer.vector_store import (
    EmbeddingStore,
    VectorStore,
    create_vector_store,
    list_vector_store_kinds,
    load_vector_store,
    rebuild_vector_store,
    resolve_kind,
)
from indexer.vector_store.base import distinct_sorted, merge_disjoint, without, write_store_file
from indexer.vector_store.flat import overfetch_search

# One OpenMP thread (tests/indexer/conftest.py): small faiss builds on a busy 2-core box.
pytestmark = pytest.mark.usefixtures("one_faiss_thread")

KINDS = list_vector_store_kinds()
N, DIM, NQ, K = 20_000, 64, 100, 10
MIN_RECALL = 0.9


def clustered(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors around 50 centres (the shape of real embedding sets), queries near random points, sparse ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, nq)] + 0.1 * rng.normal(size=(nq, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(n, dtype=np.int64) * 3 + 1000  # not 0..n-1, so positions and ids cannot be confused
    return ids, x, q


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]
    return float(np.mean(hits))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return clustered(N, NQ)


@pytest.fixture(scope="module")
def built(data) -> dict[str, VectorStore]:
    """One store per kind over the full data set, built once; tests that mutate build their own."""
    ids, x, _ = data
    stores = {}
    for kind in KINDS:
        stores[kind] = create_vector_store(kind, DIM, use_gpu=False)
        stores[kind].add(ids, x)
    return stores


def assert_congruent(store: VectorStore, reference: VectorStore, queries: np.ndarray, allowed=None) -> None:
    got = store.search(queries, K, allowed)
    want = reference.search(queries, K, allowed)
    if store.exact:
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    else:
        assert recall(got.ids, want.ids) >= MIN_RECALL


@pytest.mark.parametrize("kind", KINDS)
def test_search_matches_flat(built, data, kind: str) -> None:
    _, _, q = data
    store = built[kind]
    assert store.kind == kind and len(store) == N
    assert_congruent(store, built["flat"], q)
    result = store.search(q, K)
    assert result.ids.shape == result.scores.shape == (NQ, K)
    assert (np.diff(result.scores, axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_allowed", [3, 40, 3_000, 12_000])
def test_filtered_search_returns_k_allowed(built, data, kind: str, n_allowed: int) -> None:
    """Few allowed ids (brute force), many (selector + escalation), and fewer than k (padded, never wrong)."""
    ids, _, q = data
    rng = np.random.default_rng(n_allowed)
    allowed = rng.choice(ids, n_allowed, replace=False)
    with_strangers = np.concatenate([allowed, [1, 2, 10**12]])  # ids the store never saw are ignored
    result = built[kind].search(q, K, with_strangers)
    hits = result.ids >= 0
    assert (hits.sum(axis=1) == min(K, n_allowed)).all()
    assert np.isin(result.ids[hits], allowed).all()
    assert np.isneginf(result.scores[~hits]).all()
    assert_congruent(built[kind], built["flat"], q, allowed)


@pytest.mark.parametrize("kind", KINDS)
def test_add_and_remove(kind: str) -> None:
    ids, x, q = clustered(3_000, 20, seed=1)
    store = create_vector_store(kind, DIM, use_gpu=False)
    assert store.search(q, K).ids.max() == -1  # empty store: all padding
    assert store.add(ids, x) == 3_000
    assert store.add(ids[:10], x[:10]) == 0  # idempotent
    gone = ids[::2]
    assert store.remove(np.concatenate([gone, [10**12]])) == len(gone)
    assert len(store) == 1_500 and np.array_equal(store.ids(), ids[1::2])
    # vector(): what the store holds for a live id (exact, or IVF-PQ's float16 copy), None for any other.
    assert float(store.vector(int(ids[1])) @ x[1]) == pytest.approx(1.0, abs=1e-3)
    assert store.vector(int(ids[0])) is None and store.vector(10**12) is None  # removed (an HNSW tombstone), unknown
    result = store.search(q, K)
    assert not np.isin(result.ids, gone).any() and (result.ids >= 0).all()
    filtered = store.search(q, K, set(ids[:200].tolist()))  # a Python set; half of these are removed
    assert np.isin(filtered.ids[filtered.ids >= 0], ids[1:200:2]).all()
    assert ((filtered.ids >= 0).sum(axis=1) == K).all()
    if store.kind == "hnsw":
        assert store.removed_fraction == pytest.approx(0.5)
        with pytest.raises(Conflict, match="rebuild"):
            store.add(gone[:1], x[:1])
    else:
        assert store.add(gone[:5], x[:10:2]) == 5
        assert np.isin(gone[:5], store.ids()).all()
        # Added back where removed vectors were, each is its own nearest neighbour (at this size IVF-PQ re-ranks
        # most of its probed lists, so test_ivf_pq_store.py checks the fast-scan codes of such vectors directly).
        np.testing.assert_array_equal(store.search(x[:10:2], 1).ids[:, 0], gone[:5])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_ids_stay_sorted_and_exact_through_mixed_adds_and_removes(kind: str) -> None:
    """Batches in any order (ids growing, in the gaps, shuffled, partly present) and removals (partly unknown,
    repeated): the store's ids, its tombstones and what a search can return stay exactly what a set says."""
    rng = np.random.default_rng(5)
    ids, x, _ = clustered(2_000, 20, seed=2)
    store = create_vector_store(kind, DIM, use_gpu=False)
    held: set[int] = set()
    removed: set[int] = set()
    for step in range(12):
        batch = rng.choice(4_000, 150, replace=False) if step % 3 else np.arange(step * 300, step * 300 + 150)
        batch = np.array([i for i in batch if i not in removed or kind != "hnsw"], dtype=np.int64)
        assert store.add(batch, x[batch % len(x)]) == len(set(batch.tolist()) - held)
        held |= set(batch.tolist())
        gone = rng.choice(4_000, 60)  # repeats and ids never added among them
        assert store.remove(gone) == len(held & set(gone.tolist()))
        removed |= held & set(gone.tolist())
        held -= set(gone.tolist())
        assert store.ids().tolist() == sorted(held)
        if kind == "hnsw":
            assert store._tombstones.tolist() == sorted(removed)
    assert set(store.search(x[:20], 50).ids.ravel().tolist()) - {-1} <= held


@pytest.mark.parametrize(("kind", "shards"), [(kind, 1) for kind in KINDS] + [("ivf_flat", 2)])
def test_searches_and_adds_go_on_while_a_save_writes(
    kind: str, shards: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save copies the store under its lock and writes outside it: held at the write, it does not hold up a
    search or an add, and the file it writes is the store as of the copy."""
    ids, x, q = clustered(3_000, 20, seed=3)
    store = create_vector_store(kind, DIM, use_gpu=False, params={"shards": shards})
    store.add(ids[:2_000], x[:2_000])
    store.version = 7
    writing, release = threading.Event(), threading.Event()
    module = "indexer.vector_store.sharded" if shards > 1 else "indexer.vector_store.base"
    real_write = write_store_file

    def held_write(*args: object) -> None:
        writing.set()
        assert release.wait(30)
        real_write(*args)

    monkeypatch.setattr(f"{module}.write_store_file", held_write)
    saver = threading.Thread(target=store.save, args=(tmp_path / "store.ivs",))
    saver.start()
    assert writing.wait(30)
    meanwhile = threading.Thread(target=lambda: (store.search(q, K), store.add(ids[2_000:], x[2_000:])))
    meanwhile.start()
    meanwhile.join(30)
    still_writing = saver.is_alive()
    release.set()
    saver.join(30)
    assert not meanwhile.is_alive() and still_writing and len(store) == 3_000
    monkeypatch.undo()
    saved = load_vector_store(tmp_path / "store.ivs")
    assert np.array_equal(saved.ids(), ids[:2_000]) and saved.version == 7
    assert set(saved.search(q, K).ids.ravel().tolist()) <= set(ids[:2_000].tolist())


@pytest.mark.parametrize(("kind", "shards"), [("flat", 1), ("hnsw", 1), ("ivf_pq", 1), ("ivf_flat", 2)])
def test_a_save_serialising_holds_off_adds_but_not_searches(
    kind: str, shards: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a save serialises the indexes (held there), a search is answered and an add waits; the file then
    holds the store as it was when the save began."""
    ids, x, q = clustered(3_000, 20, seed=4)
    store = create_vector_store(kind, DIM, use_gpu=False, params={"shards": shards})
    store.add(ids[:2_000], x[:2_000])
    serialising, release = threading.Event(), threading.Event()
    real_serialize = faiss.serialize_index

    def held_serialize(index: faiss.Index) -> np.ndarray:
        serialising.set()
        assert release.wait(30)
        return real_serialize(index)

    monkeypatch.setattr(faiss, "serialize_index", held_serialize)
    saver = threading.Thread(target=store.save, args=(tmp_path / "store.ivs",))
    saver.start()
    assert serialising.wait(30)
    searcher = threading.Thread(target=store.search, args=(q, K))
    searcher.start()
    searcher.join(30)
    adder = threading.Thread(target=store.add, args=(ids[2_000:], x[2_000:]))
    adder.start()
    adder.join(0.5)
    searched, add_waited = not searcher.is_alive(), adder.is_alive()
    release.set()
    saver.join(30)
    adder.join(30)
    assert searched and add_waited and not adder.is_alive() and len(store) == 3_000
    monkeypatch.undo()
    assert np.array_equal(load_vector_store(tmp_path / "store.ivs").ids(), ids[:2_000])


def test_sorted_id_set_helpers_match_numpy() -> None:
    rng = np.random.default_rng(11)
    for _ in range(50):
        universe = rng.permutation(rng.integers(1, 500)) + rng.integers(0, 1 << 40)
        split = rng.integers(0, len(universe) + 1)
        a, b = np.sort(universe[:split]), np.sort(universe[split:])
        np.testing.assert_array_equal(merge_disjoint(a, b), np.union1d(a, b))
        np.testing.assert_array_equal(merge_disjoint(b, a), np.union1d(a, b))
        present = np.sort(rng.choice(a, rng.integers(0, len(a) + 1), replace=False)) if len(a) else a
        np.testing.assert_array_equal(without(a, present), np.setdiff1d(a, present))
        shuffled = rng.choice(universe, len(universe) * 2)
        np.testing.assert_array_equal(distinct_sorted(shuffled), np.unique(shuffled))


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load(built, data, kind: str, tmp_path: Path) -> None:
    _, _, q = data
    store = built[kind]
    store.version = 42
    path = tmp_path / "nested" / f"{kind}.index"
    store.save(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    loaded = load_vector_store(path, use_gpu=False)
    assert (loaded.kind, loaded.dim, loaded.version, loaded.params) == (kind, DIM, 42, store.params)
    np.testing.assert_array_equal(loaded.ids(), store.ids())
    np.testing.assert_array_equal(loaded.search(q, K).ids, store.search(q, K).ids)
    loaded.add([7], q[:1])  # a loaded store is fully usable
    assert 7 in loaded.search(q[:1], 1).ids


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_index_file_is_reported(built, tmp_path: Path, damage: str) -> None:
    path = tmp_path / "flat.index"
    built["flat"].save(path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match="truncated|checksum"):
        load_vector_store(path)


@pytest.mark.parametrize("kind", KINDS)
def test_rebuild_from_embeddings(data, kind: str, tmp_path: Path) -> None:
    ids, x, q = data
    embeddings = EmbeddingStore(tmp_path / "embeddings", DIM)
    half = N // 2
    embeddings.append(ids[:half], x[:half])
    embeddings.append(ids[half:], x[half:])
    embeddings.delete(ids[:500])
    store = rebuild_vector_store(kind, embeddings, use_gpu=False)
    assert store.kind == kind
    np.testing.assert_array_equal(store.ids(), ids[500:])
    # The reference is built from the same float16-rounded vectors the rebuild saw.
    live_ids, live_vectors = embeddings.load_all()
    reference = create_vector_store("flat", DIM, use_gpu=False)
    reference.add(live_ids, live_vectors)
    assert_congruent(store, reference, q)


def test_auto_kind_by_size() -> None:
    assert [resolve_kind("auto", n, 64) for n in (0, 49_999, 50_000, 999_999, 1_000_000)] == [
        "flat",
        "flat",
        "hnsw",
        "hnsw",
        "ivf_pq",
    ]
    # Vectors of 512 dimensions or more (every encoder's) leave the graph for IVF-PQ at 300k instead of 1M.
    assert [resolve_kind("auto", n, 768) for n in (49_999, 50_000, 299_999, 300_000)] == [
        "flat",
        "hnsw",
        "hnsw",
        "ivf_pq",
    ]
    assert resolve_kind("auto", 300_000, 511) == "hnsw" and resolve_kind("auto", 300_000, 512) == "ivf_pq"
    assert create_vector_store("auto", 768, expected_size=300_000).kind == "ivf_pq"
    assert target_kind("auto", 300_000, 768) == "ivf_pq" and target_kind("auto", 300_000, 64) == "hnsw"
    assert resolve_kind("ivf_flat", 10, 64) == "ivf_flat" and resolve_kind("hnsw", 5_000_000, 768) == "hnsw"
    assert create_vector_store("auto", DIM, expected_size=60_000).kind == "hnsw"
    with pytest.raises(InvalidInput, match=r"Available: \['auto', 'flat', 'hnsw', 'ivf_flat', 'ivf_pq'\]"):
        create_vector_store("annoy", DIM)


@pytest.mark.parametrize("kind", KINDS)
def test_input_validation(kind: str) -> None:
    store = create_vector_store(kind, DIM, use_gpu=False)
    ids, x, q = clustered(1_000, 2)
    with pytest.raises(InvalidInput, match=r"shape \(n, 64\)"):
        store.add(ids, x[:, :32])
    with pytest.raises(InvalidInput, match="distinct"):
        store.add([1, 1], x[:2])
    with pytest.raises(InvalidInput, match="NaN"):
        store.add([1], np.full((1, DIM), np.nan))
    store.add(ids, x)
    with pytest.raises(InvalidInput, match="positive"):
        store.search(q, 0)
    with pytest.raises(InvalidInput, match="queries"):
        store.search(q[:, :3], K)


def test_ivf_pq_refuses_too_few_training_vectors() -> None:
    ids, x, _ = clustered(100, 1)
    with pytest.raises(InvalidInput, match="at least 624 vectors.*'flat' or 'auto'"):
        create_vector_store("ivf_pq", DIM).add(ids, x)


def test_overfetch_filter_matches_selector_filter(built, data) -> None:
    """The filter path for back ends without ID selectors (GPU flat), run here over a CPU flat search."""
    ids, _, q = data
    flat = built["flat"]
    allowed = np.sort(np.random.default_rng(5).choice(ids, 2_000, replace=False))
    got = overfetch_search(flat.search, q, K, allowed, len(flat), max_k=N)
    np.testing.assert_array_equal(got.ids, flat.search(q, K, allowed).ids)
    assert overfetch_search(flat.search, q, K, allowed[:3], len(flat), max_k=16) is None  # cannot reach them


@pytest.mark.parametrize(
    "ids",
    [[], [5], [1, 2, 9], [9, 2, 2, 1, 9, 0], [3, 3], list(range(50, 0, -1))],
)
def test_distinct_sorted_equals_numpy_unique(ids: list[int]) -> None:
    """Filter ids are made sorted and distinct before the search; sorted distinct input is taken as it is."""
    array = np.array(ids, dtype=np.int64)
    got = distinct_sorted(array)
    assert got.dtype == np.int64 and np.array_equal(got, np.unique(array))
