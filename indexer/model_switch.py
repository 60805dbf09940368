"""Switching a collection to another encoder without downtime: a migration job, the evaluation gate, the atomic
switch, rollback and purge.

    job = engine.migrate("photos", "internvl-c", "/models/finetuned", evaluation=EvalData(classification="/eval"))

1. `start_migration` records a *shadow* embedding space (its own folder of shards) and a `migrate` job.
2. The job (`run_migration`, in the job worker) optionally evaluates the serving and the new encoder on the given
   data and stops, refusing the switch, when the new one is worse than the serving one by more than the margin on
   any gate metric. It then embeds every indexed image into the shadow space, in batches, without holding the
   collection's writer lock: searches keep using the serving index and ingestion (on another job worker) keeps
   going meanwhile. Killed, it resumes where its shards end.
3. Under the writer lock it embeds what was ingested meanwhile, builds and saves the new index, and in one catalog
   transaction makes the shadow the serving space, keeps the old one as *previous* and marks the job done; then the
   in-memory index is swapped in one assignment. A search encoded against the old space while this happened is
   told so (`SpaceChanged`) and encodes again, so none fails and none mixes the two spaces.
4. `rollback` switches back to the previous space the same way (embedding only images added since), and
   `purge_previous` deletes it for good.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.catalog import repo, spaces
from indexer.catalog.db import session_scope
from indexer.catalog.locks import SHADOW_WRITER, advisory_lock
from indexer.catalog.spaces import SpaceRow, Swap
from indexer.errors import Busy, Conflict, IndexerError, InvalidInput, NotFound
from indexer.evaluation import (
    EvalData,
    Progress,
    compare,
    evaluate,
    headline,
    load_classification_set,
    load_retrieval_set,
)
from indexer.jobs import LOCK_POLL_S, JobInfo, job_info
from indexer.live import LiveCollection, Space, target_kind
from indexer.reembed import Outcome, embed_missing, space_embeddings
from indexer.storage import WriteLock
from indexer.vector_store import create_vector_store
from internvl_models import CheckpointError, Encoder

if TYPE_CHECKING:
    from indexer.engine import Engine

log = logging.getLogger("internvl_search.model_switch")
MIGRATE_KIND = "migrate"
# The gate refuses a switch when the new encoder loses more than the margin on any of these (means over languages).
GATE_METRICS = ("classification.top1", "retrieval.text_to_image.R@1", "retrieval.image_to_text.R@1")
# How long rollback and purge wait for a running writer (an ingestion batch) before answering Busy.
LOCK_WAIT_S = 30.0


@dataclass(frozen=True)
class MigrationState:
    """Where a collection stands: the space serving it, the shadow being built (with its job), the previous space
    a rollback would return to, and the latest migration job with its gate report."""

    collection: str
    storage: str
    serving: SpaceRow
    shadow: SpaceRow | None
    previous: SpaceRow | None
    job: JobInfo | None
    gate: dict[str, Any] | None


# --- starting -------------------------------------------------------------------------------------------------------


def start_migration(
    engine: Engine,
    collection: str,
    encoder: str,
    checkpoint: str | None = None,
    *,
    evaluation: EvalData | None = None,
    max_regression: float | None = None,
    extra_roots: Sequence[Path] = (),
) -> int:
    """Record the shadow space and a queued `migrate` job; returns the job id (the caller queues or runs it)."""
    live = engine._live_by_name(collection)
    model, checkpoint = _load_encoder(engine, encoder, checkpoint)
    if model.fingerprint == live.fingerprint:
        raise Conflict(f"collection {collection!r} already uses these weights ({model.fingerprint[:12]}…)")
    margin = engine.config.migrate_max_regression if max_regression is None else float(max_regression)
    if not 0.0 <= margin <= 1.0:
        raise InvalidInput(f"max_regression must be between 0 and 1, got {margin}")
    roots = [*engine.config.allowed_roots, *(Path(r).resolve() for r in extra_roots)]
    if evaluation is not None:  # refuse unusable evaluation data now, not in the background
        if evaluation.classification:
            load_classification_set(evaluation.classification, roots, evaluation.languages)
        if evaluation.retrieval:
            load_retrieval_set(evaluation.retrieval, roots)
    params = {
        "planned": True,
        "encoder": model.name,
        "checkpoint": checkpoint,
        "fingerprint": model.fingerprint,
        "evaluation": evaluation.to_dict() if evaluation else None,
        "max_regression": margin,
        "roots": [str(r) for r in roots[len(engine.config.allowed_roots) :]],
    }
    with session_scope(engine.sessions) as session:
        shadow = spaces.get_space(session, live.id, "shadow")
        if shadow is not None and shadow.job_id is not None:
            if repo.job_state(session, shadow.job_id) in ("queued", "running"):
                raise Conflict(f"migration job {shadow.job_id} of {collection!r} is still running; cancel it first")
        if shadow is not None and shadow.fingerprint != model.fingerprint:
            spaces.drop_space(session, live.id, "shadow")  # another target: its vectors are of no use
            shadow = None
        job = repo.create_job(session, collection_id=live.id, kind=MIGRATE_KIND, params=params)
        job.total = len(repo.image_ids(session, live.id))
        if shadow is None:
            spaces.create_shadow(
                session, live.id, encoder=model.name, checkpoint=checkpoint, dim=model.dim,
                fingerprint=model.fingerprint, job_id=job.id,
            )  # fmt: skip
        else:
            spaces.attach_job(session, live.id, job.id)  # same weights: the vectors already embedded are kept
        job_id = job.id
    _remove_unused_files(engine, live)
    return job_id


def _load_encoder(engine: Engine, name: str, checkpoint: str | None) -> tuple[Encoder, str | None]:
    chosen_by_caller = checkpoint is not None
    if checkpoint is None and name == engine.config.encoder:
        checkpoint = engine.config.encoder_checkpoint
    try:
        model = engine.encoder(name, checkpoint)
    except CheckpointError as exc:
        if chosen_by_caller:
            raise InvalidInput(f"checkpoint {checkpoint!r} cannot be loaded: {exc}") from None
        raise
    return model, None if checkpoint is None else str(checkpoint)


def _remove_unused_files(engine: Engine, live: LiveCollection) -> None:
    with session_scope(engine.sessions) as session:
        in_use = spaces.generations_in_use(session, live.id)
    live.files.remove_unused_generations(in_use)


# --- the job --------------------------------------------------------------------------------------------------------


class _Run:
    """One run of a migration job: its collection, shadow space, stop conditions and progress reporting."""

    def __init__(self, engine: Engine, job_id: int, live: LiveCollection, shadow: SpaceRow, stop: threading.Event,
                 progress: Callable[[JobInfo], None] | None) -> None:  # fmt: skip
        self.engine, self.job_id, self.live, self.shadow = engine, job_id, live, shadow
        self.stop, self._progress = stop, progress
        with session_scope(engine.sessions) as session:
            self.params = dict(repo.get_job(session, job_id).params or {})
        self.roots = [*engine.config.allowed_roots, *(Path(r) for r in self.params.get("roots", []))]

    def should_stop(self) -> bool:
        if self.stop.is_set():
            return True
        with session_scope(self.engine.sessions) as session:
            return repo.job_state(session, self.job_id) not in ("queued", "running")

    def progress(self) -> None:
        if self._progress is not None:
            self._progress(self.engine.get_job(self.job_id, failures=0))

    def embed(self, encoder: Encoder, should_stop: Callable[[], bool] | None = None) -> Outcome:
        return embed_missing(
            self.engine, self.live, self.shadow, encoder, roots=self.roots, job_id=self.job_id,
            should_stop=should_stop or self.should_stop, progress=self.progress,
        )  # fmt: skip


def run_migration(
    engine: Engine, job_id: int, stop: threading.Event, progress: Callable[[JobInfo], None] | None = None
) -> None:
    """Run (or resume) a migration job to its end or to a stop request; called by the job worker."""
    try:
        with session_scope(engine.sessions) as session:
            job = repo.get_job(session, job_id)
            collection_id, state = job.collection_id, job.state
            shadow = spaces.get_space(session, collection_id, "shadow")
        live = engine._live(collection_id)
    except NotFound:
        return  # the job went with its collection
    if state == "cancelled" and shadow is not None and shadow.job_id == job_id:
        _drop_shadow(engine, live, job_id)  # cancelled before it ran: nothing will fill the shadow
    if state not in ("queued", "running"):
        return  # finished meanwhile (by another process, or cancelled)
    if shadow is None or shadow.job_id != job_id:
        _finish(engine, job_id, "failed", error="no shadow space belongs to this job (cancelled or superseded)")
        return
    # One run per shadow across processes; the collection lock stays free for ingestion until the switch.
    lock = WriteLock(
        live.files.generation_dir(shadow.generation) / "write.lock",
        advisory_lock(engine._db, SHADOW_WRITER, collection_id),  # across hosts, on PostgreSQL
    )
    if not _acquire(lock, stop):
        return
    try:
        with session_scope(engine.sessions) as session:
            if repo.job_state(session, job_id) not in ("queued", "running"):
                return
            repo.set_job_state(session, job_id, "running")
        _run_locked(_Run(engine, job_id, live, shadow, stop, progress))
    finally:
        lock.release()


def _run_locked(run: _Run) -> None:
    started = time.perf_counter()
    try:
        encoder = _space_encoder(run.engine, run.shadow)
        _gate(run, encoder)
        outcome = run.embed(encoder)
        if not outcome.complete:
            _stopped(run)
            return
        _refuse_failures(outcome)
        if not _acquire(run.live.lock, run.stop):
            _finish(run.engine, run.job_id, "queued")
            return
        try:
            run.engine.ensure_reconciled(run.live)
            timings = {"wall_s": round(time.perf_counter() - started, 4)}
            switch_space(run.engine, run.live, "shadow", encoder, run=run, timings=timings)
        finally:
            run.live.lock.release()
    except Exception as exc:
        if not isinstance(exc, IndexerError):
            log.exception("migration failed", extra={"job_id": run.job_id})
        _finish(run.engine, run.job_id, "failed", error=f"{type(exc).__name__}: {exc}")


def _space_encoder(engine: Engine, space: SpaceRow) -> Encoder:
    encoder = engine.encoder(space.encoder, space.checkpoint)
    if encoder.fingerprint != space.fingerprint:
        raise Conflict(
            f"the weights of {space.encoder} at {space.checkpoint!r} changed since this space was made "
            f"({space.fingerprint[:12]}… then, {encoder.fingerprint[:12]}… now)"
        )
    return encoder


def _refuse_failures(outcome: Outcome) -> None:
    if outcome.failed:
        first = ", ".join(f"{i}: {reason}" for i, reason in list(outcome.failed.items())[:3])
        raise Conflict(
            f"{len(outcome.failed)} images could not be re-embedded ({first}); delete them or make their sources "
            "readable, then run the migration again (what was embedded is kept)"
        )


def _stopped(run: _Run) -> None:
    with session_scope(run.engine.sessions) as session:
        state = repo.job_state(session, run.job_id)
    if state == "cancelled":  # abandoned: the shadow goes with it
        _drop_shadow(run.engine, run.live, run.job_id)
    elif state is not None:
        _finish(run.engine, run.job_id, "queued")  # a shutdown: resumed by the next start


def _drop_shadow(engine: Engine, live: LiveCollection, job_id: int) -> None:
    with session_scope(engine.sessions) as session:
        shadow = spaces.get_space(session, live.id, "shadow")
        dropped = spaces.drop_space(session, live.id, "shadow") if shadow and shadow.job_id == job_id else None
    if dropped is not None:
        live.files.remove_generation(dropped.generation)


def _gate(run: _Run, candidate: Encoder) -> None:
    """Evaluate the serving and the candidate encoder on the job's evaluation data; Conflict if it regresses."""
    data = EvalData.from_dict(run.params.get("evaluation"))
    if data is None or (run.params.get("gate") or {}).get("passed"):
        return
    margin = float(run.params.get("max_regression", run.engine.config.migrate_max_regression))
    serving = run.engine._collection_encoder(run.live)
    baseline, new = evaluate(serving, data, run.roots), evaluate(candidate, data, run.roots)
    comparison = compare(baseline, new)
    worse = {name: c for name, c in comparison.items() if name in GATE_METRICS and c["delta"] < -margin}
    gate = {
        "margin": margin,
        "serving": headline(baseline),
        "candidate": headline(new),
        "regressions": sorted(worse),
        "passed": not worse,
    }
    run.params["gate"] = gate
    with session_scope(run.engine.sessions) as session:
        job = repo.get_job(session, run.job_id)
        job.params = {**(job.params or {}), "gate": gate}
    if worse:
        detail = ", ".join(f"{name} {c['a']:.4f} -> {c['b']:.4f}" for name, c in sorted(worse.items()))
        raise Conflict(f"gate: the new encoder is worse than the serving one by more than {margin:g} ({detail})")


