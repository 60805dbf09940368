"""IVF-PQ as the engine builds it: fast-scan 4-bit codes, a float16 re-rank copy found through an id -> row table,
8-bit codes where the lists must be memory-mapped, removals that leave later adds intact and their rows in the copy
for a while, and stores saved before any of that."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from bench.search import clustered
from indexer.errors import InvalidInput
from indexer.vector_store import create_vector_store, load_vector_store
from indexer.vector_store.base import read_store_file, write_store_file
from indexer.vector_store.fast_scan import HINT_MAX_VALUES

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


def copy_ids(store) -> np.ndarray:  # noqa: ANN001
    return faiss.vector_to_array(store._refine.id_map)


@pytest.mark.parametrize("sparse", [False, True])
def test_removals_leave_rows_in_the_copy_until_they_are_an_eighth_of_it(data, sparse: bool) -> None:
    """A removal takes its ids out of the lists only: the copy keeps their rows, unreachable, and the row table
    forgets them in place. Searches answer as from a copy without them; at 1/8 of the copy they are dropped."""
    ids, x, q = data
    ids = ids * 1_000_003 + (1 << 40) if sparse else ids
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    store.search(q, K)
    table = store._rows
    gone = np.unique(store.search(q, K).ids[:, :3])
    store.remove(gone)
    assert store._refine.ntotal == N and len(store) == N - len(gone)
    assert store._rows is table  # not rebuilt
    if not sparse:
        assert (table[gone] == -1).all()
    np.testing.assert_array_equal(store._stale(), gone)
    kept = store.search(q, K)
    assert not np.isin(kept.ids, gone).any()
    store._drop_stale_rows(store._stale())  # what the copy holds does not change an answer
    assert store._refine.ntotal == len(store)
    after = store.search(q, K)
    np.testing.assert_array_equal(after.ids, kept.ids)
    np.testing.assert_array_equal(after.scores, kept.scores)
    # Removed in batches, the copy keeps its stale rows up to an eighth of its rows, then drops them all at once.
    live = store.ids()
    sizes = []
    for batch in np.array_split(np.random.default_rng(5).permutation(live)[: N // 6], 20):
        store.remove(batch)
        sizes.append(store._refine.ntotal)
        assert len(store._stale()) * 8 < store._refine.ntotal
        assert set(copy_ids(store)) == set(store.ids()) | set(store._stale())
    drops = [i for i in range(1, len(sizes)) if sizes[i] < sizes[i - 1]]
    assert sizes[0] == len(live) and len(drops) == 1  # ~1,480 stale rows of ~11,850
    held = store.ids()
    np.testing.assert_allclose(store._reconstruct(held), x[np.searchsorted(ids, held)], atol=1e-3)
    filtered = store.search(q, K, allowed_ids=held[::7])  # scored from the copy: only allowed, live ids
    assert np.isin(filtered.ids, held[::7]).all()


def test_a_removed_id_added_again_gets_its_new_vector(data) -> None:
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    store.search(q, K)
    store.remove(ids[:5])
    assert len(store._stale()) == 5
    store.add(ids[2:3], x[-1:])  # one of them back: the stale rows go first, so the copy holds each id once
    assert len(store._stale()) == 0 and store._refine.ntotal == N - 4
    assert len(np.unique(copy_ids(store))) == store._refine.ntotal
    np.testing.assert_allclose(store._reconstruct(ids[2:3]), x[-1:], atol=1e-3)
    assert store.search(x[-1:], 2).ids[0].tolist() in ([ids[2], ids[-1]], [ids[-1], ids[2]])


def test_stale_rows_survive_a_save_and_are_known_after_loading(data, tmp_path: Path) -> None:
    ids, x, q = data
    for params in ({}, {"shards": 2}):
        store = create_vector_store("ivf_pq", DIM, params=params)
        store.add(ids, x)
        store.remove(ids[::50])
        path = tmp_path / f"store{len(params)}.ivs"
        store.save(path)
        loaded = load_vector_store(path)
        np.testing.assert_array_equal(loaded.search(q, K).ids, store.search(q, K).ids)
        shards = getattr(loaded, "_shards", [loaded])
        assert sum(len(s._stale()) for s in shards) == len(ids[::50])
        loaded.add(ids[::50][:3], x[:3])  # back again after the load: their old rows are dropped first
        assert sum(len(np.unique(copy_ids(s))) for s in shards) == sum(s._refine.ntotal for s in shards)
        assert loaded.search(x[:1], 1).ids[0, 0] == ids[0]


def pq_scores(store, query: np.ndarray) -> dict[int, float]:  # noqa: ANN001
    """Every listed id's fast-scan score for `query` (all lists probed, no re-rank)."""
    everything = faiss.SearchParametersIVF(nprobe=int(store.params["nlist"]))
    scores, found = store._index.search(query, store._index.ntotal, params=everything)
    return dict(zip(found[0].tolist(), scores[0].tolist()))


