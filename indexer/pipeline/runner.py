"""The ingestion pipeline: ledger -> fetch/decode (thread pool) -> embed -> write, timed per stage.

The ledger is the plan: pending items are read in position order; a stop request (cancel, shutdown) is honoured
between batches, leaving the rest pending for a resumed run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog.db import session_scope
from indexer.config import EngineConfig
from indexer.live import LiveCollection
from indexer.pipeline.decode import ItemPreparer
from indexer.pipeline.embed import embed_batch
from indexer.pipeline.flow import ItemSpec, Prepared, Settled, StageClock, ordered_map
from indexer.pipeline.sources import Fetcher
from indexer.pipeline.write import BatchResult, BatchWriter
from indexer.queries import indexed_image_with_sha, pending_items_after
from internvl_models import Encoder

# Ledger rows per query; settled items (failures, duplicates) that flush a batch early, so progress shows.
LEDGER_PAGE = 512
SETTLED_FLUSH = 256


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
    preparer = ItemPreparer(
        run.fetcher.fetch,
        lambda sha: _find_indexed(run, sha),
        run.encoder.preprocess_image,
        run.live.files.originals.put if config.store_originals else None,
        max_pixels=config.max_image_pixels,
        max_frames=config.max_frames,
        clock=clock,
    )
    writer = BatchWriter(run.sessions, run.live, run.live.embeddings(), run.job_id, clock)
    batch, workers = config.image_batch_size, config.decode_workers
    # Two batches in flight keep the encoder fed while bounding the decoded pixels held in memory.
    results = ordered_map(preparer, _ledger(run), workers=workers, window=max(2 * batch, 4 * workers), clock=clock)
    for prepared, settled in _batches(results, batch):
        if run.should_stop():
            results.close()  # cancels the decodes in flight; their items stay pending
            return clock, False
        vectors = embed_batch(run.encoder, prepared, clock)
        run.progress(writer.write(prepared, vectors, settled))
        run.live.save_if_due(config.index_save_interval_s)
    return clock, True


def _find_indexed(run: PipelineRun, sha: str) -> int | None:
    with session_scope(run.sessions) as session:
        return indexed_image_with_sha(session, run.live.id, sha)


def _ledger(run: PipelineRun) -> Iterator[tuple[int, ItemSpec]]:
    after = -1
    while True:
        with session_scope(run.sessions) as session:
            page = pending_items_after(session, run.job_id, after, LEDGER_PAGE)
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
