"""Replicas on several hosts (#10): one writer per collection is enforced by PostgreSQL, not only by the data
directory's file lock. Each engine here has its own data directory, so their `flock`s never meet (as on two hosts
whose network file system does not carry them): only the catalog's advisory lock keeps the second one out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hostile import cached_encoder_factory, engine_config, write_images
from sqlalchemy import create_engine, text

from indexer import Engine, IngestItem
from indexer.catalog.locks import _NAMESPACE, COLLECTION_WRITER

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("catalog_url", ["postgresql"], indirect=True)]


def _engines(tmp_path: Path, catalog_url: str) -> tuple[Engine, Engine]:
    a = Engine(engine_config(tmp_path, catalog_url, data_dir=tmp_path / "host-a"), cached_encoder_factory).open()
    b = Engine(engine_config(tmp_path, catalog_url, data_dir=tmp_path / "host-b"), cached_encoder_factory).open()
    return a, b


def test_a_second_host_waits_for_the_writer_then_runs_the_queued_job(tmp_path: Path, catalog_url: str) -> None:
    write_images(tmp_path / "p", 4)
    a, b = _engines(tmp_path, catalog_url)
    try:
        a.create_collection("c")
        writer = a._live_by_name("c").lock
        with writer:  # host a is writing the collection
            assert not b._live_by_name("c").lock.acquire(blocking=False)
            job = b.submit("c", [IngestItem.path(tmp_path / "p")])
            time.sleep(1.5)  # b's worker polls the lock meanwhile and must not start the job
            assert b.get_job(job).state == "queued"
        info = b.wait_job(job, timeout_s=60)  # a let go: b takes the collection and runs its job
        assert (info.state, info.done) == ("done", 4), info
        assert writer.acquire(blocking=False)  # and b let go too
        writer.release()
    finally:
        b.close()
        a.close()


def test_a_dead_holders_lock_goes_with_its_session(tmp_path: Path, catalog_url: str) -> None:
    a, b = _engines(tmp_path, catalog_url)
    try:
        collection_id = a.create_collection("c").id
        lock = b._live_by_name("c").lock
        holder = create_engine(catalog_url)  # another process's session holding the collection's writer lock
        conn = holder.connect()
        keys = {"a": _NAMESPACE + COLLECTION_WRITER, "b": collection_id}
        assert conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), keys).scalar()
        conn.commit()
        assert not lock.acquire(blocking=False)
        conn.invalidate()  # the holder dies: its session ends and PostgreSQL drops the lock
        conn.close()
        holder.dispose()
        # The server ends the dead session's backend a moment after the client hangs up, not at once (this
        # acquire ran before it once, in CI): the lock must come free within seconds.
        deadline = time.monotonic() + 10
        while not lock.acquire(blocking=False):
            assert time.monotonic() < deadline, "the dead holder's lock was never released"
            time.sleep(0.05)
        try:  # while b holds it, nobody else gets it
            other = create_engine(catalog_url)
            with other.connect() as probe:
                assert not probe.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), keys).scalar()
            other.dispose()
        finally:
            lock.release()
    finally:
        b.close()
        a.close()


def test_a_replica_takes_over_the_jobs_a_dead_one_left(tmp_path: Path, catalog_url: str) -> None:
    from indexer.catalog import repo
    from indexer.catalog.db import session_scope

    write_images(tmp_path / "p", 3)
    write_images(tmp_path / "q", 2, start=3)
    a, b = _engines(tmp_path, catalog_url)
    try:
        a.create_collection("c")
        # a queued one job and never ran it, and died in the middle of another (still "running" in the catalog)
        queued = a.submit("c", [IngestItem.path(tmp_path / "p")], start=False)
        running = a.submit("c", [IngestItem.path(tmp_path / "q")], start=False)
        with session_scope(a.sessions) as session:
            repo.set_job_state(session, running, "running")
        writer = a._live_by_name("c").lock
        with writer:  # while a still holds the collection, b's sweeps leave its jobs alone
            b.watch_jobs(0.2)
            time.sleep(1.0)
            assert [b.get_job(job).state for job in (queued, running)] == ["queued", "running"]
        for job, n in ((queued, 3), (running, 2)):
            info = b.wait_job(job, timeout_s=60)
            assert (info.state, info.done) == ("done", n), info
    finally:
        b.close()
        a.close()
