"""Request and response models of the /v1 API; their `examples` appear in the OpenAPI spec and on /docs."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

MAX_ID = 2**63 - 1  # ids are signed 64-bit integers in the catalog


def _as_utc(value: datetime | None) -> datetime | None:
    # The catalog stores UTC; SQLite hands it back without an offset, and OpenAPI's date-time (RFC 3339) needs one.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


Timestamp = Annotated[datetime | None, AfterValidator(_as_utc)]
Name = Field(..., min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$", description="Collection name.")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- collections --------------------------------------------------------------------------------------------------


class CollectionCreate(_Strict):
    name: str = Name
    encoder: str | None = Field(None, description="Encoder registry name; default: the configured one.")
    checkpoint: str | None = Field(None, description="Hub id or server directory of the weights.")
    index_kind: Literal["auto", "flat", "hnsw", "ivf_flat", "ivf_pq"] | None = None
    storage: Literal["originals", "thumbnails", "none"] | None = Field(
        None,
        description="What is kept of each image, so that switching encoders never needs a new upload: the original, "
        "a reduced copy (longer side 512 px), or nothing (re-fetched from its server path or URL). Default: originals.",
    )

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"name": "photos", "index_kind": "auto"}]}
    )


class CollectionOut(BaseModel):
    name: str
    encoder: str
    checkpoint: str | None
    dim: int
    fingerprint: str
    index_kind: str
    store_kind: str
    vectors: int
    images: dict[str, int]
    created_at: Timestamp
    storage: str = "originals"

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "photos",
                    "encoder": "internvl-c",
                    "checkpoint": None,
                    "dim": 768,
                    "fingerprint": "3f1c…",
                    "index_kind": "auto",
                    "store_kind": "flat",
                    "vectors": 20,
                    "images": {"indexed": 20},
                    "created_at": "2026-11-23T12:00:00",
                }
            ]
        }
    )


class CollectionList(BaseModel):
    collections: list[CollectionOut]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"collections": CollectionOut.model_config["json_schema_extra"]["examples"]}]}
    )


# --- ingestion and jobs -------------------------------------------------------------------------------------------


class IndexJson(_Strict):
    """Ingest by reference: URLs (fetched by the server, private addresses refused), server paths under the
    allowed roots, or a server-side manifest (.jsonl/.csv)."""

    collection: str = Name
    urls: list[str] = Field(default_factory=list, max_length=10_000)
    paths: list[str] = Field(default_factory=list, max_length=10_000)
    manifest: str | None = None
    metadata: dict[str, Any] | None = None

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"collection": "photos", "urls": ["https://example.org/cat.jpg"], "metadata": {"src": "web"}}]
        },
    )


class FailureOut(BaseModel):
    position: int
    source: str
    reason: str


class JobOut(BaseModel):
    id: int
    collection: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled"] | str
    total: int
    done: int
    failed: int
    skipped: int
    error: str | None
    created_at: Timestamp
    started_at: Timestamp
    finished_at: Timestamp
    timings: dict[str, float] = {}
    failures: list[FailureOut] = []

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "collection": "photos",
                    "kind": "ingest",
                    "state": "done",
                    "total": 3,
                    "done": 2,
                    "failed": 1,
                    "skipped": 0,
                    "error": None,
                    "created_at": None,
                    "started_at": None,
                    "finished_at": None,
                    "timings": {"wall_s": 0.4},
                    "failures": [{"position": 2, "source": "upload:notes.txt", "reason": "not an image"}],
                }
            ]
        }
    )


class IndexAccepted(BaseModel):
    job_id: int
    state: str
    status_url: str
    job: JobOut

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": 7,
                    "state": "done",
                    "status_url": "/v1/jobs/7",
                    "job": JobOut.model_config["json_schema_extra"]["examples"][0],
                }
            ]
        }
    )


class JobList(BaseModel):
    jobs: list[JobOut]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"jobs": JobOut.model_config["json_schema_extra"]["examples"]}]}
    )


# --- search -------------------------------------------------------------------------------------------------------


class SearchRequest(_Strict):
    """Exactly one query: `text` (any language), `image_base64`, `image_url`, or `image_id` (an indexed image,
    which is left out of its own results)."""

    collection: str = Name
    text: str | None = Field(None, min_length=1)
    image_base64: str | None = Field(None, min_length=1)
    image_url: str | None = Field(None, min_length=1, max_length=4096)
    image_id: int | None = Field(None, ge=1, le=MAX_ID)
    k: int = Field(10, ge=1, description="Number of results (at most the server's max_k).")
    filter: dict[str, Any] | None = Field(None, description='Metadata filter, e.g. {"year": {"gte": 2020}}.')
    min_score: float | None = Field(None, ge=-1, le=1)
    offset: int = Field(0, ge=0, le=10_000)
    collapse_duplicates: bool = False
    rerank: Literal["none", "chat"] = Field(
        "none", description='"chat": rerank the top hits of a text query by the chat model (P("yes") + score).'
    )
    rerank_top_n: int = Field(20, ge=1, le=100, description="Hits the chat model reranks (with rerank: chat).")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"collection": "photos", "text": "ein roter Kreis", "k": 10},
                {"collection": "photos", "text": "a red star", "k": 5, "rerank": "chat", "rerank_top_n": 20},
                {"collection": "photos", "image_id": 42, "k": 5, "filter": {"year": {"gte": 2020}}},
            ]
        },
    )

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [n for n in ("text", "image_base64", "image_url", "image_id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text, image_base64, image_url or image_id (got {given or 'none'})")
        return self


class Hit(BaseModel):
    id: int
    score: float
    source: str | None
    metadata: dict[str, Any]
    width: int | None
    height: int | None
    format: str | None
    image_url: str
    thumbnail_url: str
    chat_score: float | None = Field(None, description='With rerank "chat": P("yes") from the chat model.')
    rerank_score: float | None = Field(
        None, description='With rerank "chat": the combined score results are sorted by.'
    )


class SearchResponse(BaseModel):
    collection: str
    results: list[Hit]
    took_ms: float
    # Milliseconds of engine work behind the answer (encoding, nearest neighbours, catalog reads), timed on the
    # threads that did it; the route sends it in a Server-Timing header (`server_timing`), not in the body.
    _engine_ms: float | None = PrivateAttr(None)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection": "photos",
                    "took_ms": 4.2,
                    "results": [
                        {
                            "id": 42,
                            "score": 0.31,
                            "source": "upload:cat.jpg",
                            "metadata": {"year": 2021},
                            "width": 640,
                            "height": 480,
                            "format": "JPEG",
                            "image_url": "/v1/images/42/content?collection=photos",
                            "thumbnail_url": "/v1/images/42/thumbnail?collection=photos",
                        }
                    ],
                }
            ]
        }
    )


# --- images -------------------------------------------------------------------------------------------------------


class ImageOut(BaseModel):
    id: int
    collection: str
    sha256: str
    source: str | None
    width: int | None
    height: int | None
    format: str | None
    byte_size: int | None
    metadata: dict[str, Any]
    status: str
    created_at: Timestamp
    image_url: str
    thumbnail_url: str

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 42,
                    "collection": "photos",
                    "sha256": "9f86d0…",
                    "source": "upload:cat.jpg",
                    "width": 640,
                    "height": 480,
                    "format": "JPEG",
                    "byte_size": 51234,
                    "metadata": {"year": 2021},
                    "status": "indexed",
                    "created_at": "2026-11-23T12:00:00",
                    "image_url": "/v1/images/42/content?collection=photos",
                    "thumbnail_url": "/v1/images/42/thumbnail?collection=photos",
                }
            ]
        }
    )


class MetadataPatch(_Strict):
    metadata: dict[str, Any]
    merge: bool = Field(False, description="Merge keys into the existing metadata (a null value removes a key).")

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"metadata": {"tag": "cat"}, "merge": True}]}
    )


# --- conversions from engine objects ------------------------------------------------------------------------------


def image_urls(collection: str, image_id: int) -> dict[str, str]:
    query = f"?collection={quote(collection)}"
    return {
        "image_url": f"/v1/images/{image_id}/content{query}",
        "thumbnail_url": f"/v1/images/{image_id}/thumbnail{query}",
    }


def hit_out(collection: str, hit: Any) -> Hit:
    return Hit(
        id=hit.id, score=hit.score, source=hit.source, metadata=hit.metadata, width=hit.width, height=hit.height,
        format=hit.format, **image_urls(collection, hit.id),
    )  # fmt: skip


def image_out(info: Any) -> ImageOut:
    return ImageOut(**asdict(info), **image_urls(info.collection, info.id))


def collection_out(info: Any) -> CollectionOut:
    fields = asdict(info)
    fields.pop("id", None)
    return CollectionOut(**fields)


def job_out(info: Any) -> JobOut:
    return JobOut(**asdict(info))
