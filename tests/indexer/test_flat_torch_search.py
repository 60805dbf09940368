"""Flat search through the torch path (what runs on a GPU when faiss has no GPU build, e.g. PyPI's faiss-cpu) gives
the CPU faiss index's answers: same ids, scores to float32 rounding, after adds and deletes, filtered (over-fetch),
with k beyond the collection, and when the queries are scored in several blocks. Here the torch path runs on the
CPU (`torch_device="cpu"`); the `gpu` test runs it on CUDA where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from indexer.vector_store import flat
from indexer.vector_store.flat import FlatStore

DIM, N = 32, 12_000


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.choice(10**9, N, replace=False).astype(np.int64)  # catalog ids are not positions
    return ids, _unit(rng.standard_normal((N, DIM))), _unit(rng.standard_normal((40, DIM)))


def _pair(data, torch_device: str) -> tuple[FlatStore, FlatStore]:  # noqa: ANN001
    ids, vectors, _ = data
    reference, accelerated = FlatStore(DIM, use_gpu=False), FlatStore(DIM, torch_device=torch_device)
    for store in (reference, accelerated):
        store.add(ids, vectors)
    return reference, accelerated


def _same(a, b) -> None:  # noqa: ANN001 - SearchResult
    assert np.array_equal(a.ids, b.ids)
    finite = np.isfinite(a.scores)
    assert np.array_equal(finite, np.isfinite(b.scores))
    np.testing.assert_allclose(a.scores[finite], b.scores[finite], atol=1e-5)


def test_torch_path_equals_faiss_including_after_changes(data) -> None:  # noqa: ANN001
    ids, _, queries = data
    reference, accelerated = _pair(data, "cpu")
    assert accelerated.use_gpu and not reference.use_gpu
    _same(reference.search(queries, 10), accelerated.search(queries, 10))
    # The device copy is rebuilt after a change: deleted ids vanish, added ones appear.
    gone = ids[::3]
    extra_ids = np.arange(1, 201, dtype=np.int64)
    extra = _unit(np.random.default_rng(8).standard_normal((200, DIM)))
    for store in (reference, accelerated):
        store.remove(gone)
        store.add(extra_ids, extra)
    got = accelerated.search(queries, 10)
    _same(reference.search(queries, 10), got)
    assert not np.isin(got.ids, gone).any()


def test_torch_path_filtered_and_short_results(data) -> None:  # noqa: ANN001
    ids, _, queries = data
    reference, accelerated = _pair(data, "cpu")
    allowed = ids[: N - 100]  # more than BRUTE_FORCE_MAX: the over-fetch path, not direct scoring
    assert len(allowed) > flat.BRUTE_FORCE_MAX
    _same(reference.search(queries, 10, allowed_ids=allowed), accelerated.search(queries, 10, allowed_ids=allowed))
    small = FlatStore(DIM, torch_device="cpu")
    small.add(ids[:5], data[1][:5])
    result = small.search(queries, 8)
    assert (result.ids[:, 5:] == -1).all() and np.isneginf(result.scores[:, 5:]).all()
    assert set(result.ids[0, :5]) == set(ids[:5])


def test_torch_path_scores_queries_in_blocks(data, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    _, _, queries = data
    reference, accelerated = _pair(data, "cpu")
    monkeypatch.setattr(flat, "TORCH_SCORE_BYTES", 4 * N * 7)  # 7 query rows per block: 6 blocks for 40 queries
    _same(reference.search(queries, 10), accelerated.search(queries, 10))


@pytest.mark.gpu
def test_default_flat_store_searches_on_the_gpu(data) -> None:  # noqa: ANN001
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ids, vectors, queries = data
    reference, default = FlatStore(DIM, use_gpu=False), FlatStore(DIM)
    assert default.use_gpu  # a GPU is present: flat search uses it (faiss GPU build or torch)
    for store in (reference, default):
        store.add(ids, vectors)
    _same(reference.search(queries, 10), default.search(queries, 10))
