"""Catalog queries of a collection's embedding spaces: the serving one (columns of `collections`), the shadow a
migration job fills, and the previous one kept for a rollback (`embedding_spaces` rows).

As in `repo`, functions take an open `Session` and never commit. `swap_serving` is the switch itself: the serving
space and the target trade places in one transaction, together with the collection's index version, so a reader
of the catalog sees the old encoder or the new one, never a mixture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from indexer.catalog.repo import bump_index_version, get_collection_by_id, get_job
from indexer.catalog.tables import SPACE_ROLES, STORAGE_POLICIES, Collection, EmbeddingSpace, JobItem, utcnow
from indexer.errors import Conflict, InvalidInput, NotFound


@dataclass(frozen=True)
class SpaceRow:
    """A plain copy of an embedding space, safe to use after its session closed."""

    role: str  # "serving", "shadow" or "previous"
    generation: int
    encoder: str
    checkpoint: str | None
    dim: int
    fingerprint: str
    job_id: int | None = None


def check_storage_policy(policy: str) -> str:
    if policy not in STORAGE_POLICIES:
        raise InvalidInput(f"Unknown storage policy {policy!r}. Available: {list(STORAGE_POLICIES)}")
    return policy


def serving_space(collection: Collection) -> SpaceRow:
    return SpaceRow(
        "serving",
        int(collection.generation or 0),
        collection.encoder,
        collection.checkpoint,
        collection.dim,
        collection.fingerprint,
    )


def _row(space: EmbeddingSpace) -> SpaceRow:
    return SpaceRow(
        space.role, int(space.generation), space.encoder, space.checkpoint, space.dim, space.fingerprint, space.job_id
    )


def _get(session: Session, collection_id: int, role: str) -> EmbeddingSpace | None:
    if role not in SPACE_ROLES:
        raise InvalidInput(f"Unknown space role {role!r}. Available: {list(SPACE_ROLES)}")
    return session.scalar(
        select(EmbeddingSpace).where(EmbeddingSpace.collection_id == collection_id, EmbeddingSpace.role == role)
    )


def get_space(session: Session, collection_id: int, role: str) -> SpaceRow | None:
    """The collection's shadow or previous space, or None."""
    space = _get(session, collection_id, role)
    return None if space is None else _row(space)


def create_shadow(
    session: Session, collection_id: int, *, encoder: str, checkpoint: str | None, dim: int, fingerprint: str,
    job_id: int | None,
) -> SpaceRow:  # fmt: skip
    """A new shadow space; its generation is its own row id, so its folder name is never used twice."""
    get_collection_by_id(session, collection_id)
    if _get(session, collection_id, "shadow") is not None:
        raise Conflict("the collection already has a shadow space (a migration in progress)")
    space = EmbeddingSpace(
        collection_id=collection_id, role="shadow", generation=0, encoder=encoder, checkpoint=checkpoint, dim=dim,
        fingerprint=fingerprint, job_id=job_id,
    )  # fmt: skip
    session.add(space)
    session.flush()
    space.generation = space.id
    session.flush()
    return _row(space)


def attach_job(session: Session, collection_id: int, job_id: int) -> None:
    """Hand the shadow to a new migration job (one that resumes the work of an earlier, finished one)."""
    space = _get(session, collection_id, "shadow")
    if space is None:
        raise NotFound("the collection has no shadow space")
    space.job_id = job_id


def drop_space(session: Session, collection_id: int, role: str) -> SpaceRow | None:
    """Delete the shadow or previous space's row; returns what it was (its files are the caller's to remove)."""
    space = _get(session, collection_id, role)
    if space is None:
        return None
    row = _row(space)
    session.delete(space)
    session.flush()
    return row


@dataclass(frozen=True)
class Swap:
    """What `swap_serving` did: the new index version, the space now serving, and a space whose files are no
    longer referenced by anything (the old previous one, replaced by the space that was serving)."""

    version: int
    serving: SpaceRow
    released: SpaceRow | None


def swap_serving(session: Session, collection_id: int, target_role: str) -> Swap:
    """Make the `target_role` space serve. The space serving now becomes `previous` (kept for a rollback); an
    earlier previous space, unless it is the target, is released."""
    collection = get_collection_by_id(session, collection_id)
    target = _get(session, collection_id, target_role)
    if target is None:
        raise Conflict(f"collection {collection.name!r} has no {target_role} space to switch to")
    new = _row(target)
    released = drop_space(session, collection_id, "previous") if target_role != "previous" else None
    session.delete(target)
    session.flush()  # the (collection, role) slot must be free before the serving space takes it
    old = serving_space(collection)
    session.add(
        EmbeddingSpace(
            collection_id=collection_id, role="previous", generation=old.generation, encoder=old.encoder,
            checkpoint=old.checkpoint, dim=old.dim, fingerprint=old.fingerprint,
        )
    )  # fmt: skip
    collection.encoder, collection.checkpoint, collection.dim = new.encoder, new.checkpoint, new.dim
    collection.fingerprint, collection.generation = new.fingerprint, new.generation
    session.flush()
    version = bump_index_version(session, collection_id)
    return Swap(version, SpaceRow("serving", *_fields(new)), released)


def _fields(space: SpaceRow) -> tuple:
    return space.generation, space.encoder, space.checkpoint, space.dim, space.fingerprint


def generations_in_use(session: Session, collection_id: int) -> set[int]:
    """Every generation whose files something still refers to (serving, shadow, previous)."""
    collection = get_collection_by_id(session, collection_id)
    spaces = session.scalars(select(EmbeddingSpace.generation).where(EmbeddingSpace.collection_id == collection_id))
    return {int(collection.generation or 0), *(int(g) for g in spaces)}


# --- the counters and failure ledger of a migration job ------------------------------------------------------------


def set_job_counts(session: Session, job_id: int, *, total: int, done: int) -> None:
    """A re-embedding pass's starting point: the images to cover and those already in the space. Failures of an
    earlier pass are cleared: the pass tries those images again."""
    job = get_job(session, job_id)
    job.total, job.done, job.failed = int(total), int(done), 0
    session.execute(delete(JobItem).where(JobItem.job_id == job_id))


def add_job_progress(session: Session, job_id: int, *, done: int, failures: Sequence[tuple[int, str, str]]) -> None:
    """Count `done` more images, and record failed ones as (image id, ledger source, reason) under their image id
    as position, so an image that fails again in a resumed run is recorded once."""
    job = get_job(session, job_id)
    job.done += int(done)
    ids = [image_id for image_id, _, _ in failures]
    known = set(
        session.scalars(select(JobItem.position).where(JobItem.job_id == job_id, JobItem.position.in_(ids)))
    ) if ids else set()  # fmt: skip
    now = utcnow()
    rows = [
        {"job_id": job_id, "position": image_id, "source": source, "state": "failed", "reason": reason,
         "image_id": image_id, "created_at": now, "updated_at": now}
        for image_id, source, reason in failures
        if image_id not in known
    ]  # fmt: skip
    if rows:
        session.execute(insert(JobItem), rows)
    job.failed += len(rows)
