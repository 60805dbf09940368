"""Random histories of adds, removals, re-adds with new vectors and save/load round trips, for every kind that
takes ids back (and sharded and on-disk stores): after every step the store holds exactly the ids a set says, every
held id is found by its current vector with its exact score and `vector(id)` hands that vector back, and no removed
id comes back.

Faults of this shape were real: faiss's fast-scan lists merged the codes of vectors added after a removal with the
removed ones' (fast_scan.py); the IVF-PQ re-rank copy keeps removed rows until they are many (COPY_STALE_SHARE),
so a re-added id must never be scored with its old row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.vector_store import create_vector_store, load_vector_store

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM, K = 32, 10
UNIVERSE = 6_000  # ids drawn from 0..UNIVERSE-1, so removed ids come back
STORES = {
    "flat": ("flat", {}),
    "ivf_flat": ("ivf_flat", {}),
    "ivf_pq": ("ivf_pq", {}),
    # Scores from an 8-bit copy whose per-dimension ranges come from the first batch: a later vector outside them is
    # clipped (self-score down to ~0.96 at this d and training size; a removed vector in its cluster scores ~0.75).
    "ivf_pq_8bit": ("ivf_pq", {"nbits": 8, "refine": "sq8"}),
    "ivf_pq_sharded": ("ivf_pq", {"shards": 3}),
    "ivf_flat_on_disk": ("ivf_flat", {"shards": 2, "on_disk": True}),
}


def unit(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", list(STORES))
def test_random_histories_keep_every_held_vector_findable(name: str, tmp_path: Path) -> None:
    kind, params = STORES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    centres = rng.standard_normal((40, DIM)).astype(np.float32)
    store = create_vector_store(kind, DIM, use_gpu=False, params=params)
    first = rng.choice(UNIVERSE, 3_000, replace=False).astype(np.int64)
    vectors = unit(rng, len(first), centres)
    store.add(first, vectors)  # enough to train the IVF kinds' lists and codebooks
    current = dict(zip(first.tolist(), vectors))  # id -> the vector it holds now
    removed: set[int] = set()
    for step in range(14):
        held = np.fromiter(current, dtype=np.int64)
        gone = rng.choice(held, int(rng.integers(1, 120)), replace=False)
        unknown = rng.integers(UNIVERSE, 2 * UNIVERSE, 5)  # never added: ignored
        assert store.remove(np.concatenate([gone, unknown])) == len(gone)
        for i in gone.tolist():
            del current[i]
        removed |= set(gone.tolist())
        # Re-adds of removed ids with new vectors, and ids never seen, in one batch (shuffled).
        back = rng.choice(sorted(removed), min(len(removed), int(rng.integers(0, 80))), replace=False)
        fresh = np.setdiff1d(rng.integers(0, UNIVERSE, 60), np.fromiter(current, dtype=np.int64))
        batch = rng.permutation(np.unique(np.concatenate([back, fresh]).astype(np.int64)))
        vectors = unit(rng, len(batch), centres)
        assert store.add(batch, vectors) == len(batch)
        current.update(zip(batch.tolist(), vectors))
        removed -= set(batch.tolist())
        if step % 5 == 4:  # a save/load round trip now and then
            path = tmp_path / f"{name}-{step}.ivs"
            store.save(path)
            store = load_vector_store(path, use_gpu=False)
        _check(store, current, removed, rng, tolerance=5e-2 if params.get("refine") == "sq8" else 2e-3)


def _check(
    store, current: dict[int, np.ndarray], removed: set[int], rng: np.random.Generator, tolerance: float
) -> None:  # noqa: ANN001
    held = np.fromiter(current, dtype=np.int64)
    assert store.ids().tolist() == sorted(current)
    probe = rng.choice(held, min(200, len(held)), replace=False)
    queries = np.stack([current[i] for i in probe.tolist()])
    found = store.search(queries, K)
    assert not set(found.ids.ravel().tolist()) & removed
    for row, wanted in enumerate(probe.tolist()):
        hits = found.ids[row].tolist()
        assert wanted in hits, (store.kind, wanted)
        assert found.scores[row][hits.index(wanted)] == pytest.approx(1.0, abs=tolerance)
    for wanted in probe[:20].tolist():
        assert float(store.vector(wanted) @ current[wanted]) == pytest.approx(1.0, abs=tolerance)
    for gone in list(removed)[:20]:
        assert store.vector(gone) is None
