"""The ingestion pipeline: ledger -> fetch/decode (thread pool) -> embed -> write, timed per stage.

The ledger is the plan: pending items are read in position order; a stop request (cancel, shutdown) is honoured
between batches, leaving the rest pending for a resumed run. Originals are stored as items are decoded, ahead of
their batch's commit; whatever a stopped, cancelled or failed run stored for items it never committed is deleted
when the run ends (a resumed run stores them again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.config import EngineConfig
from indexer.live import LiveCollection
from indexer.pipeline.decode import ItemPreparer
from indexer.pipeline.embed import embed_batch
from indexer.pipeline.flow import ItemSpec, Prepared, Settled, StageClock, ordered_map
from indexer.pipeline.sources import Fetcher
from indexer.pipeline.write import BatchResult, BatchWriter
from indexer.storage import OriginalStore, reduced_copy
from internvl_models import Encoder

# Ledger rows per query; settled items (failures, duplicates) that flush a batch early, so progress shows.
LEDGER_PAGE = 512
SETTLED_FLUSH = 256

log = logging.getLogger("internvl_search.pipeline")


@dataclass
class PipelineRun:
    """Everything one run of a job needs; `should_stop` is polled between batches."""

    job_id: int
    config: EngineConfig
    sessions: sessionmaker[Session]
    live: LiveCollection
    encoder: Encoder
    fetcher: Fetcher
    should_stop: Callable[[], bool]
    progress: Callable[[BatchResult], None]


def run_pipeline(run: PipelineRun) -> tuple[StageClock, bool]:
    """Process the job's pending items; returns the stage times and whether every item was reached."""
    clock, config = StageClock(), run.config
    kept = _kept_files(run)
    preparer = ItemPreparer(
        run.fetcher.fetch,
        lambda sha: _find_indexed(run, sha),
        run.encoder.preprocess_image,
        kept.put if kept is not None else None,
        max_pixels=config.max_image_pixels,
        max_frames=config.max_frames,
        clock=clock,
        timeout_s=config.decode_timeout_s,
        reduce_for=config.jpeg_reduce_for(run.encoder),
    )
    writer = BatchWriter(run.sessions, run.live, run.live.embeddings(), run.job_id, clock)
    batch, workers = config.image_batch_size, config.decode_workers
    # Two batches in flight keep the encoder fed while bounding the decoded pixels held in memory.
    results = ordered_map(preparer, _ledger(run), workers=workers, window=max(2 * batch, 4 * workers), clock=clock)
    try:
        for prepared, settled in _batches(results, batch):
            if run.should_stop():
                return clock, False  # the decodes in flight are cancelled below; their items stay pending
            vectors = embed_batch(run.encoder, prepared, clock)
            run.progress(writer.write(prepared, vectors, settled))
            if kept is not None:
                kept.committed(item.sha256 for item in prepared)
            run.live.save_if_due(config.index_save_interval_s)
        return clock, True
    finally:
        results.close()  # cancels queued decodes and waits for running ones, so no original is stored after this
        if kept is not None:
            kept.sweep(run.sessions, run.live.id)


def _kept_files(run: PipelineRun) -> UncommittedOriginals | None:
    """What the collection's storage policy keeps of each image: the original, a reduced copy, or nothing."""
    if run.live.storage == "none":
        return None
    return UncommittedOriginals(run.live.files.originals, reduced_copy if run.live.storage == "thumbnails" else None)


class UncommittedOriginals:
    """Stores originals (or what `transform` makes of them) for the decode threads, and remembers those whose batch
    has not been committed yet."""

    def __init__(self, store: OriginalStore, transform: Callable[[bytes], bytes] | None = None) -> None:
        self.store = store
        self.transform = transform
        self._shas: set[str] = set()
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        # Filed under the original's hash even when reduced: the catalog row and dedup know only that one.
        self.store.put(sha256, data if self.transform is None else self.transform(data))
        with self._lock:
            self._shas.add(sha256)

    def committed(self, shas: Iterable[str]) -> None:
        with self._lock:
            self._shas.difference_update(shas)

    def sweep(self, sessions: sessionmaker[Session], collection_id: int) -> int:
        """Delete the remembered originals no image of the collection refers to; returns how many.

        Call it with the collection's writer lock held and no decode running: then nothing else can be about to
        commit a row for one of them."""
        with self._lock:
            shas, self._shas = self._shas, set()
        if not shas:
            return 0
        try:
            with session_scope(sessions) as session:
                orphans = shas - repo.shas_in_use(session, collection_id, shas)
            for sha in orphans:
                self.store.delete(sha)
        except Exception:  # leftover files cost disk space only; never hide the run's own outcome behind this
            log.exception("could not sweep the originals of uncommitted items", extra={"collection": collection_id})
            return 0
        return len(orphans)


def _find_indexed(run: PipelineRun, sha: str) -> int | None:
    with session_scope(run.sessions) as session:
        return repo.indexed_image_with_sha(session, run.live.id, sha)


def _ledger(run: PipelineRun) -> Iterator[tuple[int, ItemSpec]]:
    after = -1
    while True:
        with session_scope(run.sessions) as session:
            page = repo.pending_items_after(session, run.job_id, after, LEDGER_PAGE)
        if not page:
            return
        for position, source in page:
            yield position, ItemSpec.from_source(source)
        after = page[-1][0]


def _batches(results: Iterator[Prepared | Settled], size: int) -> Iterator[tuple[list[Prepared], list[Settled]]]:
    prepared: list[Prepared] = []
    settled: list[Settled] = []
    for result in results:
        (prepared if isinstance(result, Prepared) else settled).append(result)
        if len(prepared) >= size or len(settled) >= SETTLED_FLUSH:
            yield prepared, settled
            prepared, settled = [], []
    if prepared or settled:
        yield prepared, settled
