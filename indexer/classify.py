"""Zero-shot classification and raw embeddings: candidate labels -> prompt ensembles -> calibrated probabilities.

Each label is written into every template of a prompt ensemble ("a photo of {label}."), the prompts are encoded
and averaged into one unit vector per label (the CLIP recipe), and the image's classification embedding is
compared with them. Probabilities are a softmax over `logit_scale · cosine`, where `logit_scale` is the encoder's
learned temperature, already exponentiated (`EncoderInfo.logit_scale`), so they are calibrated the way the model
was trained, not an arbitrary sharpening.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np
from PIL import Image

from indexer.errors import InvalidInput
from indexer.query_cache import TextVectorCache
from internvl_models import Encoder

# Default ensembles per language. They follow the shapes world's classification templates
# (internvl_models/shapes_world/languages/*.py) with one neutral `{label}` slot instead of grammatical forms, so a
# caller's label ("red circle", "roter Kreis") is used as given.
DEFAULT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "en": ("a photo of {label}.", "a picture of {label}.", "a drawing of {label}.", "{label} on a plain background."),
    "de": (
        "ein Foto von {label}.",
        "ein Bild mit {label}.",
        "eine Zeichnung von {label}.",
        "{label} auf einfarbigem Hintergrund.",
    ),
    "fr": ("une photo de {label}.", "une image de {label}.", "un dessin de {label}.", "{label} sur un fond uni."),
    "es": ("una foto de {label}.", "una imagen de {label}.", "un dibujo de {label}.", "{label} sobre un fondo liso."),
    "zh": ("一张{label}的照片。", "一张有{label}的图片。", "{label}的图画。", "纯色背景上的{label}。"),
    "ja": ("{label}の写真。", "{label}の画像。", "{label}の絵。", "無地の背景にある{label}。"),
}
MAX_LABELS = 1000
MAX_TEMPLATES = 64
MAX_IMAGES = 64  # images per classification request


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    cosine: float


def prompt_templates(language: str, templates: Sequence[str] | None = None) -> tuple[str, ...]:
    """The caller's templates (each with one `{label}`) or the default ensemble of `language`."""
    if templates:
        if len(templates) > MAX_TEMPLATES:
            raise InvalidInput(f"at most {MAX_TEMPLATES} templates, got {len(templates)}")
        bad = [t for t in templates if t.count("{label}") != 1]
        if bad:
            raise InvalidInput(f"each template needs exactly one {{label}} slot; not: {bad[:3]}")
        return tuple(templates)
    if language not in DEFAULT_TEMPLATES:
        raise InvalidInput(f"Unknown language {language!r}. Available: {sorted(DEFAULT_TEMPLATES)}")
    return DEFAULT_TEMPLATES[language]


def label_embeddings(
    encoder: Encoder, labels: Sequence[str], templates: Sequence[str], cache: TextVectorCache | None = None
) -> np.ndarray:
    """(n_labels, dim) unit vectors: the mean of each label's prompt embeddings, renormalised. With a `cache`, the
    prompts of labels classified lately are not encoded again."""
    prompts = [t.replace("{label}", label) for label in labels for t in templates]
    prompt_vectors = cache.encode(encoder, prompts) if cache is not None else encoder.encode_texts(prompts)
    vectors = prompt_vectors.reshape(len(labels), len(templates), -1).mean(axis=1)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def classify(
    encoder: Encoder,
    image: Image.Image,
    labels: Sequence[str],
    *,
    language: str = "en",
    templates: Sequence[str] | None = None,
    k: int | None = None,
) -> list[LabelScore]:
    """The labels ranked by probability (softmax over logit_scale · cosine), best first, at most `k`."""
    return classify_images(encoder, [image], labels, language=language, templates=templates, k=k)[0]


def classify_images(
    encoder: Encoder,
    images: Iterable[Image.Image],
    labels: Sequence[str],
    *,
    language: str = "en",
    templates: Sequence[str] | None = None,
    k: int | None = None,
    cache: TextVectorCache | None = None,
) -> list[list[LabelScore]]:
    """One ranking per image (in order) against the same labels, whose prompt ensembles are encoded once.

    `images` may be a lazy iterable: it is drawn one encoder batch at a time, so no more than a batch of decoded
    images is held at once. At most `MAX_IMAGES` images.
    """
    labels = _checked_labels(labels)
    text = label_embeddings(encoder, labels, prompt_templates(language, templates), cache)
    rankings: list[list[LabelScore]] = []
    iterator = iter(images)
    while batch := list(islice(iterator, max(1, getattr(encoder, "image_batch_size", 1)))):
        if len(rankings) + len(batch) > MAX_IMAGES:
            raise InvalidInput(f"at most {MAX_IMAGES} images per classification")
        cosines = encoder.encode_images(batch, purpose="classification") @ text.T
        rankings.extend(_ranked(labels, row, encoder.info.logit_scale, k) for row in cosines)
    if not rankings:
        raise InvalidInput("give at least one image to classify")
    return rankings


def _checked_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label).strip() for label in labels]
    if not labels or any(not label for label in labels):
        raise InvalidInput("labels must be a non-empty list of non-empty strings")
    if len(labels) > MAX_LABELS or len(set(labels)) != len(labels):
        raise InvalidInput(f"labels must be distinct and at most {MAX_LABELS}")
    return labels


def _ranked(labels: Sequence[str], cosine: np.ndarray, logit_scale: float, k: int | None) -> list[LabelScore]:
    logits = logit_scale * cosine
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")[: k or len(labels)]
    return [LabelScore(labels[i], float(probs[i]), float(cosine[i])) for i in order]


def embed(encoder: Encoder, texts: Sequence[str], images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(text vectors, image vectors) of one encoder, unit rows; either list may be empty."""
    if not texts and not images:
        raise InvalidInput("give texts, images or both")
    return encoder.encode_texts(list(texts)), encoder.encode_images(list(images))
