"""Durable float16 embedding shards: append, delete, load, compact, and corruption that must be reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import CorruptData, InvalidInput
from indexer.vector_store.embeddings import EmbeddingStore

DIM = 16


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def shard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix == ".npy")


def test_append_and_load(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    vecs = unit_vectors(50)
    store.append(np.arange(100, 150)[::-1], vecs[::-1])
    store.append([7], unit_vectors(1, seed=1))
    ids, loaded = store.load_all()
    assert ids.dtype == np.int64 and loaded.dtype == np.float32
    assert ids.tolist() == [7, *range(100, 150)]
    np.testing.assert_allclose(loaded[1:], vecs, atol=1e-3)  # float16 storage


def test_delete_and_supersede(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    first, second = unit_vectors(10, seed=1), unit_vectors(10, seed=2)
    store.append(np.arange(10), first)
    store.delete([2, 3, 99])  # 99 was never stored: fine
    store.append([4], second[4:5])  # a later append for the same id wins
    ids, vecs = store.load_all()
    assert ids.tolist() == [0, 1, 4, 5, 6, 7, 8, 9]
    np.testing.assert_allclose(vecs[2], second[4], atol=1e-3)
    store.append([3], second[3:4])  # re-added after its deletion: live again
    assert 3 in store.load_all()[0]


def test_reopen_continues_the_sequence(tmp_path: Path) -> None:
    EmbeddingStore(tmp_path, DIM).append([1, 2], unit_vectors(2))
    reopened = EmbeddingStore(tmp_path, DIM)
    reopened.delete([1])
    reopened.append([3], unit_vectors(1))
    assert reopened.load_all()[0].tolist() == [2, 3]
    assert len(shard_files(tmp_path)) == 3


def test_compact(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    for start in range(0, 40, 10):
        store.append(np.arange(start, start + 10), unit_vectors(10, seed=start))
    store.delete(np.arange(0, 40, 3))
    before_ids, before_vecs = store.load_all()
    assert store.stats().shards == 5
    store.compact()
    after_ids, after_vecs = store.load_all()
    np.testing.assert_array_equal(after_ids, before_ids)
    np.testing.assert_array_equal(after_vecs, before_vecs)  # float16 round-trips exactly
    stats = store.stats()
    assert (stats.shards, stats.added_rows, stats.deleted_rows) == (1, len(before_ids), 0)
    store.compact()  # nothing left to do
    assert len(shard_files(tmp_path)) == 1


def test_compaction_interrupted_at_any_point_keeps_the_live_set(tmp_path: Path) -> None:
    """Old shards are removed oldest first, so every crash point leaves a directory describing the same data."""
    live = tmp_path / "live"
    store = EmbeddingStore(live, DIM)
    store.append(np.arange(10), unit_vectors(10))
    store.delete([1, 2])
    store.append([20, 21], unit_vectors(2, seed=3))
    store.delete([20])
    expected = store.load_all()[0]
    old = shard_files(live)
    backup = tmp_path / "backup"
    shutil.copytree(live, backup)
    store.compact()
    (compacted,) = shard_files(live)
    for deleted_so_far in range(len(old) + 1):
        crashed = tmp_path / f"crash{deleted_so_far}"
        shutil.copytree(backup, crashed)
        for path in old[:deleted_so_far]:
            (crashed / path.name).unlink()
        shutil.copy(compacted, crashed / compacted.name)
        assert EmbeddingStore(crashed, DIM).load_all()[0].tolist() == expected.tolist()


def test_truncated_shard_is_reported(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    store.append(np.arange(20), unit_vectors(20))
    store.append(np.arange(20, 40), unit_vectors(20, seed=1))
    victim = shard_files(tmp_path)[1]
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(CorruptData, match="does not match its checksum") as info:
        store.load_all()
    assert info.value.path == str(victim)


def test_altered_shard_is_reported(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, DIM)
    store.append(np.arange(20), unit_vectors(20))
    (victim,) = shard_files(tmp_path)
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside a vector: still parses, would silently load garbage
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptData, match=victim.name):
        store.load_all()


def test_wrong_dimension_is_reported(tmp_path: Path) -> None:
    EmbeddingStore(tmp_path, DIM).append([1], unit_vectors(1))
    with pytest.raises(CorruptData, match="dimension 32"):
        EmbeddingStore(tmp_path, 32).load_all()


def test_stale_temp_files_are_dropped(tmp_path: Path) -> None:
    (tmp_path / ".0000000001.add.x.npy.abc.tmp").write_bytes(b"half a shard")
    store = EmbeddingStore(tmp_path, DIM)
    assert list(tmp_path.iterdir()) == []
    assert store.load_all()[0].size == 0


@pytest.mark.parametrize(
    ("ids", "vectors", "message"),
    [
        ([1, 2], unit_vectors(3), "3 vectors"),
        ([1, 1], unit_vectors(2), "distinct"),
        ([-1], unit_vectors(1), "non-negative"),
        ([1], np.zeros((1, DIM + 1)), r"shape \(n, 16\)"),
        ([1], np.full((1, DIM), np.nan), "NaN"),
        ([1], np.full((1, DIM), 1e6), "float16"),
    ],
)
def test_append_validation(tmp_path: Path, ids: list[int], vectors: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        EmbeddingStore(tmp_path, DIM).append(ids, vectors)
