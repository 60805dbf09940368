"""Ingestion jobs: creating them (uploads staged to disk first), planning their ledger, running them, and the
background worker threads that run submitted and interrupted jobs.

A job's life: `queued` -> `running` -> `done` | `failed` | `cancelled`. A job interrupted by a shutdown goes back to
`queued`; one interrupted by a crash stays `running` in the catalog and is picked up by the next `Engine.open`.
Its inputs are kept in `params["inputs"]` until planning turns them into ledger items (directories walked,
manifests read) in one transaction, so a crash during planning simply plans again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.catalog.tables import Job
from indexer.errors import InvalidInput, NotFound, StorageFull, storage_full_reason
from indexer.metadata import check_metadata
from indexer.pipeline.flow import ItemSpec
from indexer.pipeline.runner import PipelineRun, run_pipeline
from indexer.pipeline.sources import Fetcher, IngestItem, plan
from indexer.pipeline.urls import downloader_for
from indexer.storage import remove_staging, staging_dir
from indexer.vector_store.base import atomic_write

if TYPE_CHECKING:
    from indexer.engine import Engine

log = logging.getLogger("internvl_search.jobs")
FAILURES_SHOWN = 20
MAX_REF_CHARS = 4096
LOCK_POLL_S = 0.2


@dataclass(frozen=True)
class ItemFailure:
    position: int
    source: str
    reason: str


@dataclass(frozen=True)
class JobInfo:
    """A job's state and counters: `done` images added, `skipped` duplicates, `failed` with reasons."""

    id: int
    collection: str
    kind: str
    state: str
    total: int
    done: int
    failed: int
    skipped: int
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    timings: dict[str, float] = field(default_factory=dict)
    failures: list[ItemFailure] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def job_info(session: Session, job: Job, collection_name: str, failures: int = FAILURES_SHOWN) -> JobInfo:
    rows = repo.job_items(session, job.id, state="failed", limit=failures) if failures and job.failed else []
    params = job.params or {}
    return JobInfo(
        id=job.id,
        collection=collection_name,
        kind=job.kind,
        state=job.state,
        total=job.total if params.get("planned") else 0,
        done=job.done,
        failed=job.failed,
        skipped=job.skipped,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        timings=dict(params.get("timings") or {}),
        failures=[ItemFailure(r.position, ItemSpec.from_source(r.source).display, r.reason or "") for r in rows],
    )


def create_ingest_job(
    sessions: sessionmaker[Session],
    data_dir: Path,
    collection_id: int,
    items: Sequence[IngestItem],
    *,
    metadata: Mapping[str, Any] | None = None,
    extra_roots: Sequence[Path] = (),
) -> int:
    """Create a queued job for `items`, staging uploaded bytes under the data directory; returns its id."""
    if not items:
        raise InvalidInput("nothing to ingest: give at least one item")
    common = check_metadata(metadata, "metadata")
    job_id = None
    try:
        with session_scope(sessions) as session:
            job = repo.create_job(session, collection_id=collection_id, kind="ingest")
            job_id = job.id
            # Staged inside the transaction: if it fails, nothing refers to the files and start-up sweeps them.
            staging = staging_dir(data_dir, job.id)
            inputs = [_stage(item, i, common, staging).to_source() for i, item in enumerate(items)]
            job.params = {"inputs": inputs, "planned": False, "roots": [str(Path(r).resolve()) for r in extra_roots]}
        return job_id
    except Exception as exc:
        reason = storage_full_reason(exc)
        if reason is None:
            raise
        if job_id is not None:
            remove_staging(data_dir, job_id)  # the job was never committed: give its partial uploads' space back
        raise StorageFull(f"the job was not accepted: {reason}; free space and send it again") from None


def _stage(item: IngestItem, index: int, common: dict[str, Any], staging: Path) -> ItemSpec:
    if not isinstance(item, IngestItem) or item.kind not in ("upload", "path", "url", "manifest"):
        raise InvalidInput(f"item {index}: expected an IngestItem (upload, path, url or manifest), got {item!r:.80}")
    what = f"item {index} metadata"
    meta = check_metadata({**common, **check_metadata(item.metadata, what)}, what)
    if item.kind == "upload" and item.data is None:
        # Checked, not assumed: an upload spec is read without the allowed-roots check, so it must be our file.
        raise InvalidInput(f"item {index}: an upload needs its bytes")
    if item.data is not None:
        if item.kind not in ("upload", "manifest"):
            raise InvalidInput(f"item {index}: a {item.kind} item takes a path or URL, not bytes")
        path = staging / f"{index:08d}"
        atomic_write(path, [item.data])
        if item.kind == "manifest":
            return ItemSpec("manifest", str(path), name="upload", meta=meta)
        return ItemSpec("upload", str(path), name=_file_name(item.filename) or f"upload-{index}", meta=meta)
    if not item.ref:
        raise InvalidInput(f"item {index}: a {item.kind} item needs a path or URL")
    if len(str(item.ref)) > MAX_REF_CHARS or "\x00" in str(item.ref):
        # Refused here, before the ledger: PostgreSQL cannot store a NUL, and no real path or URL is this long.
        raise InvalidInput(f"item {index}: a path or URL must be at most {MAX_REF_CHARS:,} characters without NUL")
    return ItemSpec(item.kind, str(item.ref), meta=meta)


