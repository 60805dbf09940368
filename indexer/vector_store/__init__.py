"""Vector stores: one protocol, several FAISS back ends, and the durable embeddings they are rebuilt from.

    store = create_vector_store("auto", dim=512, expected_size=n)   # "flat" | "hnsw" | "ivf_flat" | "ivf_pq"
    store.add(ids, vectors); store.search(queries, k=10, allowed_ids=ids_matching_filter(...))
    store.save(path); store = load_vector_store(path)
    store = rebuild_vector_store("hnsw", EmbeddingStore(directory, dim))
    store = create_vector_store("ivf_pq", dim, params={"shards": 8, "on_disk": True}); load_vector_store(p, mmap=True)

`params["shards"]` splits a collection over N indexes of the kind (sharded.py; "auto", the default, shards IVF
kinds from 20M vectors on); `params["on_disk"]` saves each shard's index as its own file, which `mmap=True` maps.

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
from indexer.vector_store.flat import FlatStore, gpu_available, gpu_count
from indexer.vector_store.sharded import SHARD_KEYS, ShardedStore, auto_shards, check_shards, remove_store_files

__all__ = [
    "AUTO_FLAT_MAX",
    "AUTO_HNSW_MAX",
    "EmbeddingStore",
    "SearchResult",
    "ShardedStore",
    "auto_shards",
    "VectorStore",
    "create_vector_store",
    "gpu_available",
    "list_vector_store_kinds",
    "load_vector_store",
    "rebuild_vector_store",
    "remove_store_files",
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

    @property
    def needs_rebuild(self) -> bool:
        """True when the saved file this store was loaded from is known to hold wrong data that only a rebuild from
        the embeddings mends (IVF-PQ fast-scan lists saved before removals cleared their slots)."""
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

    def vector(self, id_: int) -> np.ndarray | None:
        """The (dim,) float32 vector held for `id_` as the store keeps it (exact, or IVF-PQ's re-rank copy), or None
        when it holds none."""
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


def resolve_kind(kind: str, n: int, dim: int) -> str:
    """The concrete kind `kind` means for a collection of n vectors of `dim` ("auto": flat < 50k <= hnsw < 1M <=
    ivf_pq, and ivf_pq from 300k on for vectors of 512 dimensions or more)."""
    if kind != "auto" and kind not in _KINDS:
        raise InvalidInput(f"Unknown index kind {kind!r}. Available: {['auto', *_KINDS]}")
    return _resolve_kind(kind, n, dim)


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
    {"m": 32}); `use_gpu` applies to flat search (None: use a GPU when there is one, through faiss or torch).

    `params["shards"]`: an int splits the collection over that many indexes of the kind (a `ShardedStore`);
    "auto" or absent lets `auto_shards` decide from `expected_size`. `params["on_disk"]`: save the shards' indexes
    as separate files that `load_vector_store(..., mmap=True)` can map (implies a `ShardedStore`, of 1 shard if
    need be).
    """
    concrete = resolve_kind(kind, expected_size, dim)
    params = dict(params or {})
    shards = params.get("shards", "auto")
    on_disk = bool(params.get("on_disk", False))
    if shards in (None, "auto"):
        gpus = gpu_count() if use_gpu is not False else 0
        shards = auto_shards(concrete, expected_size, gpus)
    shards = check_shards(shards)
    if shards == 1 and not on_disk:
        return _new_store(concrete, dim, {k: v for k, v in params.items() if k not in SHARD_KEYS}, use_gpu)
    return _sharded(concrete, dim, shards, params, on_disk, use_gpu)


def _sharded(
    kind: str, dim: int, shards: int, params: Mapping[str, Any], on_disk: bool, use_gpu: bool | None
) -> ShardedStore:
    return ShardedStore(lambda inner: _new_store(kind, dim, inner, use_gpu), kind, dim, shards, params, on_disk=on_disk)


def _new_store(kind: str, dim: int, params: Mapping[str, Any] | None, use_gpu: bool | None) -> FaissStore:
    if kind == "flat":
        return FlatStore(dim, params, use_gpu=use_gpu)
    return _KINDS[kind](dim, params)


def load_vector_store(
    path: str | os.PathLike[str], *, use_gpu: bool | None = None, mmap: bool = False, verify: bool = True
) -> VectorStore:
    """Read a store written by `save`; `CorruptData` if the file is truncated or altered.

    `mmap`: map the shard files of an `on_disk` store instead of reading them (no effect on other stores).
    `verify`: check shard files against their checksums (reads each once; size is always checked).
    """
    path = Path(path)
    header, sections = read_store_file(path)
    kind = header.get("kind")
    if kind not in _KINDS:
        raise CorruptData(f"{path} holds an unknown index kind {kind!r}", str(path))
    if "shards" in header:
        try:
            shards = check_shards(header["shards"])
        except InvalidInput as exc:
            raise CorruptData(f"{path}: {exc}", str(path)) from None
        sharded = _sharded(
            kind, int(header["dim"]), shards, header.get("params") or {}, bool(header.get("on_disk")), use_gpu
        )
        sharded.restore(header, sections, path, mmap=mmap, verify=verify)
        return sharded
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
