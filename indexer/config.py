"""`EngineConfig`: every knob of the engine as plain typed values.

`app` builds one from its `Settings` (the only place that reads the environment); tests build one directly. The
engine never looks anywhere else for configuration.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import InvalidInput

if TYPE_CHECKING:
    from internvl_models import Encoder


@dataclass(frozen=True)
class EngineConfig:
    """Where the engine keeps its data, which encoder new collections get, and the ingestion limits."""

    data_dir: Path
    # None: a SQLite file `catalog.db` in `data_dir`.
    database_url: str | None = None
    # --- encoders ---
    encoder: str = "internvl-c"
    encoder_checkpoint: str | None = None
    device: str = "auto"
    dtype: str | None = None  # None / "auto": bfloat16 on CUDA, float32 on CPU
    image_batch_size: int = 32
    text_batch_size: int = 128
    compile_images: bool = False  # torch.compile the encoders' image towers (internvl_models.Encoder)
    query_cache_entries: int = 4096  # vectors of recent query texts kept (indexer/query_cache.py); 0: none
    # --- ingestion sources ---
    # Server-side paths are refused unless they resolve (symlinks followed) inside one of these directories.
    allowed_roots: tuple[Path, ...] = ()
    # Off by default: a URL naming a private, loopback or metadata address is how a caller reaches the
    # service's own network (SSRF). Turn on only where every caller is trusted.
    allow_private_urls: bool = False
    url_connect_timeout_s: float = 5.0
    url_read_timeout_s: float = 20.0
    # Bounds the whole download, so a server trickling one byte per read timeout cannot hold a worker forever.
    url_total_timeout_s: float = 60.0
    url_max_redirects: int = 5
    # Networks (CIDR) URLs may reach even though they are not public, e.g. an internal image store; everything
    # else non-public stays refused. Narrower than allow_private_urls, which opens every address.
    url_allowed_networks: tuple[str, ...] = ()
    # Largest file, download or upload read into memory for one image.
    max_source_bytes: int = 50 * 2**20
    # --- decoding ---
    # Checked from the header before any pixel is decoded (a 100 KB PNG can declare 10^10 pixels).
    max_image_pixels: int = 64_000_000
    max_frames: int = 10_000
    # Wall-clock bound of one image's decode (checked as Pillow reads its input, and once more at the end).
    decode_timeout_s: float = 30.0
    decode_workers: int = 4
    # Large JPEGs decoded at 1/2, 1/4 or 1/8 scale for the encoders, still >= 2x their input (reduce_jpeg_decode in
    # internvl_models/transforms.py): several times faster, vectors within ~1e-4 cosine of a full decode. Off: every
    # pixel decoded, as the official evaluation does.
    reduce_jpeg_decode: bool = True
    # --- writing ---
    # How often (seconds) a running job persists its vector index; the catalog and the embedding shards are
    # durable at every batch, and start-up reconciliation repairs an index that is older than them.
    index_save_interval_s: float = 30.0
    default_index_kind: str = "auto"
    # Indexes per collection: "auto" (by size: IVF kinds from 20M vectors, flat one per GPU) or a number; more than
    # one is a ShardedStore searched shard by shard in parallel (vector_store/sharded.py).
    index_shards: int | str = "auto"
    # Save each shard's index as a file of its own, which `index_mmap` maps instead of reading at start-up
    # (collections larger than RAM; the page cache keeps what searches touch).
    index_on_disk: bool = False
    index_mmap: bool = False
    store_originals: bool = True  # the default storage policy of new collections: originals, or none
    job_workers: int = 2
    # --- switching encoders ---
    # A migration with evaluation data refuses to switch when the new encoder loses more than this on a gate metric.
    migrate_max_regression: float = 0.01

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        object.__setattr__(self, "allowed_roots", tuple(Path(p) for p in self.allowed_roots))
        object.__setattr__(self, "url_allowed_networks", tuple(str(n) for n in self.url_allowed_networks))
        if self.dtype == "auto":
            object.__setattr__(self, "dtype", None)
        for name in ("image_batch_size", "text_batch_size", "decode_workers", "max_source_bytes", "job_workers"):
            if int(getattr(self, name)) < 1:
                raise InvalidInput(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.query_cache_entries) < 0:
            raise InvalidInput(f"EngineConfig.query_cache_entries must be >= 0, got {self.query_cache_entries!r}")
        if self.max_image_pixels < 1 or self.max_frames < 1 or self.url_max_redirects < 0 or self.decode_timeout_s <= 0:
            raise InvalidInput("EngineConfig limits must be positive")
        if self.index_shards != "auto":
            from indexer.vector_store import check_shards

            check_shards(self.index_shards)
        for network in self.url_allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise InvalidInput(f"allowed network {network!r} is not an IP network (e.g. 10.1.0.0/16)") from None
        for root in self.allowed_roots:
            if not root.is_absolute():
                raise InvalidInput(f"allowed root {str(root)!r} is not an absolute path")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    def jpeg_reduce_for(self, encoder: Encoder) -> int | None:
        """`decode_image`'s `reduce_for` for an image `encoder` will embed: its input size, None when turned off."""
        return encoder.info.image_size if self.reduce_jpeg_decode else None

    def with_roots(self, *roots: Path) -> EngineConfig:
        """A copy that also allows `roots` (the CLI allows the folder it was pointed at)."""
        extra = tuple(Path(r).resolve() for r in roots)
        return replace(self, allowed_roots=tuple(dict.fromkeys((*self.allowed_roots, *extra))))
