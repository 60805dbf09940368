"""Durable float16 embedding shards: append, delete, load, compact, and corruption that must be reported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.errors import CorruptData, InvalidInput
from indexer.vector_store.embeddings import MERGE_RATIO, EmbeddingStore, merge_start

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


@pytest.mark.parametrize("damage", ["short data", "object array", "fortran order", "not npy"])
def test_a_shard_that_matches_its_checksum_but_does_not_parse_is_reported(tmp_path: Path, damage: str) -> None:
    """What only a faulty writer could leave (the checksum in the name holds): refused as corrupt, never a crash."""
    import hashlib
    import io

    rows = np.zeros(4, dtype=[("id", "<i8"), ("vec", "<f2", (DIM,))])
    buffer = io.BytesIO()
    if damage == "object array":
        np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "fortran order":
        np.save(buffer, np.asfortranarray(np.zeros((3, 2), dtype="<i8")))
    else:
        np.save(buffer, rows)
    data = {"short data": buffer.getvalue()[:-7], "not npy": b"\x93NUMPY\x09\x00garbage"}.get(damage, buffer.getvalue())
    (tmp_path / f"0000000001.add.{hashlib.sha256(data).hexdigest()[:32]}.npy").write_bytes(data)
    with pytest.raises(CorruptData, match="cannot be parsed|expected"):
        EmbeddingStore(tmp_path, DIM).load_all()


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


def test_merge_start_follows_the_ratio_rule() -> None:
    assert merge_start([]) is None and merge_start([10]) is None
    assert merge_start([100, 40, 10]) is None  # each at least twice everything newer
    assert merge_start([100, 10, 10]) == 1
    assert merge_start([200, 40, 30]) == 1  # 40 < 2 * 30: 40 and 30 merge (200 >= 2 * 70 stays)
    assert merge_start([100, 40, 30]) == 0  # and here 100 < 2 * 70 as well
    assert merge_start([10, 100]) == 0


def test_settle_keeps_few_shards_and_the_same_live_set(tmp_path: Path) -> None:
    """One small shard per batch, as a job writes them, with deletions and re-adds among them: after each settle
    the live set is unchanged, every shard is at least MERGE_RATIO times all newer ones, and the count stays
    logarithmic (300 batches would otherwise be 300+ files)."""
    store = EmbeddingStore(tmp_path, DIM)
    rng = np.random.default_rng(4)
    for batch in range(300):
        store.append(np.arange(batch * 8, batch * 8 + 8), unit_vectors(8, seed=batch))
        if batch % 7 == 3:
            store.delete(rng.choice(batch * 8 + 8, 5, replace=False))
        if batch % 11 == 5:
            store.append(rng.choice(batch * 8, 3, replace=False), unit_vectors(3, seed=1000 + batch))
        before_ids, before_vecs = store.load_all()
        store.settle()
        after_ids, after_vecs = store.load_all()
        np.testing.assert_array_equal(after_ids, before_ids)
        np.testing.assert_array_equal(after_vecs, before_vecs)
        units: dict[str, int] = {}  # bytes per sequence number (a merge writes adds and deletions at one)
        for path in shard_files(tmp_path):
            units[path.name[:10]] = units.get(path.name[:10], 0) + path.stat().st_size
        sizes = list(units.values())
        assert all(size >= MERGE_RATIO * sum(sizes[i + 1 :]) for i, size in enumerate(sizes))
        assert len(sizes) <= 2 + np.log2(batch + 2) / np.log2(MERGE_RATIO + 1) * 2
    assert store.settle() == 0  # nothing due twice in a row


def test_settle_of_the_newest_shards_keeps_their_deletions(tmp_path: Path) -> None:
    """A merge that leaves older shards must keep the deletions of ids those shards still hold."""
    store = EmbeddingStore(tmp_path, DIM)
    store.append(np.arange(100), unit_vectors(100))
    store.delete([5, 6, 200])
    store.append([6, 7, *range(100, 110)], unit_vectors(12, seed=9))  # 6 back with a new vector
    store.delete([7])
    expected_ids, expected_vecs = store.load_all()
    assert store.settle() == 3
    kinds = [path.name.split(".")[1] for path in shard_files(tmp_path)]
    assert kinds == ["add", "add", "del"]  # the old shard, then the merged adds and deletions
    ids, vecs = store.load_all()
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(vecs, expected_vecs)
    assert 5 not in ids and 7 not in ids and 6 in ids


def test_a_merged_pair_of_adds_and_deletions_is_one_unit(tmp_path: Path) -> None:
    """Deletions that outweigh the adds merged with them: the two files share a sequence number and count as one
    unit, so the next settle does not merge them again."""
    store = EmbeddingStore(tmp_path, DIM)
    store.append(np.arange(100), unit_vectors(100))
    store.append([100, 101], unit_vectors(2, seed=2))
    store.delete(np.arange(0, 100, 2))
    expected_ids, expected_vecs = store.load_all()
    assert store.settle() == 2
    names = [path.name for path in shard_files(tmp_path)]
    assert [name.split(".")[1] for name in names] == ["add", "add", "del"] and names[1][:10] == names[2][:10]
    assert store.settle() == 0
    ids, vecs = store.load_all()
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(vecs, expected_vecs)


def test_a_merge_whose_result_is_its_last_shard_keeps_it(tmp_path: Path) -> None:
    """The last shard supersedes the others: the merged file has its very name, and must not be deleted as old."""
    store = EmbeddingStore(tmp_path, DIM)
    store.append([1, 2], unit_vectors(2, seed=1))
    store.append([1, 2], unit_vectors(2, seed=2))
    last = shard_files(tmp_path)[-1]
    assert store.settle() == 2
    assert shard_files(tmp_path) == [last]
    np.testing.assert_allclose(store.load_all()[1], unit_vectors(2, seed=2), atol=1e-3)


def test_settle_merges_in_bounded_runs_and_leaves_sealed_shards(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """No merge reads more than MERGE_MAX_BYTES; shards of half that or more are left as they are."""
    monkeypatch.setattr("indexer.vector_store.embeddings.MERGE_MAX_BYTES", 4096)
    store = EmbeddingStore(tmp_path, DIM)
    for batch in range(40):  # 8 rows: 8 * (8 + 2 * 16) + header = 448 bytes a shard
        store.append(np.arange(batch * 8, batch * 8 + 8), unit_vectors(8, seed=batch))
    store.delete(np.arange(0, 320, 5))
    expected_ids, expected_vecs = store.load_all()
    assert store.settle() == 41
    sizes = [path.stat().st_size for path in shard_files(tmp_path)]
    assert all(size <= 4096 for size in sizes) and len(sizes) <= 6
    ids, vecs = store.load_all()
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(vecs, expected_vecs)
    sealed = [path for path in shard_files(tmp_path) if path.stat().st_size >= 2048]
    assert sealed
    store.append(np.arange(400, 408), unit_vectors(8, seed=99))
    store.append(np.arange(408, 416), unit_vectors(8, seed=98))
    store.settle()
    assert all(path.exists() for path in sealed)


def test_settle_interrupted_at_any_point_keeps_the_live_set(tmp_path: Path) -> None:
    live = tmp_path / "live"
    store = EmbeddingStore(live, DIM)
    store.append(np.arange(60), unit_vectors(60))
    store.append(np.arange(60, 70), unit_vectors(10, seed=3))
    store.delete([1, 60])
    store.append([1], unit_vectors(1, seed=4))
    expected = store.load_all()
    old = shard_files(live)
    backup = tmp_path / "backup"
    shutil.copytree(live, backup)
    merged = store.settle()
    assert merged == 3 and [p.name.split(".")[1] for p in shard_files(live)] == ["add", "add", "del"]
    new = [path for path in shard_files(live) if path.name not in {p.name for p in old}]
    for written in range(len(new) + 1):
        for deleted_so_far in range(len(old[-merged:]) + 1 if written == len(new) else 1):
            crashed = tmp_path / f"crash{written}-{deleted_so_far}"
            shutil.copytree(backup, crashed)
            for path in old[-merged:][:deleted_so_far]:
                (crashed / path.name).unlink()
            for path in new[:written]:
                shutil.copy(path, crashed / path.name)
            ids, vecs = EmbeddingStore(crashed, DIM).load_all()
            np.testing.assert_array_equal(ids, expected[0])
            np.testing.assert_array_equal(vecs, expected[1])


def test_load_all_matches_a_replay_of_every_write(tmp_path: Path) -> None:
    """Random appends (ids shuffled, overlapping earlier ones) and deletions, settled now and then: load_all (and a
    merge's float16 rows) give exactly what replaying the writes in order into a dict gives."""
    rng = np.random.default_rng(8)
    store = EmbeddingStore(tmp_path, DIM)
    model: dict[int, np.ndarray] = {}
    for step in range(60):
        if step % 4 == 3:
            gone = rng.choice(300, 20, replace=False)
            store.delete(gone)
            for i in gone.tolist():
                model.pop(i, None)
        else:
            ids = rng.choice(300, int(rng.integers(1, 30)), replace=False)
            vectors = unit_vectors(len(ids), seed=step).astype(np.float16).astype(np.float32)
            store.append(ids, vectors)
            model.update(zip(ids.tolist(), vectors))
        if step % 9 == 8:
            store.settle()
        ids, vecs = store.load_all()
        assert ids.tolist() == sorted(model)
        np.testing.assert_array_equal(vecs, np.array([model[i] for i in sorted(model)]).reshape(-1, DIM))
