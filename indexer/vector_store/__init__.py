"""Vector stores: one protocol, several FAISS back ends, and the durable embeddings they are rebuilt from.

    store = create_vector_store("auto", dim=512, expected_size=n)   # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    store.add(ids, vectors); store.search(queries, k=10, allowed_ids=ids_matching_filter(...))
    store.save(path); store = load_vector_store(path)
    store = rebuild_vector_store("hnsw", EmbeddingStore(directory, dim))

`flat` is exact and is the reference: tests/indexer/test_vector_store_congruence.py runs every kind in
`list_vector_store_kinds()` against it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from indexer.errors import CorruptData, InvalidInput
from indexer.vector_store.base import FaissStore, SearchResult, read_store_file
from indexer.vector_store.embeddings import EmbeddingStore
from indexer.vector_store.faiss_store import AUTO_FLAT_MAX, AUTO_HNSW_MAX, HNSWStore, IVFFlatStore, IVFPQStore
from indexer.vector_store.faiss_store import resolve_kind as _resolve_kind
from indexer.vector_store.flat import FlatStore, gpu_available

__all__ = [
    "AUTO_FLAT_MAX",
    "AUTO_HNSW_MAX",
    "EmbeddingStore",
    "SearchResult",
    "VectorStore",
    "create_vector_store",
    "gpu_available",
    "list_vector_store_kinds",
    "load_vector_store",
    "rebuild_vector_store",
    "resolve_kind",
]


@runtime_checkable
class VectorStore(Protocol):
    """What the engine needs from an index over one collection's vectors (int64 ids, inner-product scores)."""

    kind: str
    exact: bool
    dim: int
    params: dict[str, Any]
    # The collection's index_version the contents correspond to; saved with the store for reconciliation.
    version: int

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """Sorted ids of the live vectors."""
        ...

    @property
    def removed_fraction(self) -> float:
        """Share of stored vectors that are removed but still occupy the index (HNSW); rebuild when high."""
        ...

    def add(self, ids: Any, vectors: Any) -> int:
        """Add float32 (n, dim) vectors; ids already present are skipped. Returns how many were added."""
        ...

    def remove(self, ids: Any) -> int:
        """Remove by id; unknown ids are ignored. Returns how many were removed."""
        ...

    def search(self, queries: Any, k: int, allowed_ids: Any = None) -> SearchResult:
        """Top k per query; with `allowed_ids`, only those ids, still k of them when at least k exist."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist atomically to one file."""
        ...


_KINDS: dict[str, type[FaissStore]] = {
    "flat": FlatStore,
    "hnsw": HNSWStore,
    "ivf_flat": IVFFlatStore,
    "ivf_pq": IVFPQStore,
}


def list_vector_store_kinds() -> list[str]:
    """The concrete kinds (`"auto"` is a policy over these, not a kind)."""
    return list(_KINDS)


def resolve_kind(kind: str, n: int) -> str:
    """The concrete kind `kind` means for a collection of n vectors ("auto": flat < 50k <= hnsw < 2M <= ivf_pq)."""
    if kind != "auto" and kind not in _KINDS:
        raise InvalidInput(f"Unknown index kind {kind!r}. Available: {['auto', *_KINDS]}")
    return _resolve_kind(kind, n)


def create_vector_store(
    kind: str,
    dim: int,
    *,
    expected_size: int = 0,
    use_gpu: bool | None = None,
    params: Mapping[str, Any] | None = None,
) -> VectorStore:
    """An empty store of `kind` ("auto" resolves with `expected_size`).

    `params` overrides the sizing rules of faiss_store.py (e.g. {"nlist": 1024, "nprobe": 64}, {"ef_search": 256},
    {"m": 32}); `use_gpu` applies to flat search (None: use a GPU when faiss has one).
    """
    return _new_store(resolve_kind(kind, expected_size), dim, params, use_gpu)


def _new_store(kind: str, dim: int, params: Mapping[str, Any] | None, use_gpu: bool | None) -> FaissStore:
    if kind == "flat":
        return FlatStore(dim, params, use_gpu=use_gpu)
    return _KINDS[kind](dim, params)


def load_vector_store(path: str | os.PathLike[str], *, use_gpu: bool | None = None) -> VectorStore:
    """Read a store written by `save`; `CorruptData` if the file is truncated or altered."""
    path = Path(path)
    header, sections = read_store_file(path)
    kind = header.get("kind")
    if kind not in _KINDS:
        raise CorruptData(f"{path} holds an unknown index kind {kind!r}", str(path))
    store = _new_store(kind, int(header["dim"]), header.get("params"), use_gpu)
    store.restore(header, sections)
    return store


def rebuild_vector_store(
    kind: str,
    embeddings: EmbeddingStore,
    *,
    use_gpu: bool | None = None,
    params: Mapping[str, Any] | None = None,
) -> VectorStore:
    """A new store of `kind` holding every live embedding (no re-encoding); "auto" resolves by their count."""
    ids, vectors = embeddings.load_all()
    store = create_vector_store(kind, embeddings.dim, expected_size=len(ids), use_gpu=use_gpu, params=params)
    if len(ids):
        store.add(ids, vectors)
    return store
