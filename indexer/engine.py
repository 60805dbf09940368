"""`Engine`: the one object the service and the CLI talk to: collections, ingestion jobs, search, images.

    engine = Engine(EngineConfig(data_dir=Path("data"))).open()
    engine.create_collection("photos")
    job = engine.submit("photos", [IngestItem.path("/srv/photos"), IngestItem.url("https://...")])
    engine.wait_job(job)
    hits = engine.search("photos", text="ein roter Kreis", k=10, filter={"year": {"gte": 2020}})

`open()` refuses a database whose schema is not current, reconciles each collection's vector store with the
catalog, and resumes interrupted jobs. Encoders are created on first use and shared; a collection is bound to the
encoder fingerprint it was created with and refuses vectors of any other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy.orm import Session

from indexer import job_api, model_switch
from indexer.catalog import reads, repo, spaces
from indexer.catalog.db import check_schema_current, make_engine, make_sessionmaker, session_scope
from indexer.config import EngineConfig
from indexer.errors import Conflict, InvalidInput, NotFound, SpaceChanged
from indexer.info import CollectionInfo, ImageInfo
from indexer.jobs import JobRuntime, JobWorker, sweep_staging
from indexer.live import LiveCollection, ReconcileReport, Space, reconcile, target_kind
from indexer.metadata import check_metadata
from indexer.query_cache import TextVectorCache
from indexer.refresh import IndexRefresher
from indexer.search import Hit, NearestQuery, check_query, hydrate, image_query_vector, nearest
from indexer.storage import remove_orphans
from indexer.vector_store import VectorStore
from internvl_models import CheckpointError, Encoder, create_encoder

log = logging.getLogger("internvl_search.engine")
# A search re-encodes its query this many times at most when the collection switches encoders under it.
SWITCH_RETRIES = 3
# How long a reader serves another process's saved index before trying that writer's lock again (see `_live`).
BUSY_RETRY_S = 1.0


class Engine(job_api.JobControl, model_switch.EncoderSwitching):
    """Collections, ingestion and search over one data directory and catalog database; the ingestion jobs' API
    comes from `JobControl`, switching a collection to another encoder from `EncoderSwitching`."""

    def __init__(
        self,
        config: EngineConfig,
        encoder_factory: Callable[..., Encoder] = create_encoder,
        *,
        resolver: Callable[[str, int], Sequence[str]] | None = None,
    ) -> None:
        self.config = config
        self._encoder_factory = encoder_factory
        self.resolver = resolver  # host name -> addresses for URL fetching; None: the system's (pipeline/urls.py)
        self._encoders: dict[tuple[str, str | None], Encoder] = {}
        self._encoders_lock = threading.Lock()
        self._lives: dict[int, LiveCollection] = {}
        self._lives_lock = threading.Lock()
        self._db = None
        self._sessions = None
        self._worker: JobWorker | None = None
        self._refresher: IndexRefresher | None = None
        self.reports: list[ReconcileReport] = []
        self.text_vectors = TextVectorCache(config.query_cache_entries)  # recent query texts' vectors

    # --- life cycle ---------------------------------------------------------------------------------------------

    def open(self, *, resume_jobs: bool = True, load_collections: bool = True) -> Engine:
        """Connect, check the schema, reconcile every collection and (by default) resume interrupted jobs.

        `load_collections=False` defers each collection's load and reconciliation to its first use (the CLI,
        which touches one collection per call); `resume_jobs=False` leaves interrupted jobs for a later open.
        """
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._db = make_engine(self.config.resolved_database_url)
        try:
            check_schema_current(self._db)
        except BaseException:
            self._db.dispose()
            raise
        self._sessions = make_sessionmaker(self._db)
        with session_scope(self._sessions) as session:
            rows = repo.list_collections(session)
        remove_orphans(self.config.data_dir, [row.id for row in rows])
        if load_collections:
            reports = [self._live(row.id).report for row in rows]
            self.reports = [report for report in reports if report is not None]
        sweep_staging(self._sessions, self.config.data_dir)
        self._runtime = JobRuntime(self)
        self._worker = JobWorker(self._runtime.execute, self.config.job_workers)
        if resume_jobs:
            self.resume_jobs()
        return self

    def close(self) -> None:
        """Stop job threads at their next batch boundary, save changed indexes, release the database."""
        if self._refresher is not None:
            self._refresher.stop()
            self._refresher = None
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        with self._lives_lock:
            lives = list(self._lives.values())
        for live in lives:
            if live.lock.acquire(blocking=False):
                try:
                    live.save_if_dirty()
                finally:
                    live.lock.release()
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __enter__(self) -> Engine:
        return self if self._sessions is not None else self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sessions(self):  # noqa: ANN201 - sessionmaker[Session]
        if self._sessions is None:
            raise InvalidInput("the engine is not open: call Engine.open() first")
        return self._sessions

    # --- encoders -----------------------------------------------------------------------------------------------

    def encoder(self, name: str | None = None, checkpoint: str | None = None) -> Encoder:
        """The encoder `name` (default: the configured one), created on first use and shared afterwards."""
        name = name or self.config.encoder
        if checkpoint is None and name == self.config.encoder:
            checkpoint = self.config.encoder_checkpoint
        key = (name, None if checkpoint is None else str(checkpoint))
        with self._encoders_lock:
            if key not in self._encoders:
                self._encoders[key] = self._encoder_factory(
                    name,
                    checkpoint,
                    device=self.config.device,
                    dtype=self.config.dtype,
                    image_batch_size=self.config.image_batch_size,
                    text_batch_size=self.config.text_batch_size,
                    compile_images=self.config.compile_images,
                )
            return self._encoders[key]

    def _collection_encoder(self, live: LiveCollection) -> Encoder:
        space = live.space  # one read: a switch may happen at any moment
        encoder = self.encoder(space.encoder, space.checkpoint)
        if encoder.fingerprint != space.fingerprint:
            raise Conflict(
                f"collection {live.name!r} holds vectors of encoder {space.encoder} with fingerprint "
                f"{space.fingerprint[:12]}…, but the configured weights give {encoder.fingerprint[:12]}…; "
                "configure the checkpoint it was created with, or create a new collection"
            )
        return encoder

    # --- collections --------------------------------------------------------------------------------------------

    def create_collection(
        self, name: str, *, encoder: str | None = None, checkpoint: str | None = None, index_kind: str | None = None,
        storage: str | None = None,
    ) -> CollectionInfo:  # fmt: skip
        """A new empty collection bound to `encoder` (default: the configured one) and its current weights.
        `storage` is what it keeps of each image (default: originals, or none when the engine stores no originals)."""
        storage = spaces.check_storage_policy(storage or ("originals" if self.config.store_originals else "none"))
        name_ = encoder or self.config.encoder
        chosen_by_caller = checkpoint is not None
        if checkpoint is None and name_ == self.config.encoder:
            checkpoint = self.config.encoder_checkpoint
        try:
            model = self.encoder(name_, checkpoint)
        except CheckpointError as exc:
            if chosen_by_caller:  # the caller's checkpoint is unusable: their mistake, not the service's
                raise InvalidInput(f"checkpoint {checkpoint!r} cannot be loaded: {exc}") from None
            raise
        with session_scope(self.sessions) as session:
            row = repo.create_collection(
                session,
                name=name,
                encoder=model.name,
                dim=model.dim,
                fingerprint=model.fingerprint,
                index_kind=index_kind or self.config.default_index_kind,
                checkpoint=None if checkpoint is None else str(checkpoint),
            )
            row.storage = storage
            row_id = row.id
        self._live(row_id)
        return self.get_collection(name)

    def list_collections(self) -> list[CollectionInfo]:
        with session_scope(self.sessions) as session:
            names = [row.name for row in repo.list_collections(session)]
        return [self.get_collection(name) for name in names]

    def get_collection(self, name: str) -> CollectionInfo:
        live = self._live_by_name(name)
        with session_scope(self.sessions) as session:
            row = repo.get_collection(session, name)
            counts = repo.image_counts(session, row.id)
        return CollectionInfo(
            id=row.id,
            name=row.name,
            encoder=row.encoder,
            checkpoint=live.checkpoint,
            dim=row.dim,
            fingerprint=row.fingerprint,
            index_kind=row.index_kind,
            store_kind=live.store.kind,
            vectors=len(live.store),
            images=counts,
            created_at=row.created_at,
            storage=row.storage,
        )

    def delete_collection(self, name: str) -> None:
        """Delete the collection, its jobs, its index, embeddings and stored originals."""
        live = self._live_by_name(name)
        with session_scope(self.sessions) as session:
            for job in repo.list_jobs(session, collection_id=live.id, states=["queued", "running"], limit=10_000):
                repo.set_job_state(session, job.id, "cancelled")
        with live.lock:  # waits for a running job to notice the cancel and stop
            with session_scope(self.sessions) as session:
                repo.delete_collection(session, live.id)
            with self._lives_lock:
                self._lives.pop(live.id, None)
            live.files.remove()

    def _live(self, collection_id: int) -> LiveCollection:
        """The collection's in-memory state, loaded and reconciled on first use.

        Never waits for another writer: while one holds the collection (a job in another process), its last saved
        index is served and reconciliation happens on a later call, or by the next writer (`ensure_reconciled`).
        """
        with self._lives_lock:
            live = self._lives.get(collection_id)
            if live is None:
                with session_scope(self.sessions) as session:
                    row = repo.get_collection_by_id(session, collection_id)
                    live = LiveCollection(self.config, row, self._db)
                    if row.checkpoint is None and live.checkpoint is not None:  # from the legacy file
                        repo.set_checkpoint(session, row.id, live.checkpoint)
                self._lives[collection_id] = live
        if not live.loaded:
            # A reader that found another process writing tries the lock again after BUSY_RETRY_S, not per search.
            if time.monotonic() >= live.busy_until and live.lock.acquire(blocking=False):
                try:
                    self.ensure_reconciled(live)
                finally:
                    live.lock.release()
            else:
                live.busy_until = max(live.busy_until, time.monotonic() + BUSY_RETRY_S)
                live.adopt_newer_saved()
        return live

    def ensure_reconciled(self, live: LiveCollection, *, again: bool = False) -> None:
        """Reconcile `live` unless that already happened (`again`: in any case); call with its lock held (every
        writer does). A writer first follows an encoder switch another process made, so it never writes into the
        old space."""
        with session_scope(self.sessions) as session:
            live.follow(repo.get_collection_by_id(session, live.id))
        if again or not live.loaded:
            live.report = reconcile(live, self.sessions)
            if live.report.requeue_job is not None and self._worker is not None:
                self._worker.enqueue(live.report.requeue_job)

    def _live_by_name(self, name: str) -> LiveCollection:
        with session_scope(self.sessions) as session:
            collection_id = repo.get_collection(session, name).id
        return self._live(collection_id)

    def _fresh(self, name: str) -> LiveCollection:
        """The collection for a read, refreshed when another process changed it since we loaded it (one catalog
        query once it is loaded; a search makes this call once)."""
        with session_scope(self.sessions) as session:
            row = reads.collection_state(session, name)
            collection_id, version, space = row.id, row.index_version, Space.of(row)
        with self._lives_lock:
            known = self._lives.get(collection_id)
        loaded_before = known is not None and known.loaded
        live = self._live(collection_id)
        if not loaded_before:  # `_live` may have loaded it just now: compare with the catalog as of after that
            with session_scope(self.sessions) as session:
                row = repo.get_collection_by_id(session, collection_id)
                version, space = row.index_version, Space.of(row)
        if not live.lock.held:
            live.adopt_space(space)  # another process switched encoders
        if version is not None and version != live.store.version and not live.lock.held:
            if self._refresher is not None:
                self._refresher.request(live.id)  # this search is answered from the index served until now
            else:
                live.loaded = False  # stale: reconcile again (now if nobody is writing, otherwise the saved index)
                self._live(live.id)
        return live

    def reload_in_background(self) -> None:
        """From now on, load the indexes other processes changed on a thread of their own (`refresh.py`) rather
        than in the search that notices: what a server does, so that no request waits for a load."""
        if self._refresher is None:
            self._refresher = IndexRefresher(self._reload_stale)

    def _reload_stale(self, collection_id: int) -> None:
        """The background reload: reconcile with the catalog if no process is writing, else adopt a newer saved
        index (reconciliation follows once the writer is done)."""
        with self._lives_lock:
            live = self._lives.get(collection_id)
        if live is None or live.lock.held:  # not served here, or this process is its writer
            return
        try:
            with session_scope(self.sessions) as session:
                version = repo.get_collection_by_id(session, collection_id).index_version
        except NotFound:  # another process deleted it; the next request says so
            return
        if version is None or version == live.store.version:
            return
        if live.lock.acquire(blocking=False):
            try:
                self.ensure_reconciled(live, again=True)
            finally:
                live.lock.release()
        else:
            live.adopt_newer_saved()

    def reconcile(self, name: str | None = None) -> list[ReconcileReport]:
        """Reconcile one collection (or all) with the catalog now; what `open()` does at start-up."""
        with session_scope(self.sessions) as session:
            rows = [repo.get_collection(session, name)] if name else repo.list_collections(session)
            ids = [row.id for row in rows]
        reports = []
        for collection_id in ids:
            live = self._live(collection_id)
            with live.lock:
                live.loaded = False
                self.ensure_reconciled(live)
                reports.append(live.report)
        return reports

    # --- search and images --------------------------------------------------------------------------------------

    def search(
        self,
        collection: str,
        *,
        text: str | None = None,
        image: Image.Image | bytes | None = None,
        image_id: int | None = None,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        offset: int = 0,
    ) -> list[Hit]:
        """The k best images for a text (any language), an image, or an indexed image (itself excluded)."""
        check_query(text, image, image_id, k, offset)
        if image_id is not None:
            return self._search_by_indexed_image(
                collection, int(image_id), NearestQuery(k, offset, filter, min_score, image_id)
            )

        def encode(encoder: Encoder) -> np.ndarray:
            if text is not None:
                return self.text_vectors.encode(encoder, [text])
            return image_query_vector(encoder, image, self.config)

        return self.search_encoded(collection, encode, k=k, filter=filter, min_score=min_score, offset=offset)

    def _search_by_indexed_image(self, collection: str, image_id: int, want: NearestQuery) -> list[Hit]:
        """With the vector the collection's index holds for the image as the query: no original is read or decoded
        and no encoder loaded or run (a collection that keeps no originals answers too); an image not indexed yet
        is encoded from its stored original (NotFound when it is not in the collection). The vector and the search
        come from one store, so an encoder switch meanwhile cannot put them in two spaces."""
        live = self._fresh(collection)
        _, store = live.serving()
        vector = store.vector(image_id)
        if vector is None:
            return self._search_by_original(collection, image_id, want)
        return self._hits_in(live, store, vector[None], [want])[0]

    def search_encoded(
        self,
        collection: str,
        encode: Callable[[Encoder], np.ndarray],
        *,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,
        min_score: float | None = None,
        offset: int = 0,
        exclude: int | None = None,
    ) -> list[Hit]:
        """Search with the (1, dim) query vector `encode(encoder)` makes with the collection's encoder. One look at
        the catalog serves the encoder lookup and the search (it was one each), and the query is encoded again when
        the collection switches encoders in between (SpaceChanged)."""
        want = NearestQuery(k, offset, filter, min_score, exclude)
        retries = SWITCH_RETRIES
        while True:
            live = self._fresh(collection)
            encoder = self._collection_encoder(live)
            query = encode(encoder)
            try:
                return self._nearest_hits(live, query, [want], encoder.fingerprint)[0]
            except SpaceChanged:
                retries -= 1
                if not retries:
                    raise

    def _search_by_original(self, collection: str, image_id: int, want: NearestQuery) -> list[Hit]:
        original = self.image_path(collection, image_id).read_bytes()
        return self.search_encoded(
            collection, lambda encoder: image_query_vector(encoder, original, self.config), k=want.k,
            filter=want.filter, min_score=want.min_score, offset=want.offset, exclude=image_id,
        )  # fmt: skip

    def collection_encoder(self, collection: str) -> Encoder:
        """The encoder whose space the collection's vectors live in (Conflict when its weights changed)."""
        return self._collection_encoder(self._fresh(collection))

    def search_vectors(
        self, collection: str, queries: np.ndarray, wants: Sequence[NearestQuery], *, fingerprint: str | None = None
    ) -> list[list[Hit]]:
        """The hits of each of n queries given as (n, dim) unit vectors of the collection's encoder, each as its
        `NearestQuery` asks, for callers that batch their encoding: one look at the catalog, one store search for
        the unfiltered queries together, one read of the hits' rows.

        `fingerprint` is that of the encoder the queries came from: `SpaceChanged` when the collection switched
        encoders since (encode them again), rather than an answer from a space they are not in."""
        return self._nearest_hits(self._fresh(collection), queries, wants, fingerprint)

    def _nearest_hits(
        self, live: LiveCollection, queries: np.ndarray, wants: Sequence[NearestQuery], fingerprint: str | None
    ) -> list[list[Hit]]:
        space, store = live.serving()
        if fingerprint is not None and fingerprint != space.fingerprint:
            raise SpaceChanged(f"collection {live.name!r} switched encoders while the query was encoded; retry")
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.ndim != 2 or len(queries) != len(wants):
            raise InvalidInput(
                f"{len(wants)} searches need {len(wants)} query vectors, got an array of {queries.shape}"
            )
        if queries.shape[1] != space.dim:
            raise InvalidInput(f"query vector has {queries.shape[1]} dimensions, the collection {space.dim}")
        return self._hits_in(live, store, queries, wants)

    def _hits_in(
        self, live: LiveCollection, store: VectorStore, queries: np.ndarray, wants: Sequence[NearestQuery]
    ) -> list[list[Hit]]:
        """The hits of (n, dim) float32 `queries` in `store`, one of `live`'s, each as its `NearestQuery` asks."""
        with session_scope(self.sessions) as session:  # one connection for the filters' ids and the hits' rows
            allowed = [repo.ids_matching_filter(session, live.id, w.filter) if w.filter else None for w in wants]
            return hydrate(session, live.id, nearest(store, queries, wants, allowed))

    def _image_row(self, session: Session, collection: str, image_id: int):  # noqa: ANN202 - tables.Image
        row = repo.get_collection(session, collection)
        image = repo.get_image(session, int(image_id))
        if image.collection_id != row.id or image.status == "deleted":
            raise NotFound(f"Image id {image_id} not found in collection {collection!r}")
        return image

    def get_image(self, collection: str, image_id: int) -> ImageInfo:
        with session_scope(self.sessions) as session:
            image = self._image_row(session, collection, image_id)
            return ImageInfo.of(image, collection)

    def image_path(self, collection: str, image_id: int) -> Path:
        """The stored original file of an image."""
        info = self.get_image(collection, image_id)
        path = self._live_by_name(collection).files.originals.path(info.sha256)
        if not path.is_file():
            raise NotFound(f"the original of image {image_id} is not stored (the collection's storage policy)")
        return path

    def delete_images(self, collection: str, ids: Sequence[int]) -> int:
        """Remove images from search, the embeddings and the originals; returns how many were deleted."""
        live = self._live_by_name(collection)
        wanted = sorted({int(i) for i in ids})
        with live.lock:
            self.ensure_reconciled(live)
            embeddings = live.embeddings()
            with session_scope(self.sessions) as session:
                images = [im for im in repo.get_images(session, wanted) if im.collection_id == live.id]
                images = [im for im in images if im.status != "deleted"]
                missing = set(wanted) - {im.id for im in images}
                if missing:
                    raise NotFound(f"Images {sorted(missing)[:20]} not found in collection {collection!r}")
                repo.set_image_status(session, wanted, "deleted")
                version = repo.bump_index_version(session, live.id)
            # After the commit: a crash from here on leaves vectors of deleted rows, which reconciliation drops.
            embeddings.delete(wanted)
            live.store.remove(wanted)
            live.store.version = version
            live.changed()
            live.save()
            for image in images:
                live.files.originals.delete(image.sha256)
        return len(images)

    def update_metadata(
        self, collection: str, image_id: int, metadata: Mapping[str, Any] | None, *, merge: bool = False
    ) -> ImageInfo:
        """Replace an image's metadata (or merge keys into it with `merge=True`; a None value removes a key)."""
        with session_scope(self.sessions) as session:
            image = self._image_row(session, collection, image_id)
            if merge:
                merged = {**(image.meta or {}), **dict(metadata or {})}
                metadata = {k: v for k, v in merged.items() if v is not None}
            image = repo.set_image_metadata(session, image.id, check_metadata(metadata))
            return ImageInfo.of(image, collection)


__all__ = ["CollectionInfo", "Engine", "ImageInfo", "target_kind"]
