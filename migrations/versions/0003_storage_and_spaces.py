"""Storage policy and embedding spaces: switching a collection to a new encoder without downtime.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

* `collections.storage`: what the collection keeps of each image (originals | thumbnails | none); existing
  collections kept their originals, so they get "originals".
* `collections.generation`: which folder holds the serving index and embeddings (0: the collection folder, as
  before this revision).
* `embedding_spaces`: the shadow space a migration job fills and the previous space kept for a rollback.

The two new columns are added in place, with the CHECK constraint inside the column definition: SQLite can add
such a column without recreating the table, and recreating `collections` would reset its AUTOINCREMENT counter
(deleted collection ids, and with them their data folders, could come back).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
STORAGE_CHECK = "storage IN ('originals', 'thumbnails', 'none')"


def upgrade() -> None:
    storage = sa.Column(
        "storage",
        sa.String(16),
        sa.CheckConstraint(STORAGE_CHECK, name=op.f("ck_collections_storage")),
        nullable=False,
        server_default="originals",
    )
    op.add_column("collections", storage)
    op.add_column("collections", sa.Column("generation", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "embedding_spaces",
        sa.Column("id", ID_TYPE, nullable=False),
        sa.Column("collection_id", ID_TYPE, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("encoder", sa.String(200), nullable=False),
        sa.Column("checkpoint", sa.Text(), nullable=True),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("job_id", ID_TYPE, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_embedding_spaces"),
        sa.UniqueConstraint("collection_id", "role", name="uq_embedding_spaces_collection_id_role"),
        sa.CheckConstraint("role IN ('shadow', 'previous')", name=op.f("ck_embedding_spaces_role")),
        sa.ForeignKeyConstraint(
            ["collection_id"],
            ["collections.id"],
            name="fk_embedding_spaces_collection_id_collections",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_embedding_spaces_job_id_jobs", ondelete="SET NULL"),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("embedding_spaces")
    # In place on SQLite >= 3.35 (a CHECK that names only the dropped column goes with it), as in 0002.
    op.drop_column("collections", "generation")
    op.drop_column("collections", "storage")
