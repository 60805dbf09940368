"""Service settings: one pydantic-settings class, read from `INTERNVL_SEARCH_*` environment variables.

This is the only place in the project that reads the environment. `app` turns a `Settings` into plain
arguments for the layers below (`indexer`, `internvl_models`), which never look at env vars themselves.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "INTERNVL_SEARCH_"
API_KEY_SCOPES = ("read", "write", "admin")
_SECRET_FIELDS = {"api_keys", "database_url", "chat_api_key"}


def key_digest(key: str) -> bytes:
    """The SHA-256 digest of an API key: what a `scope:sha256:<hex>` entry holds in place of the key."""
    return hashlib.sha256(key.encode()).digest()


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
    compile_images: bool = Field(
        False, description="torch.compile the encoders' image towers: ~1.1x images/s, ~25 s at the first batch."
    )
    query_cache_entries: int = Field(
        4096, ge=0, le=10_000_000, description="Vectors of recent query texts kept, so a repeated text is not encoded."
    )
    search_threads: int = Field(
        8, ge=1, le=256, description="Searches that run at once (threads); more wait their turn, without a thread."
    )
    # --- server ---
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server listens on.")
    api_keys: str = Field(
        "",
        description="Comma-separated `scope:key` or `scope:sha256:<hex digest of the key>` entries, scope one of "
        "read/write/admin. Keys (here or in API_KEYS_FILE) are required when the host is not a loopback address.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys, one `scope:sha256:<hex>` (or `scope:key`) a line, `#` comments; "
        "`internvl-search keys new` prints such a line. Read at start.",
    )
    rate_limit_per_s: float = Field(
        0.0, ge=0, description="Requests per second each API key (or client address, without keys) may make; 0: off."
    )
    rate_limit_burst: int = Field(
        0, ge=0, description="Requests a caller may make at once above the rate; 0: twice the rate (at least 1)."
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
    url_allowed_networks: str = Field(
        "",
        description="Comma-separated networks (CIDR) URLs may reach although they are not public, e.g. an internal "
        "image store; narrower than ALLOW_PRIVATE_URLS.",
    )
    decode_timeout_s: float = Field(30.0, gt=0, le=3600, description="Time limit of decoding one image.")
    decode_workers: int = Field(4, ge=1, le=256, description="Threads that fetch and decode images while indexing.")
    reduce_jpeg_decode: bool = Field(
        True,
        description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale, still >= 2x the encoder's input: several times "
        "faster, vectors within ~1e-4 cosine of a full decode; false: every pixel, as the official evaluation.",
    )
    # --- vector indexes ---
    index_shards: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = Field(
        "auto", description="Indexes per collection: auto (by size) or a number from 1; more are searched in parallel."
    )
    index_on_disk: bool = Field(False, description="Save each index shard as its own file (see index_mmap).")
    index_mmap: bool = Field(False, description="Memory-map on-disk index shards instead of reading them at start-up.")
    # --- switching encoders ---
    migrate_max_regression: float = Field(
        0.01, ge=0, le=1, description="A gated migration refuses to switch when the new encoder loses more than this."
    )
    # --- logging ---
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["kv", "json"] = Field("kv", description="Log line format: key=value or JSON.")

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: str) -> str:
        parse_key_entries(value.split(","))
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _check_api_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_key_file(value)
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

    @field_validator("url_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        for network in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an IP network (e.g. 10.1.0.0/16 or fd00::/8)") from None
        return value

    @model_validator(mode="after")
    def _keys_required_off_loopback(self) -> Settings:
        # An unauthenticated service reachable from other machines would let anyone write to the index.
        if not _is_loopback(self.host) and not self.api_key_entries():
            raise ValueError(
                f"host {self.host!r} is not a loopback address, so {ENV_PREFIX}API_KEYS must be set "
                "(e.g. 'read:<key>,write:<key>')"
            )
        return self

    # --- derived values ---
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def api_key_pairs(self) -> list[tuple[str, str]]:
        """(scope, key or "sha256:<hex>") of each entry of API_KEYS, as written."""
        return parse_key_entries(self.api_keys.split(","))

    def api_key_entries(self) -> list[tuple[str, str]]:
        """(scope, key or "sha256:<hex>") of every configured key: API_KEYS, then API_KEYS_FILE."""
        from_file = _read_key_file(self.api_keys_file) if self.api_keys_file is not None else []
        return self.api_key_pairs() + from_file

    def url_allowed_network_list(self) -> list[str]:
        return [part.strip() for part in self.url_allowed_networks.split(",") if part.strip()]

    def allowed_root_paths(self) -> list[Path]:
        return [Path(p.strip()) for p in self.allowed_roots.split(",") if p.strip()]

    def public_dict(self) -> dict[str, object]:
        """Every setting with secrets masked, for `config show` and logs."""
        values = self.model_dump(mode="json")
        values["api_keys"] = ",".join(f"{scope}:***" for scope, _ in self.api_key_pairs())
        values["api_keys_file"] = None if self.api_keys_file is None else str(self.api_keys_file)
        values["chat_api_key"] = "***" if self.chat_api_key else ""
        values["database_url"] = self.resolved_database_url()
        return values


def parse_key_entries(entries: Iterable[str]) -> list[tuple[str, str]]:
    """(scope, secret) per non-empty entry `scope:key` or `scope:sha256:<64 hex digits>`; ValueError otherwise.
    The message never contains a key."""
    pairs = []
    for entry in filter(None, (part.strip() for part in entries)):
        scope, sep, secret = entry.partition(":")
        if not sep or scope not in API_KEY_SCOPES:
            raise ValueError(f"each entry must be `scope:key` or `scope:sha256:<hex>` with scope in {API_KEY_SCOPES}")
        if secret.startswith("sha256:"):
            digest = secret.removeprefix("sha256:")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError("a hashed key must be `sha256:` followed by 64 hexadecimal digits")
            secret = "sha256:" + digest.lower()
        elif len(secret) < 16:
            raise ValueError("keys must be at least 16 characters long")
        pairs.append((scope, secret))
    return pairs


def _read_key_file(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the API keys file {str(path)!r}: {exc}") from None
    try:
        return parse_key_entries(line.split("#", 1)[0] for line in lines)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


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
