"""collections.checkpoint: the weights a collection was created with, in the catalog.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Until this revision the checkpoint (hub id or directory of the encoder weights; NULL for the encoder's default
weights) lived in `<data dir>/collections/<id>/collection.json`. Given the data directory
(`internvl-search db upgrade` passes it; with the alembic command line, `-x data_dir=...`), the upgrade copies
it into the new column and the downgrade writes it back to the file. Without one, the engine copies a legacy
file into the column when it first loads the collection, so no checkpoint is lost either way.
"""

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INFO_FILE = "collection.json"

# A lightweight table for the data step: the models in indexer/catalog/tables.py move on, this revision must not.
collections = sa.table("collections", sa.column("id", sa.BigInteger), sa.column("checkpoint", sa.Text))


def _data_dir() -> Path | None:
    given = context.config.attributes.get("data_dir") or context.get_x_argument(as_dictionary=True).get("data_dir")
    return Path(given) if given else None


def _info_path(data_dir: Path, collection_id: int) -> Path:
    return data_dir / "collections" / str(int(collection_id)) / INFO_FILE


def _read_checkpoint(path: Path) -> str | None:
    try:
        checkpoint = json.loads(path.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return checkpoint if isinstance(checkpoint, str) and checkpoint else None


def upgrade() -> None:
    op.add_column("collections", sa.Column("checkpoint", sa.Text(), nullable=True))
    data_dir = _data_dir()
    if data_dir is None or context.is_offline_mode():
        return
    connection = op.get_bind()
    for (collection_id,) in connection.execute(sa.select(collections.c.id)).all():
        checkpoint = _read_checkpoint(_info_path(data_dir, collection_id))
        if checkpoint is not None:
            connection.execute(
                collections.update().where(collections.c.id == collection_id).values(checkpoint=checkpoint)
            )


def downgrade() -> None:
    data_dir = _data_dir()
    if data_dir is not None and not context.is_offline_mode():
        rows = op.get_bind().execute(sa.select(collections.c.id, collections.c.checkpoint)).all()
        for collection_id, checkpoint in rows:
            path = _info_path(data_dir, collection_id)
            if path.parent.is_dir() and checkpoint is not None and _read_checkpoint(path) != checkpoint:
                _write_json(path, {"checkpoint": checkpoint})
    # SQLite >= 3.35 drops a column in place, keeping the table (and its AUTOINCREMENT counter) as it is.
    op.drop_column("collections", "checkpoint")


def _write_json(path: Path, info: dict) -> None:
    try:
        info = {**json.loads(path.read_text()), **info}
    except (OSError, ValueError, TypeError):
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(info, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
