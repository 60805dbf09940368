"""Every catalog query lives here; the rest of the engine calls these functions and never builds SQL itself.

Functions take an open `Session` first and never commit: the caller owns the unit of work (see
`indexer.catalog.db.session_scope`), so an ingestion batch can write images, ledger rows and counters atomically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Select, bindparam, delete, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from indexer.catalog.filters import filter_clauses, parse_filter
from indexer.catalog.tables import (
    IMAGE_STATUSES,
    INDEX_KINDS,
    JOB_ITEM_STATES,
    JOB_STATES,
    Collection,
    Image,
    Job,
    JobItem,
    utcnow,
)
from indexer.errors import Conflict, InvalidInput, NotFound

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Well under SQLite's 32,766 bound-variable limit even for multi-column rows.
_CHUNK = 500
# Which job state may follow which; anything else is a Conflict. running -> queued re-queues a job interrupted by
# a shutdown so it resumes; failed -> queued is an explicit retry.
_JOB_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled", "failed"}),
    "running": frozenset({"done", "failed", "cancelled", "queued"}),
    "failed": frozenset({"queued"}),
    "done": frozenset(),
    "cancelled": frozenset(),
}
_TERMINAL_JOB_STATES = frozenset({"done", "failed", "cancelled"})


def in_chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    """`items` in slices short enough for one IN list (SQLite limits bound parameters per statement)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- collections -------------------------------------------------------------------------------------------------


def create_collection(
    session: Session,
    *,
    name: str,
    encoder: str,
    dim: int,
    fingerprint: str,
    index_kind: str = "auto",
    checkpoint: str | None = None,
) -> Collection:
    """Create a collection; `Conflict` if the name is taken, `InvalidInput` for a bad name, dim or index kind.

    `checkpoint` is where the weights came from (hub id or directory; None: the encoder's default weights)."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"Invalid collection name {name!r}: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit"
        )
    _check_index_kind(index_kind)
    if not isinstance(dim, int) or dim <= 0:
        raise InvalidInput(f"Collection dimension must be a positive integer, got {dim!r}")
    if session.scalar(select(Collection.id).where(Collection.name == name)) is not None:
        raise Conflict(f"Collection {name!r} already exists")
    collection = Collection(
        name=name, encoder=encoder, dim=dim, fingerprint=fingerprint, index_kind=index_kind, checkpoint=checkpoint
    )
    session.add(collection)
    try:
        # Losing a race against a concurrent creator surfaces here. No savepoint: pysqlite's legacy transaction
        # handling would turn RELEASE into a commit of the caller's whole unit of work, and the caller rolls the
        # session back on any error anyway.
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"Collection {name!r} already exists") from exc
    return collection


def _check_index_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise InvalidInput(f"Unknown index kind {kind!r}. Available: {list(INDEX_KINDS)}")


def get_collection(session: Session, name: str) -> Collection:
    """The collection called `name`; `NotFound` lists the existing names."""
    collection = session.scalar(select(Collection).where(Collection.name == name))
    if collection is None:
        names = session.scalars(select(Collection.name).order_by(Collection.name).limit(50)).all()
        raise NotFound(f"Collection {name!r} not found. Available: {list(names)}")
    return collection


def get_collection_by_id(session: Session, collection_id: int) -> Collection:
    collection = session.get(Collection, collection_id)
    if collection is None:
        raise NotFound(f"Collection id {collection_id} not found")
    return collection


def list_collections(session: Session) -> list[Collection]:
    return list(session.scalars(select(Collection).order_by(Collection.name)))


def delete_collection(session: Session, collection_id: int) -> None:
    """Delete a collection; its images, jobs and ledger rows go with it (ON DELETE CASCADE)."""
    session.delete(get_collection_by_id(session, collection_id))
    session.flush()


def set_index_kind(session: Session, collection_id: int, index_kind: str) -> None:
    _check_index_kind(index_kind)
    get_collection_by_id(session, collection_id).index_kind = index_kind


def set_checkpoint(session: Session, collection_id: int, checkpoint: str | None) -> None:
    get_collection_by_id(session, collection_id).checkpoint = checkpoint


def collection_version(session: Session, collection_id: int) -> int | None:
    return session.scalar(select(Collection.index_version).where(Collection.id == collection_id))


def bump_index_version(session: Session, collection_id: int) -> int:
    """Atomically increment and return the collection's index version (call it with every vector change)."""
    version = session.scalar(
        update(Collection)
        .where(Collection.id == collection_id)
        .values(index_version=Collection.index_version + 1, updated_at=utcnow())
        .returning(Collection.index_version)
        .execution_options(synchronize_session=False)
    )
    if version is None:
        raise NotFound(f"Collection id {collection_id} not found")
    return int(version)


