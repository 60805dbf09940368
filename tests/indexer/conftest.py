"""Catalog fixtures: a session factory on a database migrated to head (engines: see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
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


@pytest.fixture(scope="module")
def one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread for a module's small faiss builds: on a busy 2-core CI box OpenMP's spin-waiting threads
    fight each other and training gets ~10x slower than single-threaded."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
