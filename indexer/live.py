"""A collection as the running engine holds it: its vector store in memory, its files, its writer lock, and the
reconciliation that makes the store agree with the catalog.

The catalog is the source of truth and the embedding shards are durable; the saved index is derived and may be
older than both (it is saved every few seconds, not at every batch), missing or damaged. `reconcile` brings it back
in line: vectors without an `indexed` row are dropped, `indexed` rows without a vector are restored from the stored
embeddings, rows whose embedding is gone too are re-queued for encoding from the stored original (or marked failed
when that is gone as well), and an unreadable index file is rebuilt from the embeddings.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from indexer.catalog import repo
from indexer.catalog.db import session_scope
from indexer.catalog.locks import COLLECTION_WRITER, advisory_lock
from indexer.catalog.tables import Collection
from indexer.config import EngineConfig
from indexer.errors import Conflict, CorruptData
from indexer.pipeline.flow import ItemSpec
from indexer.storage import CollectionFiles, WriteLock
from indexer.vector_store import EmbeddingStore, VectorStore, create_vector_store, load_vector_store, resolve_kind

log = logging.getLogger("internvl_search.engine")

# IVF-PQ cannot train its codebooks on fewer vectors than this (see faiss_store.py); a smaller collection set to
# ivf_pq is served by an exact index until it grows past it.
IVF_PQ_MIN_VECTORS = 1024
# An IVF index trained on its first batch is re-trained once the collection outgrows that sample this many times.
IVF_RETRAIN_GROWTH = 4
# HNSW keeps removed vectors as tombstones; past this share a rebuild pays for itself.
REBUILD_REMOVED_FRACTION = 0.2


def target_kind(configured: str, n: int, dim: int) -> str:
    """The concrete index kind a collection configured as `configured` should use at n vectors of `dim`."""
    kind = resolve_kind(configured, n, dim)
    return "flat" if kind == "ivf_pq" and n < IVF_PQ_MIN_VECTORS else kind


@dataclass
class ReconcileReport:
    """What reconciliation found and did for one collection."""

    collection: str
    loaded: str  # "file", "missing", "corrupt" or "mismatched" (wrong dimension)
    removed: int = 0  # vectors dropped because their image is not indexed
    restored: int = 0  # indexed images whose vector came back from the stored embeddings
    requeued: int = 0  # indexed images with no stored embedding, sent back through encoding
    failed: int = 0  # such images whose stored original is gone too
    rebuilt: bool = False
    requeue_job: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.restored or self.requeued or self.failed or self.rebuilt)


@dataclass(frozen=True)
class Space:
    """The embedding space a collection serves from: the encoder weights its vectors come from, and the
    generation of files (index, embeddings) that hold them."""

    encoder: str
    checkpoint: str | None
    dim: int
    fingerprint: str
    generation: int = 0

    @classmethod
    def of(cls, row: Collection) -> Space:
        return cls(row.encoder, row.checkpoint, row.dim, row.fingerprint, int(row.generation or 0))

    def same_vectors(self, other: Space) -> bool:
        """Whether both name the same files of the same weights (the checkpoint's spelling does not matter)."""
        return (self.generation, self.fingerprint) == (other.generation, other.fingerprint)


class LiveCollection:
    """One collection's in-memory state. Mutate the store or the files only while holding `lock`.

    The serving space and its store are one tuple, replaced in a single assignment by `switch`, so a reader
    without the lock (a search) that takes `serving()` once sees a matching encoder, dimension and index.
    """

    def __init__(self, config: EngineConfig, row: Collection, db: Engine | None = None) -> None:
        self.id, self.name, self.index_kind = row.id, row.name, row.index_kind
        self.storage = row.storage or "originals"
        self.files = CollectionFiles(config.data_dir, row.id, row.generation or 0)
        # A collection created before catalog revision 0002 may still have it only in its legacy file.
        checkpoint = row.checkpoint or self.files.legacy_checkpoint()
        space = Space(row.encoder, checkpoint, row.dim, row.fingerprint, int(row.generation or 0))
        self._swap_lock = threading.Lock()
        # How every store of this collection is built and read (EngineConfig.index_shards / index_on_disk / _mmap).
        self.store_params = {"shards": config.index_shards, "on_disk": config.index_on_disk}
        self.mmap = config.index_mmap
        self._serving: tuple[Space, VectorStore] = (space, self._empty(space))
        # `db`: the catalog's engine, for the database half of the writer lock (PostgreSQL; see catalog/locks.py).
        self.lock = WriteLock(self.files.lock_path, advisory_lock(db, COLLECTION_WRITER, row.id))
        self.busy_until = 0.0  # monotonic time before which a reader does not try the writer lock again
        self.loaded = False
        self.report: ReconcileReport | None = None
        self._dirty = False
        self._saved_at = time.monotonic()
        self._adopted: tuple[int, int, int] | None = None

    # --- the serving space ----------------------------------------------------------------------------------------

    def serving(self) -> tuple[Space, VectorStore]:
        """The space and its store, as one consistent pair."""
        return self._serving

    @property
    def space(self) -> Space:
        return self._serving[0]

    @property
    def store(self) -> VectorStore:
        return self._serving[1]

    @store.setter
    def store(self, store: VectorStore) -> None:
        with self._swap_lock:
            self._serving = (self._serving[0], store)

    @property
    def encoder_name(self) -> str:
        return self.space.encoder

    @property
    def checkpoint(self) -> str | None:
        return self.space.checkpoint

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def fingerprint(self) -> str:
        return self.space.fingerprint

    def switch(self, space: Space, store: VectorStore) -> None:
        """Serve `space` from `store` from now on; call with `lock` held, after the catalog committed the switch
        (and `store` was saved to the space's index file)."""
        with self._swap_lock:
            self.files.generation = space.generation
            self._serving = (space, store)
        self._dirty, self._adopted, self.loaded = False, None, True

    def follow(self, row: Collection) -> None:
        """Serve the space the catalog names if another process switched encoders; call with `lock` held. The
        store is then reloaded by reconciliation."""
        space = Space.of(row)
        if not space.same_vectors(self.space):
            self.switch(replace(space, checkpoint=space.checkpoint or self.checkpoint), self._empty(space))
            self.loaded = False

    def adopt_space(self, space: Space) -> None:
        """Without the lock (another process is writing): serve `space` from its saved index, which the process
        that switched saved before committing."""
        serving = self._serving
        if space.same_vectors(serving[0]):
            return
        store, _ = load_saved(self, space)
        with self._swap_lock:
            if self._serving is serving:
                self.files.generation = space.generation
                self._serving = (space, store or self._empty(space))
                self.loaded = False

    def _empty(self, space: Space) -> VectorStore:
        return create_vector_store(target_kind(self.index_kind, 0, space.dim), space.dim, params=self.store_params)

    def embeddings(self) -> EmbeddingStore:
        """A fresh view of the embedding shards; call with `lock` held (another process may have appended)."""
        return EmbeddingStore(self.files.embeddings_dir, self.dim)

    def changed(self) -> None:
        self._dirty = True

    def save(self) -> None:
        """Persist the store atomically (a reader sees the old file or the new one)."""
        self.store.save(self.files.index_path)
        self._dirty, self._saved_at = False, time.monotonic()

    def save_if_due(self, interval_s: float) -> None:
        if self._dirty and time.monotonic() - self._saved_at >= interval_s:
            self.save()

    def save_if_dirty(self) -> None:
        if self._dirty:
            self.save()

    def adopt_newer_saved(self) -> None:
        """Serve the saved index if another process saved a newer one (checked by file identity, so repeated calls
        while that process keeps writing cost one stat, not one load)."""
        try:
            stat = self.files.index_path_of(self.space.generation).stat()
        except OSError:
            return
        identity = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if identity == self._adopted:
            return
        self._adopted = identity
        serving = self._serving
        store, _ = load_saved(self, serving[0])
        with self._swap_lock:
            # Only if nothing switched the space meanwhile: the file read was that space's.
            if store is not None and self._serving is serving and store.version > serving[1].version:
                self._serving = (serving[0], store)

    def rebuild(self, keep_ids: np.ndarray, embeddings: EmbeddingStore, kind: str | None = None) -> None:
        """Replace the store with one built from the stored embeddings of `keep_ids` (no re-encoding)."""
        ids, vectors = embeddings.load_all()
        keep = np.isin(ids, keep_ids)
        ids, vectors = ids[keep], vectors[keep]
        store = create_vector_store(
            kind or target_kind(self.index_kind, len(ids), self.dim),
            self.dim,
            expected_size=len(ids),
            params=self.store_params,
        )
        if len(ids):
            store.add(ids, vectors)
        store.version = self.store.version
        self.store = store
        self.changed()

    def maintain(self, embeddings: EmbeddingStore) -> bool:
        """After a job: merge the embedding shards it wrote (`EmbeddingStore.settle`), then switch to the kind the
        collection's size calls for, re-train a grown IVF index, or drop HNSW tombstones. Returns True when the
        store was rebuilt."""
        settle_shards(embeddings, self.name)
        store, n = self.store, len(self.store)
        want = target_kind(self.index_kind, n, self.dim)
        trained_on = int(store.params.get("trained_on", n) or n)
        if (
            want != store.kind
            or (store.kind.startswith("ivf") and n > IVF_RETRAIN_GROWTH * max(trained_on, 1))
            or store.removed_fraction > REBUILD_REMOVED_FRACTION
        ):
            self.rebuild(store.ids(), embeddings, want)
            return True
        return False


def settle_shards(embeddings: EmbeddingStore, collection: str) -> None:
    """`EmbeddingStore.settle` after a job's writes, as housekeeping: a failure (disk full, a damaged shard, which
    the next rebuild reports) leaves the shards as they were and the job as it ended."""
    try:
        embeddings.settle()
    except (CorruptData, OSError) as exc:
        log.warning("embedding shards not merged", extra={"collection": collection, "error": str(exc)})


def load_saved(live: LiveCollection, space: Space | None = None) -> tuple[VectorStore | None, str]:
    """The saved store of `space` (default: the serving one) and how loading went; None when there is nothing
    usable on disk."""
    space = space or live.space
    path = live.files.index_path_of(space.generation)
    if not path.exists():
        return None, "missing"
    try:
        store = load_vector_store(path, mmap=live.mmap)
    except (CorruptData, OSError, RuntimeError, ValueError, KeyError) as exc:
        log.warning("index file unreadable, rebuilding from embeddings", extra={"path": str(path), "error": str(exc)})
        return None, "corrupt"
    if store.dim != space.dim:
        return None, "mismatched"
    if store.needs_rebuild:
        log.warning("index file written by an older version with a known defect, rebuilding", extra={"path": str(path)})
        return None, "outdated"
    return store, "file"


def reconcile(live: LiveCollection, sessions: sessionmaker[Session]) -> ReconcileReport:
    """Make `live.store` agree with the catalog; call with `live.lock` held. Saves the store when it changed."""
    store, how = load_saved(live)
    report = ReconcileReport(live.name, how)
    with session_scope(sessions) as session:
        indexed = repo.image_ids(session, live.id, status="indexed")
        version = repo.get_collection_by_id(session, live.id).index_version
    embeddings = live.embeddings()
    if store is None:
        live.rebuild(indexed, embeddings)
        report.rebuilt = how != "missing" or len(indexed) > 0
    else:
        # Repaired before it serves, then swapped in at once: a search meanwhile is answered by the store served
        # before (a reader process that follows a writer never shows a half-reconciled index).
        extra = np.setdiff1d(store.ids(), indexed, assume_unique=True)
        report.removed = store.remove(extra) if len(extra) else 0
        missing = np.setdiff1d(indexed, store.ids(), assume_unique=True)
        if len(missing):
            report.restored, report.rebuilt = _restore(live, store, missing, indexed, embeddings)
        if not report.rebuilt:
            store.version = version
            live.store = store
    lost = np.setdiff1d(indexed, live.store.ids(), assume_unique=True)
    if len(lost):
        report.requeued, report.failed, report.requeue_job = _requeue(live, sessions, lost)
        version += 1
    live.store.version = version
    live.loaded = True
    if report.changed:
        live.changed()
        live.save()
        log.info("reconciled collection", extra={"collection": live.name, **report.__dict__})
    return report


def _restore(
    live: LiveCollection, store: VectorStore, missing: np.ndarray, indexed: np.ndarray, embeddings: EmbeddingStore
) -> tuple[int, bool]:
    ids, vectors = embeddings.load_all()
    have = np.isin(ids, missing)
    if not have.any():
        return 0, False
    try:
        return store.add(ids[have], vectors[have]), False
    except Conflict:
        # An id hidden behind an HNSW tombstone cannot come back in place; rebuilding clears the tombstones.
        live.rebuild(indexed, embeddings)
        return int(have.sum()), True


def _requeue(live: LiveCollection, sessions: sessionmaker[Session], lost: np.ndarray) -> tuple[int, int, int | None]:
    """Send indexed images with no vector anywhere back through encoding, from their stored originals."""
    with session_scope(sessions) as session:
        images = repo.get_images(session, lost.tolist())
        sources, gone = [], []
        for image in images:
            path = live.files.originals.path(image.sha256)
            if path.is_file():
                sources.append(ItemSpec("stored", str(path), name=image.source).to_source())
            else:
                gone.append(image.id)
        repo.set_image_status(session, [i.id for i in images if i.id not in set(gone)], "pending")
        repo.set_image_status(session, gone, "failed")
        repo.bump_index_version(session, live.id)
        job_id = None
        if sources:
            job = repo.create_job(
                session, collection_id=live.id, kind="reindex", sources=sources, params={"planned": True}
            )
            job_id = job.id
    return len(sources), len(gone), job_id
