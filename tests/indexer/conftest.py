"""Catalog fixtures: a session factory on a database migrated to head (engines: see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import migrate
from indexer.catalog.db import make_engine, make_sessionmaker


@pytest.fixture
def sessions(catalog_url: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on a database migrated to head."""
    migrate.upgrade(catalog_url)
    engine = make_engine(catalog_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()
