"""A batch of queries to a flat store is scored by faiss with matrix products once queries x dim reaches
`BLAS_MIN_FLOATS` (set on import); the answers are those of the per-query scan (faiss's default for any batch under
128,000 floats) up to ties: the same scores rank by rank, each the true score of its id."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from indexer.vector_store.flat import BLAS_MIN_FLOATS, FlatStore


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(("n", "dim", "k", "nq"), [(5_000, 64, 10, 40), (3_001, 768, 1, 4), (20, 128, 50, 16)])
def test_a_batch_is_scored_as_each_query_alone(n: int, dim: int, k: int, nq: int) -> None:
    assert faiss.cvar.distance_compute_blas_threshold == BLAS_MIN_FLOATS <= nq * dim  # the matrix-product path
    rng = np.random.default_rng(n)
    store = FlatStore(dim, use_gpu=False)
    ids, vectors = rng.choice(10 * n, size=n, replace=False), unit(rng, n, dim)
    store.add(ids, vectors)
    queries = unit(rng, nq, dim)
    batched = store.search(queries, k)
    try:
        faiss.cvar.distance_compute_blas_threshold = 128_000
        alone = store.search(queries, k)
    finally:
        faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_FLOATS
    # Two vectors whose scores differ in the last bits may swap places: the product rounds unlike the scan.
    np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-5)
    found = batched.ids[:, : min(k, n)]
    order = np.argsort(ids)
    rows = order[np.searchsorted(ids[order], found)]  # where each found id's vector is in `vectors`
    np.testing.assert_allclose(
        batched.scores[:, : min(k, n)], np.einsum("qd,qkd->qk", queries, vectors[rows]), atol=1e-5
    )
    assert np.mean(batched.ids == alone.ids) > 0.99
    assert batched.ids.shape == (nq, k) and (batched.ids[:, min(k, n) :] == -1).all()
