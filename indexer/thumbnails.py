"""Thumbnails of stored originals, made with PIL on first request and cached under the data dir."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps

from indexer.errors import InvalidInput
from internvl_models.transforms import reduce_jpeg_decode

if TYPE_CHECKING:
    from indexer.engine import Engine

SIZES = (64, 128, 256, 512)


def thumbnail_path(engine: Engine, collection: str, image_id: int, size: int = 256) -> Path:
    """A JPEG at most `size` pixels on its longer side; cached by content hash, so it is shared and never stale."""
    if size not in SIZES:
        raise InvalidInput(f"thumbnail size must be one of {SIZES}, got {size}")
    info = engine.get_image(collection, image_id)
    cache = engine.config.data_dir / "thumbnails" / info.sha256[:2] / f"{info.sha256}_{size}.jpg"
    if cache.is_file():
        return cache
    original = engine.image_path(collection, image_id)
    with Image.open(original) as image:
        image.seek(0)
        # The transpose decodes the image, too early for thumbnail()'s own reduced JPEG decode: ask for it here.
        reduce_jpeg_decode(image, size)
        thumb = ImageOps.exif_transpose(image).convert("RGB")
        thumb.thumbnail((size, size))
    cache.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:  # write then rename: a concurrent reader never sees half a file
        thumb.save(out, "JPEG", quality=85)
    os.replace(tmp, cache)
    return cache
