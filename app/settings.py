"""Service settings: one pydantic-settings class, read from `INTERNVL_SEARCH_*` environment variables.

This is the only place in the project that reads the environment. `app` turns a `Settings` into plain
arguments for the layers below (`indexer`, `internvl_models`), which never look at env vars themselves.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "INTERNVL_SEARCH_"
API_KEY_SCOPES = ("read", "write", "admin")
_SECRET_FIELDS = {"api_keys", "database_url", "chat_api_key"}


class SettingsError(Exception):
    """An invalid setting; the message is one line that names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # --- storage ---
    data_dir: Path = Field(Path("data"), description="Directory for the catalog, indexes, embeddings and images.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL of the catalog; default: a SQLite file `catalog.db` in the data dir."
    )
    # --- models ---
    encoder: str = Field("internvl-c", description="Default encoder of new collections (registry name).")
    encoder_checkpoint: str | None = Field(
        None, description="Hub id or local directory of the encoder weights; default: the embedded shapes-world model."
    )
    chat_model: str | None = Field(
        None,
        description="Chat model for rerank, /v1/ask and /v1/chat/completions: hub id or local directory (default: "
        "the shipped shapes-world chat model, else OpenGVLab/InternVL2_5-1B); with CHAT_URL, the remote model name "
        "(default: the first one the server lists).",
    )
    chat_url: str | None = Field(
        None, description="OpenAI-compatible server (base URL ending in /v1) used for chat instead of a local model."
    )
    chat_api_key: str = Field("", description="Bearer key sent to the CHAT_URL server.")
    chat_device: Literal["auto", "cpu", "cuda"] | None = Field(
        None, description="Where the chat model runs (default: DEVICE)."
    )
    chat_timeout_s: float = Field(120.0, gt=0, description="Time limit of one call to the CHAT_URL server.")
    chat_threshold: float = Field(
        0.5, ge=0, le=1, description="/v1/ask answers 'not found' when no retrieved image reaches this P(yes)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where models run; auto = cuda when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Model dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    image_batch_size: int = Field(32, ge=1, le=4096, description="Images per encoder forward pass.")
    text_batch_size: int = Field(128, ge=1, le=16384, description="Texts per encoder forward pass.")
    # --- server ---
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server listens on.")
    api_keys: str = Field(
        "",
        description="Comma-separated `scope:key` pairs, scope one of read/write/admin. "
        "Required when the host is not a loopback address.",
    )
    # --- limits ---
    max_upload_bytes: int = Field(50 * 2**20, ge=1024, description="Largest accepted request body or upload.")
    max_image_pixels: int = Field(64_000_000, ge=1024, description="Largest decoded image (width x height).")
    max_text_chars: int = Field(2000, ge=1, description="Longest accepted query text.")
    max_k: int = Field(1000, ge=1, le=100_000, description="Largest number of results one search may ask for.")
    request_timeout_s: float = Field(60.0, gt=0, description="Time limit of one request.")
    allowed_roots: str = Field(
        "", description="Comma-separated directories from which server-side paths may be ingested (none by default)."
    )
    # --- URL sources and decoding (ingestion and query images) ---
    allow_private_urls: bool = Field(
        False,
        description="Let URLs reach private, loopback and link-local addresses (SSRF: only where every caller is "
        "trusted).",
    )
    url_connect_timeout_s: float = Field(5.0, gt=0, le=600, description="Time limit to connect to a URL's server.")
    url_read_timeout_s: float = Field(20.0, gt=0, le=3600, description="Longest wait for more bytes of a download.")
    url_total_timeout_s: float = Field(60.0, gt=0, le=3600, description="Time limit of a whole URL download.")
    url_max_redirects: int = Field(5, ge=0, le=30, description="Most redirects one URL may follow.")
    decode_workers: int = Field(4, ge=1, le=256, description="Threads that fetch and decode images while indexing.")
    # --- logging ---
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["kv", "json"] = Field("kv", description="Log line format: key=value or JSON.")

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        for entry in filter(None, (part.strip() for part in value.split(","))):
            scope, sep, key = entry.partition(":")
            if not sep or scope not in API_KEY_SCOPES:
                raise ValueError(f"each entry must be `scope:key` with scope in {API_KEY_SCOPES}")
            if len(key) < 16:
                raise ValueError("keys must be at least 16 characters long")
        return value

    @field_validator("chat_url")
    @classmethod
    def _check_chat_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. http://127.0.0.1:23333/v1")
        return value or None

    @field_validator("allowed_roots")
    @classmethod
    def _check_allowed_roots(cls, value: str) -> str:
        for root in filter(None, (part.strip() for part in value.split(","))):
            if not Path(root).is_absolute():
                raise ValueError(f"{root!r} is not an absolute path")
        return value

    @model_validator(mode="after")
    def _keys_required_off_loopback(self) -> Settings:
        # An unauthenticated service reachable from other machines would let anyone write to the index.
        if not _is_loopback(self.host) and not self.api_key_pairs():
            raise ValueError(
                f"host {self.host!r} is not a loopback address, so {ENV_PREFIX}API_KEYS must be set "
                "(e.g. 'read:<key>,write:<key>')"
            )
        return self

    # --- derived values ---
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def api_key_pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for entry in filter(None, (part.strip() for part in self.api_keys.split(","))):
            scope, _, key = entry.partition(":")
            pairs.append((scope, key))
        return pairs

    def allowed_root_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.allowed_roots.split(",") if p.strip()]

    def public_dict(self) -> dict[str, object]:
        """Every setting with secrets masked, for `config show` and logs."""
        values = self.model_dump(mode="json")
        values["api_keys"] = ",".join(f"{scope}:***" for scope, _ in self.api_key_pairs())
        values["chat_api_key"] = "***" if self.chat_api_key else ""
        values["database_url"] = self.resolved_database_url()
        return values


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (overrides win); invalid values raise a one-line SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        if not field:  # a cross-field rule; its message names the variables itself
            lines.append(f"invalid settings: {message}")
            continue
        got = "" if field in _SECRET_FIELDS else f" (got {err['input']!r})"  # never echo a key
        lines.append(f"invalid setting {ENV_PREFIX}{field.upper()}: {message}{got}")
    return "; ".join(lines)


@lru_cache
def get_settings() -> Settings:
    return load_settings()
