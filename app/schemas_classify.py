"""Request and response models of /v1/classify and /v1/embed (split from `schemas.py` to keep files short)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .schemas import MAX_ID, _Strict

# --- classify and embed -------------------------------------------------------------------------------------------


class ClassifyRequest(_Strict):
    """One image (inline, by URL, or an indexed id with its collection) against candidate labels."""

    labels: list[str] = Field(..., min_length=1, max_length=1000)
    image_base64: str | None = Field(None, min_length=1)
    image_url: str | None = Field(None, min_length=1, max_length=4096)
    image_id: int | None = Field(None, ge=1, le=MAX_ID)
    collection: str | None = Field(None, description="Needed with image_id; its encoder is then used.")
    encoder: str | None = Field(None, description="Encoder name when no collection is given; default: configured.")
    language: str = Field("en", description="Default prompt ensemble: en, de, fr, es, zh or ja.")
    templates: list[str] | None = Field(None, description='Own prompt templates, each with one "{label}".')
    k: int | None = Field(None, ge=1, le=1000, description="Return only the k most probable labels.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"image_id": 42, "collection": "photos", "labels": ["cat", "dog", "car"], "language": "en"}]
        },
    )


class LabelOut(BaseModel):
    label: str
    probability: float
    cosine: float


class ClassifyResponse(BaseModel):
    encoder: str
    labels: list[LabelOut]
    took_ms: float

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder": "internvl-c",
                    "took_ms": 12.5,
                    "labels": [
                        {"label": "cat", "probability": 0.93, "cosine": 0.31},
                        {"label": "dog", "probability": 0.06, "cosine": 0.25},
                    ],
                }
            ]
        }
    )


class EmbedRequest(_Strict):
    texts: list[str] = Field(default_factory=list, max_length=1024)
    images_base64: list[str] = Field(default_factory=list, max_length=64)
    encoder: str | None = Field(None, description="Encoder name; default: the configured one.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["a red circle", "赤い円"]}]})


class EmbedResponse(BaseModel):
    encoder: str
    dim: int
    fingerprint: str
    text_vectors: list[list[float]]
    image_vectors: list[list[float]]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder": "internvl-c",
                    "dim": 4,
                    "fingerprint": "3f1c…",
                    "text_vectors": [[0.5, 0.5, 0.5, 0.5]],
                    "image_vectors": [],
                }
            ]
        }
    )
