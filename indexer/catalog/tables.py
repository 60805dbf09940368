"""The catalog schema: collections, images, ingestion jobs and their per-item ledger.

The database is the source of truth; FAISS indexes and embedding shards are derived from it. Every change here needs
a matching Alembic revision in `migrations/versions/` (a test compares the two). Enumerated columns are plain strings
guarded by CHECK constraints rather than database ENUM types, because ENUM types on PostgreSQL need their own
create/drop steps in every migration and cannot be altered inside SQLite's batch mode.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf_flat", "ivf_pq")
IMAGE_STATUSES = ("pending", "indexed", "failed", "deleted")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_ITEM_STATES = ("pending", "done", "failed", "skipped")
# What a collection keeps of each image, so re-embedding with another encoder never needs the user to upload again:
# the original file, a reduced copy (longer side THUMBNAIL_SIDE in indexer/storage.py), or nothing (re-fetched from
# its source path or URL).
STORAGE_POLICIES = ("originals", "thumbnails", "none")
# An embedding space that is not the one serving: being built for a switch, or kept after one for a rollback.
SPACE_ROLES = ("shadow", "previous")

# Explicit constraint names keep Alembic's SQLite batch mode (which recreates tables) and the drift test
# deterministic across both engines.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an `INTEGER PRIMARY KEY` (the rowid alias); BIGINT there would need explicit ids.
# PostgreSQL gets a 64-bit identity so catalog ids always fit FAISS's int64 labels.
ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")
# JSONB on PostgreSQL (indexable, canonical); SQLite's JSON1 functions work on the plain text form.
JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
# Without AUTOINCREMENT SQLite hands out max(id)+1, so deleting the newest image would recycle its id, and with it
# a FAISS label (or a collection's data directory). PostgreSQL sequences never go back.
_NO_ID_REUSE = {"sqlite_autoincrement": True}


def utcnow() -> datetime:
    """Timezone-aware now; SQLite stores it without the offset, PostgreSQL as timestamptz."""
    return datetime.now(UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Collection(Base):
    """A set of images embedded by one encoder; vectors of different encoders never share a collection."""

    __tablename__ = "collections"
    __table_args__ = (
        CheckConstraint(_one_of("index_kind", INDEX_KINDS), name="index_kind"),
        CheckConstraint(_one_of("storage", STORAGE_POLICIES), name="storage"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    encoder: Mapped[str] = mapped_column(String(200))
    dim: Mapped[int] = mapped_column(Integer)
    # Identifies the exact weights; a different checkpoint under the same encoder name gives a different space.
    fingerprint: Mapped[str] = mapped_column(String(128))
    # Hub id or directory the weights were loaded from; NULL: the encoder's default weights (or, for a collection
    # created before revision 0002, still in its legacy collection.json until the engine first loads it).
    checkpoint: Mapped[str | None] = mapped_column(Text)
    index_kind: Mapped[str] = mapped_column(String(16), default="auto")
    # Bumped on every change to the set of indexed vectors; a saved FAISS file records the version it was
    # built at, so start-up reconciliation can tell a stale index from a current one without scanning.
    index_version: Mapped[int] = mapped_column(BigInteger, default=0)
    storage: Mapped[str] = mapped_column(String(16), default="originals", server_default="originals")
    # Which files hold the serving index and embeddings (0: the collection folder itself; otherwise the folder of
    # the EmbeddingSpace row that was built for it). Switching encoders changes it in the same transaction as the
    # encoder columns above.
    generation: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class EmbeddingSpace(Base):
    """A collection's embedding space other than the serving one: a `shadow` being filled by a migration job, or
    the `previous` one kept after a switch so that a rollback needs no re-encoding. At most one of each."""

    __tablename__ = "embedding_spaces"
    __table_args__ = (
        UniqueConstraint("collection_id", "role"),
        CheckConstraint(_one_of("role", SPACE_ROLES), name="role"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    # Names the folder of its files; a new shadow takes its own row id, which is never reused.
    generation: Mapped[int] = mapped_column(BigInteger)
    encoder: Mapped[str] = mapped_column(String(200))
    checkpoint: Mapped[str | None] = mapped_column(Text)
    dim: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(128))
    # The migration job filling a shadow (SET NULL: job history may be pruned without losing the space).
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Image(Base):
    """One image of a collection. Its id is also its FAISS label, and ids are never reused."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("collection_id", "sha256"),
        Index(None, "collection_id", "status"),
        CheckConstraint(_one_of("status", IMAGE_STATUSES), name="status"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class Job(Base):
    """An ingestion (or maintenance) run over a list of sources; counters summarise its ledger."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "collection_id", "state"),
        CheckConstraint(_one_of("state", JOB_STATES), name="state"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    collection_id: Mapped[int] = mapped_column(ForeignKey("collections.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # Options the job was started with, kept so a resumed job runs exactly as the original would have.
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobItem(Base):
    """One source of a job and what became of it; the ledger is what makes a killed job resumable."""

    __tablename__ = "job_items"
    __table_args__ = (
        UniqueConstraint("job_id", "position"),
        Index(None, "job_id", "state"),
        CheckConstraint(_one_of("state", JOB_ITEM_STATES), name="state"),
        _NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    # SET NULL: purging a deleted image must not erase the history of the job that brought it in.
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
