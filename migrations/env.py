"""Alembic environment for the catalog.

The URL comes from, in order: `config.attributes["url"]` (set by indexer.catalog.migrate), `-x url=...` on the
alembic command line, then `sqlalchemy.url` in the ini file. SQLite runs in batch mode because it cannot ALTER most
things in place; batch mode recreates the table instead.
"""

import logging.config

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from indexer.catalog.tables import Base

config = context.config
target_metadata = Base.metadata

# Only the alembic command line has an ini file; the Python API must not reset the host application's logging.
if config.config_file_name is not None:
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError("no database URL: run `internvl-search db upgrade`, or pass `alembic -x url=...`")
    return url


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade --sql`) instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    # A plain engine, not indexer.catalog.db.make_engine: that one turns SQLite foreign keys on, and batch mode's
    # "copy table, drop old table" would then cascade-delete every child row.
    engine = create_engine(_database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
