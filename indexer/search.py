"""Stage-1 retrieval: a query (text in any language, an image, or an indexed image) -> the collection's nearest
vectors, restricted by metadata filters, then joined with their catalog rows.

Filters are evaluated by the catalog (`repo.ids_matching_filter`) and handed to the vector store as `allowed_ids`,
so a restrictive filter still yields k results whenever at least k images match (the store escalates its search
effort rather than post-filtering a fixed candidate list).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image
from sqlalchemy.orm import Session

from indexer.catalog import reads
from indexer.catalog.filters import parse_filter
from indexer.config import EngineConfig
from indexer.errors import InvalidInput
from indexer.pipeline.decode import DecodeError, decode_image
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
    check_rank(k, offset)


def check_rank(k: int, offset: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer from 1 to {MAX_K}, got {k!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_K:
        raise InvalidInput(f"offset must be an integer from 0 to {MAX_K}, got {offset!r}")


def query_image(image: Image.Image | bytes, config: EngineConfig, reduce_for: int | None = None) -> Image.Image:
    """A query image as the encoder takes it, under the limits ingested images get: bytes decoded within the pixel,
    frame and time limits of `config` (8-bit RGB; a JPEG reduced for a model input of `reduce_for`, as ingestion
    does), a PIL image held to the pixel limit; InvalidInput otherwise."""
    if isinstance(image, bytes | bytearray | memoryview):
        limits = {"max_pixels": config.max_image_pixels, "max_frames": config.max_frames}
        try:
            return decode_image(bytes(image), **limits, timeout_s=config.decode_timeout_s, reduce_for=reduce_for).image
        except DecodeError as exc:
            raise InvalidInput(f"query image: {exc}") from None
    if not isinstance(image, Image.Image):
        raise InvalidInput(f"image must be a PIL image or bytes, got {type(image).__name__}")
    if image.width * image.height > config.max_image_pixels:
        raise InvalidInput(f"query image has more than {config.max_image_pixels:,} pixels")
    return image


def query_pixels(encoder: Encoder, image: Image.Image | bytes, config: EngineConfig) -> torch.Tensor:
    """(3, S, S) retrieval pixels of a query image (see `query_image`); a caller that batches the encoding with other
    queries' passes them to `encode_query_pixels` together."""
    return encoder.preprocess_image(query_image(image, config, config.jpeg_reduce_for(encoder)))


def encode_query_pixels(encoder: Encoder, pixels: list[torch.Tensor]) -> np.ndarray:
    """(n, dim) vectors of n query images' pixels, encoded in one pass."""
    return encoder.encode_pixels(torch.stack(pixels))


def image_query_vector(encoder: Encoder, image: Image.Image | bytes, config: EngineConfig) -> np.ndarray:
    """(1, dim) retrieval vector of a query image: the two steps above, for one image."""
    return encode_query_pixels(encoder, [query_pixels(encoder, image, config)])


@dataclass(frozen=True)
class NearestQuery:
    """What a search asks besides its vector: ranks offset..offset+k, within `filter`, at or above `min_score`,
    without the image `exclude` (the query image itself)."""

    k: int = 10
    offset: int = 0
    filter: Mapping[str, Any] | None = None
    min_score: float | None = None
    exclude: int | None = None

    def __post_init__(self) -> None:  # refused when made, before any work for its search (or its batch) is done
        check_rank(self.k, self.offset)
        check_filter(self.filter)

    @property
    def depth(self) -> int:
        """How many nearest vectors the store must return for this query."""
        return min(self.k + self.offset + (1 if self.exclude is not None else 0), MAX_K + 1)

    def ranked(self, ids: np.ndarray, scores: np.ndarray) -> list[tuple[int, float]]:
        """(id, score) pairs ranked offset..offset+k from one query's store result row, best first."""
        pairs = [
            (int(i), float(s))
            for i, s in zip(ids, scores)
            if i >= 0 and i != self.exclude and (self.min_score is None or s >= self.min_score)
        ]
        return pairs[self.offset : self.offset + self.k]


def nearest(
    store: VectorStore, queries: np.ndarray, wants: Sequence[NearestQuery], allowed: Sequence[np.ndarray | None]
) -> list[list[tuple[int, float]]]:
    """Each query's (id, score) pairs as its `NearestQuery` asks, `allowed` being its filter's ids (None: all).

    The unfiltered queries are searched in one call, at the depth the deepest of them needs (a deeper search is
    never worse for the others): an exact store scores a batch with one matrix product (FlatStore), a graph or an
    IVF index spreads it over its threads. A filtered query is searched alone, within its ids."""
    found: list[list[tuple[int, float]]] = [[] for _ in wants]
    plain = [i for i, ids in enumerate(allowed) if ids is None]
    for i, ids in enumerate(allowed):
        if ids is not None and len(ids):
            with one_omp_thread():
                result = store.search(queries[i : i + 1], wants[i].depth, allowed_ids=ids)
            found[i] = wants[i].ranked(result.ids[0], result.scores[0])
    if plain:
        # One query cannot use two threads well (see one_omp_thread); a batch spreads its queries over them.
        with one_omp_thread() if len(plain) == 1 else nullcontext():
            result = store.search(queries[plain], max(wants[i].depth for i in plain))
        for row, i in enumerate(plain):
            found[i] = wants[i].ranked(result.ids[row], result.scores[row])
    return found


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


def hydrate(session: Session, collection_id: int, ranked: Sequence[list[tuple[int, float]]]) -> list[list[Hit]]:
    """Catalog rows for each query's ranked ids, read at once; ids no longer indexed (deleted meanwhile) are dropped."""
    images = reads.image_hit_rows(session, list({i for pairs in ranked for i, _ in pairs}))
    return [_hits(images, collection_id, pairs) for pairs in ranked]


def _hits(images: Mapping[int, Any], collection_id: int, pairs: list[tuple[int, float]]) -> list[Hit]:
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
    """Refuse an invalid filter before any work is done for its search (a batched search must not fail its batch)."""
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidInput("filter must be a JSON object")
    parse_filter(filter)