def image_counts(session: Session, collection_id: int) -> dict[str, int]:
    """Number of images per status (every status present, zero when none)."""
    rows = session.execute(
        select(Image.status, func.count()).where(Image.collection_id == collection_id).group_by(Image.status)
    ).all()
    counts = dict.fromkeys(IMAGE_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


# --- images ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NewImage:
    """What the pipeline knows about a decoded image before it is stored."""

    sha256: str
    source: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    byte_size: int | None = None
    meta: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class ImageRef:
    """Outcome of `add_images` for one input: `created` is False when the content was already in the collection
    (or earlier in the same batch). `status` is the row's status; anything but "indexed" still needs a vector."""

    id: int
    sha256: str
    status: str
    created: bool


def add_images(session: Session, collection_id: int, images: Sequence[NewImage]) -> list[ImageRef]:
    """Insert images idempotently by content hash and return one `ImageRef` per input, in input order.

    A row in status "deleted" with the same hash is purged and replaced by a new row with a new id, so an image
    id (which is also a FAISS label) is never reused after its vector was removed.
    """
    get_collection_by_id(session, collection_id)
    for image in images:
        _check_new_image(image)
    unique = list(dict.fromkeys(image.sha256 for image in images))
    found = _existing_by_sha(session, collection_id, unique)
    stale = [ref.id for ref in found.values() if ref.status == "deleted"]
    if stale:
        purge_images(session, stale)
        found = {sha: ref for sha, ref in found.items() if ref.status != "deleted"}
    first = {}
    for image in images:
        first.setdefault(image.sha256, image)
    missing = [first[sha] for sha in unique if sha not in found]
    found.update(_insert_new(session, collection_id, missing))
    lost_race = [sha for sha in unique if sha not in found]
    found.update(_existing_by_sha(session, collection_id, lost_race))
    refs, seen = [], set()
    for image in images:
        ref = found[image.sha256]
        refs.append(ref if image.sha256 not in seen else ImageRef(ref.id, ref.sha256, ref.status, False))
        seen.add(image.sha256)
    return refs


def _check_new_image(image: NewImage) -> None:
    if not isinstance(image.sha256, str) or not _SHA256.fullmatch(image.sha256):
        raise InvalidInput(f"sha256 must be 64 lowercase hex characters, got {image.sha256!r}")
    if image.meta is not None and not isinstance(image.meta, Mapping):
        # Top-level arrays or scalars would make metadata filters differ between SQLite and PostgreSQL.
        raise InvalidInput(f"Image metadata must be a JSON object, got {type(image.meta).__name__}")


def _existing_by_sha(session: Session, collection_id: int, shas: Sequence[str]) -> dict[str, ImageRef]:
    found: dict[str, ImageRef] = {}
    for chunk in in_chunks(shas):
        rows = session.execute(
            select(Image.id, Image.sha256, Image.status).where(
                Image.collection_id == collection_id, Image.sha256.in_(chunk)
            )
        )
        found.update({sha: ImageRef(int(id_), sha, status, False) for id_, sha, status in rows})
    return found


def _insert_new(session: Session, collection_id: int, images: Sequence[NewImage]) -> dict[str, ImageRef]:
    """Insert rows, skipping any that a concurrent writer inserted first (ON CONFLICT DO NOTHING)."""
    if not images:
        return {}
    dialect = session.get_bind().dialect.name
    table = Image.__table__
    if dialect == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["collection_id", "sha256"])
    elif dialect == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["collection_id", "sha256"])
    else:
        stmt = insert(table)
    now = utcnow()
    created: dict[str, ImageRef] = {}
    for chunk in in_chunks(images):
        rows = [
            {
                "collection_id": collection_id,
                "sha256": image.sha256,
                "source": image.source,
                "width": image.width,
                "height": image.height,
                "format": image.format,
                "byte_size": image.byte_size,
                "meta": dict(image.meta) if image.meta is not None else None,
                "status": "pending",
                "created_at": now,
                "updated_at": now,
            }
            for image in chunk
        ]
        result = session.execute(stmt.returning(table.c.id, table.c.sha256), rows)
        created.update({sha: ImageRef(int(id_), sha, "pending", True) for id_, sha in result})
    return created


