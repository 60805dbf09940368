from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.data_dir == Path("data")
    assert s.resolved_database_url() == f"sqlite:///{Path('data/catalog.db').resolve()}"
    assert s.device == "auto" and s.dtype == "auto"


def test_environment_is_read(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("INTERNVL_SEARCH_DATA_DIR", str(tmp_path))
    clean_env.setenv("INTERNVL_SEARCH_PORT", "9123")
    clean_env.setenv("INTERNVL_SEARCH_DEVICE", "cpu")
    s = load_settings()
    assert s.data_dir == tmp_path and s.port == 9123 and s.device == "cpu"
    assert s.resolved_database_url().endswith(f"{tmp_path}/catalog.db")


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PORT", "abc", "INTERNVL_SEARCH_PORT"),
        ("PORT", "70000", "INTERNVL_SEARCH_PORT"),
        ("DEVICE", "tpu", "INTERNVL_SEARCH_DEVICE"),
        ("DTYPE", "int8", "INTERNVL_SEARCH_DTYPE"),
        ("IMAGE_BATCH_SIZE", "0", "INTERNVL_SEARCH_IMAGE_BATCH_SIZE"),
        ("COMPILE_IMAGES", "maybe", "INTERNVL_SEARCH_COMPILE_IMAGES"),
        ("MAX_K", "-5", "INTERNVL_SEARCH_MAX_K"),
        ("LOG_FORMAT", "xml", "INTERNVL_SEARCH_LOG_FORMAT"),
        ("ALLOWED_ROOTS", "relative/dir", "INTERNVL_SEARCH_ALLOWED_ROOTS"),
        ("API_KEYS", "superuser:0123456789abcdef", "INTERNVL_SEARCH_API_KEYS"),
        ("API_KEYS", "read:short", "INTERNVL_SEARCH_API_KEYS"),
    ],
)
def test_invalid_values_fail_with_one_line_naming_the_variable(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    clean_env.setenv(f"INTERNVL_SEARCH_{variable}", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    if variable == "API_KEYS":
        assert value.split(":")[1] not in message, "a key must never be echoed back"


def test_compile_images_reaches_the_engine_config(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.cli import _engine

    clean_env.setenv("INTERNVL_SEARCH_DATA_DIR", str(tmp_path))
    clean_env.setenv("INTERNVL_SEARCH_COMPILE_IMAGES", "true")
    settings = load_settings()
    assert settings.compile_images is True
    engine = _engine(settings)
    try:
        assert engine.config.compile_images is True
    finally:
        engine.close()


def test_non_loopback_host_requires_api_keys(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INTERNVL_SEARCH_HOST", "0.0.0.0")
    with pytest.raises(SettingsError, match="INTERNVL_SEARCH_API_KEYS"):
        load_settings()
    clean_env.setenv("INTERNVL_SEARCH_API_KEYS", "read:0123456789abcdef0123,write:fedcba98765432100123")
    s = load_settings()
    assert s.api_key_pairs() == [("read", "0123456789abcdef0123"), ("write", "fedcba98765432100123")]


def test_public_dict_masks_keys(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("INTERNVL_SEARCH_API_KEYS", "admin:0123456789abcdef0123")
    shown = load_settings().public_dict()
    assert shown["api_keys"] == "admin:***"
    assert "0123456789abcdef0123" not in str(shown)
