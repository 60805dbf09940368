"""Durable embeddings of one collection, so an index can be rebuilt, or change kind, without re-encoding images.

A directory of append-only shard files, each written once, atomically and fsync'd:

    0000000001.add.<sha256[:32]>.npy   structured rows (id int64, vec float16[dim])
    0000000002.del.<sha256[:32]>.npy   int64 ids deleted from then on (tombstones)

The sequence number orders events: an id is live when its latest `add` comes after its latest `del`. The checksum
in the name covers the whole file, so a truncated or altered shard is reported (`CorruptData`) instead of loading
garbage. float16 halves the disk and memory cost; for L2-normalised vectors its ~1e-3 relative error changes
inner-product rankings only between near-ties.

A job writes a shard per batch (32 images: 31k files for 1M images, each read, checksummed and parsed whenever the
index is rebuilt from them), so `settle` merges the newest shards wherever one is smaller than MERGE_RATIO times all
newer shards together, in runs of at most MERGE_MAX_BYTES: past the last sealed shard sizes fall geometrically, a
collection keeps (bytes / MERGE_MAX_BYTES) + O(log n) shards however it was fed, and a row is rewritten
O(log MERGE_MAX_BYTES) times before its shard is sealed. A run of consecutive shards is replaced by files at its
last sequence number (its adds, and its deletions, which may hide older rows), so a merge need not include the
newest shards. The engine settles after each job; `compact` merges everything into one shard.

One writer per directory at a time (the engine serialises writes per collection); readers may run concurrently.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CorruptData, InvalidInput
from indexer.vector_store.base import (
    as_id_array,
    atomic_write,
    check_ids,
    check_vectors,
    distinct_sorted,
    fsync_dir,
    sorted_contains,
)

_SHARD_NAME = re.compile(r"(\d{10})\.(add|del)\.([0-9a-f]{32})\.npy")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# `settle` keeps every shard at least this many times the bytes of all newer shards together,
MERGE_RATIO = 2
# merging at most this many bytes of shards at a time (a merge holds about four times that in memory while it
# writes); a shard of at least half of it is left alone (sealed), since merging two such would pass it.
MERGE_MAX_BYTES = 256 << 20


@dataclass(frozen=True)
class _Shard:
    seq: int
    kind: str  # "add" | "del"
    checksum: str
    path: Path


@dataclass(frozen=True)
class EmbeddingStats:
    shards: int
    added_rows: int
    deleted_rows: int


class EmbeddingStore:
    """Append-only float16 embedding shards in `directory` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str], dim: int) -> None:
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidInput(f"dim must be a positive integer, got {dim!r}")
        self.directory = Path(directory)
        self.dim = dim
        self.directory.mkdir(parents=True, exist_ok=True)
        # Leftovers of a write that crashed before its rename; never visible as shards, safe to drop.
        for stale in self.directory.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        # Re-entrant: compaction holds it across its own append so no other write can slip in between.
        self._lock = threading.RLock()
        shards = self._shards()
        self._next_seq = shards[-1].seq + 1 if shards else 1

    def _rows_dtype(self) -> np.dtype:
        return np.dtype([("id", "<i8"), ("vec", "<f2", (self.dim,))])

    def _rows(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """An add shard's rows: the ids with their vectors as float16."""
        rows = np.empty(len(ids), dtype=self._rows_dtype())
        rows["id"], rows["vec"] = ids, vectors
        return rows

    def _shards(self) -> list[_Shard]:
        shards = []
        for path in self.directory.iterdir():
            match = _SHARD_NAME.fullmatch(path.name)
            if match:
                shards.append(_Shard(int(match[1]), match[2], match[3], path))
        return sorted(shards, key=lambda s: s.seq)

    def append(self, ids: Any, vectors: Any) -> None:
        """Store vectors for `ids` (a later append for the same id supersedes the earlier one)."""
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        if not len(ids):
            return
        if np.abs(vectors).max() > _FLOAT16_MAX:
            raise InvalidInput(f"vector components beyond ±{_FLOAT16_MAX:g} do not fit float16 storage")
        self._write("add", self._rows(ids, vectors))

    def delete(self, ids: Any) -> None:
        """Record that `ids` are gone (ids never stored are fine)."""
        ids = distinct_sorted(as_id_array(ids))
        if len(ids):
            self._write("del", ids)

    def _write(self, kind: str, array: np.ndarray) -> None:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._write_at(seq, kind, _encoded(array))

    def _write_at(self, seq: int, kind: str, data: bytes) -> Path:
        path = self.directory / f"{seq:010d}.{kind}.{hashlib.sha256(data).hexdigest()[:32]}.npy"
        atomic_write(path, [data])
        return path

    def _read(self, shard: _Shard) -> np.ndarray:
        data = shard.path.read_bytes()
        if hashlib.sha256(data).hexdigest()[:32] != shard.checksum:
            raise CorruptData(
                f"embedding shard {shard.path} does not match its checksum (truncated or altered); "
                "restore it, or delete it and re-index the images it held",
                str(shard.path),
            )
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise CorruptData(f"embedding shard {shard.path} cannot be parsed: {exc}", str(shard.path)) from exc
        expected = self._rows_dtype() if shard.kind == "add" else np.dtype("<i8")
        if array.dtype != expected or array.ndim != 1:
            raise CorruptData(
                f"embedding shard {shard.path} holds {array.dtype} rows, expected {expected} (dimension {self.dim})",
                str(shard.path),
            )
        return array

    def load_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Live ids (sorted int64) and their vectors as float32 (n, dim)."""
        ids, vectors, _ = self._net_effect(self._shards())
        return ids, vectors.astype(np.float32)

    def _net_effect(self, shards: list[_Shard]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What `shards` (in seq order) say together: the ids they leave live (sorted) with their float16 vectors,
        and the ids whose last word in them is a deletion (sorted)."""
        add_ids, add_seqs, add_vecs, del_ids, del_seqs = [], [], [], [], []
        for shard in shards:
            array = self._read(shard)
            if shard.kind == "add":
                add_ids.append(array["id"])
                add_vecs.append(array["vec"])
                add_seqs.append(np.full(len(array), shard.seq, dtype=np.int64))
            else:
                del_ids.append(array)
                del_seqs.append(np.full(len(array), shard.seq, dtype=np.int64))
        nothing = np.empty(0, dtype=np.int64)
        ids, seqs = np.concatenate(add_ids or [nothing]), np.concatenate(add_seqs or [nothing])
        latest = _latest_per_id(ids, seqs)  # row of each id's newest add, ordered by id
        ids, seqs = ids[latest], seqs[latest]
        deleted, deleted_seqs = np.concatenate(del_ids or [nothing]), np.concatenate(del_seqs or [nothing])
        newest = _latest_per_id(deleted, deleted_seqs)
        deleted, deleted_seqs = deleted[newest], deleted_seqs[newest]
        if len(deleted):
            at = np.minimum(np.searchsorted(deleted, ids), len(deleted) - 1)
            deleted_after = (deleted[at] == ids) & (deleted_seqs[at] > seqs)
            latest, ids = latest[~deleted_after], ids[~deleted_after]
            deleted = deleted[~sorted_contains(ids, deleted)]  # re-added after their deletion: live
        if not len(ids):
            return ids, np.empty((0, self.dim), dtype=np.float16), deleted
        return ids, np.concatenate(add_vecs)[latest], deleted

    def compact(self) -> None:
        """Rewrite the live embeddings as one shard and drop the rest (tombstones included); unlike `settle`, holds
        every vector in memory (about four times their bytes) while it writes."""
        with self._lock:
            shards = self._shards()
            if len(shards) > 1 or any(s.kind == "del" for s in shards):
                self._merge_run(shards, whole=True)

    def settle(self) -> int:
        """Merge the newest shards where they break the MERGE_RATIO rule (module docstring), in runs of at most
        MERGE_MAX_BYTES; returns how many shards were merged (0: none was due). Reads only file sizes when nothing
        is due."""
        with self._lock:
            units = _by_seq(self._shards())
            sizes = [sum(shard.path.stat().st_size for shard in unit) for unit in units]
            sealed = max((i for i, size in enumerate(sizes) if size >= MERGE_MAX_BYTES // 2), default=-1)
            first = merge_start(sizes[sealed + 1 :])
            if first is None:
                return 0
            first += sealed + 1
            merged = 0
            for run in _runs(units[first:], sizes[first:]):
                if len(run) > 1:
                    shards = [shard for unit in run for shard in unit]
                    self._merge_run(shards, whole=shards[0] is units[0][0])
                    merged += len(shards)
            return merged

    def _merge_run(self, shards: list[_Shard], whole: bool) -> None:
        """Replace consecutive `shards` by what they say together, written at the last one's sequence number: a
        shard of adds, and unless they are the oldest (`whole`), a shard of the ids they leave deleted (those may
        hide older adds).

        Crash-safe at every step: the new files are complete before any old one is deleted, they sit where the run
        ends in the sequence and speak for every id it touched, so whichever of the run's old shards survive a
        crash beside them, the directory describes the same live set."""
        ids, vectors, deleted = self._net_effect(shards)
        seq = shards[-1].seq
        written = set()
        if len(ids):  # the vectors float16 as read: no round trip
            written.add(self._write_at(seq, "add", _encoded(self._rows(ids, vectors))))
        if len(deleted) and not whole:
            written.add(self._write_at(seq, "del", _encoded(deleted)))
        for shard in shards:
            if shard.path not in written:  # the run's last shard, when it alone says what the run says
                shard.path.unlink()
        fsync_dir(self.directory)

    def stats(self) -> EmbeddingStats:
        """Shard and row counts from the file headers alone (no checksum pass); a hint for when to compact."""
        shards = self._shards()
        added = deleted = 0
        for shard in shards:
            rows = len(np.load(shard.path, mmap_mode="r", allow_pickle=False))
            if shard.kind == "add":
                added += rows
            else:
                deleted += rows
        return EmbeddingStats(len(shards), added, deleted)


def _encoded(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def merge_start(sizes: list[int]) -> int | None:
    """Index of the oldest unit that is not MERGE_RATIO times the size of all newer units together (the merge
    takes it and everything newer), or None when every unit is."""
    newer = 0
    first = None
    for index in range(len(sizes) - 1, -1, -1):
        if sizes[index] < MERGE_RATIO * newer:
            first = index
        newer += sizes[index]
    return first


def _by_seq(shards: list[_Shard]) -> list[list[_Shard]]:
    """Shards grouped by sequence number: a merge writes its adds and deletions at one (see `_merge_run`)."""
    return [list(unit) for _, unit in groupby(shards, key=lambda shard: shard.seq)]


def _runs(units: list[list[_Shard]], sizes: list[int]) -> list[list[list[_Shard]]]:
    """Consecutive units cut into runs of at most MERGE_MAX_BYTES (a unit bigger than that is a run alone)."""
    runs: list[list[list[_Shard]]] = []
    total = MERGE_MAX_BYTES
    for unit, size in zip(units, sizes):
        if total + size > MERGE_MAX_BYTES:
            runs.append([])
            total = 0
        runs[-1].append(unit)
        total += size
    return runs


def _latest_per_id(ids: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Indices of the row with the highest seq for each distinct id, in ascending id order."""
    order = np.lexsort((seqs, ids))
    sorted_ids = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return order[last]
