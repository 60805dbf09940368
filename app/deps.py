"""Request-scoped objects as `Annotated` aliases (SettingsDep, EngineDep, SearcherDep, ReadKey/WriteKey), and the
`Searcher` that joins the engine with the cross-request micro-batchers of query texts and images."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, HTTPException, Request

from indexer import Engine, InvalidInput, SpaceChanged
from indexer.classify import classify_images, embed
from indexer.engine import SWITCH_RETRIES
from indexer.search import Hit, NearestQuery, encode_query_pixels, image_query_vector, query_pixels
from indexer.vector_query import collapse_duplicates, decode_base64, decode_query_image, query_image_bytes
from internvl_models import Encoder

from . import schemas
from . import schemas_classify as cschemas
from .auth import require_scope
from .batching import MicroBatcher
from .settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class BatchedSearch:
    """A search waiting in an encoder's micro-batch: its collection, its query (a text, or an image's pixels), and
    what it asks of the nearest-neighbour search."""

    collection: str
    query: Any
    want: NearestQuery


# The dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency in its thread
# pool, a hop per dependency per request (bench/RESULTS.md, "HTTP search service"); these only read app state.


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def engine_of(request: Request) -> Engine:
    """The app's open engine; 503 while the lifespan is still opening it."""
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise HTTPException(503, "the engine is not open yet; retry shortly", {"Retry-After": "1"})
    return engine


async def get_engine(request: Request) -> Engine:
    return engine_of(request)


async def get_searcher(request: Request) -> Searcher:
    engine_of(request)
    return request.app.state.searcher


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
ReadKey = Depends(require_scope("read"))
WriteKey = Depends(require_scope("write"))
AdminKey = Depends(require_scope("admin"))  # destructive, service-wide operations


