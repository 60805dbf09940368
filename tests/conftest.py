"""Shared fixtures: the read-only reference folder and a clean settings environment."""

from __future__ import annotations

from pathlib import Path

import pytest

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
