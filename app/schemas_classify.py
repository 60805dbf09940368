"""Request and response models of /v1/classify and /v1/embed (split from `schemas.py` to keep files short)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexer.classify import MAX_IMAGES

from .schemas import MAX_ID, _Strict

# --- classify and embed -------------------------------------------------------------------------------------------


class ImageRef(_Strict):
    """One image to classify: inline (base64), by URL, or an indexed id (of the request's collection)."""

    image_base64: str | None = Field(None, min_length=1)
    image_url: str | None = Field(None, min_length=1, max_length=4096)
    image_id: int | None = Field(None, ge=1, le=MAX_ID)

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"image_id": 42}]})

    @model_validator(mode="after")
    def _one_image(self) -> ImageRef:
        given = [n for n in ("image_base64", "image_url", "image_id") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image_base64, image_url or image_id (got {given or 'none'})")
        return self


class ClassifyRequest(_Strict):
    """One or more images against the same candidate labels: one image in `image_base64` / `image_url` /
    `image_id`, or several in `images` (not both). `image_id`s refer to `collection`."""

    labels: list[str] = Field(..., min_length=1, max_length=1000)
    image_base64: str | None = Field(None, min_length=1)
    image_url: str | None = Field(None, min_length=1, max_length=4096)
    image_id: int | None = Field(None, ge=1, le=MAX_ID)
    images: list[ImageRef] | None = Field(
        None, min_length=1, max_length=MAX_IMAGES, description="Several images, each ranked against the labels."
    )
    collection: str | None = Field(None, description="Needed with image_id; its encoder is then used.")
    encoder: str | None = Field(None, description="Encoder name when no collection is given; default: configured.")
    language: str = Field("en", description="Default prompt ensemble: en, de, fr, es, zh or ja.")
    templates: list[str] | None = Field(None, description='Own prompt templates, each with one "{label}".')
    k: int | None = Field(None, ge=1, le=1000, description="Return only the k most probable labels.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"image_id": 42, "collection": "photos", "labels": ["cat", "dog", "car"], "language": "en"},
                {"images": [{"image_id": 42}, {"image_url": "https://example.org/cat.jpg"}], "collection": "photos",
                 "labels": ["cat", "dog"]},
            ]
        },
    )  # fmt: skip

    @model_validator(mode="after")
    def _single_or_several(self) -> ClassifyRequest:
        if self.images is not None and any(v is not None for v in (self.image_base64, self.image_url, self.image_id)):
            raise ValueError("give one image in image_base64/image_url/image_id, or several in images, not both")
        return self

    def image_refs(self) -> list[ImageRef]:
        """The images of the request, in order (the single-image fields are checked when they are read)."""
        if self.images is not None:
            return list(self.images)
        return [
            ImageRef.model_construct(image_base64=self.image_base64, image_url=self.image_url, image_id=self.image_id)
        ]


class LabelOut(BaseModel):
    label: str
    probability: float
    cosine: float


class ImageLabels(BaseModel):
    image: int = Field(..., description="Position of the image in the request (uploads: `file` first, then `files`).")
    labels: list[LabelOut]


class ClassifyResponse(BaseModel):
    encoder: str
    labels: list[LabelOut] = Field(..., description="The ranking of the first (or only) image.")
    results: list[ImageLabels] = Field(..., description="One ranking per image, in request order.")
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
                    "results": [
                        {
                            "image": 0,
                            "labels": [
                                {"label": "cat", "probability": 0.93, "cosine": 0.31},
                                {"label": "dog", "probability": 0.06, "cosine": 0.25},
                            ],
                        }
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
