"""Catalog queries the engine needs that `catalog/repo.py` does not have yet.

Same conventions as repo.py (a `Session` first, never commit). They live here only because repo.py belongs to
another change; each is a candidate to move there as is.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from indexer.catalog.tables import Collection, Image, Job, JobItem


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


def indexed_image_with_sha(session: Session, collection_id: int, sha256: str) -> int | None:
    """The id of the collection's indexed image with this content, if any."""
    return session.scalar(
        select(Image.id).where(Image.collection_id == collection_id, Image.sha256 == sha256, Image.status == "indexed")
    )


def job_state(session: Session, job_id: int) -> str | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))


def collection_version(session: Session, collection_id: int) -> int | None:
    return session.scalar(select(Collection.index_version).where(Collection.id == collection_id))
