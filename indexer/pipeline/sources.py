"""Sources: what a caller may ingest, how a job's inputs become ledger items, and how an item's bytes are read.

Callers pass `IngestItem`s (uploaded bytes, a server path, a URL, a manifest). Planning expands directories and
manifests into one `ItemSpec` per image, stored as JSON in the ledger row, so a resumed job reads exactly what the
original run would have. Reading an item's bytes re-checks everything (allowed roots, URL addresses) at that time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import InvalidInput
from indexer.pipeline.flow import ItemSpec
from indexer.pipeline.manifest import check_manifest_bytes, manifest_items
from indexer.pipeline.paths import SourceError, is_directory, read_file, walk_images
from indexer.pipeline.urls import Downloader

KINDS = ("upload", "path", "url", "manifest")


@dataclass(frozen=True)
class IngestItem:
    """One input of an ingestion request. Use the constructors: `upload`, `path`, `url`, `manifest`."""

    kind: str
    ref: str | None = None  # the path or URL
    data: bytes | None = None  # uploaded bytes (an image, or a manifest's text)
    filename: str | None = None
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def upload(cls, data: bytes, filename: str | None = None, metadata: Mapping[str, Any] | None = None) -> IngestItem:
        return cls("upload", data=bytes(data), filename=filename, metadata=metadata)

    @classmethod
    def path(cls, path: str | Path, metadata: Mapping[str, Any] | None = None) -> IngestItem:
        """A file or a directory (walked recursively for image files) on the server, under an allowed root."""
        return cls("path", ref=str(path), metadata=metadata)

    @classmethod
    def url(cls, url: str, metadata: Mapping[str, Any] | None = None) -> IngestItem:
        return cls("url", ref=url, metadata=metadata)

    @classmethod
    def manifest(
        cls, path: str | Path | None = None, *, data: bytes | None = None, filename: str | None = None
    ) -> IngestItem:
        """JSONL (one object per line) or CSV with a `path`/`url` column; every other column is metadata. Uploaded
        bytes that cannot be a manifest are refused here (InvalidInput); relative paths in them fail per item."""
        if (path is None) == (data is None):
            raise InvalidInput("a manifest is either a server path or uploaded bytes")
        if data is not None:
            check_manifest_bytes(data)
        return cls("manifest", ref=None if path is None else str(path), data=data, filename=filename)


def plan(specs: Sequence[ItemSpec], roots: Sequence[Path]) -> Iterator[ItemSpec]:
    """Expand directories and manifests into one spec per image; anything unreadable stays one item to fail."""
    for spec in specs:
        if spec.kind == "path" and (directory := is_directory(spec.ref, roots)) is not None:
            for path in walk_images(directory):
                yield ItemSpec("path", path, meta=spec.meta)
        elif spec.kind == "manifest":
            yield from manifest_items(spec, roots, plan)
        else:
            yield spec


class Fetcher:
    """Reads the bytes of one ledger item; shared by the decode threads of a job."""

    def __init__(self, roots: Sequence[Path], max_bytes: int, downloader: Downloader) -> None:
        self.roots, self.max_bytes, self.downloader = roots, max_bytes, downloader

    def fetch(self, spec: ItemSpec) -> bytes:
        if spec.kind == "path":
            return read_file(spec.ref, self.roots, self.max_bytes)
        if spec.kind == "url":
            return self.downloader.download(spec.ref)
        if spec.kind in ("upload", "stored"):
            # Engine-written files (staged uploads, stored originals), never a caller-chosen path.
            try:
                return Path(spec.ref).read_bytes()
            except OSError as exc:
                raise SourceError(f"stored file is gone: {exc.strerror}") from None
        raise SourceError(spec.reason or f"unknown source kind {spec.kind!r}")
