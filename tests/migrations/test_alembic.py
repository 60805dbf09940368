"""Alembic migrations on real SQLite and PostgreSQL: up, down, no drift from the models, and the start-up check."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text

from indexer.catalog import migrate
from indexer.catalog.db import check_schema_current, make_engine
from indexer.catalog.tables import Base
from indexer.errors import SchemaNotCurrent

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {"collections", "images", "jobs", "job_items"}


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def drift(url: str, metadata: MetaData) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


def test_upgrade_to_head_and_down_to_base(catalog_url: str) -> None:
    assert migrate.current_revision(catalog_url) is None
    migrate.upgrade(catalog_url)
    assert migrate.current_revision(catalog_url) == ",".join(migrate.head_revisions())
    assert TABLES <= table_names(catalog_url)
    migrate.downgrade(catalog_url, "base")
    assert migrate.current_revision(catalog_url) is None
    assert not (TABLES & table_names(catalog_url))
    migrate.upgrade(catalog_url, "head")  # and back up again from base
    assert TABLES <= table_names(catalog_url)


def test_models_match_migrations(catalog_url: str) -> None:
    """Autogenerate finds nothing to do: the migrated schema and tables.py agree, on both engines."""
    migrate.upgrade(catalog_url)
    assert drift(catalog_url, Base.metadata) == []


def test_drift_check_sees_a_difference(catalog_url: str) -> None:
    """The no-drift test is not vacuous: a model column that no migration creates is reported."""
    migrate.upgrade(catalog_url)
    changed = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(changed)
    changed.tables["images"].append_column(Column("rating", Integer, nullable=True))
    assert [d[0] for d in drift(catalog_url, changed)] == ["add_column"]


def test_check_schema_current(catalog_url: str) -> None:
    engine = make_engine(catalog_url)
    try:
        with pytest.raises(SchemaNotCurrent) as info:
            check_schema_current(engine)
        message = str(info.value)
        assert "database schema is at revision none" in message
        assert f"code expects {migrate.head_revisions()[0]}" in message
        assert "run `internvl-search db upgrade`" in message
        migrate.upgrade(catalog_url)
        check_schema_current(engine)
        migrate.downgrade(catalog_url, "base")
        with pytest.raises(SchemaNotCurrent, match="internvl-search db upgrade"):
            check_schema_current(engine)
    finally:
        engine.dispose()


def test_scripts_are_found_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert migrate.migrations_dir() == REPO_ROOT / "migrations"
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    migrate.upgrade(url)
    assert TABLES <= table_names(url)


def test_alembic_command_line_with_repo_ini(tmp_path: Path) -> None:
    """`alembic -x url=...` from the repository root uses alembic.ini and migrations/env.py."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert migrate.current_revision(url) == migrate.head_revisions()[0]


def test_offline_sql(capsys: pytest.CaptureFixture[str]) -> None:
    """`upgrade --sql` renders the DDL without a database (for DBAs who apply migrations by hand)."""
    config = migrate.alembic_config("postgresql+psycopg://nobody@localhost/none")
    command.upgrade(config, "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE images" in sql and "JSONB" in sql and "ON DELETE CASCADE" in sql


def _insert_collection(url: str, name: str) -> int:
    """A collections row as revision 0001 knew it (no checkpoint column)."""
    engine = create_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO collections (name, encoder, dim, fingerprint, index_kind, index_version, created_at,"
                    " updated_at) VALUES (:name, 'internvl-c', 8, 'f', 'auto', 0, :now, :now)"
                ),
                {"name": name, "now": now},
            )
            return int(connection.execute(text("SELECT id FROM collections WHERE name = :n"), {"n": name}).scalar())
    finally:
        engine.dispose()


def _checkpoints(url: str) -> dict[str, str | None]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT name, checkpoint FROM collections")).all())
    finally:
        engine.dispose()


def test_0002_moves_checkpoints_between_files_and_catalog(catalog_url: str, tmp_path: Path) -> None:
    """Upgrading with the data dir copies each legacy collection.json checkpoint into the new column; downgrading
    writes it back to the file; collections without one (the encoder's default weights) stay NULL."""
    data_dir = tmp_path / "data"
    migrate.upgrade(catalog_url, "0001")
    legacy = _insert_collection(catalog_url, "legacy")
    default = _insert_collection(catalog_url, "default")
    broken = _insert_collection(catalog_url, "broken")
    info = {i: data_dir / "collections" / str(i) / "collection.json" for i in (legacy, default, broken)}
    for path in info.values():
        path.parent.mkdir(parents=True)
    info[legacy].write_text(json.dumps({"checkpoint": "/models/internvl-c", "encoder": "internvl-c"}))
    info[default].write_text(json.dumps({"checkpoint": None, "encoder": "internvl-c"}))
    info[broken].write_text("{not json")

    migrate.upgrade(catalog_url, "head", data_dir=data_dir)
    assert _checkpoints(catalog_url) == {"legacy": "/models/internvl-c", "default": None, "broken": None}
    assert drift(catalog_url, Base.metadata) == []

    info[legacy].unlink()  # a later version no longer writes the file: the downgrade must recreate it
    migrate.downgrade(catalog_url, "0001", data_dir=data_dir)
    assert json.loads(info[legacy].read_text()) == {"checkpoint": "/models/internvl-c"}
    assert json.loads(info[default].read_text())["checkpoint"] is None
    assert "checkpoint" not in {c["name"] for c in _columns(catalog_url, "collections")}

    migrate.upgrade(catalog_url, "head")  # without a data dir: the column comes, the engine backfills it later
    assert _checkpoints(catalog_url) == {"legacy": None, "default": None, "broken": None}


def _columns(url: str, table: str) -> list[dict]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_columns(table)
    finally:
        engine.dispose()
