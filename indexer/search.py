"""Stage-1 retrieval: a query (text in any language, an image, or an indexed image) -> the collection's nearest
vectors, restricted by metadata filters, then joined with their catalog rows.

Filters are evaluated by the catalog (`repo.ids_matching_filter`) and handed to the vector store as `allowed_ids`,
so a restrictive filter still yields k results whenever at least k images match (the store escalates its search
effort rather than post-filtering a fixed candidate list).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from indexer.catalog import reads
from indexer.errors import InvalidInput
from indexer.pipeline.decode import DECODE_TIMEOUT_S, DecodeError, decode_image
from indexer.vector_store import VectorStore
from internvl_models import Encoder

MAX_K = 10_000


@dataclass(frozen=True)
class Hit:
    """One search result: the image id, its inner-product score (cosine similarity), and its catalog fields."""

    id: int
    score: float
    source: str | None
    metadata: dict[str, Any]
    width: int | None
    height: int | None
    format: str | None
    sha256: str


def check_query(text: str | None, image: Any, image_id: int | None, k: int, offset: int) -> None:
    given = [name for name, value in (("text", text), ("image", image), ("image_id", image_id)) if value is not None]
    if len(given) != 1:
        raise InvalidInput(f"give exactly one of text, image or image_id (got {given or 'none'})")
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise InvalidInput("text must be a non-empty string")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_K:
        raise InvalidInput(f"offset must be an integer from 0 to {MAX_K}, got {offset!r}")


def image_query_vector(
    encoder: Encoder,
    image: Image.Image | bytes,
    *,
    max_pixels: int,
    max_frames: int = 1_000_000,
    timeout_s: float = DECODE_TIMEOUT_S,
) -> np.ndarray:
    """(1, dim) for a query image, decoded under the same limits as ingested images."""
    if isinstance(image, bytes | bytearray | memoryview):
        try:
            image = decode_image(bytes(image), max_pixels=max_pixels, max_frames=max_frames, timeout_s=timeout_s).image
        except DecodeError as exc:
            raise InvalidInput(f"query image: {exc}") from None
    elif not isinstance(image, Image.Image):
        raise InvalidInput(f"image must be a PIL image or bytes, got {type(image).__name__}")
    elif image.width * image.height > max_pixels:
        raise InvalidInput(f"query image has more than {max_pixels:,} pixels")
    return encoder.encode_pixels(encoder.preprocess_image(image).unsqueeze(0))


def text_query_vector(encoder: Encoder, text: str) -> np.ndarray:
    return encoder.encode_texts([text])


def nearest(
    store: VectorStore,
    query: np.ndarray,
    *,
    k: int,
    offset: int,
    allowed: np.ndarray | None,
    min_score: float | None,
    exclude: int | None = None,
) -> list[tuple[int, float]]:
    """(id, score) pairs ranked offset..offset+k, best first; `exclude` drops the query image itself."""
    if allowed is not None and not len(allowed):
        return []
    want = k + offset + (1 if exclude is not None else 0)
    with one_omp_thread():
        result = store.search(query, min(want, MAX_K + 1), allowed_ids=allowed)
    pairs = [
        (int(i), float(s))
        for i, s in zip(result.ids[0], result.scores[0])
        if i >= 0 and i != exclude and (min_score is None or s >= min_score)
    ]
    return pairs[offset : offset + k]


@contextmanager
def one_omp_thread() -> Iterator[None]:
    """Run FAISS single-threaded in this thread for the duration (OpenMP's thread count is per calling thread).

    A single query cannot use two threads well, and OpenMP's start-up and barrier cost dominates it: on a busy
    2-core machine an HNSW query took 11 ms p50 with 2 threads and 0.18 ms with one (bench/search.py).
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def hydrate(session: Session, collection_id: int, pairs: list[tuple[int, float]]) -> list[Hit]:
    """Catalog rows for the ranked ids; ids no longer indexed (deleted in the meantime) are dropped."""
    images = reads.image_hit_rows(session, [i for i, _ in pairs])
    hits = []
    for image_id, score in pairs:
        image = images.get(image_id)
        if image is None or image.collection_id != collection_id or image.status != "indexed":
            continue
        hits.append(
            Hit(
                image.id,
                score,
                image.source,
                dict(image.meta or {}),
                image.width,
                image.height,
                image.format,
                image.sha256,
            )
        )
    return hits


def check_filter(filter: Mapping[str, Any] | None) -> None:
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidInput("filter must be a JSON object")