def get_image(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"Image id {image_id} not found")
    return image


def get_images(session: Session, ids: Sequence[int]) -> list[Image]:
    """Images for `ids` in the same order (search results keep their ranking); unknown ids are left out."""
    wanted = [int(i) for i in ids]
    by_id: dict[int, Image] = {}
    for chunk in in_chunks(wanted):
        by_id.update({image.id: image for image in session.scalars(select(Image).where(Image.id.in_(chunk)))})
    return [by_id[i] for i in wanted if i in by_id]


def set_image_status(session: Session, ids: Sequence[int], status: str) -> int:
    """Set the status of images; returns how many rows changed."""
    if status not in IMAGE_STATUSES:
        raise InvalidInput(f"Unknown image status {status!r}. Available: {list(IMAGE_STATUSES)}")
    changed = 0
    now = utcnow()
    for chunk in in_chunks([int(i) for i in ids]):
        result = session.execute(
            update(Image)
            .where(Image.id.in_(chunk))
            .values(status=status, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        changed += result.rowcount
    return changed


def set_image_metadata(session: Session, image_id: int, meta: Mapping[str, Any] | None) -> Image:
    """Replace an image's user metadata."""
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidInput(f"Image metadata must be a JSON object, got {type(meta).__name__}")
    image = get_image(session, image_id)
    image.meta = dict(meta) if meta is not None else None
    return image


def indexed_image_with_sha(session: Session, collection_id: int, sha256: str) -> int | None:
    """The id of the collection's indexed image with this content, if any."""
    return session.scalar(
        select(Image.id).where(Image.collection_id == collection_id, Image.sha256 == sha256, Image.status == "indexed")
    )


def shas_in_use(session: Session, collection_id: int, shas: Iterable[str]) -> set[str]:
    """Which of `shas` belong to an image of the collection that is not deleted (whose original must stay)."""
    found: set[str] = set()
    for chunk in in_chunks(sorted(set(shas))):
        found.update(
            session.scalars(
                select(Image.sha256).where(
                    Image.collection_id == collection_id, Image.sha256.in_(chunk), Image.status != "deleted"
                )
            )
        )
    return found


def image_ids(session: Session, collection_id: int, *, status: str | None = "indexed") -> np.ndarray:
    """Sorted int64 ids of the collection's images in `status` (None: all); "indexed" means it has a vector."""
    stmt = select(Image.id).where(Image.collection_id == collection_id).order_by(Image.id)
    if status is not None:
        stmt = stmt.where(Image.status == status)
    return _id_array(session, stmt)


def _id_array(session: Session, stmt: Select[tuple[int]]) -> np.ndarray:
    return np.fromiter(session.scalars(stmt), dtype=np.int64)


def purge_images(session: Session, ids: Sequence[int]) -> int:
    """Delete image rows for good (after their vectors left the index); ledger rows keep a NULL image_id."""
    removed = 0
    for chunk in in_chunks([int(i) for i in ids]):
        result = session.execute(
            delete(Image).where(Image.id.in_(chunk)).execution_options(synchronize_session="fetch")
        )
        removed += result.rowcount
    return removed


def ids_matching_filter(
    session: Session, collection_id: int, filter: Mapping[str, Any] | None, *, status: str | None = "indexed"
) -> np.ndarray:
    """Sorted int64 ids of the collection's images (in `status`) whose metadata satisfies `filter`.

    See `indexer.catalog.filters` for the filter language; an invalid filter raises `InvalidInput`.
    """
    conditions = parse_filter(filter)
    stmt = select(Image.id).where(Image.collection_id == collection_id).order_by(Image.id)
    if status is not None:
        stmt = stmt.where(Image.status == status)
    stmt = stmt.where(*filter_clauses(session.get_bind().dialect.name, conditions))
    return _id_array(session, stmt)


# --- jobs and their ledger ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one ledger item: state "done" | "failed" | "skipped", why, and the image it produced."""

    position: int
    state: str
    reason: str | None = None
    image_id: int | None = None


@dataclass
class OutcomeCounts:
    done: int = 0
    failed: int = 0
    skipped: int = 0
    ignored: list[int] = field(default_factory=list)


def create_job(
    session: Session,
    *,
    collection_id: int,
    kind: str,
    sources: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
) -> Job:
    """Create a queued job with one pending ledger item per source (positions 0..n-1)."""
    get_collection_by_id(session, collection_id)
    if not kind or len(kind) > 32:
        raise InvalidInput(f"Job kind must be 1-32 characters, got {kind!r}")
    job = Job(collection_id=collection_id, kind=kind, state="queued", params=dict(params) if params else None)
    session.add(job)
    session.flush()
    append_job_items(session, job.id, sources)
    return job


def append_job_items(session: Session, job_id: int, sources: Sequence[str]) -> int:
    """Add pending items after the job's last position (a manifest read in pieces); returns the first position."""
    job = get_job(session, job_id)
    start = session.scalar(select(func.coalesce(func.max(JobItem.position) + 1, 0)).where(JobItem.job_id == job_id))
    now = utcnow()
    rows = [
        {
            "job_id": job_id,
            "position": start + i,
            "source": str(src),
            "state": "pending",
            "created_at": now,
            "updated_at": now,
        }
        for i, src in enumerate(sources)
    ]
    for chunk in in_chunks(rows):
        session.execute(insert(JobItem), list(chunk))
    job.total += len(rows)
    return int(start)


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"Job id {job_id} not found")
    return job


def list_jobs(
    session: Session, *, collection_id: int | None = None, states: Sequence[str] | None = None, limit: int = 100
) -> list[Job]:
    """Newest first."""
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if collection_id is not None:
        stmt = stmt.where(Job.collection_id == collection_id)
    if states is not None:
        for state in states:
            _check_job_state(state)
        stmt = stmt.where(Job.state.in_(list(states)))
    return list(session.scalars(stmt))


def job_state(session: Session, job_id: int) -> str | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))


