"""Exact inner-product search: the reference every other back end is compared with.

On a machine whose faiss build has GPU support and sees a GPU, searches run on a GPU copy of the vectors; the CPU
index stays the source of truth (it is what gets saved, filtered and mutated) and the GPU copy is rebuilt lazily
after a change. GPU indexes do not take ID selectors, so a filtered GPU search over-fetches and drops disallowed
ids until k survive (falling back to the CPU selector search past the GPU's k limit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import faiss
import numpy as np

from indexer.vector_store.base import (
    BRUTE_FORCE_MAX,
    FaissStore,
    SearchResult,
    as_id_array,
    check_vectors,
    empty_result,
    sorted_contains,
    top_k,
)

# faiss GPU brute-force search accepts k up to this many results per query.
GPU_MAX_K = 2048


def gpu_available() -> bool:
    """True when the installed faiss was built with CUDA and can see at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FlatStore(FaissStore):
    """`IndexIDMap2(IndexFlatIP)`: every query is compared with every vector."""

    kind = "flat"
    exact = True

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None, *, use_gpu: bool | None = None) -> None:
        super().__init__(dim, params)
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu and gpu_available()
        self._gpu_resources = None
        self._gpu_index = None
        self._gpu_labels: np.ndarray | None = None
        # Which GPU searches run on (a sharded store spreads its flat shards over the GPUs).
        self.gpu_device = 0

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))

    def _changed(self) -> None:
        self._gpu_index = None

    def search(self, queries: Any, k: int, allowed_ids: Any = None) -> SearchResult:
        if not self.use_gpu or not len(self) or not isinstance(k, int) or not 0 < k <= GPU_MAX_K:
            return super().search(queries, k, allowed_ids)
        queries = check_vectors(queries, self.dim, "queries")
        with self._lock:
            if allowed_ids is None:
                return self._gpu_search(queries, k)
            allowed = np.unique(as_id_array(allowed_ids))
            candidates = allowed[sorted_contains(self._ids, allowed)]
            if len(candidates) <= BRUTE_FORCE_MAX:
                return super().search(queries, k, candidates)
            found = overfetch_search(self._gpu_search, queries, k, candidates, len(self), GPU_MAX_K)
            return found if found is not None else super().search(queries, k, candidates)

    def _gpu_search(self, queries: np.ndarray, k: int) -> SearchResult:
        if self._gpu_index is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            flat = faiss.downcast_index(self._index.index)
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, self.gpu_device, flat)
            # The flat index numbers vectors by position; id_map turns positions back into catalog ids.
            self._gpu_labels = faiss.vector_to_array(self._index.id_map)
        scores, positions = self._gpu_index.search(queries, min(k, len(self._gpu_labels)))
        ids = np.where(positions >= 0, self._gpu_labels[np.maximum(positions, 0)], -1)
        result = empty_result(len(queries), k)
        result.ids[:, : ids.shape[1]], result.scores[:, : ids.shape[1]] = ids, scores
        result.scores[result.ids < 0] = -np.inf
        return result


def overfetch_search(
    search: Callable[[np.ndarray, int], SearchResult],
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray,
    total: int,
    max_k: int,
) -> SearchResult | None:
    """Filter for a back end without selectors: fetch 4k, 16k, ... unfiltered results and keep the allowed ones.

    Returns None when `max_k` results per query still leave some query short of min(k, len(allowed)); the caller
    then needs a back end that filters natively.
    """
    want = min(k, len(allowed))
    fetch = min(total, max(4 * k, k))
    while True:
        found = search(queries, min(fetch, max_k))
        keep = np.isin(found.ids, allowed)
        scores = np.where(keep, found.scores, -np.inf).astype(np.float32)
        result = top_k(scores, np.where(keep, found.ids, -1), k)
        if ((result.ids >= 0).sum(axis=1) >= want).all():
            return result
        if fetch >= total or fetch >= max_k:
            return None
        fetch = min(total, fetch * 4)