@pytest.mark.parametrize("lists_from", ["the copy", "misleading vectors"])
def test_vectors_added_after_removals_get_their_own_codes(
    data, lists_from: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """faiss's fast-scan removal leaves old codes in the slots it frees, and an add into such a slot merged its
    code with them (a vector removed and added again scored -0.007 against itself). Removing and adding in either
    order must give every listed id the same code, so the same score. The lists to clear are found from the copy's
    rows; given vectors that point elsewhere, the removal still clears what it freed (every list)."""
    if lists_from == "misleading vectors":
        from indexer.vector_store import faiss_store, fast_scan

        def misled(index: faiss.Index, ids: np.ndarray, vectors) -> None:  # noqa: ANN001
            fast_scan.remove_ids(index, ids, lambda: -vectors())  # the farthest lists

        monkeypatch.setattr(faiss_store, "remove_ids", misled)
    ids, x, q = data
    removed, fresh_ids = ids[::7], np.arange(10**6, 10**6 + 3000, dtype=np.int64)
    fresh = clustered(3000, DIM, np.random.default_rng(11), x[:40])
    first = create_vector_store("ivf_pq", DIM)  # removes, then adds: ids back, and new ones into the freed slots
    first.add(ids, x)
    for batch in np.array_split(removed, 2 + len(removed) * DIM // HINT_MAX_VALUES):
        first.remove(batch)  # in removals small enough to find their lists from the copy
    first.add(np.concatenate([removed[:500], fresh_ids]), np.concatenate([x[::7][:500], fresh]))
    second = create_vector_store("ivf_pq", DIM)  # same training (same first batch), removals last
    second.add(ids, x)
    second.add(fresh_ids, fresh)
    second.remove(removed[500:])
    assert np.array_equal(first.ids(), second.ids())
    for query in (q[:3], x[::7][:2], fresh[:2]):
        for one in query:
            a, b = pq_scores(first, one[None]), pq_scores(second, one[None])
            assert a.keys() == b.keys()
            np.testing.assert_allclose([a[i] for i in b], list(b.values()), atol=1e-5)
    # The ids that came back are found first by their own vectors, as is each new one.
    np.testing.assert_array_equal(first.search(x[::7][:500], 1).ids[:, 0], removed[:500])
    np.testing.assert_array_equal(first.search(fresh[:200], 1).ids[:, 0], fresh_ids[:200])


def test_a_fast_scan_store_saved_before_clean_removals_asks_for_a_rebuild(data, tmp_path: Path) -> None:
    ids, x, _ = data
    for params, fast in (({}, True), ({"shards": 2}, True), ({"nbits": 8}, False)):
        store = create_vector_store("ivf_pq", DIM, params=params)
        store.add(ids, x)
        path = tmp_path / "store.ivs"
        store.save(path)
        assert not load_vector_store(path).needs_rebuild
        header, sections = read_store_file(path)
        for saved in (header["params"], *header.get("shard_params", [])):
            del saved["clean_removals"]
        write_store_file(path, header, {name: bytes(part) for name, part in sections.items()})
        assert load_vector_store(path).needs_rebuild is fast  # 8-bit lists remove correctly


def test_fast_scan_codes_are_residuals_and_stay_so_after_a_reload(data, tmp_path: Path) -> None:
    # By inner product one look-up table serves every list, so residual codes cost the scan nothing (faiss's
    # fast-scan default is off, for L2); they gained a point of recall at 1M x 64 (bench/RESULTS.md).
    ids, x, q = data
    store = create_vector_store("ivf_pq", DIM)
    store.add(ids, x)
    assert faiss.downcast_index(store._index).by_residual
    store.save(tmp_path / "store.ivs")
    loaded = load_vector_store(tmp_path / "store.ivs")
    assert faiss.downcast_index(loaded._index).by_residual
    np.testing.assert_array_equal(loaded.search(q, K).ids, store.search(q, K).ids)
    assert recall(store.search(q, K).ids, exact_top(ids, x, q)) >= 0.95
