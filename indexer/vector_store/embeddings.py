"""Durable embeddings of one collection, so an index can be rebuilt, or change kind, without re-encoding images.

A directory of append-only shard files, each written once, atomically and fsync'd:

    0000000001.add.<sha256[:32]>.npy   structured rows (id int64, vec float16[dim])
    0000000002.del.<sha256[:32]>.npy   int64 ids deleted from then on (tombstones)

The sequence number orders events: an id is live when its latest `add` comes after its latest `del`. The checksum
in the name covers the whole file, so a truncated or altered shard is reported (`CorruptData`) instead of loading
garbage. float16 halves the disk and memory cost; for L2-normalised vectors its ~1e-3 relative error changes
inner-product rankings only between near-ties.

One writer per directory at a time (the engine serialises writes per collection); readers may run concurrently.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CorruptData, InvalidInput
from indexer.vector_store.base import as_id_array, atomic_write, check_ids, check_vectors, distinct_sorted, fsync_dir

_SHARD_NAME = re.compile(r"(\d{10})\.(add|del)\.([0-9a-f]{32})\.npy")
_FLOAT16_MAX = float(np.finfo(np.float16).max)


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
        rows = np.empty(len(ids), dtype=self._rows_dtype())
        rows["id"], rows["vec"] = ids, vectors
        self._write("add", rows)

    def delete(self, ids: Any) -> None:
        """Record that `ids` are gone (ids never stored are fine)."""
        ids = distinct_sorted(as_id_array(ids))
        if len(ids):
            self._write("del", ids)

    def _write(self, kind: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        checksum = hashlib.sha256(data).hexdigest()[:32]
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            atomic_write(self.directory / f"{seq:010d}.{kind}.{checksum}.npy", [data])

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
        add_ids, add_seqs, add_vecs, del_ids, del_seqs = [], [], [], [], []
        for shard in self._shards():
            array = self._read(shard)
            if shard.kind == "add":
                add_ids.append(array["id"])
                add_vecs.append(array["vec"])
                add_seqs.append(np.full(len(array), shard.seq, dtype=np.int64))
            else:
                del_ids.append(array)
                del_seqs.append(np.full(len(array), shard.seq, dtype=np.int64))
        if not add_ids:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        ids, seqs = np.concatenate(add_ids), np.concatenate(add_seqs)
        latest = _latest_per_id(ids, seqs)  # row of each id's newest add, ordered by id
        ids, seqs = ids[latest], seqs[latest]
        if del_ids:
            deleted, deleted_seqs = np.concatenate(del_ids), np.concatenate(del_seqs)
            newest = _latest_per_id(deleted, deleted_seqs)
            del_ids_u, del_seq_u = deleted[newest], deleted_seqs[newest]
            at = np.minimum(np.searchsorted(del_ids_u, ids), len(del_ids_u) - 1)
            deleted_after = (del_ids_u[at] == ids) & (del_seq_u[at] > seqs)
            latest, ids = latest[~deleted_after], ids[~deleted_after]
        return ids, np.concatenate(add_vecs)[latest].astype(np.float32)

    def compact(self) -> None:
        """Rewrite the live embeddings as one shard and drop the rest (tombstones included).

        Crash-safe at every step: the new shard is complete before anything is deleted, and old shards go oldest
        first, so whatever survives a crash still describes the same live set.
        """
        with self._lock:
            old = self._shards()
            if len(old) <= 1 and all(s.kind == "add" for s in old):
                return
            ids, vectors = self.load_all()
            if len(ids):
                self.append(ids, vectors)  # float16 -> float32 -> float16 round-trips exactly
            for shard in old:
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


def _latest_per_id(ids: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Indices of the row with the highest seq for each distinct id, in ascending id order."""
    order = np.lexsort((seqs, ids))
    sorted_ids = ids[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    return order[last]