def _acquire(lock: WriteLock, stop: threading.Event, timeout_s: float | None = None) -> bool:
    """Poll for the lock (never block a shutdown behind another process's writer); False if stopped or timed out."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not lock.acquire(blocking=False):
        if stop.wait(LOCK_POLL_S) or (deadline is not None and time.monotonic() >= deadline):
            return False
    return True


def _finish(engine: Engine, job_id: int, state: str, *, error: str | None = None) -> None:
    try:
        with session_scope(engine.sessions) as session:
            if repo.get_job(session, job_id).state != "cancelled":
                repo.set_job_state(session, job_id, state, error=error)
    except NotFound:
        pass


# --- the switch -----------------------------------------------------------------------------------------------------


def switch_space(
    engine: Engine, live: LiveCollection, role: str, encoder: Encoder, *, run: _Run | None = None,
    timings: dict[str, float] | None = None,
) -> Swap:  # fmt: skip
    """Make the `role` space ("shadow" or "previous") serve; call with `live.lock` held. Images it lacks are
    embedded first; the catalog switch (and the job's completion) is one transaction."""
    with session_scope(engine.sessions) as session:
        target = spaces.get_space(session, live.id, role)
    if target is None:
        raise Conflict(f"collection {live.name!r} has no {role} space to switch to")
    if run is not None:
        outcome = run.embed(encoder, should_stop=lambda: False)  # ingested meanwhile; the lock holds writers off
    else:
        outcome = embed_missing(engine, live, target, encoder, roots=engine.config.allowed_roots)
    _refuse_failures(outcome)
    store = _build_store(engine, live, target)
    with session_scope(engine.sessions) as session:
        swap = spaces.swap_serving(session, live.id, role)
        store.version = swap.version
        # Saved before the commit: a committed switch always finds its index file (a crash before the commit
        # leaves a file the catalog does not refer to, rebuilt by the next attempt).
        store.save(live.files.index_path_of(target.generation))
        if run is not None:
            job = repo.get_job(session, run.job_id)
            job.params = {**(job.params or {}), "timings": timings or {}}
            repo.set_job_state(session, run.job_id, "done")
    live.switch(Space(target.encoder, target.checkpoint, target.dim, target.fingerprint, target.generation), store)
    log.info("collection switched encoder", extra={"collection": live.name, "encoder": target.encoder,
                                                   "fingerprint": target.fingerprint[:12], "version": swap.version})  # fmt: skip
    if swap.released is not None:
        live.files.remove_generation(swap.released.generation)
    return swap


def _build_store(engine: Engine, live: LiveCollection, space: SpaceRow):  # noqa: ANN202 - VectorStore
    with session_scope(engine.sessions) as session:
        indexed = repo.image_ids(session, live.id)
    ids, vectors = space_embeddings(live, space).load_all()
    lacking = np.setdiff1d(indexed, ids, assume_unique=True)
    if len(lacking):
        raise Conflict(f"{len(lacking)} indexed images have no vector in the new space (e.g. {lacking[:5].tolist()})")
    keep = np.isin(ids, indexed)
    store = create_vector_store(
        target_kind(live.index_kind, int(keep.sum()), space.dim),
        space.dim,
        expected_size=len(indexed),
        params=live.store_params,
    )
    if keep.any():
        store.add(ids[keep], vectors[keep])
    return store


# --- rollback, purge, state -----------------------------------------------------------------------------------------


def rollback(engine: Engine, collection: str) -> Swap:
    """Serve the previous space again (the space serving now becomes the previous one: roll forward the same way)."""
    live = engine._live_by_name(collection)
    with session_scope(engine.sessions) as session:
        previous = spaces.get_space(session, live.id, "previous")
    if previous is None:
        raise Conflict(f"collection {collection!r} has no previous encoder to roll back to (none, or purged)")
    encoder = _space_encoder(engine, previous)
    _lock_or_busy(live)
    try:
        engine.ensure_reconciled(live)
        return switch_space(engine, live, "previous", encoder)
    finally:
        live.lock.release()


def purge_previous(engine: Engine, collection: str) -> SpaceRow:
    """Delete the previous space (its row, index and embeddings): no rollback after this."""
    live = engine._live_by_name(collection)
    _lock_or_busy(live)
    try:
        with session_scope(engine.sessions) as session:
            dropped = spaces.drop_space(session, live.id, "previous")
        if dropped is None:
            raise Conflict(f"collection {collection!r} has no previous encoder to purge")
        live.files.remove_generation(dropped.generation)
        return dropped
    finally:
        live.lock.release()


def _lock_or_busy(live: LiveCollection) -> None:
    if not _acquire(live.lock, threading.Event(), LOCK_WAIT_S):
        raise Busy(f"collection {live.name!r} is being written (an ingestion batch); retry shortly", 5.0)


def migration_state(engine: Engine, collection: str) -> MigrationState:
    # The job before the spaces: a switch commits the new serving space and the job's "done" together, so spaces
    # read after the job are never older than the state it shows. Read the other way round, a switch committing in
    # between showed a finished migration beside the encoder it had replaced.
    with session_scope(engine.sessions) as session:
        row = repo.get_collection(session, collection)
        jobs = repo.list_jobs(session, collection_id=row.id, limit=1000)
        latest = next((job for job in jobs if job.kind == MIGRATE_KIND), None)
        gate = (latest.params or {}).get("gate") if latest is not None else None
        job = job_info(session, latest, row.name) if latest is not None else None
    with session_scope(engine.sessions) as session:
        row = repo.get_collection(session, collection)
        shadow = spaces.get_space(session, row.id, "shadow")
        previous = spaces.get_space(session, row.id, "previous")
        serving, storage = spaces.serving_space(row), row.storage
    return MigrationState(collection, storage, serving, shadow, previous, job, gate)


class EncoderSwitching:
    """The `Engine` methods of this module (a mixin: they need the engine's worker and collection lookups)."""

    def migrate(
        self, collection: str, encoder: str, checkpoint: str | None = None, *, evaluation: EvalData | None = None,
        max_regression: float | None = None, extra_roots: Sequence[Path] = (), start: bool = True,
    ) -> int:  # fmt: skip
        """Start re-embedding the collection with another encoder into a shadow index, then switching to it;
        returns the job id (queued on the engine's workers unless `start=False`; `run_job` runs it in place)."""
        engine: Engine = self  # type: ignore[assignment]
        job_id = start_migration(
            engine, collection, encoder, checkpoint, evaluation=evaluation, max_regression=max_regression,
            extra_roots=extra_roots,
        )  # fmt: skip
        if start and engine._worker is not None:
            engine._worker.enqueue(job_id)
        return job_id

    def rollback(self, collection: str):  # noqa: ANN201 - CollectionInfo
        """Serve the encoder used before the last switch again."""
        rollback(self, collection)  # type: ignore[arg-type]
        return self.get_collection(collection)  # type: ignore[attr-defined]

    def purge_previous(self, collection: str):  # noqa: ANN201 - CollectionInfo
        """Delete the space kept for a rollback."""
        purge_previous(self, collection)  # type: ignore[arg-type]
        return self.get_collection(collection)  # type: ignore[attr-defined]

    def migration_state(self, collection: str) -> MigrationState:
        return migration_state(self, collection)  # type: ignore[arg-type]

    def evaluate_encoders(
        self, data: EvalData, encoders: Sequence[EncoderChoice] = (), *, extra_roots: Sequence[Path] = (),
        progress: Progress | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Evaluate one encoder, or two side by side, on the same data: {"reports": [...], "comparison"}."""
        return evaluate_encoders(self, data, encoders, extra_roots=extra_roots, progress=progress)  # type: ignore[arg-type]


@dataclass(frozen=True)
class EncoderChoice:
    """An encoder to evaluate: by registry name and checkpoint, or the one a collection serves with."""

    encoder: str | None = None
    checkpoint: str | None = None
    collection: str | None = None


def evaluate_encoders(
    engine: Engine, data: EvalData, choices: Sequence[EncoderChoice] = (), *, extra_roots: Sequence[Path] = (),
    progress: Progress | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Reports of up to two encoders on the same data (default: the configured encoder), and their comparison."""
    choices = list(choices) or [EncoderChoice()]
    if len(choices) > 2:
        raise InvalidInput(f"evaluate one encoder, or two side by side; got {len(choices)}")
    roots = [*engine.config.allowed_roots, *(Path(r).resolve() for r in extra_roots)]
    encoders = [_chosen_encoder(engine, choice) for choice in choices]
    reports = [evaluate(encoder, data, roots, progress) for encoder in encoders]
    for report, choice in zip(reports, choices):
        report["checkpoint"] = choice.checkpoint
        report["collection"] = choice.collection
    comparison = compare(reports[0], reports[1]) if len(reports) == 2 else None
    return {"reports": reports, "comparison": comparison}


def _chosen_encoder(engine: Engine, choice: EncoderChoice) -> Encoder:
    if choice.collection is not None:
        if choice.encoder is not None or choice.checkpoint is not None:
            raise InvalidInput("name a collection or an encoder (with its checkpoint), not both")
        return engine.collection_encoder(choice.collection)
    return _load_encoder(engine, choice.encoder or engine.config.encoder, choice.checkpoint)[0]
