"""The `Engine`'s API of ingestion jobs: submit, run, resume, list, retry, cancel and wait for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.errors import Conflict
from indexer.jobs import JobInfo, create_ingest_job, job_info, orphaned_jobs
from indexer.pipeline.sources import IngestItem

# How often a server looks for jobs that no process is running (a replica died, or queued them and stopped).
JOB_SWEEP_S = 10.0


class JobControl:
    """The `Engine` methods of ingestion jobs (a mixin: they need the engine's sessions, worker and collections)."""

    def submit(
        self,
        collection: str,
        items: Sequence[IngestItem],
        *,
        metadata: Mapping[str, Any] | None = None,
        extra_roots: Sequence[Path] = (),
        start: bool = True,
    ) -> int:
        """Queue an ingestion job and return its id; a background thread runs it unless `start=False`.

        `metadata` is merged under each item's own. `extra_roots` are server folders this job alone may read (for
        an operator's CLI call; never pass caller-controlled paths here).
        """
        live = self._live_by_name(collection)
        self._collection_encoder(live)  # refuse now, not in the background, when the weights do not match
        job_id = create_ingest_job(
            self.sessions, self.config.data_dir, live.id, items, metadata=metadata, extra_roots=extra_roots
        )
        if start and self._worker is not None:
            self._worker.enqueue(job_id)
        return job_id

    def run_job(self, job_id: int, *, progress: Callable[[JobInfo], None] | None = None) -> JobInfo:
        """Run a job in the calling thread (resuming an interrupted one, retrying a failed one); its final state."""
        with session_scope(self.sessions) as session:
            if repo.get_job(session, job_id).state == "failed":
                repo.set_job_state(session, job_id, "queued")  # its pending items are all that is left to do
        self._runtime.execute(job_id, threading.Event(), progress)
        return self.get_job(job_id)

    def resume_jobs(self) -> list[int]:
        """Queue every job left queued or running (interrupted) by an earlier process; returns their ids."""
        with session_scope(self.sessions) as session:
            ids = [job.id for job in repo.resumable_jobs(session)]
        for job_id in ids:
            self._worker.enqueue(job_id)
        return ids

    def watch_jobs(self, interval_s: float = JOB_SWEEP_S) -> None:
        """Run, from now on, jobs no process is running (see `jobs.orphaned_jobs`), looked for every `interval_s`:
        what a server does, so that replicas sharing a catalog take over each other's queued and interrupted jobs."""
        self._worker.sweep(lambda: orphaned_jobs(self), interval_s)

    def get_job(self, job_id: int, *, failures: int = 20) -> JobInfo:
        with session_scope(self.sessions) as session:
            job = repo.get_job(session, job_id)
            return job_info(session, job, repo.get_collection_by_id(session, job.collection_id).name, failures)

    def list_jobs(
        self, collection: str | None = None, *, states: Sequence[str] | None = None, limit: int = 100
    ) -> list[JobInfo]:
        with session_scope(self.sessions) as session:
            collection_id = repo.get_collection(session, collection).id if collection else None
            jobs = repo.list_jobs(session, collection_id=collection_id, states=states, limit=limit)
            names = {row.id: row.name for row in repo.list_collections(session)}
            return [job_info(session, job, names.get(job.collection_id, "?"), failures=0) for job in jobs]

    def retry_job(self, job_id: int) -> JobInfo:
        """Queue a failed job again in the background (after a full disk, say): its pending items are what is left.
        An interrupted (queued or running) job is queued as well; `Conflict` for one that is done or cancelled."""
        with session_scope(self.sessions) as session:
            state = repo.get_job(session, job_id).state
            if state in ("done", "cancelled"):
                raise Conflict(f"job {job_id} is {state}; only a failed or interrupted job can be retried")
            if state == "failed":
                repo.set_job_state(session, job_id, "queued")
        if self._worker is not None:
            self._worker.enqueue(job_id)
        return self.get_job(job_id)

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job; a running one stops at its next batch, keeping what it wrote."""
        with session_scope(self.sessions) as session:
            job = repo.get_job(session, job_id)
            if job.state in ("queued", "running"):
                repo.set_job_state(session, job_id, "cancelled")
        return self.get_job(job_id)

    def wait_job(self, job_id: int, timeout_s: float | None = None, poll_s: float = 0.05) -> JobInfo:
        """Block until the job finishes (or `timeout_s` passes) and return its state."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            info = self.get_job(job_id)
            if info.finished or (deadline is not None and time.monotonic() >= deadline):
                return info
            time.sleep(poll_s)
