"""Initial catalog: collections, images, jobs, job_items.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Written out by hand (not `metadata.create_all`) so that this revision stays what it was when later revisions
change the models. Constraint names follow the naming convention in indexer/catalog/tables.py.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]


def _create_collections() -> None:
    op.create_table(
        "collections",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("encoder", sa.String(200), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("index_kind", sa.String(16), nullable=False),
        sa.Column("index_version", sa.BigInteger(), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_collections"),
        sa.UniqueConstraint("name", name="uq_collections_name"),
        sa.CheckConstraint(
            "index_kind IN ('auto', 'flat', 'hnsw', 'ivf_flat', 'ivf_pq')", name=op.f("ck_collections_index_kind")
        ),
        sqlite_autoincrement=True,
    )


def _create_images() -> None:
    op.create_table(
        "images",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("collection_id", ID_TYPE, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("byte_size", sa.BigInteger(), nullable=True),
        sa.Column("meta", JSON_TYPE, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.ForeignKeyConstraint(
            ["collection_id"], ["collections.id"], name="fk_images_collection_id_collections", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("collection_id", "sha256", name="uq_images_collection_id_sha256"),
        sa.CheckConstraint("status IN ('pending', 'indexed', 'failed', 'deleted')", name=op.f("ck_images_status")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_images_collection_id_status", "images", ["collection_id", "status"])


def _create_jobs() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("collection_id", ID_TYPE, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", JSON_TYPE, nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        *_timestamps(),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(
            ["collection_id"], ["collections.id"], name="fk_jobs_collection_id_collections", ondelete="CASCADE"
        ),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed', 'cancelled')", name=op.f("ck_jobs_state")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_jobs_collection_id_state", "jobs", ["collection_id", "state"])


def _create_job_items() -> None:
    op.create_table(
        "job_items",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("job_id", ID_TYPE, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("image_id", ID_TYPE, nullable=True),
        *_timestamps(),
        sa.PrimaryKeyConstraint("id", name="pk_job_items"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_items_job_id_jobs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_job_items_image_id_images", ondelete="SET NULL"),
        sa.UniqueConstraint("job_id", "position", name="uq_job_items_job_id_position"),
        sa.CheckConstraint("state IN ('pending', 'done', 'failed', 'skipped')", name=op.f("ck_job_items_state")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_job_items_job_id_state", "job_items", ["job_id", "state"])


def upgrade() -> None:
    _create_collections()
    _create_images()
    _create_jobs()
    _create_job_items()


def downgrade() -> None:
    op.drop_index("ix_job_items_job_id_state", table_name="job_items")
    op.drop_table("job_items")
    op.drop_index("ix_jobs_collection_id_state", table_name="jobs")
    op.drop_table("jobs")
    op.drop_index("ix_images_collection_id_status", table_name="images")
    op.drop_table("images")
    op.drop_table("collections")
