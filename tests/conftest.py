"""Shared fixtures: the read-only reference folder, a clean settings environment, and catalog databases.

A PostgreSQL test gets its own schema (put first on the connection's search_path through the URL), created before
and dropped after the test, because other test runs may share the same server at the same time.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

import app  # noqa: F401  (before any test module loads faiss: it picks faiss's OpenBLAS kernels, app/openblas.py)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    """../shared (parity vectors, tokenizer, photos); tests that need it skip where it is absent (a fresh clone)."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} is absent (it exists in CI and on developer machines)")
    return SHARED


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No INTERNVL_SEARCH_* variable leaks from the developer's shell into a settings test."""
    import os

    for name in list(os.environ):
        if name.startswith("INTERNVL_SEARCH_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """URL of an empty database (no tables) on the parametrized engine."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    yield from postgres_schema_url()


def postgres_schema_url() -> Iterator[str]:
    base = os.environ.get("DATABASE_URL")
    if not base:
        pytest.skip("DATABASE_URL is not set; PostgreSQL catalog tests need a server")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, connect_args={"connect_timeout": 5})
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # any connection failure means "no server here", which is a skip
        admin.dispose()
        pytest.skip(f"PostgreSQL at DATABASE_URL is unreachable: {type(exc).__name__}: {exc}".splitlines()[0])
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
