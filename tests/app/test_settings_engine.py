"""Ingestion settings (URL policy and timeouts, decode workers and mode) travel from INTERNVL_SEARCH_* into the engine."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "indexer"))
from hostile import http_server, image_bytes, send_bytes  # noqa: E402

from app.cli import _engine  # noqa: E402
from app.settings import SettingsError, load_settings  # noqa: E402
from indexer import EngineConfig, InvalidInput  # noqa: E402
from indexer.vector_query import download  # noqa: E402

PASSED_THROUGH = (
    "allow_private_urls",
    "url_connect_timeout_s",
    "url_read_timeout_s",
    "url_total_timeout_s",
    "url_max_redirects",
    "decode_workers",
    "reduce_jpeg_decode",
)


def test_defaults_are_the_engine_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    engine_defaults = {f.name: f.default for f in fields(EngineConfig)}
    assert {name: getattr(settings, name) for name in PASSED_THROUGH} == {
        name: engine_defaults[name] for name in PASSED_THROUGH
    }


def test_environment_reaches_the_engine(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("INTERNVL_SEARCH_DATA_DIR", str(tmp_path / "data"))
    clean_env.setenv("INTERNVL_SEARCH_URL_CONNECT_TIMEOUT_S", "1.5")
    clean_env.setenv("INTERNVL_SEARCH_URL_READ_TIMEOUT_S", "2.5")
    clean_env.setenv("INTERNVL_SEARCH_URL_TOTAL_TIMEOUT_S", "7")
    clean_env.setenv("INTERNVL_SEARCH_URL_MAX_REDIRECTS", "0")
    clean_env.setenv("INTERNVL_SEARCH_DECODE_WORKERS", "3")
    clean_env.setenv("INTERNVL_SEARCH_REDUCE_JPEG_DECODE", "false")
    image = image_bytes("green", seed=4)
    with http_server({"/a.png": send_bytes(image)}) as base:
        with _engine(load_settings()) as engine:
            config = engine.config
            assert (config.url_connect_timeout_s, config.url_read_timeout_s, config.url_total_timeout_s) == (
                1.5,
                2.5,
                7.0,
            )
            assert (config.url_max_redirects, config.decode_workers, config.allow_private_urls) == (0, 3, False)
            assert config.reduce_jpeg_decode is False
            # The default refuses the loopback server (SSRF protection) ...
            with pytest.raises(InvalidInput, match="private URLs are disabled"):
                download(engine, f"{base}/a.png")
        clean_env.setenv("INTERNVL_SEARCH_ALLOW_PRIVATE_URLS", "true")
        with _engine(load_settings()) as engine:
            # ... and the setting lets it through.
            assert engine.config.allow_private_urls is True
            assert download(engine, f"{base}/a.png") == image


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ALLOW_PRIVATE_URLS", "perhaps"),
        ("URL_CONNECT_TIMEOUT_S", "0"),
        ("URL_READ_TIMEOUT_S", "-1"),
        ("URL_TOTAL_TIMEOUT_S", "soon"),
        ("URL_MAX_REDIRECTS", "-1"),
        ("DECODE_WORKERS", "0"),
    ],
)
def test_invalid_values_name_the_variable(clean_env: pytest.MonkeyPatch, variable: str, value: str) -> None:
    clean_env.setenv(f"INTERNVL_SEARCH_{variable}", value)
    with pytest.raises(SettingsError, match=f"INTERNVL_SEARCH_{variable}") as info:
        load_settings()
    assert "\n" not in str(info.value)