class Searcher:
    """Search, classify and embed for the HTTP layer: limits from settings, queries micro-batched per encoder.

    With `batching=True`, concurrent text searches on one encoder share one pass, and so do concurrent image
    searches (their pixels, once each image is fetched and decoded on its own): the queries are encoded together,
    then each collection's are searched in one engine call (one catalog look, one nearest-neighbour search, one
    read of the hits' rows), all on the batcher's thread. When the batcher is free it takes every query already
    waiting (`max_wait_s=0`: it never holds one back to wait for others), so a lone query pays nothing, and under
    load the queries that arrive while a batch runs form the next one. A 5 ms collection window instead cost a
    lone query 5 ms and gave less throughput at 8-128 clients (bench/RESULTS.md). With False each request
    encodes and searches alone (the benchmark's baseline).
    """

    def __init__(self, engine: Engine, settings: Settings, *, batching: bool = True, max_wait_s: float = 0.0) -> None:
        self.engine, self.settings, self.batching, self.max_wait_s = engine, settings, batching, max_wait_s
        self._batchers: dict[tuple[str, str], MicroBatcher] = {}
        self._lock = threading.Lock()
        # Searches running at once. Past a few per core, more threads only contend for the GIL, and a thread that
        # releases it at every torch op (the batcher's) can wait up to the 5 ms switch interval each time to get it
        # back (bench/RESULTS.md, "HTTP search service").
        self._limiter = anyio.CapacityLimiter(settings.search_threads)
        # The encoder each collection was last searched with: a batched query is encoded before its search checks
        # the collection, and the search's fingerprint check (SpaceChanged) catches a switch in between.
        self._encoders: dict[str, Encoder] = {}

    def batcher(self, encoder: Encoder, kind: str = "text") -> MicroBatcher:
        """The encoder's micro-batcher of searches by text (`kind="text"`) or by image pixels ("image")."""
        key = (kind, encoder.fingerprint)  # the whole fingerprint: two encoders must never share a batcher
        with self._lock:
            batcher = self._batchers.get(key)
            if batcher is None:
                size = self.settings.text_batch_size if kind == "text" else self.settings.image_batch_size
                name = f"{kind}:{encoder.name}:{encoder.fingerprint[:8]}"  # the metrics label
                run = partial(self._encode_and_search, encoder, kind)
                batcher = MicroBatcher(name, run, max_batch=size, max_wait_s=self.max_wait_s)
                self._batchers[key] = batcher
            return batcher

    def queue_depths(self) -> dict[str, int]:
        with self._lock:
            return {name: b.depth for name, b in ((b.name, b) for b in self._batchers.values())}

    def close(self) -> None:
        with self._lock:
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()

    def check_text(self, text: str | None) -> None:
        if text is not None and len(text) > self.settings.max_text_chars:
            raise InvalidInput(f"text has {len(text):,} characters; the limit is {self.settings.max_text_chars:,}")

    async def search(self, req: schemas.SearchRequest, upload: bytes | None = None) -> schemas.SearchResponse:
        """One search request: the query vector (batched for text), then filter + nearest + hydrate.

        Unbatched, the whole search is one trip to the thread pool (a trip costs a thread wake-up both ways)."""
        start = time.perf_counter()
        self.check_text(req.text)
        if req.k > self.settings.max_k:
            raise InvalidInput(f"k must be at most {self.settings.max_k}, got {req.k}")
        spent: list[float] = []  # seconds of engine work, where it ran (sent as Server-Timing)
        if req.image_id is not None and upload is None:  # its vector is in the index: nothing to encode or batch
            hits = await self._in_pool(self._search_by_indexed_image, req, spent=spent)
        elif self.batching:
            want = NearestQuery(req.k, req.offset, req.filter, req.min_score)  # refused here if invalid
            hits = await self._batched_search(req, want, upload, spent)
        else:  # Engine.search_encoded encodes again itself when the collection switches encoders meanwhile
            hits = await self._in_pool(self._search_now, req, upload, spent=spent)
        if req.collapse_duplicates:
            hits = collapse_duplicates(hits)
        took_ms = (time.perf_counter() - start) * 1000
        response = schemas.SearchResponse(
            collection=req.collection, results=[schemas.hit_out(req.collection, h) for h in hits], took_ms=took_ms
        )
        response._engine_ms = sum(spent) * 1000
        return response

    def _search_by_indexed_image(self, req: schemas.SearchRequest) -> list:
        return self.engine.search(
            req.collection, image_id=req.image_id, k=req.k, filter=req.filter, min_score=req.min_score,
            offset=req.offset,
        )  # fmt: skip

    def _search_now(self, req: schemas.SearchRequest, upload: bytes | None) -> list:
        """The search in the calling thread: encode (text or image), then nearest, with one look at the catalog."""

        def encode(encoder: Encoder):  # noqa: ANN202 - (1, dim) array
            if req.text is not None:
                return self.engine.text_vectors.encode(encoder, [req.text])
            return self._image_query(encoder, req, upload)

        return self.engine.search_encoded(
            req.collection, encode, k=req.k, filter=req.filter, min_score=req.min_score, offset=req.offset,
            exclude=req.image_id,
        )  # fmt: skip

    async def _batched_search(
        self, req: schemas.SearchRequest, want: NearestQuery, upload: bytes | None, spent: list[float]
    ) -> list[Hit]:
        """A search encoded and searched in a batch with other requests' (MicroBatcher), awaited without holding a
        thread; for an image see `_batched_image_search`. Encoded again when the collection switched encoders
        meanwhile (SpaceChanged), with the encoder looked up anew."""
        retries, encoder = SWITCH_RETRIES, self._encoders.get(req.collection)
        while True:
            if encoder is None:
                encoder = await self._in_pool(self.engine.collection_encoder, req.collection, spent=spent)
                self._encoders[req.collection] = encoder
            try:
                if req.text is None:
                    return await self._batched_image_search(req, want, upload, encoder, spent)
                hits, pass_s = await self.batcher(encoder).run_timed(BatchedSearch(req.collection, req.text, want))
                spent.append(pass_s)
                return hits
            except SpaceChanged:
                retries -= 1
                if not retries:
                    raise
                encoder = None

    async def _batched_image_search(
        self, req: schemas.SearchRequest, want: NearestQuery, upload: bytes | None, encoder: Encoder,
        spent: list[float],
    ) -> list[Hit]:  # fmt: skip
        """The image is fetched and decoded on a pool thread; when no other image is being encoded meanwhile, that
        thread encodes it and searches too (one trip, as unbatched), otherwise its pixels join the next batch."""
        batcher = self.batcher(encoder, "image")
        search = BatchedSearch(req.collection, None, want)
        pixels, hits = await self._in_pool(
            self._image_search_if_idle, batcher, encoder, search, req, upload, spent=spent
        )
        if hits is not None:
            return hits
        hits, pass_s = await batcher.run_timed(replace(search, query=pixels))
        spent.append(pass_s)
        return hits

    def _image_search_if_idle(
        self, batcher: MicroBatcher, encoder: Encoder, search: BatchedSearch, req: schemas.SearchRequest,
        upload: bytes | None,
    ) -> tuple[object, list[Hit] | None]:  # fmt: skip
        pixels = self._query_pixels(encoder, req, upload)  # before the claim: a slow download holds up no one
        if not batcher.claim_idle():
            return pixels, None
        try:
            found = self._encode_and_search(encoder, "image", [replace(search, query=pixels)])[0]
        finally:
            batcher.release()
        if isinstance(found, Exception):
            raise found
        return None, found

    def _encode_and_search(
        self, encoder: Encoder, kind: str, searches: list[BatchedSearch]
    ) -> list[list[Hit] | Exception]:
        """A micro-batch's pass: its queries encoded together, then each collection's searched in one call (one
        look at the catalog, one store search for the unfiltered queries, one read of the hits' rows). A
        collection's error (deleted, switched encoders) is returned in the place of its searches alone."""
        queries = [search.query for search in searches]
        if kind == "text":
            vectors = self.engine.text_vectors.encode(encoder, queries)
        else:
            vectors = encode_query_pixels(encoder, queries)
        results: list[list[Hit] | Exception] = [[] for _ in searches]
        by_collection: dict[str, list[int]] = {}
        for i, search in enumerate(searches):
            by_collection.setdefault(search.collection, []).append(i)
        for collection, members in by_collection.items():
            wants = [searches[i].want for i in members]
            try:
                found = self.engine.search_vectors(collection, vectors[members], wants, fingerprint=encoder.fingerprint)
            except Exception as exc:  # noqa: BLE001 - it belongs to this collection's searches, not to the batch
                found = [exc] * len(members)
            for i, hits in zip(members, found, strict=True):
                results[i] = hits
        return results

    async def _in_pool(self, fn: Callable[..., T], *args: object, spent: list[float]) -> T:
        """`fn(*args)` on a pool thread, at most `settings.search_threads` at once; the seconds it ran are appended
        to `spent` (what the trip to and from the thread costs is not in them)."""

        def timed() -> T:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                spent.append(time.perf_counter() - start)

        return await anyio.to_thread.run_sync(timed, limiter=self._limiter)

    def _image_query(self, encoder: Encoder, req: schemas.SearchRequest, upload: bytes | None):  # noqa: ANN202
        return image_query_vector(encoder, self._query_image_bytes(req, upload), self.engine.config)

    def _query_pixels(self, encoder: Encoder, req: schemas.SearchRequest, upload: bytes | None):  # noqa: ANN202
        return query_pixels(encoder, self._query_image_bytes(req, upload), self.engine.config)

    def _query_image_bytes(self, req: schemas.SearchRequest, upload: bytes | None) -> bytes:
        if upload is not None:
            return upload
        return query_image_bytes(
            self.engine, image_base64=req.image_base64, image_url=req.image_url, image_id=req.image_id,
            collection=req.collection,
        )  # fmt: skip

    def encoder_for(self, name: str | None, collection: str | None) -> Encoder:
        """The collection's encoder, or a named one that the service already serves (never a new download)."""
        if collection is not None:
            return self.engine.collection_encoder(collection)
        name = name or self.settings.encoder
        allowed = {self.settings.encoder} | {c.encoder for c in self.engine.list_collections()}
        if name not in allowed:
            raise InvalidInput(f"Unknown encoder {name!r} for this service. Available: {sorted(allowed)}")
        return self.engine.encoder(name)

    def classify(
        self, req: cschemas.ClassifyRequest, uploads: Sequence[bytes] | None = None
    ) -> cschemas.ClassifyResponse:
        """Rank the labels for every image of the request (`uploads`, when given, instead of its image fields)."""
        start = time.perf_counter()
        for text in (*req.labels, *(req.templates or ())):
            self.check_text(text)
        if uploads is not None and not 1 <= len(uploads) <= cschemas.MAX_IMAGES:
            raise InvalidInput(f"send 1 to {cschemas.MAX_IMAGES} images in form fields `file` and `files`")
        encoder = self.encoder_for(req.encoder, req.collection)
        images = (decode_query_image(self.engine, data, encoder) for data in self._classify_bytes(req, uploads))
        rankings = classify_images(
            encoder, images, req.labels, language=req.language, templates=req.templates, k=req.k,
            cache=self.engine.text_vectors,
        )  # fmt: skip
        results = [
            cschemas.ImageLabels(image=i, labels=[cschemas.LabelOut(**asdict(r)) for r in ranked])
            for i, ranked in enumerate(rankings)
        ]
        took_ms = (time.perf_counter() - start) * 1e3
        return cschemas.ClassifyResponse(
            encoder=encoder.name, labels=results[0].labels, results=results, took_ms=took_ms
        )

    def _classify_bytes(self, req: cschemas.ClassifyRequest, uploads: Sequence[bytes] | None) -> Iterator[bytes]:
        if uploads is not None:
            yield from uploads
            return
        for ref in req.image_refs():
            yield query_image_bytes(
                self.engine, image_base64=ref.image_base64, image_url=ref.image_url, image_id=ref.image_id,
                collection=req.collection,
            )  # fmt: skip

    def embed(self, req: cschemas.EmbedRequest) -> cschemas.EmbedResponse:
        for text in req.texts:
            self.check_text(text)
        encoder = self.encoder_for(req.encoder, None)
        max_bytes = self.engine.config.max_source_bytes
        images = [decode_query_image(self.engine, decode_base64(b, max_bytes), encoder) for b in req.images_base64]
        texts, pictures = embed(encoder, req.texts, images)
        return cschemas.EmbedResponse(
            encoder=encoder.name, dim=encoder.dim, fingerprint=encoder.fingerprint,
            text_vectors=texts.tolist(), image_vectors=pictures.tolist(),
        )  # fmt: skip


