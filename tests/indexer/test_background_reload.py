"""Replicas (#10): a server loads the index another process changed on a thread of its own (`Engine.
reload_in_background`, indexer/refresh.py), not in the search that notices. Two engines share one data directory
and catalog here, as two `serve` processes on one host do (their `flock`s are separate open files, so they exclude
each other like processes); the end-to-end version with real servers is tests/e2e/test_replicas.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hostile import cached_encoder_factory, engine_config, write_images

import indexer.live
from indexer import Engine, IngestItem
from indexer.refresh import IndexRefresher


def _found(engine: Engine, k: int = 50) -> set[int]:
    return {hit.id for hit in engine.search("c", text="a photo", k=k)}


@contextmanager
def _writer_and_reader(tmp_path: Path, catalog_url: str, *, background: bool) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one data directory and catalog; the reader loads changed indexes in the background or not."""
    config = engine_config(tmp_path, catalog_url)
    writer = Engine(config, cached_encoder_factory).open()
    reader = Engine(config, cached_encoder_factory).open()
    if background:
        reader.reload_in_background()
    try:
        writer.create_collection("c")
        yield writer, reader
    finally:
        reader.close()
        writer.close()


def _index(engine: Engine, paths: list[Path]) -> None:
    info = engine.wait_job(engine.submit("c", [IngestItem.path(p) for p in paths]), timeout_s=60)
    assert (info.state, info.done) == ("done", len(paths)), info


def test_a_reader_swaps_in_another_processs_index_off_the_request_path(
    tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_images(tmp_path / "p", 7)
    loads: list[str] = []  # the thread of every index file load of the reader's collection
    real_load = indexer.live.load_saved
    with _writer_and_reader(tmp_path, catalog_url, background=True) as (writer, reader):

        def recording_load(live, space=None):  # noqa: ANN001, ANN202 - the real loader, watched
            if any(live is other for other in reader._lives.values()):
                loads.append(threading.current_thread().name)
            return real_load(live, space)

        monkeypatch.setattr(indexer.live, "load_saved", recording_load)
        _index(writer, paths[:3])
        first = _found(reader)  # the reader's first look loads the collection, in the request (nothing to serve yet)
        assert len(first) == 3
        loads.clear()

        _index(writer, paths[3:])
        # This search finds the catalog ahead of its index: it asks for the reload and is answered from the index
        # served so far (or from the new one, should the reload win the race to the store).
        noticed = _found(reader)
        everything = _found(writer)
        assert len(everything) == 7 and noticed in (first, everything)
        deadline = time.monotonic() + 30
        while _found(reader) != everything and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _found(reader) == everything
        assert loads and set(loads) == {"index-refresher"}, loads  # never in a request's thread


def test_without_it_the_search_that_notices_loads_the_index(tmp_path: Path, catalog_url: str) -> None:
    """The CLI and embedded engines keep answering from the newest index at once (no thread of their own)."""
    paths = write_images(tmp_path / "p", 5)
    with _writer_and_reader(tmp_path, catalog_url, background=False) as (writer, reader):
        _index(writer, paths[:2])
        assert len(_found(reader)) == 2
        _index(writer, paths[2:])
        assert len(_found(reader)) == 5


def test_a_collection_deleted_by_another_process_is_not_reloaded(tmp_path: Path, catalog_url: str) -> None:
    paths = write_images(tmp_path / "p", 2)
    with _writer_and_reader(tmp_path, catalog_url, background=True) as (writer, reader):
        _index(writer, paths)
        collection_id = reader._live_by_name("c").id
        writer.delete_collection("c")
        reader._reload_stale(collection_id)  # what the thread runs: a quiet no-op, not an error


def _refresher_run(min_interval_s: float, fail_first: bool = False) -> tuple[IndexRefresher, list, threading.Event]:
    calls: list[tuple[int, float]] = []
    went = threading.Event()

    def reload(collection_id: int) -> None:
        calls.append((collection_id, time.monotonic()))
        went.set()
        if fail_first and len(calls) == 1:
            raise RuntimeError("the disk went away")

    return IndexRefresher(reload, min_interval_s=min_interval_s), calls, went


def test_refresher_reloads_a_collection_at_most_once_per_interval() -> None:
    refresher, calls, went = _refresher_run(min_interval_s=0.5)
    try:
        refresher.request(7)
        assert went.wait(5)
        for _ in range(50):  # searches that keep finding it stale while the first reload runs and after
            refresher.request(7)
            time.sleep(0.002)
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert [c for c, _ in calls] == [7, 7]  # 51 requests, two reloads
        assert calls[1][1] - calls[0][1] >= 0.5 - 1e-3
    finally:
        refresher.stop()


def test_refresher_outlives_a_failed_reload_and_stops() -> None:
    refresher, calls, went = _refresher_run(min_interval_s=0.0, fail_first=True)
    refresher.request(1)
    assert went.wait(5)
    went.clear()
    refresher.request(2)
    assert went.wait(5)  # the failure of the first did not end the thread
    refresher.stop(timeout_s=5)
    assert not refresher._thread.is_alive()
    refresher.request(3)  # after stop: ignored
    time.sleep(0.05)
    assert [c for c, _ in calls] == [1, 2]
