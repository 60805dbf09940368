"""Write: one batch into the catalog, the embedding shards and the vector store, in the order that survives a kill.

Inside one database transaction:
1. insert the image rows (idempotent by content hash; an image already `indexed` makes the item a duplicate);
2. make the stored originals' directory entries durable;
3. append the embeddings to a new shard (fsync'd): durable *before* anything says the item is done;
4. add the vectors to the in-memory store;
5. mark the rows `indexed`, bump the collection's index version, settle the ledger items and the job counters;
then commit. A kill before the commit leaves the items pending (the resumed job redoes them; ids are never reused,
so stray shard rows of the lost transaction match no catalog row); a kill after it leaves a saved index that may be
older than the catalog, which start-up reconciliation repairs from the shards. So a `done` item is in the catalog,
the embeddings and the index exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.live import LiveCollection
from indexer.pipeline.flow import Prepared, Settled, StageClock
from indexer.vector_store import EmbeddingStore


@dataclass
class BatchResult:
    added: int = 0
    duplicates: int = 0
    failed: int = 0


class BatchWriter:
    """Writes batches of one job into one collection; the caller holds the collection's writer lock."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        live: LiveCollection,
        embeddings: EmbeddingStore,
        job_id: int,
        clock: StageClock,
    ) -> None:
        self.sessions, self.live, self.embeddings, self.job_id, self.clock = sessions, live, embeddings, job_id, clock

    def write(self, prepared: Sequence[Prepared], vectors: np.ndarray, settled: Sequence[Settled]) -> BatchResult:
        start = time.perf_counter()
        outcomes = [repo.ItemOutcome(s.position, s.state, s.reason, s.image_id) for s in settled]
        added_ids: np.ndarray | None = None
        try:
            with session_scope(self.sessions) as session:
                refs = repo.add_images(session, self.live.id, [_new_image(p) for p in prepared])
                ids, rows = self._fresh(prepared, refs, outcomes)
                version = None
                if ids:
                    added_ids = np.asarray(ids, dtype=np.int64)
                    self._persist_vectors(added_ids, vectors[rows])
                    repo.set_image_status(session, ids, "indexed")
                    version = repo.bump_index_version(session, self.live.id)
                counts = repo.record_item_outcomes(session, self.job_id, outcomes)
        except BaseException:
            if added_ids is not None:
                # The transaction is gone, so these rows are not indexed; the store must not answer with them.
                self.live.store.remove(added_ids)
            raise
        if version is not None:
            self.live.store.version = version
            self.live.changed()
        self.clock.add("write_s", time.perf_counter() - start)
        return BatchResult(counts.done, counts.skipped, counts.failed)

    def _fresh(
        self, prepared: Sequence[Prepared], refs: Sequence[repo.ImageRef], outcomes: list[repo.ItemOutcome]
    ) -> tuple[list[int], list[int]]:
        """Ids (and batch rows) that need a vector; everything else becomes a duplicate outcome."""
        ids, rows, seen = [], [], set()
        for row, (item, ref) in enumerate(zip(prepared, refs)):
            # Already indexed (by an earlier batch or job), or the same content earlier in this batch.
            if ref.status == "indexed" or ref.id in seen:
                outcomes.append(repo.ItemOutcome(item.position, "skipped", f"duplicate of image {ref.id}", ref.id))
                continue
            seen.add(ref.id)
            ids.append(ref.id)
            rows.append(row)
            outcomes.append(repo.ItemOutcome(item.position, "done", None, ref.id))
        return ids, rows

    def _persist_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.live.files.originals.sync()
        self.embeddings.append(ids, vectors)
        self.live.store.add(ids, vectors)


def _new_image(item: Prepared) -> repo.NewImage:
    return repo.NewImage(
        sha256=item.sha256,
        source=item.source,
        width=item.width,
        height=item.height,
        format=item.format,
        byte_size=item.byte_size,
        meta=item.meta or None,
    )
