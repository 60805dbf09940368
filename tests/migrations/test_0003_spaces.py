"""Revision 0003 on real SQLite and PostgreSQL: existing collections keep their originals and serve generation 0,
the storage policy and space roles are enforced by the database, and the revision goes down and up again without
disturbing the collections (their ids are never reused)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import IntegrityError

from indexer.catalog import migrate

NOW = datetime.now(UTC)


def _run(url: str, sql: str, **params: object) -> list:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params)
            return result.all() if result.returns_rows else []
    finally:
        engine.dispose()


def _add_collection(url: str, name: str) -> int:
    _run(
        url,
        "INSERT INTO collections (name, encoder, dim, fingerprint, index_kind, index_version, created_at, updated_at)"
        " VALUES (:name, 'internvl-c', 8, 'f', 'auto', 0, :now, :now)",
        name=name,
        now=NOW,
    )
    return int(_run(url, "SELECT id FROM collections WHERE name = :n", n=name)[0][0])


def _add_space(url: str, collection_id: int, role: str) -> None:
    _run(
        url,
        "INSERT INTO embedding_spaces (collection_id, role, generation, encoder, dim, fingerprint, created_at,"
        " updated_at) VALUES (:c, :role, 1, 'internvl-c', 16, 'g', :now, :now)",
        c=collection_id,
        role=role,
        now=NOW,
    )


def test_0003_defaults_constraints_and_round_trip(catalog_url: str) -> None:
    migrate.upgrade(catalog_url, "0002")
    kept = _add_collection(catalog_url, "kept")
    newest = _add_collection(catalog_url, "newest")
    _run(catalog_url, "DELETE FROM collections WHERE id = :i", i=newest)
    migrate.upgrade(catalog_url, "head")
    assert _run(catalog_url, "SELECT storage, generation FROM collections") == [("originals", 0)]
    with pytest.raises(IntegrityError):
        _run(catalog_url, "UPDATE collections SET storage = 'everything'")
    _add_space(catalog_url, kept, "shadow")
    _add_space(catalog_url, kept, "previous")
    for role in ("shadow", "current"):  # one shadow per collection; only known roles
        with pytest.raises(IntegrityError):
            _add_space(catalog_url, kept, role)
    migrate.downgrade(catalog_url, "0002")
    engine = create_engine(catalog_url)
    try:
        inspector = inspect(engine)
        assert "embedding_spaces" not in inspector.get_table_names()
        assert {"storage", "generation"}.isdisjoint(c["name"] for c in inspector.get_columns("collections"))
    finally:
        engine.dispose()
    migrate.upgrade(catalog_url, "head")
    assert _add_collection(catalog_url, "after") > newest  # the deleted newest id did not come back
