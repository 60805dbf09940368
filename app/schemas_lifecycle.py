"""Request and response models of evaluation (/v1/eval) and encoder switching (/v1/collections/{name}/migrate,
/migration, /rollback, /previous); split from `schemas.py` to keep files short."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import JobOut, _Strict, job_out

Path = Field(None, min_length=1, max_length=4096)


class EvalData(_Strict):
    """Evaluation data on the server, under the allowed roots: a labelled folder (`class_name/*.jpg`, optional
    `classes.json` with per-language names, templates or prompts) and/or a caption manifest (JSONL: image,
    captions, optional language)."""

    classification: str | None = Path
    retrieval: str | None = Path
    languages: list[str] | None = Field(None, min_length=1, max_length=50, description="Default: those the data names.")

    @model_validator(mode="after")
    def _some_data(self) -> EvalData:
        if not self.classification and not self.retrieval:
            raise ValueError("give `classification` (a labelled folder) and/or `retrieval` (a caption manifest)")
        return self


class EncoderChoice(_Strict):
    """An encoder by registry name and checkpoint (default: the configured ones), or the one a collection uses."""

    encoder: str | None = Field(None, min_length=1, max_length=200)
    checkpoint: str | None = Field(None, min_length=1, max_length=4096)
    collection: str | None = Field(None, min_length=1, max_length=100)


class EvalRequest(EvalData):
    encoders: list[EncoderChoice] = Field(
        default_factory=list, max_length=2, description="One encoder, or two compared side by side."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "classification": "/srv/eval/labelled",
                    "retrieval": "/srv/eval/captions.jsonl",
                    "encoders": [{"collection": "photos"}, {"encoder": "internvl-c", "checkpoint": "/models/ft"}],
                }
            ]
        },
    )


class EvalResponse(BaseModel):
    """One report per encoder (classification: top1 / top5 / mean_per_class_recall per language and their mean;
    retrieval: R@1/5/10 text->image and image->text per language and their mean), and with two encoders the
    headline metrics side by side (`delta` = second - first)."""

    reports: list[dict[str, Any]]
    comparison: dict[str, dict[str, float]] | None = None
    took_ms: float

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reports": [
                        {"encoder": "internvl-c", "classification": {"mean": {"top1": 0.91, "top5": 0.99}}},
                        {"encoder": "internvl-g", "classification": {"mean": {"top1": 0.93, "top5": 0.99}}},
                    ],
                    "comparison": {"classification.top1": {"first": 0.91, "second": 0.93, "delta": 0.02}},
                    "took_ms": 5120.0,
                }
            ]
        }
    )


class MigrateRequest(_Strict):
    encoder: str = Field(..., min_length=1, max_length=200, description="Registry name of the new encoder.")
    checkpoint: str | None = Field(None, min_length=1, max_length=4096, description="Hub id or server directory.")
    evaluation: EvalData | None = Field(None, description="Run before switching; refuse when the new one is worse.")
    max_regression: float | None = Field(
        None, ge=0, le=1, description="Largest allowed loss on a gate metric (default: the service's setting)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "encoder": "internvl-c",
                    "checkpoint": "/models/internvl-c-finetuned",
                    "evaluation": {"classification": "/srv/eval/labelled"},
                    "max_regression": 0.01,
                }
            ]
        },
    )


class SpaceOut(BaseModel):
    """An embedding space: the encoder weights its vectors come from."""

    encoder: str
    checkpoint: str | None
    dim: int
    fingerprint: str
    generation: int


class MigrationOut(BaseModel):
    """The serving space, the shadow being built (if any), the previous space a rollback returns to (until it is
    purged), and the latest migration job with its gate report."""

    collection: str
    storage: str
    serving: SpaceOut
    shadow: SpaceOut | None
    previous: SpaceOut | None
    job: JobOut | None
    gate: dict[str, Any] | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "collection": "photos",
                    "storage": "originals",
                    "serving": {
                        "encoder": "internvl-c",
                        "checkpoint": None,
                        "dim": 768,
                        "fingerprint": "3f9a0c1d",
                        "generation": 1,
                    },
                    "shadow": {
                        "encoder": "internvl-g",
                        "checkpoint": None,
                        "dim": 768,
                        "fingerprint": "3f9a0c1d",
                        "generation": 2,
                    },
                    "previous": None,
                    "job": None,
                    "gate": None,
                }
            ]
        }
    )


def space_out(space: Any) -> SpaceOut | None:
    if space is None:
        return None
    fields = asdict(space)
    return SpaceOut(**{name: fields[name] for name in SpaceOut.model_fields})


def migration_out(state: Any) -> MigrationOut:
    return MigrationOut(
        collection=state.collection,
        storage=state.storage,
        serving=space_out(state.serving),
        shadow=space_out(state.shadow),
        previous=space_out(state.previous),
        job=None if state.job is None else job_out(state.job),
        gate=state.gate,
    )


def eval_data(body: EvalData) -> Any:
    """The engine's `EvalData` for a request's evaluation fields."""
    from indexer.evaluation import EvalData as EngineEvalData

    languages = tuple(body.languages) if body.languages else None
    return EngineEvalData(body.classification, body.retrieval, languages)


def encoder_choices(body: EvalRequest) -> list[Any]:
    from indexer.model_switch import EncoderChoice as EngineChoice

    return [EngineChoice(c.encoder, c.checkpoint, c.collection) for c in body.encoders]