def _check_job_state(state: str) -> None:
    if state not in JOB_STATES:
        raise InvalidInput(f"Unknown job state {state!r}. Available: {list(JOB_STATES)}")


def resumable_jobs(session: Session) -> list[Job]:
    """Jobs a restarted worker must pick up (queued, or running when the process died), oldest first."""
    return list(session.scalars(select(Job).where(Job.state.in_(["queued", "running"])).order_by(Job.id)))


def set_job_state(session: Session, job_id: int, state: str, *, error: str | None = None) -> Job:
    """Move a job to `state`, stamping start/finish times; `Conflict` for a transition that makes no sense."""
    _check_job_state(state)
    job = get_job(session, job_id)
    if state == job.state:
        return job
    allowed = _JOB_TRANSITIONS[job.state]
    if state not in allowed:
        raise Conflict(f"Job {job_id} is {job.state!r} and cannot become {state!r}. Allowed: {sorted(allowed)}")
    job.state = state
    now = utcnow()
    if state == "running" and job.started_at is None:
        job.started_at = now
    job.finished_at = now if state in _TERMINAL_JOB_STATES else None
    if error is not None or state == "queued":
        job.error = error
    return job


def next_job_items(session: Session, job_id: int, *, limit: int = 256) -> list[JobItem]:
    """The next pending ledger items in position order; what a resumed job still has to do."""
    stmt = (
        select(JobItem)
        .where(JobItem.job_id == job_id, JobItem.state == "pending")
        .order_by(JobItem.position)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def pending_items_after(session: Session, job_id: int, after: int, limit: int) -> list[tuple[int, str]]:
    """(position, source) of the job's pending ledger items after position `after`, in position order.

    Paging by position (not by state alone) lets the pipeline read ahead while earlier items are still in flight
    and pending.
    """
    rows = session.execute(
        select(JobItem.position, JobItem.source)
        .where(JobItem.job_id == job_id, JobItem.state == "pending", JobItem.position > after)
        .order_by(JobItem.position)
        .limit(limit)
    )
    return [(int(position), source) for position, source in rows]


def record_item_outcomes(session: Session, job_id: int, outcomes: Sequence[ItemOutcome]) -> OutcomeCounts:
    """Settle pending ledger items and add them to the job's counters.

    Idempotent: an item that is no longer pending (already settled by an earlier, replayed batch) is left alone
    and reported in `ignored`, so counters never count an item twice.
    """
    job = get_job(session, job_id)
    for outcome in outcomes:
        if outcome.state not in JOB_ITEM_STATES or outcome.state == "pending":
            raise InvalidInput(f"Item outcome must be 'done', 'failed' or 'skipped', got {outcome.state!r}")
    pending: set[int] = set()
    for chunk in in_chunks([o.position for o in outcomes]):
        pending.update(
            session.scalars(
                select(JobItem.position).where(
                    JobItem.job_id == job_id, JobItem.state == "pending", JobItem.position.in_(chunk)
                )
            )
        )
    counts = OutcomeCounts()
    now = utcnow()
    params = []
    for outcome in outcomes:
        if outcome.position not in pending:
            counts.ignored.append(outcome.position)
            continue
        pending.discard(outcome.position)
        params.append(
            {
                "b_position": outcome.position,
                "b_state": outcome.state,
                "b_reason": outcome.reason,
                "b_image_id": outcome.image_id,
                "b_now": now,
            }
        )
        setattr(counts, outcome.state, getattr(counts, outcome.state) + 1)
    if params:
        session.execute(_settle_item_stmt(job_id), params)
    job.done += counts.done
    job.failed += counts.failed
    job.skipped += counts.skipped
    return counts


def _settle_item_stmt(job_id: int):
    # A Core statement with bound parameters, executed once for the whole batch (executemany).
    items = JobItem.__table__
    return (
        update(items)
        .where(items.c.job_id == job_id, items.c.position == bindparam("b_position"))
        .values(
            state=bindparam("b_state"),
            reason=bindparam("b_reason"),
            image_id=bindparam("b_image_id"),
            updated_at=bindparam("b_now"),
        )
    )


def job_items(
    session: Session, job_id: int, *, state: str | None = None, offset: int = 0, limit: int = 100
) -> list[JobItem]:
    """A page of the ledger in position order, optionally only one state (e.g. the failures with reasons)."""
    stmt = select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.position).offset(offset).limit(limit)
    if state is not None:
        if state not in JOB_ITEM_STATES:
            raise InvalidInput(f"Unknown job item state {state!r}. Available: {list(JOB_ITEM_STATES)}")
        stmt = stmt.where(JobItem.state == state)
    return list(session.scalars(stmt))