SearcherDep = Annotated[Searcher, Depends(get_searcher)]


async def index_request(request: Request) -> tuple[str, list, dict | None]:
    """(collection, IngestItems, metadata) from a multipart upload (image `files` and/or a `manifest` file) or a
    JSON body of `schemas.IndexJson`."""
    from pydantic import ValidationError

    from indexer import IngestItem

    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=10_000, max_fields=100)
        collection = form.get("collection")
        if not isinstance(collection, str) or not collection:
            raise InvalidInput("form field `collection` is required")
        files = [f for f in form.getlist("files") if not isinstance(f, str)]
        manifests = form.getlist("manifest")
        if any(isinstance(m, str) for m in manifests):
            raise InvalidInput("form field `manifest` must be an uploaded file (JSONL or CSV); a manifest on the "
                               "server is named by `manifest` in a JSON body")  # fmt: skip
        if not files and not manifests:
            raise InvalidInput("form fields `files` and/or `manifest` must hold at least one file")
        items = [IngestItem.upload(await f.read(), f.filename) for f in files]
        items += [IngestItem.manifest(data=await m.read(), filename=m.filename) for m in manifests]
        return collection, items, json_form_field(form.get("metadata"), "metadata")
    if kind != "application/json":
        raise HTTPException(415, "send multipart/form-data (files + collection) or application/json")
    try:
        body = schemas.IndexJson.model_validate(await request.json())
    except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError are both ValueErrors
        detail = exc.errors() if isinstance(exc, ValidationError) else str(exc)
        raise InvalidInput(f"invalid index request: {detail}") from None
    items = [IngestItem.url(u) for u in body.urls] + [IngestItem.path(p) for p in body.paths]
    if body.manifest:
        items.append(IngestItem.manifest(body.manifest))
    if not items:
        raise InvalidInput("give at least one of urls, paths or manifest")
    return body.collection, items, body.metadata


def json_form_field(value: object, field: str) -> dict | None:
    import json

    if value is None or value == "":
        return None
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidInput(f"form field `{field}` must be a JSON object")
    return parsed


def form_list(value: str | None, field: str) -> list[str] | None:
    """A list of strings from a form field: a JSON list, or comma-separated text."""
    import json

    if value is None or not value.strip():
        return None
    if value.lstrip().startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise InvalidInput(f"form field `{field}` must be a JSON list of strings")
        return parsed
    return [part.strip() for part in value.split(",") if part.strip()]


IndexRequestDep = Annotated[tuple[str, list, dict | None], Depends(index_request)]
