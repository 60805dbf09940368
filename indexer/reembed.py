"""Re-embedding a collection's indexed images into another embedding space, from what the collection kept.

An image's bytes come from its stored original (or the reduced copy a "thumbnails" collection keeps); when that is
not there (storage policy "none"), from its source again: a server path under the allowed roots or a URL, fetched
with the same checks as ingestion and accepted only if it still has the content hash it was indexed with. An
uploaded image with nothing stored cannot be re-embedded; that is reported per image, like any other failure.

Progress is durable by construction: each batch's vectors are appended to the space's embedding shards (fsync'd)
before the job's counters move, and a resumed run embeds only the indexed images that have no vector there yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from indexer.catalog import repo, spaces
from indexer.catalog.db import session_scope
from indexer.catalog.spaces import SpaceRow
from indexer.live import LiveCollection, settle_shards
from indexer.pipeline.decode import DecodeError, decode_image
from indexer.pipeline.flow import ItemSpec, StageClock, ordered_map
from indexer.pipeline.paths import SourceError
from indexer.pipeline.sources import Fetcher
from indexer.pipeline.urls import downloader_for
from indexer.vector_store import EmbeddingStore
from internvl_models import Encoder

if TYPE_CHECKING:
    from indexer.engine import Engine

PAGE = 512  # catalog rows read per query


@dataclass
class Outcome:
    """What one re-embedding pass did: vectors written, images that failed (id -> reason), and whether it went
    through every image (False: stopped early)."""

    embedded: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    complete: bool = True


@dataclass(frozen=True)
class _Ready:
    image_id: int
    pixels: torch.Tensor | None
    reason: str | None = None
    source: str | None = None


def space_embeddings(live: LiveCollection, space: SpaceRow) -> EmbeddingStore:
    return EmbeddingStore(live.files.embeddings_dir_of(space.generation), space.dim)


def refetch_spec(source: str | None) -> ItemSpec | None:
    """How to read an image's source again: a URL or an absolute server path; None for an upload."""
    if not source:
        return None
    if source.startswith(("http://", "https://")):
        return ItemSpec("url", source)
    if source.startswith("/"):
        return ItemSpec("path", source)
    return None


class ImageReader:
    """The bytes of an indexed image: what the collection stored, else its source fetched again."""

    def __init__(self, engine: Engine, live: LiveCollection, roots: Sequence[Path]) -> None:
        self.originals, self.storage = live.files.originals, live.storage
        self.downloader = downloader_for(engine.config, engine.resolver)  # ingestion's URL policy (SSRF checks)
        self.fetcher = Fetcher(list(roots), engine.config.max_source_bytes, self.downloader)

    def read(self, sha256: str, source: str | None) -> bytes:
        path = self.originals.path(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        spec = refetch_spec(source)
        if spec is None:
            raise SourceError(
                f"nothing of it is stored (storage policy {self.storage!r}) and its source {source!r} cannot be "
                "fetched again; delete the image or index it again"
            )
        data = self.fetcher.fetch(spec)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SourceError(f"its source {source!r} now holds other content than when it was indexed")
        return data

    def close(self) -> None:
        self.downloader.close()


def embed_missing(
    engine: Engine,
    live: LiveCollection,
    space: SpaceRow,
    encoder: Encoder,
    *,
    roots: Sequence[Path],
    job_id: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[], None] | None = None,
) -> Outcome:
    """Embed every indexed image that has no vector in `space` yet with `encoder`, appending to its shards."""
    store = space_embeddings(live, space)
    have, _ = store.load_all()
    with session_scope(engine.sessions) as session:
        indexed = repo.image_ids(session, live.id)
        todo = np.setdiff1d(indexed, have, assume_unique=True)
        if job_id is not None:
            spaces.set_job_counts(session, job_id, total=len(indexed), done=len(indexed) - len(todo))
    reader = ImageReader(engine, live, roots)
    outcome, batch_size = Outcome(), engine.config.image_batch_size
    workers = engine.config.decode_workers

    def prepare(image_id: int, sha256: str, source: str | None) -> _Ready:
        try:
            data = reader.read(sha256, source)
            image = decode_image(data, max_pixels=engine.config.max_image_pixels, max_frames=engine.config.max_frames,
                                 timeout_s=engine.config.decode_timeout_s,
                                 reduce_for=engine.config.jpeg_reduce_for(encoder))  # fmt: skip
            return _Ready(image_id, encoder.preprocess_image(image.image), source=source)
        except (SourceError, DecodeError) as exc:
            return _Ready(image_id, None, str(exc), source)

    ready = ordered_map(prepare, _rows(engine, todo), workers=workers, window=2 * batch_size, clock=StageClock())
    try:
        for batch in _batches(ready, batch_size):
            if should_stop():
                outcome.complete = False
                break
            _write_batch(engine, store, encoder, batch, job_id, outcome)
            if progress is not None:
                progress()
    finally:
        ready.close()
        reader.close()
    if outcome.complete:
        settle_shards(store, live.name)  # one shard per batch, as a job's
    return outcome


def _rows(engine: Engine, ids: np.ndarray) -> Iterator[tuple[int, str, str | None]]:
    for start in range(0, len(ids), PAGE):
        with session_scope(engine.sessions) as session:
            rows = [(im.id, im.sha256, im.source) for im in repo.get_images(session, ids[start : start + PAGE])]
        yield from rows


def _batches(ready: Iterator[_Ready], size: int) -> Iterator[list[_Ready]]:
    batch: list[_Ready] = []
    for item in ready:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(
    engine: Engine, store: EmbeddingStore, encoder: Encoder, batch: list[_Ready], job_id: int | None, outcome: Outcome
) -> None:
    good = [item for item in batch if item.pixels is not None]
    if good:
        vectors = encoder.encode_pixels(torch.stack([item.pixels for item in good]))
        # Durable before the counters say so; a kill in between only makes the resumed run count them again.
        store.append(np.array([item.image_id for item in good], dtype=np.int64), vectors)
        outcome.embedded += len(good)
    failed = [item for item in batch if item.pixels is None]
    outcome.failed.update({item.image_id: item.reason or "" for item in failed})
    if job_id is None:
        return
    ledger = [
        (item.image_id, ItemSpec("stored", f"image {item.image_id}", name=_display(item)).to_source(), item.reason)
        for item in failed
    ]
    with session_scope(engine.sessions) as session:
        spaces.add_job_progress(session, job_id, done=len(good), failures=ledger)


def _display(item: _Ready) -> str:
    return f"image {item.image_id}" + (f" ({item.source})" if item.source else "")
