"""IVF-PQ as the engine builds it: fast-scan 4-bit codes, a float16 re-rank copy found through an id -> row table,
8-bit codes where the lists must be memory-mapped, and stores saved before any of that."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from bench.search import clustered
from indexer.errors import InvalidInput
from indexer.vector_store import create_vector_store, load_vector_store
from indexer.vector_store.base import read_store_file, write_store_file

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

N, DIM, NQ, K = 12_000, 32, 50, 10


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bench/search.py's overlapping clusters (40 centres); ids strided, so rows and ids differ."""
    rng = np.random.default_rng(7)
    middle = rng.normal(size=(40, DIM)).astype(np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    return np.arange(N, dtype=np.int64) * 3 + 1000, clustered(N, DIM, rng, middle), clustered(NQ, DIM, rng, middle)


def exact_top(ids: np.ndarray, x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return ids[np.argsort(-(q @ x.T), axis=1)[:, :K]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def test_default_store_is_fast_scan_with_a_float16_copy(data) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    assert isinstance(faiss.downcast_index(store._index), faiss.IndexIVFPQFastScan)
    assert store.params["nbits"] == 4 and store.params["m"] == DIM // 2 and store.params["refine"] == "fp16"
    assert store.params["nprobe"] == max(8, store.params["nlist"] // 4) and store.params["refine_factor"] == 64
    copy = faiss.downcast_index(store._refine.index)
    assert copy.sq.qtype == faiss.ScalarQuantizer.QT_fp16
    # The re-rank copy hands back the vectors to float16 precision, through the row table and the hash map alike.
    picked = ids[::97]
    np.testing.assert_allclose(store._reconstruct(picked), x[::97], atol=1e-3)
    np.testing.assert_array_equal(store._reconstruct(picked), store._refine.reconstruct_batch(picked))
    assert recall(store.search(q, K).ids, exact_top(ids, x, q)) >= 0.95


def test_refine_factor_shrinks_as_the_dimension_grows() -> None:
    # 64·k candidates up to d = 64, halved per doubling of d, never below 8·k; an explicit factor is kept.
    factors = {d: create_vector_store("ivf_pq", d).params["refine_factor"] for d in (32, 64, 128, 256, 384, 512, 768)}
    assert factors == {32: 64, 64: 64, 128: 32, 256: 16, 384: 8, 512: 8, 768: 8}
    # It follows the code's bits, not d: shorter explicit codes re-rank more, 8-bit codes of d/4 bytes the same.
    assert create_vector_store("ivf_pq", 768, params={"m": 64, "nbits": 8}).params["refine_factor"] == 16
    assert create_vector_store("ivf_pq", 768, params={"m": 32}).params["refine_factor"] == 64
    assert create_vector_store("ivf_pq", 768, params={"nbits": 8, "m": 192}).params["refine_factor"] == 8
    assert create_vector_store("ivf_pq", 768, params={"refine_factor": 64}).params["refine_factor"] == 64


def test_sparse_ids_skip_the_row_table_and_find_the_same_neighbours(data) -> None:
    ids, x, q = data
    dense = create_vector_store("ivf_pq", DIM)
    dense.add(ids, x)
    sparse_ids = ids * 1_000_003 + (1 << 40)
    sparse = create_vector_store("ivf_pq", DIM)
    sparse.add(sparse_ids, x)
    assert dense._row_table() is not None and sparse._row_table() is None
    a, b = dense.search(q, K), sparse.search(q, K)
    np.testing.assert_array_equal(np.searchsorted(ids, a.ids), np.searchsorted(sparse_ids, b.ids))
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


def test_row_table_follows_removals_and_re_adds(data) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    store.search(q, K)  # builds the table
    gone = store.search(q, K).ids[:, 0]
    store.remove(gone)
    assert not np.isin(store.search(q, K).ids, gone).any()
    # Put the removed ids back with new vectors: the copy's rows moved, the table must follow them.
    moved = np.random.default_rng(1).normal(size=(len(np.unique(gone)), DIM)).astype(np.float32)
    moved /= np.linalg.norm(moved, axis=1, keepdims=True)
    store.add(np.unique(gone), moved)
    np.testing.assert_allclose(store._reconstruct(np.unique(gone)), moved, atol=1e-3)
    # Scored directly from the copy (a filter this small is brute-forced): each new vector finds its own id.
    found = store.search(moved, 1, allowed_ids=np.unique(gone)).ids[:, 0]
    np.testing.assert_array_equal(found, np.unique(gone))


def test_adds_extend_the_row_table_in_place(data) -> None:
    """Batches added after the table exists (new ids past its end, ids in its gaps, out of order) are written into
    it, not rebuilt from the copy's id list; the rows it gives are the copy's own, as a rebuilt table's would be."""
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids[:8000], x[:8000])
    store.search(q, K)
    rng = np.random.default_rng(3)
    batches = [ids[8000:9000], rng.permutation(ids[9000:12000]), np.arange(1001, 25_000, 3)[:500]]  # last: gaps
    extra = clustered(500, DIM, rng, x[:40])
    for batch in batches:
        table = store._rows
        store.add(batch, extra if len(batch) == 500 else x[np.searchsorted(ids, batch)])
        assert store._rows is not None and (store._rows is table or len(store._rows) > len(table))
    held = store.ids()
    extended = store._row_table().copy()
    store._rows = None  # what a rebuild gives
    rebuilt = store._row_table()
    np.testing.assert_array_equal(extended[held], rebuilt[held])
    assert (extended[np.setdiff1d(np.arange(len(extended)), held)] == -1).all()
    np.testing.assert_array_equal(store._reconstruct(held), store._refine.reconstruct_batch(held))


def test_an_add_that_makes_the_ids_sparse_drops_the_row_table(data) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    store.search(q, K)
    far = np.array([1 << 40], dtype=np.int64)
    store.add(far, x[:1])
    assert store._row_table() is None  # the copy's hash map from now on
    np.testing.assert_array_equal(store._reconstruct(far), store._refine.reconstruct_batch(far))
    assert store.search(x[:1], 2).ids[0].tolist() in ([ids[0], far[0]], [far[0], ids[0]])


def test_explicit_eight_bit_codes_and_eight_bit_copy(data) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM, params={"nbits": 8, "refine": "sq8"})
    store.add(ids, x)
    assert type(faiss.downcast_index(store._index)) is faiss.IndexIVFPQ
    assert store.params["m"] == DIM // 4
    assert faiss.downcast_index(store._refine.index).sq.qtype == faiss.ScalarQuantizer.QT_8bit
    assert recall(store.search(q, K).ids, exact_top(ids, x, q)) >= 0.9


@pytest.mark.parametrize(
    ("params", "message"),
    [({"nbits": 3}, "nbits=3 must be 4 to 8"), ({"nbits": 9}, "nbits=9"), ({"refine": "fp8"}, "refine='fp8'")],
)
def test_bad_parameters_are_refused(params: dict, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        create_vector_store("ivf_pq", DIM, params=params)


def test_on_disk_stores_use_mappable_eight_bit_lists_and_copy(data, tmp_path: Path) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM, params={"shards": 2, "on_disk": True})
    store.add(ids, x)
    assert store.params["nbits"] == 8 and store.params["refine"] == "sq8"
    path = tmp_path / "index.ivs"
    store.save(path)
    mapped = load_vector_store(path, mmap=True)
    lists = {type(faiss.downcast_InvertedLists(s._index.invlists)).__name__ for s in mapped._shards}
    assert lists == {"OnDiskInvertedLists"}  # 4-bit fast-scan lists would have been read into memory
    np.testing.assert_array_equal(mapped.search(q, K).ids, store.search(q, K).ids)
    # A first batch too small for 8-bit codebooks (39 points per centroid) trains fewer bits, as before.
    small = create_vector_store("ivf_pq", DIM, params={"shards": 1, "on_disk": True})
    small.add(ids[:5_000], x[:5_000])
    assert small.params["nbits"] == 7 and type(faiss.downcast_index(small._shards[0]._index)) is faiss.IndexIVFPQ


def test_a_store_saved_before_fast_scan_still_loads(data, tmp_path: Path) -> None:
    """Stores saved before the float16 copy: 8-bit codes, an 8-bit copy, and no "refine" in their params."""
    ids, x, q = data
    old = create_vector_store("ivf_pq", DIM, params={"nbits": 8, "refine": "sq8", "refine_factor": 16})
    old.add(ids, x)
    path = tmp_path / "old.ivs"
    old.save(path)
    header, sections = read_store_file(path)
    del header["params"]["refine"]
    write_store_file(path, header, {name: bytes(part) for name, part in sections.items()})
    loaded = load_vector_store(path)
    assert loaded.params["refine"] == "sq8"
    np.testing.assert_array_equal(loaded.search(q, K).ids, old.search(q, K).ids)
    loaded.add(ids[:10] + 1, x[:10])  # and it keeps working as one
    assert set(loaded.search(x[:1], 2).ids[0]) == {ids[0], ids[0] + 1}


@pytest.mark.parametrize("nprobe", [1, 64])
def test_scores_are_the_copys_inner_products(data, nprobe: int) -> None:
    """Re-ranked scores are the query's inner products with the returned vectors, whether a query's candidate list
    is full (nprobe 64) or padded with -1 (one list of ~N/128 vectors for 640 candidate slots)."""
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM, params={"nprobe": nprobe})
    store.add(ids, x)
    for queries in (q, q[:1]):  # a batch, and one query after it (buffers reused at another fill)
        found = store.search(queries, K)
        assert (found.ids >= 0).all()
        rows = np.searchsorted(ids, found.ids)
        np.testing.assert_allclose(found.scores, np.einsum("qd,qkd->qk", queries, x[rows]), atol=2e-3)
        assert (np.diff(found.scores, axis=1) <= 0).all()


def test_a_search_for_many_results_does_not_keep_its_buffers(data, monkeypatch: pytest.MonkeyPatch) -> None:
    import indexer.vector_store.faiss_store as faiss_store

    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    store.search(q[:1], K)
    kept = {name: buffer.nbytes for name, buffer in store._buffers.__dict__.items()}
    assert kept["vectors"] == K * 64 * DIM * 4
    monkeypatch.setattr(faiss_store, "SCRATCH_MAX_BYTES", kept["vectors"])
    many = store.search(q[:1], 5 * K)  # 5x the candidates: answered, its buffer not kept
    assert (many.ids >= 0).all() and {n: b.nbytes for n, b in store._buffers.__dict__.items()} == kept
