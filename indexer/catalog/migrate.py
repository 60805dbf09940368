"""Python API over the Alembic migrations; `internvl-search db upgrade` and the tests call these.

The migration scripts are found next to the package (`<repo>/migrations` for an editable install, the installed
top-level `migrations` package otherwise), never relative to the current directory, so the commands work from
anywhere. The database URL travels in `Config.attributes` rather than the ini options: configparser would read the
`%` of a URL-encoded password or option as interpolation.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from indexer.errors import IndexerError


def migrations_dir() -> Path:
    """The directory holding `env.py` and `versions/`."""
    beside_package = Path(__file__).resolve().parents[2] / "migrations"
    if (beside_package / "env.py").is_file():
        return beside_package
    spec = importlib.util.find_spec("migrations")
    if spec is not None and spec.origin is not None:
        installed = Path(spec.origin).parent
        if (installed / "env.py").is_file():
            return installed
    raise IndexerError(f"Alembic scripts not found (looked in {beside_package} and the `migrations` package)")


def alembic_config(url: str | None = None, data_dir: str | os.PathLike[str] | None = None) -> Config:
    """An Alembic `Config` pointing at our scripts, with `url` (if given) for `migrations/env.py` to use.

    `data_dir` is the service's data directory, for revisions that move data between files and the catalog
    (0002: the collections' checkpoints)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        config.attributes["url"] = url
    if data_dir is not None:
        config.attributes["data_dir"] = str(data_dir)
    return config


def upgrade(url: str, revision: str = "head", *, data_dir: str | os.PathLike[str] | None = None) -> None:
    """Migrate the database at `url` up to `revision` (default: the newest)."""
    command.upgrade(alembic_config(url, data_dir), revision)


def downgrade(url: str, revision: str, *, data_dir: str | os.PathLike[str] | None = None) -> None:
    """Migrate the database at `url` down to `revision` (`"base"` removes every table)."""
    command.downgrade(alembic_config(url, data_dir), revision)


def head_revisions() -> tuple[str, ...]:
    """The revision(s) this code expects the database to be at."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def current_revisions(connection) -> tuple[str, ...]:
    """Revisions stamped in the database behind an open SQLAlchemy connection (empty for an un-migrated one)."""
    return tuple(sorted(MigrationContext.configure(connection).get_current_heads()))


def current_revision(url: str) -> str | None:
    """The database's revision, or None when it has never been migrated."""
    # NullPool: a one-off inspection must not leave a pooled connection (or a SQLite file handle) behind.
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            revisions = current_revisions(connection)
    finally:
        engine.dispose()
    return ",".join(revisions) if revisions else None
