"""Engine and session construction for the catalog, and the start-up schema check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.migrate import current_revisions, head_revisions
from indexer.errors import SchemaNotCurrent

UPGRADE_COMMAND = "internvl-search db upgrade"


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> Engine:
    """Create the SQLAlchemy engine for `url` (SQLite file/memory or PostgreSQL).

    SQLite connections get WAL (readers never block the single writer, so search keeps working during
    ingestion), enforced foreign keys (off by default in SQLite, and the ON DELETE CASCADE of images and jobs
    relies on them) and a busy timeout (a second writer waits instead of failing at once with "database is
    locked").
    """
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    # Pre-ping only for servers: a pooled PostgreSQL connection can die under us, a SQLite file cannot.
    engine = create_engine(url, echo=echo, pool_pre_ping=not is_sqlite)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout_ms))
    return engine


def _sqlite_pragmas(busy_timeout_ms: int):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        finally:
            cursor.close()

    return on_connect


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Session factory; `expire_on_commit=False` so rows returned by the repo stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends normally, roll back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def check_schema_current(engine: Engine) -> None:
    """Raise `SchemaNotCurrent` unless the database is at the revision this code expects.

    Called at start-up so a stale database fails with the command that fixes it, rather than with a missing
    column in the middle of a request.
    """
    expected = head_revisions()
    with engine.connect() as connection:
        current = current_revisions(connection)
    if current == expected:
        return
    at = ", ".join(current) if current else "none (an empty or un-migrated database)"
    raise SchemaNotCurrent(
        f"database schema is at revision {at}, code expects {', '.join(expected)}: run `{UPGRADE_COMMAND}`",
        current=current,
        expected=expected,
    )
