"""Query inputs the HTTP layer receives in forms the engine does not take directly.

Query images given by base64, URL (SSRF-checked) or indexed id become bytes under the engine's limits, and
near-duplicate hits can be collapsed. The vector search itself is `Engine.search_vectors`.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from PIL import Image

from indexer.errors import InvalidInput
from indexer.pipeline.paths import SourceError
from indexer.pipeline.urls import downloader_for
from indexer.search import Hit, query_image

if TYPE_CHECKING:
    from indexer.engine import Engine
    from internvl_models import Encoder


def collapse_duplicates(hits: list[Hit], tolerance: float = 1e-4) -> list[Hit]:
    """Drop hits that look like copies of a better one: same pixel size and (nearly) the same score.

    Exact copies never reach here (ingestion deduplicates by content hash); this catches re-encodes and resaves,
    whose vectors, and therefore scores against any query, differ only in the last digits.
    """
    kept: list[Hit] = []
    for hit in hits:
        if any(abs(hit.score - k.score) <= tolerance and (hit.width, hit.height) == (k.width, k.height) for k in kept):
            continue
        kept.append(hit)
    return kept


def query_image_bytes(
    engine: Engine,
    *,
    image_base64: str | None = None,
    image_url: str | None = None,
    image_id: int | None = None,
    collection: str | None = None,
) -> bytes:
    """The bytes of a query image given inline (base64), by URL (SSRF-checked) or as an indexed image id."""
    given = [n for n, v in (("image_base64", image_base64), ("image_url", image_url), ("image_id", image_id)) if v]
    if len(given) != 1:
        raise InvalidInput(f"give exactly one of image_base64, image_url or image_id (got {given or 'none'})")
    if image_base64 is not None:
        return decode_base64(image_base64, engine.config.max_source_bytes)
    if image_url is not None:
        return download(engine, image_url)
    if collection is None:
        raise InvalidInput("image_id needs the collection it belongs to")
    return engine.image_path(collection, int(image_id)).read_bytes()


def decode_base64(text: str, max_bytes: int) -> bytes:
    if "," in text[:100] and text.startswith("data:"):  # a data: URL as browsers produce it
        text = text.split(",", 1)[1]
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise InvalidInput(f"image_base64 decodes to more than {max_bytes:,} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("image_base64 is not valid base64") from None


def download(engine: Engine, url: str) -> bytes:
    downloader = downloader_for(engine.config, engine.resolver)
    try:
        return downloader.download(url)
    except SourceError as exc:
        raise InvalidInput(f"image_url: {exc}") from None
    finally:
        downloader.close()


def decode_query_image(engine: Engine, data: bytes, encoder: Encoder | None = None) -> Image.Image:
    """8-bit RGB image from bytes, refused (InvalidInput) when it is not an image or exceeds the engine's limits;
    decoded for `encoder`'s input size where the engine's config allows (None: every pixel, e.g. for a chat model)."""
    return query_image(data, engine.config, engine.config.jpeg_reduce_for(encoder) if encoder else None)
