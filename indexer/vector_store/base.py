"""Machinery shared by the FAISS back ends: input checks, filtered search with escalation, and persistence.

A store holds L2-normalised float32 vectors under int64 ids (the catalog's image ids) and ranks by inner product.
Each back end supplies the FAISS index and a ladder of search "efforts" (efSearch for HNSW, nprobe for IVF).

A filtered search is planned by selectivity s (allowed vectors / indexed vectors):
- the allowed vectors are scored directly (exact) when there are few of them (`BRUTE_FORCE_MAX`), or when that is
  cheaper than the filtered index search would be: an approximate index searched for k *allowed* neighbours has to
  look about 1/s times further than an unfiltered search (HNSW's efSearch, IVF's nprobe scaled by 1/s), so at low
  selectivity scoring the s·n allowed vectors costs less than walking the graph or scanning the lists;
- otherwise the index is searched with an ID selector at the effort scaled by 1/s (which keeps recall@10 near the
  unfiltered figure instead of stopping at the first k allowed vectors it meets), and the ladder is climbed
  (x4 per rung) for queries that still come back with fewer than k results.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np

from indexer.errors import Conflict, CorruptData, InvalidInput
from indexer.vector_store.locks import ReadWriteLock

# At or below this many allowed vectors a filtered search always scores them directly (exact, and cheaper than
# any index search); above it, when the back end's cost estimate says so (`_filtered_cost`). Only back ends that
# can reconstruct vectors do this. A store's params may set "brute_force_max" to replace the whole rule with a
# fixed threshold (0: always search the index; the recall tests use it to measure the index path).
BRUTE_FORCE_MAX = 8192
# What a filtered index search costs, in units of one allowed vector scored directly (reconstruct + dot product:
# ~0.4 us at d=64, ~1.6 us at d=768 on CPU): a vector the scan skips by the ID selector, an allowed vector the scan
# or graph walk scores, and each allowed id put into the selector's hash set. Fitted to timings of IVF-Flat and
# flat at d=64 (400k vectors) and d=768 (100k) with 0.5-30% allowed; a guide for choosing, not a promise.
SKIP_COST = 1 / 25
MEMBER_COST = 1 / 2
SELECTOR_COST = 1 / 10
# Vectors reconstructed at a time by a brute-force search (bounds its memory: 16 MiB of float32 per block).
_BRUTE_FORCE_BLOCK_FLOATS = 1 << 22
_FILE_MAGIC = b"IVSSTORE"
_FILE_FORMAT = 1


@dataclass(frozen=True)
class SearchResult:
    """Per query, the k best ids and their inner-product scores, best first.

    Rows with fewer than k hits (fewer than k vectors, or fewer than k allowed) are padded with id -1 and
    score -inf.
    """

    ids: np.ndarray  # int64 (nq, k)
    scores: np.ndarray  # float32 (nq, k)


def check_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """Return `vectors` as C-contiguous float32 (n, dim), or raise InvalidInput."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise InvalidInput(f"{what} must have shape (n, {dim}), got {array.shape}")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what} contain NaN or infinite values")
    return array


def as_id_array(ids: Any) -> np.ndarray:
    """Any collection of ids (array, list, set, range) as a 1-D int64 array."""
    if isinstance(ids, set | frozenset):
        return np.fromiter(ids, dtype=np.int64, count=len(ids))
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


def check_ids(ids: Any, n: int | None = None) -> np.ndarray:
    """Return `ids` as a 1-D int64 array of distinct non-negative ids (-1 is FAISS's 'no result')."""
    array = as_id_array(ids)
    if n is not None and len(array) != n:
        raise InvalidInput(f"got {len(array)} ids for {n} vectors")
    if array.size and array.min() < 0:
        raise InvalidInput("ids must be non-negative")
    if len(distinct_sorted(array)) != len(array):
        raise InvalidInput("ids must be distinct within one call")
    return array


