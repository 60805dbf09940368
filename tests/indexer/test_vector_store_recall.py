"""Recall@10 of filtered search against exact search over the allowed ids, on real FAISS indexes.

The data are hard the way bench/search.py's are: unit vectors around many overlapping centres, queries drawn fresh
from the same mixture (not copies of indexed vectors). Each approximate kind is measured twice at 1% and 10%
selectivity: as the store plans the search (brute force over the allowed vectors where that is cheaper), and
forced through the index with an ID selector (`brute_force_max=0`), which is the path large collections take.
Searching the index at its unfiltered effort (efSearch, nprobe) stops at the first k allowed vectors it meets:
that measured 0.64 (HNSW) and 0.52 (IVF-Flat) at 1% here, so the floor below fails if the 1/selectivity scaling
of the effort regresses.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer.errors import InvalidInput
from indexer.vector_store import create_vector_store, load_vector_store
from indexer.vector_store.faiss_store import ladder

# One OpenMP thread (tests/indexer/conftest.py): small faiss builds on a busy 2-core box.
pytestmark = pytest.mark.usefixtures("one_faiss_thread")

K, DIM, NQ = 10, 64, 100
MIN_RECALL = 0.95
# IVF-PQ trains its codebooks for seconds per 10k vectors on a busy CI machine; 8k vectors still give 128 lists.
SIZES = {"hnsw": 20_000, "ivf_flat": 20_000, "ivf_pq": 8_000}
SELECTIVITIES = (0.01, 0.1)


def mixture(n: int, nq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids (sparse, not 0..n-1), n data vectors and nq queries from a mixture of n/250 overlapping clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(64, n // 250), DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, DIM)).astype(np.float32) * (
            1.5 / np.sqrt(DIM)
        )
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return np.arange(n, dtype=np.int64) * 7 + 11, draw(n), draw(nq)


def exact_top_k(ids: np.ndarray, x: np.ndarray, q: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(np.isin(ids, allowed))
    scores = q @ x[rows].T
    return ids[rows[np.argsort(-scores, axis=1, kind="stable")[:, :K]]]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth)]))


@pytest.fixture(scope="module")
def measured() -> dict[str, dict]:
    """Per kind: the data, two stores over it (planned and index-only) and the allowed sets with their truth."""
    out = {}
    for kind, n in SIZES.items():
        ids, x, q = mixture(n, NQ, seed=n)
        planned = create_vector_store(kind, DIM, use_gpu=False)
        planned.add(ids, x)
        forced = create_vector_store(kind, DIM, use_gpu=False, params={"brute_force_max": 0})
        forced.add(ids, x)
        rng = np.random.default_rng(1)
        allowed = {s: np.sort(rng.choice(ids, int(n * s), replace=False)) for s in SELECTIVITIES}
        truth = {s: exact_top_k(ids, x, q, allowed[s]) for s in SELECTIVITIES}
        out[kind] = {
            "ids": ids,
            "x": x,
            "q": q,
            "planned": planned,
            "forced": forced,
            "allowed": allowed,
            "truth": truth,
        }
    return out


@pytest.mark.parametrize("selectivity", SELECTIVITIES)
@pytest.mark.parametrize("path", ["planned", "forced"])
@pytest.mark.parametrize("kind", list(SIZES))
def test_filtered_recall_at_10(measured, kind: str, path: str, selectivity: float) -> None:
    m = measured[kind]
    result = m[path].search(m["q"], K, m["allowed"][selectivity])
    assert (result.ids >= 0).all() and np.isin(result.ids, m["allowed"][selectivity]).all()
    got = recall(result.ids, m["truth"][selectivity])
    assert got >= MIN_RECALL, f"{kind} {path} at {selectivity:.0%}: recall@10 {got:.3f} < {MIN_RECALL}"


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat"])
def test_small_filtered_sets_are_scored_exactly(measured, kind: str) -> None:
    """At these sizes the planner scores the allowed vectors directly: the very ids exact search gives."""
    m = measured[kind]
    for selectivity in SELECTIVITIES:
        result = m["planned"].search(m["q"], K, m["allowed"][selectivity])
        np.testing.assert_array_equal(result.ids, m["truth"][selectivity])


def test_unfiltered_search_keeps_its_effort(measured) -> None:
    """Selectivity scaling only applies to filters: an unfiltered search runs at the configured effort."""
    hnsw, ivf = measured["hnsw"]["planned"], measured["ivf_flat"]["planned"]
    assert hnsw._efforts(K, 1.0)[0] == hnsw.params["ef_search"]
    assert ivf._efforts(K, 1.0)[0] == ivf.params["nprobe"]
    assert hnsw._efforts(K, 0.1)[0] == 10 * hnsw.params["ef_search"]
    assert ivf._efforts(K, 0.01)[0] == ivf.params["nlist"]  # capped: every list
    for kind in SIZES:
        m = measured[kind]
        assert recall(m["planned"].search(m["q"], K).ids, exact_top_k(m["ids"], m["x"], m["q"], m["ids"])) >= 0.9


def test_ivf_flat_saved_without_direct_map(tmp_path: Path) -> None:
    """A store saved before IVF-Flat kept a direct map gets one on first use; removal still works after it."""
    ids, x, q = mixture(3_000, 20, seed=3)
    store = create_vector_store("ivf_flat", DIM, use_gpu=False)
    store.add(ids, x)
    store._index.set_direct_map_type(faiss.DirectMap.NoMap)
    store.save(tmp_path / "old.ivs")
    loaded = load_vector_store(tmp_path / "old.ivs", use_gpu=False)
    allowed = ids[::50]
    np.testing.assert_array_equal(loaded.search(q, K, allowed).ids, exact_top_k(ids, x, q, allowed))
    assert loaded.remove(allowed[:10]) == 10
    result = loaded.search(q, K, allowed)
    np.testing.assert_array_equal(result.ids, exact_top_k(ids, x, q, allowed[10:]))


def test_ladder_and_parameter_check() -> None:
    assert ladder(100, 10_000, rungs=4) == [100, 400, 1600, 6400]
    assert ladder(3_000, 10_000, rungs=4) == [3_000, 10_000]
    assert ladder(512, 512, rungs=1) == [512]
    with pytest.raises(InvalidInput, match="brute_force_max must be a non-negative integer"):
        create_vector_store("hnsw", DIM, params={"brute_force_max": -1})
