"""What the engine tells about a collection and an image: plain frozen records, detached from the catalog session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class CollectionInfo:
    id: int
    name: str
    encoder: str
    checkpoint: str | None
    dim: int
    fingerprint: str
    index_kind: str  # as configured ("auto" or a kind)
    store_kind: str  # what serves it now
    vectors: int
    images: dict[str, int]  # per status
    created_at: datetime | None
    storage: str = "originals"  # what is kept of each image: originals | thumbnails | none


@dataclass(frozen=True)
class ImageInfo:
    id: int
    collection: str
    sha256: str
    source: str | None
    width: int | None
    height: int | None
    format: str | None
    byte_size: int | None
    metadata: dict[str, Any]
    status: str
    created_at: datetime | None

    @classmethod
    def of(cls, image, collection: str) -> ImageInfo:  # noqa: ANN001 - tables.Image
        return cls(
            id=image.id,
            collection=collection,
            sha256=image.sha256,
            source=image.source,
            width=image.width,
            height=image.height,
            format=image.format,
            byte_size=image.byte_size,
            metadata=dict(image.meta or {}),
            status=image.status,
            created_at=image.created_at,
        )