def distinct_sorted(ids: np.ndarray) -> np.ndarray:
    """`np.unique(ids)` for a 1-D id array, without its cost when the ids already are sorted and distinct (what
    catalog filters give): a linear check instead of a hash/sort pass, which was half a 10%-filtered search at 1M."""
    if len(ids) < 2 or bool((ids[1:] > ids[:-1]).all()):
        return ids
    ids = np.sort(ids)
    keep = np.empty(len(ids), dtype=bool)
    keep[0] = True
    np.not_equal(ids[1:], ids[:-1], out=keep[1:])
    return ids[keep]


# The sorted id sets below are kept with searchsorted/insert/delete, in O(n) copies, not with np.union1d and
# np.unique: numpy 2.4's unique hashes, 0.9 s for 1M ids (a sort of the same takes 15 ms), and a store ran it on
# every added batch (bench/RESULTS.md, "Live updates").
def merge_disjoint(sorted_ids: np.ndarray, more: np.ndarray) -> np.ndarray:
    """The sorted union of two sorted arrays of distinct ids that have none in common."""
    if not len(sorted_ids):
        return more.copy()
    if not len(more) or more[0] > sorted_ids[-1]:  # ids only grow: the usual case for catalog ids
        return np.concatenate((sorted_ids, more))
    return np.insert(sorted_ids, np.searchsorted(sorted_ids, more), more)


def without(sorted_ids: np.ndarray, present: np.ndarray) -> np.ndarray:
    """`sorted_ids` less `present` (sorted, distinct, every one of them in `sorted_ids`)."""
    return np.delete(sorted_ids, np.searchsorted(sorted_ids, present))


