"""Exact inner-product search: the reference every other back end is compared with.

On a machine with a GPU, searches run on a GPU copy of the vectors: faiss's own GPU index when the installed faiss
was built with CUDA, otherwise a torch tensor on the device (matmul + top-k; PyPI's faiss-cpu has no GPU build, torch
does). The CPU index stays the source of truth (it is what gets saved, filtered and mutated) and the GPU copy is
rebuilt lazily after a change. GPU copies do not take ID selectors, so a filtered GPU search over-fetches and drops
disallowed ids until k survive (falling back to the CPU selector search past the GPU's k limit).
"""

from __future__ import annotations

import threading
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
    distinct_sorted,
    empty_result,
    sorted_contains,
    top_k,
)

# faiss GPU brute-force search accepts k up to this many results per query.
GPU_MAX_K = 2048


# Query rows scored at once on the torch path: bounds the (rows x n) score matrix to 1 GiB of float32.
TORCH_SCORE_BYTES = 2**30
# faiss scores a batch of queries with one matrix product (BLAS) per block of stored vectors once queries x dim
# reaches this many floats, and below it scans the whole index once per query. Its default, 128,000 (167 queries
# at 768 dimensions, 2,000 at 64), left every micro-batch of searches on the per-query scan; at 2,048 a batch
# switches at 3+ queries of 768 dimensions, 16+ of 128, 32+ of 64, and a single query never does (up to 2,048
# dimensions). 32 queries of 768-d over 50k vectors: 3.40 -> 0.64 ms per query, 2 threads (bench/RESULTS.md,
# "Searching a micro-batch"). It is a process-wide setting of faiss; set here, where every store is built from.
BLAS_MIN_FLOATS = 2048
faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_FLOATS


def faiss_gpus() -> int:
    """GPUs the installed faiss can use (0 for faiss-cpu builds)."""
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def torch_gpus() -> int:
    """CUDA devices torch sees (torch is imported here only: the CPU path never needs it)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_count() -> int:
    """GPUs flat search can use: faiss's when its build has CUDA, otherwise torch's."""
    return faiss_gpus() or torch_gpus()


def gpu_available() -> bool:
    """True when flat search can run on a GPU (faiss GPU build, or torch with CUDA)."""
    return gpu_count() > 0


class FlatStore(FaissStore):
    """`IndexIDMap2(IndexFlatIP)`: every query is compared with every vector."""

    kind = "flat"
    exact = True

    def __init__(
        self,
        dim: int,
        params: Mapping[str, Any] | None = None,
        *,
        use_gpu: bool | None = None,
        torch_device: str | None = None,
    ) -> None:
        """`torch_device` ("cuda:1", "mps", "cpu", ...) runs searches through the torch path on that device whatever
        faiss offers (a GPU faiss lacks, or the torch path itself on a CPU)."""
        super().__init__(dim, params)
        self.torch_device = torch_device
        self.use_gpu = torch_device is not None or (gpu_available() if use_gpu is None else use_gpu and gpu_available())
        self._torch_path = torch_device is not None or not faiss_gpus()  # decided once, not per search
        self._gpu_resources = None
        self._gpu_index: Any = None  # faiss GPU index, or the vectors as one torch tensor on the torch path
        self._gpu_labels: np.ndarray | None = None
        # GPU searches take turns (faiss GPU indexes are not safe to search from several threads; the copy is built
        # once), while CPU searches of the store run side by side under its read lock.
        self._gpu_lock = threading.Lock()
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
        with self._lock.read(), self._gpu_lock:
            if allowed_ids is None:
                return self._gpu_search(queries, k)
            allowed = distinct_sorted(as_id_array(allowed_ids))
            candidates = allowed[sorted_contains(self._ids, allowed)]
            if len(candidates) <= BRUTE_FORCE_MAX:
                return super().search(queries, k, candidates)
            found = overfetch_search(self._gpu_search, queries, k, candidates, len(self), GPU_MAX_K)
            return found if found is not None else super().search(queries, k, candidates)

    def _gpu_search(self, queries: np.ndarray, k: int) -> SearchResult:
        if self._gpu_index is None:
            flat = faiss.downcast_index(self._index.index)
            # The flat index numbers vectors by position; id_map turns positions back into catalog ids.
            self._gpu_labels = faiss.vector_to_array(self._index.id_map)
            if self._torch_path:
                self._gpu_index = self._torch_matrix(flat)
            else:
                if self._gpu_resources is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, self.gpu_device, flat)
        n = min(k, len(self._gpu_labels))
        search = self._torch_search if self._torch_path else self._gpu_index.search
        scores, positions = search(queries, n)
        ids = np.where(positions >= 0, self._gpu_labels[np.maximum(positions, 0)], -1)
        result = empty_result(len(queries), k)
        result.ids[:, : ids.shape[1]], result.scores[:, : ids.shape[1]] = ids, scores
        result.scores[result.ids < 0] = -np.inf
        return result

    def _torch_matrix(self, flat: faiss.IndexFlatIP) -> Any:
        import torch

        device = torch.device(self.torch_device or f"cuda:{self.gpu_device}")
        vectors = flat.reconstruct_n(0, flat.ntotal) if flat.ntotal else np.zeros((0, self.dim), np.float32)
        return torch.from_numpy(vectors).to(device)

    def _torch_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the k best vectors per query: exact fp32 matmul + top-k on the torch device."""
        import torch

        matrix = self._gpu_index
        rows = max(1, TORCH_SCORE_BYTES // (4 * max(1, len(matrix))))
        scores, positions = [], []
        with torch.inference_mode():
            for start in range(0, len(queries), rows):
                block = torch.from_numpy(queries[start : start + rows]).to(matrix.device)
                top = torch.topk(block @ matrix.T, k, dim=1)
                scores.append(top.values.cpu().numpy())
                positions.append(top.indices.cpu().numpy())
        return np.concatenate(scores), np.concatenate(positions)


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
