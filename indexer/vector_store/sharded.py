"""A collection's vectors split across N FAISS indexes of one kind, searched in parallel and merged.

    store = create_vector_store("ivf_pq", dim, expected_size=n, params={"shards": 8})
    store = create_vector_store("ivf_pq", dim, params={"shards": 4, "on_disk": True})   # shard files, mmap-able
    store = load_vector_store(path, mmap=True)

Vector `id` lives in shard `mix(id) % N`, `mix` being the splitmix64 finaliser: catalog ids are shared by every
collection, so one collection's ids can be strided (all even when two collections ingest in turn) and a plain
`id % N` would leave shards empty; the hash keeps them balanced whatever the ids. A filter's allowed ids split the
same way. Every shard is a complete store of the inner kind (`FlatStore`,
`HNSWStore`, `IVFFlatStore`, `IVFPQStore`), so filtered search, escalation, tombstones and brute-force fallbacks
are theirs; this class splits, fans out and merges. A search asks every shard for its k best (among its allowed
ids) and keeps the k best of the N·k: for exact shards that is exactly the single-index top-k (the same ids and
scores), and a filtered search still returns min(k, allowed) results because each shard returns min(k, its allowed).

IVF shards share one trained coarse quantizer and codebook (trained once, on the first batch of the whole
collection, then copied): the same lists and the same nprobe everywhere, as one index over all the vectors would
have. Searches run in a thread pool (FAISS releases the GIL), so one query uses up to N cores; that is what
sharding buys on one machine (FAISS parallelises a batch over its queries, never one query over lists). Flat
shards search on GPU i % (number of GPUs) when faiss has GPU support.

Persistence is atomic like the single stores'. By default everything goes into the one store file (sections
prefixed by shard). With `on_disk`, each shard's FAISS index (and IVF-PQ's re-rank copy) is its own file in
`<path>.d/`, named by content hash, and the store file is a manifest listing them with sizes and checksums; it is
replaced last (atomically), and files that neither it nor the manifest before it refers to are deleted afterwards
(a reader still holding the previous manifest can open its files). Such a store can be loaded memory-mapped
(`mmap=True`): IVF lists are mapped from the file (faiss `IO_FLAG_MMAP`), flat codes and the 8-bit re-rank copy
too (`IO_FLAG_MMAP_IFC`), so the page cache holds the hot lists and the collection may exceed RAM (an `on_disk`
IVF-PQ store therefore defaults to 8-bit codes, which faiss maps where it reads 4-bit fast-scan lists into memory,
and to the 8-bit re-rank copy). Mapped shards
are read-only: the first add or remove to one reads it into memory first (a serving replica never writes).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.errors import Conflict, CorruptData, InvalidInput
from indexer.vector_store.base import (
    FaissStore,
    SearchResult,
    as_id_array,
    check_ids,
    check_vectors,
    distinct_sorted,
    empty_result,
    fsync_dir,
    read_store_file,
    sorted_contains,
    top_k,
    write_store_file,
)
from indexer.vector_store.faiss_store import MAPPABLE_PQ_NBITS
from indexer.vector_store.flat import gpu_count
from indexer.vector_store.locks import ReadWriteLock

# Keys of a sharded store's params that belong to the sharding, not to the inner kind's sizing.
SHARD_KEYS = ("shards", "on_disk")
MAX_SHARDS = 1024
# `auto` sharding of IVF kinds: one shard per this many vectors from AUTO_SHARD_FROM on. A single IVF query is
# single-threaded in FAISS, so a 100M index answers one query on one core; shards of ~25M let one query use
# several cores and keep each shard's files and rebuilds a manageable size (bench/scale.py, docs/SCALING.md).
AUTO_SHARD_FROM = 20_000_000
AUTO_SHARD_VECTORS = 25_000_000
_IVF_KINDS = ("ivf_flat", "ivf_pq")
_HASH_BLOCK = 1 << 24


def auto_shards(kind: str, n: int, gpus: int = 0) -> int:
    """The shard count the size rules give a concrete `kind` at n vectors (1: not sharded)."""
    if kind in _IVF_KINDS and n >= AUTO_SHARD_FROM:
        return min(MAX_SHARDS, math.ceil(n / AUTO_SHARD_VECTORS))
    if kind == "flat" and gpus > 1 and n >= 1_000_000:
        return gpus  # one exact shard per GPU: each GPU scans 1/N of the vectors
    return 1


def check_shards(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SHARDS:
        raise InvalidInput(f"shards must be an integer from 1 to {MAX_SHARDS}, got {value!r}")
    return value


class ShardedStore:
    """N stores of one kind behind the `VectorStore` interface; `kind`/`exact` are the inner kind's."""

    def __init__(
        self,
        new_shard,  # noqa: ANN001 - Callable[[dict], FaissStore]: an empty inner store with the given params
        kind: str,
        dim: int,
        shards: int,
        params: Mapping[str, Any] | None = None,
        *,
        on_disk: bool = False,
    ) -> None:
        self.kind = kind
        self.dim = dim
        self.shards = check_shards(shards)
        self.on_disk = bool(on_disk)
        self.version = 0
        inner = {k: v for k, v in dict(params or {}).items() if k not in SHARD_KEYS}
        if self.on_disk and kind == "ivf_pq":
            # Stores kept on disk are those too big for RAM: 8-bit codes, because faiss maps only plain IVF lists
            # (4-bit fast-scan lists are read into memory), and the 8-bit re-rank copy, half the float16 one.
            inner.setdefault("nbits", MAPPABLE_PQ_NBITS)
            inner.setdefault("refine", "sq8")
        self._new_shard = new_shard
        self._shards: list[FaissStore] = [new_shard(dict(inner)) for _ in range(self.shards)]
        self.exact = self._shards[0].exact
        self._lock = ReadWriteLock()  # as FaissStore's: searches and a save's serialising read side by side
        self._save_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        # Per shard, when loaded from shard files: {"index": name, "refine": name}, and whether it is mapped.
        self._files: list[dict[str, str] | None] = [None] * self.shards
        self._mapped = [False] * self.shards
        self._directory: Path | None = None
        self._use_gpu_devices()

    # --- VectorStore ----------------------------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """The inner kind's params (as sized by the first shard; all shards share them) plus the sharding."""
        return {**self._shards[0].params, "shards": self.shards, "on_disk": self.on_disk}

    @property
    def mapped(self) -> bool:
        """Whether any shard is served from a memory-mapped file."""
        return any(self._mapped)

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards)

    def shard_sizes(self) -> list[int]:
        return [len(s) for s in self._shards]

    def ids(self) -> np.ndarray:
        with self._lock.read():
            return np.sort(np.concatenate([s.ids() for s in self._shards]))

    @property
    def needs_rebuild(self) -> bool:
        return any(shard.needs_rebuild for shard in self._shards)

    @property
    def removed_fraction(self) -> float:
        tomb = sum(len(s._tombstones) for s in self._shards)
        total = tomb + len(self)
        return tomb / total if total else 0.0

    def add(self, ids: Any, vectors: Any) -> int:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        with self._lock.write():
            # All-or-nothing: refuse the whole batch before any shard takes a part of it.
            for shard in self._shards:
                if len(shard._tombstones) and sorted_contains(shard._tombstones, ids).any():
                    raise Conflict(
                        f"ids were removed from this {self.kind} index and cannot be re-added before a rebuild"
                    )
            if not len(ids):
                return 0
            parts = self._split(ids)
            if any(s._index is None for s, p in zip(self._shards, parts) if len(p)):
                self._train_shards(vectors)
            added = 0
            for i, part in enumerate(parts):
                if len(part):
                    self._writable(i)
                    added += self._shards[i].add(ids[part], vectors[part])
            if added:
                self._changed_files(parts)
            return added

    def remove(self, ids: Any) -> int:
        ids = distinct_sorted(as_id_array(ids))
        with self._lock.write():
            removed = 0
            parts = self._split(ids)
            for i, part in enumerate(parts):
                shard = self._shards[i]
                if len(part) and sorted_contains(shard._ids, ids[part]).any():
                    self._writable(i)
                    removed += shard.remove(ids[part])
            if removed:
                self._changed_files(parts)
            return removed

    def search(self, queries: Any, k: int, allowed_ids: Any = None) -> SearchResult:
        queries = check_vectors(queries, self.dim, "queries")
        if not isinstance(k, int) or k <= 0:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        with self._lock.read():
            if allowed_ids is None:
                jobs = [(s, None) for s in self._shards if len(s)]
            else:
                allowed = distinct_sorted(as_id_array(allowed_ids))
                jobs = [(self._shards[i], allowed[p]) for i, p in enumerate(self._split(allowed)) if len(p)]
                jobs = [(s, a) for s, a in jobs if len(s)]
            if not jobs:
                return empty_result(len(queries), k)
            if len(jobs) == 1:
                found = [jobs[0][0].search(queries, k, jobs[0][1])]
            else:
                found = list(self._executor().map(lambda job: job[0].search(queries, k, job[1]), jobs))
        merged = top_k(
            np.concatenate([f.scores for f in found], axis=1), np.concatenate([f.ids for f in found], axis=1), k
        )
        return merged

    def vector(self, id_: int) -> np.ndarray | None:
        with self._lock.read():
            return self._shards[int(shard_of(np.array([id_]), self.shards)[0])].vector(id_)

    # --- shards -----------------------------------------------------------------------------------------------------

    def _split(self, ids: np.ndarray) -> list[np.ndarray]:
        """Row positions of `ids` per shard (`shard_of`)."""
        if self.shards == 1:
            return [np.arange(len(ids))]
        owner = shard_of(ids, self.shards)
        order = np.argsort(owner, kind="stable")
        bounds = np.searchsorted(owner[order], np.arange(self.shards + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(self.shards)]

    def _train_shards(self, vectors: np.ndarray) -> None:
        """Give every shard without an index a copy of one index trained on the whole batch (shared lists and
        codebooks, sized for the whole collection)."""
        template = next((s for s in self._shards if s._index is not None), None)
        if template is None:
            template = self._shards[0]
            template._index = template._build_index(vectors)
        for shard in self._shards:
            if shard._index is not None:
                continue
            shard._index = _empty_copy(template._index)
            refine = getattr(template, "_refine", None)
            if refine is not None:
                shard._refine = _empty_copy(refine)
            shard.params = dict(template.params)

    def _use_gpu_devices(self) -> None:
        """Spread flat shards over the GPUs (shard i on GPU i mod count); no-op with fewer than two GPUs."""
        gpus = gpu_count()
        if gpus < 2:
            return
        for i, shard in enumerate(self._shards):
            if hasattr(shard, "gpu_device"):
                shard.gpu_device = i % gpus

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:  # searches run side by side: one makes the pool
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=min(self.shards, os.cpu_count() or 1), thread_name_prefix="shard"
                )
            return self._pool

    def _writable(self, i: int) -> None:
        """Read a memory-mapped shard into memory before it changes (mapped FAISS data is read-only)."""
        if not self._mapped[i]:
            return
        files, shard = self._files[i], self._shards[i]
        shard._index = faiss.read_index(str(self._directory / files["index"]))
        if "refine" in files:
            shard._refine = faiss.read_index(str(self._directory / files["refine"]))
        self._mapped[i] = False

    def _changed_files(self, parts: list[np.ndarray]) -> None:
        for i, part in enumerate(parts):
            if len(part):
                self._files[i] = None  # its saved files no longer match it

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # --- persistence ------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """As `FaissStore.save`: adds and removes wait while the shards are serialised, searches do not; `on_disk`
        stores write each changed shard's index files holding the store's lock to write (faiss writes them from
        the live indexes)."""
        path = Path(path)
        with self._save_lock:
            with self._lock.write():
                if self.on_disk:
                    self._save_on_disk(path, self._header(), self._sections(indexes=False))
                    return
                for i in range(len(self._shards)):
                    self._writable(i)  # a mapped index cannot be serialised as an in-memory one
            with self._lock.read():
                header, sections = self._header(), self._sections(indexes=True)
            write_store_file(path, header, sections)

    def _header(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "params": dict(self.params),
            "version": self.version,
            "shards": self.shards,
            "on_disk": self.on_disk,
            "shard_params": [dict(s.params) for s in self._shards],
            "shard_hash": "splitmix64",
        }

    def _sections(self, indexes: bool) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for i, shard in enumerate(self._shards):
            _, shard_sections = shard.snapshot(indexes)
            sections.update({f"{i}/{name}": part for name, part in shard_sections.items()})
        return sections

    def _save_on_disk(self, path: Path, header: dict[str, Any], sections: dict[str, bytes]) -> None:
        directory = shard_directory(path)
        directory.mkdir(parents=True, exist_ok=True)
        previous = _manifest_files(path)
        files: list[dict[str, Any]] = []
        for i, shard in enumerate(self._shards):
            if shard._index is None:
                files.append({})
                continue
            if self._files[i] is None:
                self._files[i] = self._write_shard_files(directory, path.name, i, shard)
            elif self._directory != directory:
                # Unchanged since loaded or saved elsewhere: copy its files (a mapped index cannot be
                # re-serialised, and copying is cheaper anyway).
                for name in self._files[i].values():
                    if not (directory / name).exists():
                        shutil.copyfile(self._directory / name, directory / name)
                fsync_dir(directory)
            files.append(dict(self._files[i]))
        header["files"] = files
        header["checksums"] = {name: _describe(directory / name) for entry in files for name in entry.values()}
        write_store_file(path, header, sections)
        self._directory = directory
        _remove_unreferenced(directory, keep={*previous, *header["checksums"]})

    def _write_shard_files(self, directory: Path, stem: str, i: int, shard: FaissStore) -> dict[str, str]:
        written = {"index": _write_index(directory, f"{stem}.{i}.index", shard._cpu_index())}
        refine = getattr(shard, "_refine", None)
        if refine is not None:
            written["refine"] = _write_index(directory, f"{stem}.{i}.refine", refine)
        fsync_dir(directory)
        return written

    def restore(
        self, header: Mapping[str, Any], sections: Mapping[str, memoryview], path: Path, *, mmap: bool, verify: bool
    ) -> None:
        self.version = int(header.get("version", 0))
        directory = shard_directory(path)
        files = header.get("files")
        checksums = header.get("checksums", {})
        if files is not None and len(files) != self.shards:
            raise CorruptData(f"{path} lists {len(files)} shard files for {self.shards} shards", str(path))
        for i, shard in enumerate(self._shards):
            mine = {name[len(f"{i}/") :]: data for name, data in sections.items() if name.startswith(f"{i}/")}
            if "shard_params" in header:
                shard.params = dict(header["shard_params"][i])
            shard.restore({"version": self.version}, mine)
            if files is None or not files[i]:
                continue
            for name in files[i].values():
                _check_file(directory / name, checksums.get(name), verify)
            index_flags = refine_flags = 0
            if mmap:
                index_flags = faiss.IO_FLAG_MMAP if self.kind in _IVF_KINDS else faiss.IO_FLAG_MMAP_IFC
                refine_flags = faiss.IO_FLAG_MMAP_IFC
            shard._index = faiss.read_index(str(directory / files[i]["index"]), index_flags)
            if "refine" in files[i]:
                shard._refine = faiss.read_index(str(directory / files[i]["refine"]), refine_flags)
            self._files[i] = dict(files[i])
            self._mapped[i] = mmap
        self._directory = directory if files is not None else None


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """The shard of each id: splitmix64(id) mod `shards` (stable: it is part of the saved format)."""
    z = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(shards)).astype(np.int64)


def shard_directory(path: Path) -> Path:
    """Where an `on_disk` store at `path` keeps its shard files."""
    path = Path(path)
    return path.with_name(path.name + ".d")


def remove_store_files(path: str | os.PathLike[str]) -> None:
    """Delete a saved store and its shard files, if any."""
    path = Path(path)
    path.unlink(missing_ok=True)
    directory = shard_directory(path)
    if directory.is_dir():
        for file in directory.iterdir():
            file.unlink(missing_ok=True)
        directory.rmdir()


def _empty_copy(index: faiss.Index) -> faiss.Index:
    copy = faiss.clone_index(index)
    if copy.ntotal:
        copy.reset()
    return copy


def _write_index(directory: Path, stem: str, index: faiss.Index) -> str:
    """Write `index` to `directory` under a name holding its content hash; returns the name."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        digest = _sha256(Path(tmp))
        name = f"{stem}.{digest[:32]}.faiss"
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _describe(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": path.name.rsplit(".", 2)[-2]}


def _check_file(path: Path, expected: Mapping[str, Any] | None, verify: bool) -> None:
    """A shard file must exist with its recorded size; with `verify`, its content must match its hash."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CorruptData(f"shard file {path} is missing", str(path)) from exc
    if expected is None or size != int(expected["size"]):
        raise CorruptData(f"shard file {path} does not have its recorded size", str(path))
    if verify and not _sha256(path).startswith(str(expected["sha256"])):
        raise CorruptData(f"shard file {path} does not match its checksum", str(path))


def _manifest_files(path: Path) -> set[str]:
    """Shard files the store file now at `path` refers to (none if it is missing, damaged or not sharded)."""
    try:
        header, _ = read_store_file(path)
    except (OSError, CorruptData):
        return set()
    return {name for entry in header.get("files") or [] for name in entry.values()}


def _remove_unreferenced(directory: Path, keep: set[str]) -> None:
    for file in directory.iterdir():
        if file.name not in keep:  # leftovers of a crashed save too (one writer per collection)
            file.unlink(missing_ok=True)


__all__ = [
    "AUTO_SHARD_FROM",
    "AUTO_SHARD_VECTORS",
    "ShardedStore",
    "auto_shards",
    "check_shards",
    "remove_store_files",
    "shard_directory",
    "shard_of",
]