def sorted_contains(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask of `values` found in the sorted array; O(len(values)·log n), unlike np.isin's full sort."""
    if not len(sorted_ids):
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return sorted_ids[at] == values


def empty_result(nq: int, k: int) -> SearchResult:
    return SearchResult(np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), -np.inf, dtype=np.float32))


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> SearchResult:
    """Best k per row of a (nq, m) score matrix whose columns belong to `ids` (per row or shared)."""
    nq, m = scores.shape
    result = empty_result(nq, k)
    if m == 0:
        return result
    take = min(k, m)
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < m else np.tile(np.arange(m), (nq, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    cols = np.take_along_axis(part, order, axis=1)
    chosen = np.take_along_axis(ids, cols, axis=1) if ids.ndim == 2 else ids[cols]
    result.ids[:, :take] = chosen
    result.scores[:, :take] = np.take_along_axis(scores, cols, axis=1)
    # Candidates that were themselves padding (-1) stay padding.
    result.scores[result.ids < 0] = -np.inf
    return result


class FaissStore:
    """Base of the FAISS-backed stores. Subclasses set `kind`/`exact` and implement the hooks marked below."""

    kind: ClassVar[str]
    exact: ClassVar[bool]
    # HNSW graphs cannot drop nodes; such stores hide removed ids behind a tombstone set until a rebuild.
    removes_in_place: ClassVar[bool] = True
    # Flat and HNSW-Flat keep exact vectors and can hand them back for brute-force scoring.
    can_reconstruct: ClassVar[bool] = True

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidInput(f"dim must be a positive integer, got {dim!r}")
        self.dim = dim
        self.params: dict[str, Any] = dict(params or {})
        fixed = self.params.get("brute_force_max")
        if fixed is not None and (not isinstance(fixed, int) or isinstance(fixed, bool) or fixed < 0):
            raise InvalidInput(f"brute_force_max must be a non-negative integer, got {fixed!r}")
        self.version = 0
        self._index: faiss.Index | None = None
        self._ids = np.empty(0, dtype=np.int64)  # sorted live ids
        self._tombstones = np.empty(0, dtype=np.int64)  # sorted; only when not removes_in_place
        # Searches and a save's serialising read the indexes side by side; adds and removes write them alone.
        self._lock = ReadWriteLock()
        self._save_lock = threading.Lock()

    # --- hooks ------------------------------------------------------------------------------------------------

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        """Create (and train, if needed) the empty index; `vectors` is the first batch, for training and sizing."""
        raise NotImplementedError

    def _efforts(self, k: int, selectivity: float) -> list[int]:
        """The ladder of search efforts for k results at `selectivity` (0 < s <= 1), increasing, first = normal."""
        return [0]

    def _search_params(self, selector: faiss.IDSelector | None, effort: int) -> faiss.SearchParameters | None:
        """Search parameters at `effort` (a value from `_efforts`)."""
        return faiss.SearchParameters(sel=selector) if selector is not None else None

    def _filtered_cost(self, k: int, selectivity: float) -> float:
        """Estimated work of one filtered index search, in directly scored vectors (see `_brute_force_pays`).

        The default is a full scan that skips disallowed vectors by the selector (flat)."""
        return self._scan_cost(1.0, selectivity)

    def _scan_cost(self, probed: float, selectivity: float) -> float:
        """A scan of the share `probed` of the index with a selector over the share `selectivity` of it."""
        n = self._indexed_count()
        return probed * n * (SKIP_COST + selectivity * MEMBER_COST) + selectivity * n * SELECTOR_COST

    def _indexed_count(self) -> int:
        """Vectors the FAISS index holds: the live ones and the tombstones still in it."""
        return len(self._ids) + len(self._tombstones)

    def _index_search(self, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

    def _extra_sections(self) -> dict[str, np.ndarray]:
        """Further indexes to save beside the main one, serialised (see `snapshot`)."""
        return {}

    def _load_extra_sections(self, sections: Mapping[str, memoryview]) -> None:
        return None

    # --- public API ---------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        """Sorted int64 ids of the live vectors (for reconciliation with the catalog)."""
        with self._lock.read():
            return self._ids.copy()

    @property
    def removed_fraction(self) -> float:
        """Share of stored vectors that are tombstones; past ~0.2 a rebuild pays for itself."""
        total = len(self._ids) + len(self._tombstones)
        return len(self._tombstones) / total if total else 0.0

    @property
    def needs_rebuild(self) -> bool:
        """Whether the file this store was loaded from holds data known to be wrong (see IVFPQStore)."""
        return False

    def add(self, ids: Any, vectors: Any) -> int:
        """Add vectors under `ids`; ids already present are skipped (idempotent). Returns how many were added."""
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        with self._lock.write():
            if sorted_contains(self._tombstones, ids).any():
                raise Conflict(f"ids were removed from this {self.kind} index and cannot be re-added before a rebuild")
            fresh = ~sorted_contains(self._ids, ids)
            ids, vectors = ids[fresh], vectors[fresh]
            if not len(ids):
                return 0
            if self._index is None:
                self._index = self._build_index(vectors)
            self._add_to_index(ids, vectors)
            self._ids = merge_disjoint(self._ids, np.sort(ids))
            self._changed()
            return len(ids)

    def _add_to_index(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)

    def remove(self, ids: Any) -> int:
        """Remove vectors by id; unknown ids are ignored. Returns how many were removed."""
        ids = distinct_sorted(as_id_array(ids))
        with self._lock.write():
            present = ids[sorted_contains(self._ids, ids)]
            if not len(present):
                return 0
            if self.removes_in_place:
                self._remove_from_index(present)
            else:
                self._tombstones = merge_disjoint(self._tombstones, present)
            self._ids = without(self._ids, present)
            self._changed()
            return len(present)

    def _remove_from_index(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(ids))

    def _changed(self) -> None:
        """Called after every add/remove (the GPU copy of a flat index goes stale, for one)."""

    def search(self, queries: Any, k: int, allowed_ids: Any = None) -> SearchResult:
        """The k best vectors per query by inner product, restricted to `allowed_ids` when given.

        With a filter, every query still gets min(k, number of allowed vectors in the store) results.
        """
        queries = check_vectors(queries, self.dim, "queries")
        if not isinstance(k, int) or k <= 0:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        with self._lock.read():
            candidates = self._ids
            if allowed_ids is not None:
                allowed = distinct_sorted(as_id_array(allowed_ids))
                candidates = allowed[sorted_contains(self._ids, allowed)]
            if not len(candidates):
                return empty_result(len(queries), k)
            selectivity = min(1.0, len(candidates) / max(1, self._indexed_count()))
            if allowed_ids is not None and self._brute_force_pays(len(candidates), k, selectivity):
                return self._brute_force(queries, candidates, k)
            selector = self._selector(candidates if allowed_ids is not None else None)
            return self._search_with_escalation(queries, k, selector, candidates, selectivity)

    def vector(self, id_: int) -> np.ndarray | None:
        ids = np.array([id_], dtype=np.int64)
        with self._lock.read():
            if not sorted_contains(self._ids, ids)[0]:  # never added, removed (tombstones included)
                return None
            return np.array(self._reconstruct(ids)[0], dtype=np.float32)

    def _brute_force_pays(self, n_allowed: int, k: int, selectivity: float) -> bool:
        """Whether to score the allowed vectors directly rather than search the index with a selector."""
        if not self.can_reconstruct:
            return False
        fixed = self.params.get("brute_force_max")
        if fixed is not None:
            return n_allowed <= int(fixed)
        return n_allowed <= max(BRUTE_FORCE_MAX, self._filtered_cost(k, selectivity))

    def _selector(self, candidates: np.ndarray | None) -> faiss.IDSelector | None:
        if candidates is not None:
            return faiss.IDSelectorBatch(candidates)
        if len(self._tombstones):
            inner = faiss.IDSelectorBatch(self._tombstones)
            selector = faiss.IDSelectorNot(inner)
            selector.referenced_inner = inner  # keep the wrapped selector alive as long as the wrapper
            return selector
        return None

    def _search_with_escalation(
        self,
        queries: np.ndarray,
        k: int,
        selector: faiss.IDSelector | None,
        candidates: np.ndarray,
        selectivity: float,
    ) -> SearchResult:
        want = min(k, len(candidates))
        result = empty_result(len(queries), k)
        todo = np.arange(len(queries))
        for effort in self._efforts(k, selectivity):
            scores, ids = self._index_search(queries[todo], k, self._search_params(selector, effort))
            result.ids[todo], result.scores[todo] = ids, scores
            todo = todo[(ids >= 0).sum(axis=1) < want]
            if not len(todo):
                return _pad(result)
        if self.can_reconstruct:
            # The last resort is exact and always complete: score every candidate of the unlucky queries.
            exact = self._brute_force(queries[todo], candidates, k)
            result.ids[todo], result.scores[todo] = exact.ids, exact.scores
        return _pad(result)

    def _brute_force(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> SearchResult:
        # In blocks, so that scoring a whole large store (the rare last resort) never materialises it at once.
        best = empty_result(len(queries), k)
        rows = max(1024, _BRUTE_FORCE_BLOCK_FLOATS // self.dim)
        for start in range(0, len(candidates), rows):
            block = candidates[start : start + rows]
            found = top_k(queries @ self._reconstruct(block).T, block, k)
            merged_scores = np.concatenate([best.scores, found.scores], axis=1)
            merged_ids = np.concatenate([best.ids, found.ids], axis=1)
            best = top_k(merged_scores, merged_ids, k)
        return best

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(ids)

    # --- persistence --------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store to `path` atomically (temp file in the same directory, fsync, rename, fsync dir).

        Searches go on throughout: `snapshot` holds off only adds and removes while it serialises the indexes, and
        the file is checksummed and written after it (one save at a time). When all of it held the store's lock,
        a search at 1M x 64 could wait 1.7 s for a save (bench/RESULTS.md, "Saves no longer hold searches")."""
        with self._save_lock:
            header, sections = self.snapshot()
            write_store_file(Path(path), header, sections)

    def snapshot(self, indexes: bool = True) -> tuple[dict[str, Any], dict[str, bytes | np.ndarray]]:
        """The store's file header and sections as of now: ids, tombstones and, with `indexes`, its FAISS indexes
        serialised. Adds and removes wait for it; searches do not (they and serialising only read the indexes)."""
        with self._lock.read():
            header = {"kind": self.kind, "dim": self.dim, "params": dict(self.params), "version": self.version}
            sections: dict[str, bytes | np.ndarray] = {
                "ids": self._ids.tobytes(),
                "tombstones": self._tombstones.tobytes(),
            }
            if indexes:
                if self._index is not None:
                    sections["index"] = faiss.serialize_index(self._cpu_index())
                sections.update(self._extra_sections())
        return header, sections

    def _cpu_index(self) -> faiss.Index:
        return self._index

    def restore(self, header: Mapping[str, Any], sections: Mapping[str, memoryview]) -> None:
        """Fill an empty store from the parts of a saved file (see `load_vector_store`)."""
        self.version = int(header.get("version", 0))
        self._ids = np.frombuffer(sections["ids"], dtype=np.int64).copy()
        self._tombstones = np.frombuffer(sections["tombstones"], dtype=np.int64).copy()
        if "index" in sections:
            self._index = faiss.deserialize_index(np.frombuffer(sections["index"], dtype=np.uint8))
        self._load_extra_sections(sections)


def _pad(result: SearchResult) -> SearchResult:
    result.scores[result.ids < 0] = -np.inf
    return result


# --- files ----------------------------------------------------------------------------------------------------------


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (the entry lives in the directory, not the file)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Replace `path` with the concatenated chunks so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_store_file(path: Path, header: Mapping[str, Any], sections: Mapping[str, bytes | np.ndarray]) -> None:
    """Sections, then a JSON trailer (section sizes, sha256 of the sections), its length and a magic tag.

    The trailer sits at the end so that any truncation removes the magic tag and is caught before parsing.
    """
    digest = hashlib.sha256()
    for data in sections.values():
        digest.update(data)
    trailer = dict(header)
    trailer.update(
        format=_FILE_FORMAT, sections=[[name, len(data)] for name, data in sections.items()], sha256=digest.hexdigest()
    )
    encoded = json.dumps(trailer).encode()
    atomic_write(path, [*sections.values(), encoded, struct.pack("<Q", len(encoded)), _FILE_MAGIC])


def read_store_file(path: Path) -> tuple[dict[str, Any], dict[str, memoryview]]:
    """Parse and verify a file written by `write_store_file`; `CorruptData` if it is truncated or altered."""
    data = memoryview(path.read_bytes())
    tail = 8 + len(_FILE_MAGIC)
    if len(data) < tail or bytes(data[-len(_FILE_MAGIC) :]) != _FILE_MAGIC:
        raise CorruptData(f"{path} is not a complete vector-store file (truncated or foreign)", str(path))
    (trailer_len,) = struct.unpack("<Q", data[-tail : -len(_FILE_MAGIC)])
    start = len(data) - tail - trailer_len
    try:
        header = json.loads(bytes(data[start : len(data) - tail]))
        layout = [(str(name), int(size)) for name, size in header["sections"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptData(f"{path} has an unreadable trailer: {exc}", str(path)) from exc
    if start < 0 or sum(size for _, size in layout) != start or header.get("format") != _FILE_FORMAT:
        raise CorruptData(f"{path} has an inconsistent layout", str(path))
    if hashlib.sha256(data[:start]).hexdigest() != header.get("sha256"):
        raise CorruptData(f"{path} does not match its checksum", str(path))
    sections, offset = {}, 0
    for name, size in layout:
        sections[name] = data[offset : offset + size]
        offset += size
    return header, sections