def _file_name(name: str | None) -> str | None:
    """A client's file name as it is shown and stored: control characters (NUL included) dropped, 255 at most."""
    if not name:
        return None
    return "".join(c for c in name if c.isprintable())[:255] or None


def plan_job(sessions: sessionmaker[Session], job_id: int, roots: Sequence[Path]) -> None:
    """Turn the job's inputs into ledger items (once; a crash mid-way rolls back and plans again)."""
    with session_scope(sessions) as session:
        job = repo.get_job(session, job_id)
        params = dict(job.params or {})
        if params.get("planned", True):
            return
        specs = [ItemSpec.from_source(s) for s in params.get("inputs", [])]
        sources = [spec.to_source() for spec in plan(specs, job_roots(roots, params))]
        repo.append_job_items(session, job_id, sources)
        job.params = {**params, "planned": True}


def job_roots(roots: Sequence[Path], params: Mapping[str, Any]) -> list[Path]:
    """The engine's allowed roots plus those granted to this job when it was created (by the CLI operator)."""
    return [*roots, *(Path(r) for r in params.get("roots", []))]


class JobWorker:
    """Background threads that run queued jobs; one writer per collection is enforced by the collection lock."""

    def __init__(self, run: Callable[[int, threading.Event], None], threads: int) -> None:
        self._run = run
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._queued: set[int] = set()
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"job-worker-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def enqueue(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._queued:
                return
            self._queued.add(job_id)
        self._queue.put(job_id)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._lock:
                self._queued.discard(job_id)
            try:
                self._run(job_id, self.stopping)
            except Exception:  # the job is marked failed by the runner; a worker thread must survive anything
                log.exception("job crashed", extra={"job_id": job_id})

    def sweep(self, find: Callable[[], Sequence[int]], interval_s: float) -> None:
        """Every `interval_s` until `stop`, queue the jobs `find` names (`orphaned_jobs`: left to nobody)."""

        def loop() -> None:
            while not self.stopping.wait(interval_s):
                try:
                    for job_id in find():
                        self.enqueue(job_id)
                except Exception:  # a database blip: the next round tries again
                    log.exception("job sweep failed")

        threading.Thread(target=loop, name="job-sweeper", daemon=True).start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask running jobs to stop at their next batch boundary and wait for the threads."""
        self.stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)


def orphaned_jobs(engine: Engine) -> list[int]:
    """Queued or interrupted ingestion jobs of collections whose writer lock is free right now, so no process is
    running them: those a replica queued and never ran, or was running when it died (PostgreSQL dropped its advisory
    lock with its session). Any replica may run them; the lock it then takes keeps the others out. (Migrations wait
    for their shadow's lock instead: they are resumed at start-up only.)"""
    with session_scope(engine.sessions) as session:
        jobs = [(job.id, job.collection_id) for job in repo.resumable_jobs(session) if job.kind != "migrate"]
    free: dict[int, bool] = {}
    for collection_id in dict.fromkeys(c for _, c in jobs):
        try:
            lock = engine._live(collection_id).lock
        except NotFound:  # deleted meanwhile: its jobs went with it
            free[collection_id] = False
            continue
        free[collection_id] = lock.acquire(blocking=False)
        if free[collection_id]:
            lock.release()
    return [job_id for job_id, collection_id in jobs if free[collection_id]]


def sweep_staging(sessions: sessionmaker[Session], data_dir: Path) -> None:
    """Remove staged uploads of jobs that ended (or never got committed)."""
    base = Path(data_dir) / "jobs"
    if not base.is_dir():
        return
    with session_scope(sessions) as session:
        keep = {str(job.id) for job in repo.list_jobs(session, states=["queued", "running", "failed"], limit=10**9)}
    for path in base.iterdir():
        if path.name.isdigit() and path.name not in keep:
            remove_staging(data_dir, int(path.name))


def _save_if_possible(live: Any) -> None:
    """Save the index after a failed run, unless that fails too (a full disk): the catalog and the embeddings are
    durable, and the next reconciliation rebuilds what the saved index lacks."""
    try:
        live.save_if_dirty()
    except Exception:
        log.exception("could not save the index after a failed job", extra={"collection": live.name})


class JobRuntime:
    """Runs one job to its end (or to a stop request) while holding its collection's writer lock."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def execute(self, job_id: int, stop: threading.Event, progress: Callable[[JobInfo], None] | None = None) -> None:
        engine, sessions = self.engine, self.engine.sessions
        try:
            with session_scope(sessions) as session:
                job = repo.get_job(session, job_id)
                collection_id, kind = job.collection_id, job.kind
            if kind == "migrate":  # re-embedding for an encoder switch: its own locking (indexer/model_switch.py)
                from indexer.model_switch import run_migration

                run_migration(engine, job_id, stop, progress)
                return
            live = engine._live(collection_id)
        except NotFound:
            return  # the job went with its collection
        # Polled rather than blocking, so a shutdown is not held up by a writer in another process.
        while not live.lock.acquire(blocking=False):
            if stop.wait(LOCK_POLL_S):
                return
        try:
            engine.ensure_reconciled(live)
            with session_scope(sessions) as session:
                if repo.get_job(session, job_id).state not in ("queued", "running"):
                    return  # finished meanwhile (by another process, or cancelled)
                repo.set_job_state(session, job_id, "running")
            self._run_locked(job_id, live, stop, progress)
        finally:
            live.lock.release()

    def _run_locked(self, job_id: int, live: Any, stop: threading.Event, progress: Callable | None) -> None:
        started = time.perf_counter()
        try:
            clock, complete = self._run(job_id, live, stop, progress)
        except Exception as exc:
            log.exception("job failed", extra={"job_id": job_id})
            _save_if_possible(live)
            reason = storage_full_reason(exc)
            error = f"{reason}: free space, then retry the job" if reason else f"{type(exc).__name__}: {exc}"
            self._finish(job_id, "failed", {}, error=error)
            return
        if complete and live.maintain(live.embeddings()):
            log.info("index rebuilt after job", extra={"job_id": job_id, "kind": live.store.kind})
        live.save_if_dirty()
        timings = {**clock.as_dict(), "wall_s": round(time.perf_counter() - started, 4)}
        self._finish(job_id, "done" if complete else "queued", timings)

    def _start(
        self, job_id: int, live: Any, stop: threading.Event, progress: Callable[[JobInfo], None] | None
    ) -> tuple[Any, list, Callable[[], bool], Callable[[object], None]]:
        """What every way of running a job needs first: the collection's encoder (refusing weights that do not
        match its vectors), the planned ledger, the job's roots, a stop check (shutdown or cancel) and a per-batch
        progress callback."""
        engine, config, sessions = self.engine, self.engine.config, self.engine.sessions
        encoder = engine._collection_encoder(live)
        plan_job(sessions, job_id, config.allowed_roots)
        with session_scope(sessions) as session:
            roots = job_roots(config.allowed_roots, repo.get_job(session, job_id).params or {})

        def should_stop() -> bool:
            if stop.is_set():
                return True
            with session_scope(sessions) as session:
                return repo.job_state(session, job_id) == "cancelled"

        def on_batch(_result: object) -> None:
            if progress is not None:
                progress(engine.get_job(job_id, failures=0))

        return encoder, roots, should_stop, on_batch

    def _run(self, job_id: int, live: Any, stop: threading.Event, progress: Callable[[JobInfo], None] | None):
        engine, config, sessions = self.engine, self.engine.config, self.engine.sessions
        encoder, roots, should_stop, on_batch = self._start(job_id, live, stop, progress)
        downloader = downloader_for(config, engine.resolver)

        run = PipelineRun(
            job_id,
            config,
            sessions,
            live,
            encoder,
            Fetcher(roots, config.max_source_bytes, downloader),
            should_stop,
            on_batch,
        )
        try:
            return run_pipeline(run)
        finally:
            downloader.close()

    def _finish(self, job_id: int, state: str, timings: dict[str, float], error: str | None = None) -> None:
        with session_scope(self.engine.sessions) as session:
            job = repo.get_job(session, job_id)
            job.params = {**(job.params or {}), "timings": timings}
            if job.state == "cancelled":
                state = "cancelled"
            else:
                repo.set_job_state(session, job_id, state, error=error)
        if state in ("done", "cancelled"):
            remove_staging(self.engine.config.data_dir, job_id)
