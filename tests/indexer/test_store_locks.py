"""The vector stores' reader-writer lock, and what it gives: searches of one store side by side, adds alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from indexer.vector_store import create_vector_store
from indexer.vector_store.locks import ReadWriteLock

pytestmark = pytest.mark.usefixtures("one_faiss_thread")

DIM, K = 24, 10


def in_thread(target) -> threading.Thread:  # noqa: ANN001
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_readers_share_writers_wait_and_a_waiting_writer_holds_off_new_readers() -> None:
    lock = ReadWriteLock()
    both_reading = threading.Barrier(2, timeout=10)

    def read_together() -> None:
        with lock.read():
            both_reading.wait()  # only passes with both readers inside at once

    readers = [in_thread(read_together) for _ in range(2)]
    for reader in readers:
        reader.join(10)
    assert not any(r.is_alive() for r in readers)

    events: list[str] = []
    reading, release = threading.Event(), threading.Event()

    def long_read() -> None:
        with lock.read():
            reading.set()
            release.wait(10)
            events.append("first read ends")

    def write() -> None:
        with lock.write():
            events.append("write")

    def late_read() -> None:
        with lock.read():
            events.append("late read")

    first = in_thread(long_read)
    assert reading.wait(10)
    writer = in_thread(write)
    while not lock._writers_waiting:  # the writer is queued behind the first reader
        threading.Event().wait(0.001)
    late = in_thread(late_read)
    late.join(0.2)
    assert late.is_alive() and writer.is_alive()  # the new reader waits behind the waiting writer
    release.set()
    for thread in (first, writer, late):
        thread.join(10)
    assert events == ["first read ends", "write", "late read"]


def test_re_entry_and_no_upgrade() -> None:
    lock = ReadWriteLock()
    with lock.write(), lock.write(), lock.read():  # a writer may write again and read
        pass
    wrote = threading.Event()

    def queued_write() -> None:
        with lock.write():
            wrote.set()

    with lock.read():
        queued = in_thread(queued_write)  # a writer queues behind this reader ...
        while not lock._writers_waiting:
            threading.Event().wait(0.001)
        with lock.read():  # ... and this reader may still re-enter (else it would wait for the writer forever)
            pass
        with pytest.raises(RuntimeError, match="cannot take it to write"):
            with lock.write():
                pass
    queued.join(10)
    assert wrote.is_set() and lock._writer is None and not lock._readers


@pytest.mark.parametrize(("kind", "shards"), [("flat", 1), ("hnsw", 1), ("ivf_pq", 1), ("ivf_flat", 2)])
def test_two_searches_of_one_store_run_at_once(kind: str, shards: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each search is held inside the index search until the other is inside too: with one exclusive lock per
    store the second could never get there."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3_000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = create_vector_store(kind, DIM, use_gpu=False, params={"shards": shards})
    store.add(np.arange(3_000), x)
    inside = threading.Barrier(2, timeout=10)
    shard_type = type(store._shards[0]) if shards > 1 else type(store)
    real = shard_type._index_search

    def meeting(self, queries, k, params):  # noqa: ANN001, ANN202
        inside.wait()
        return real(self, queries, k, params)

    monkeypatch.setattr(shard_type, "_index_search", meeting)
    results: list[np.ndarray] = []
    searches = [in_thread(lambda: results.append(store.search(x[:2], K).ids)) for _ in range(2)]
    for search in searches:
        search.join(20)
    assert len(results) == 2 and not inside.broken
    assert (results[0][:, 0] == [0, 1]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_pq"])
def test_searches_beside_adds_and_removes_see_whole_batches(kind: str) -> None:
    """Four threads search while one adds and removes batches: no error, and every search sees each batch all or
    nothing (a batch's vectors are copies of one vector, so an exact search returns its ids together or none)."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(2_000, DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    store = create_vector_store(kind, DIM, use_gpu=False)
    store.add(np.arange(2_000), base)
    probe = rng.normal(size=(1, DIM)).astype(np.float32)
    probe /= np.linalg.norm(probe, axis=1, keepdims=True)
    stop, errors, torn = threading.Event(), [], []

    def search_loop() -> None:
        while not stop.is_set():
            try:
                found = set(store.search(probe, K).ids[0].tolist())
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            batch = {i for i in found if i >= 10_000}
            if batch and len(batch) != K and kind != "hnsw":  # an approximate graph may miss a copy: no verdict
                torn.append(sorted(found))

    searchers = [in_thread(search_loop) for _ in range(4)]
    for round_ in range(15):
        ids = np.arange(10_000 + round_ * K, 10_000 + (round_ + 1) * K)
        store.add(ids, np.repeat(probe, K, axis=0))  # K copies of the probe: its K nearest, together
        if kind != "hnsw":
            store.remove(ids)
    stop.set()
    for searcher in searchers:
        searcher.join(30)
    assert not errors and not torn, (errors[:1], torn[:1])
