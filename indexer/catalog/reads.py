"""The two catalog reads every search makes: its collection's state (is the loaded index current?) and its hits'
rows. Plain column rows from statements built once: building a statement per call (coercions, cache key) costs as
much again as running it on SQLite, and a mapped object more than the row (bench/catalog.py)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Row, bindparam, select
from sqlalchemy.orm import Session

from indexer.catalog.repo import get_collection, in_chunks
from indexer.catalog.tables import Collection, Image

_COLLECTION_STATE = select(
    Collection.id, Collection.index_version, Collection.encoder, Collection.checkpoint, Collection.dim,
    Collection.fingerprint, Collection.generation,
).where(Collection.name == bindparam("name"))  # fmt: skip
_IMAGE_HITS = select(
    Image.id, Image.collection_id, Image.status, Image.source, Image.meta, Image.width, Image.height, Image.format,
    Image.sha256,
).where(Image.id.in_(bindparam("ids", expanding=True)))  # fmt: skip


def collection_state(session: Session, name: str) -> Row:
    """What a read needs to know whether its loaded copy of collection `name` is current: id, index_version and
    the embedding space's columns (encoder, checkpoint, dim, fingerprint, generation). `NotFound` as
    `repo.get_collection`."""
    row = session.execute(_COLLECTION_STATE, {"name": name}).one_or_none()
    if row is None:
        get_collection(session, name)  # raises NotFound with the existing names
    return row


def image_hit_rows(session: Session, ids: Sequence[int]) -> dict[int, Row]:
    """The columns a search hit shows (and its status and collection, to check it), by id; unknown ids are left
    out."""
    rows: dict[int, Row] = {}
    for chunk in in_chunks([int(i) for i in ids]):
        rows.update({row.id: row for row in session.execute(_IMAGE_HITS, {"ids": list(chunk)})})
    return rows
