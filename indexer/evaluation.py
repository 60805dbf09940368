"""Built-in evaluation of an encoder: zero-shot classification on a labelled image folder and image<->text
retrieval on a caption manifest, with CLIP_benchmark's metric definitions.

Labelled folder (`class_name/*.jpg`, images found recursively inside each class folder), with an optional
`classes.json` beside the class folders:

    {"classes": ["red_circle", ...],                        # label order and classes without images
     "names": {"red_circle": {"en": "red circle", "de": "roter Kreis"}},
     "templates": {"en": ["a photo of {label}."]},           # default: indexer.classify.DEFAULT_TEMPLATES
     "prompts": {"red_circle": {"en": ["a red circle."]}}}   # a full prompt ensemble, instead of name x templates

Each class is the normalised mean of its normalised prompt embeddings (CLIP's prompt ensembling); an image's
prediction is the class of highest cosine with its classification embedding. Top-1 and top-5 are the share of
images whose class is among the first 1 / 5 (top-5 only with at least 5 classes); mean per-class recall is the
mean, over the classes that have images, of the share of their images predicted as themselves.

Caption manifest (JSONL, one image per line; paths relative to the manifest's folder):

    {"image": "images/0001.jpg", "captions": ["a red circle", "..."], "language": "en"}
    {"image": "images/0002.jpg", "captions": {"en": ["a blue star"], "de": ["ein blauer Stern"]}}

Retrieval is scored per language over the images that have a caption in it. Text->image R@k: the share of
captions whose image is among the k nearest images. Image->text R@k: the share of images with at least one of
their captions among the k nearest captions. Ties keep manifest order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.classify import DEFAULT_TEMPLATES
from indexer.errors import InvalidInput
from indexer.pipeline.decode import DecodeError, decode_image
from indexer.pipeline.paths import IMAGE_EXTENSIONS, SourceError, read_file, resolve_allowed
from internvl_models import Encoder

CLASSES_FILE = "classes.json"
RETRIEVAL_KS = (1, 5, 10)
MAX_EVAL_IMAGES = 50_000
MAX_FILE_BYTES = 50 * 2**20
MAX_PIXELS = 64_000_000
Progress = Callable[[int, int], None]  # (images encoded so far, images in all)


@dataclass(frozen=True)
class ClassificationSet:
    """A labelled folder, read: the class ids in label order, (image path, label) pairs, and per language one
    prompt ensemble per class."""

    classes: list[str]
    images: list[tuple[Path, int]]
    prompts: dict[str, list[list[str]]]


@dataclass(frozen=True)
class RetrievalSet:
    """A caption manifest, read: the distinct images, and per language the captions with the index of their image."""

    images: list[Path]
    captions: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalData:
    """Where an evaluation reads from; `roots` bounds every path (the service's allowed roots)."""

    classification: str | None = None
    retrieval: str | None = None
    languages: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        languages = list(self.languages) if self.languages else None
        return {"classification": self.classification, "retrieval": self.retrieval, "languages": languages}

    @classmethod
    def from_dict(cls, body: dict[str, Any] | None) -> EvalData | None:
        if not body or not (body.get("classification") or body.get("retrieval")):
            return None
        languages = tuple(body["languages"]) if body.get("languages") else None
        return cls(body.get("classification"), body.get("retrieval"), languages)


# --- reading the sets ---------------------------------------------------------------------------------------------


def _allowed(raw: str, roots: Sequence[Path], what: str) -> Path:
    try:
        return resolve_allowed(str(raw), roots)
    except SourceError as exc:
        raise InvalidInput(f"{what} {raw!r}: {exc}") from None


def _json_file(path: Path, roots: Sequence[Path]) -> Any:
    try:
        return json.loads(read_file(str(path), roots, MAX_FILE_BYTES).decode("utf-8"))
    except (SourceError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: {exc}") from None


def load_classification_set(
    folder: str, roots: Sequence[Path], languages: Sequence[str] | None = None
) -> ClassificationSet:
    """Read a labelled folder (see the module docstring); `InvalidInput` says what is wrong with it."""
    root = _allowed(folder, roots, "classification folder")
    if not root.is_dir():
        raise InvalidInput(f"classification folder {folder!r} is not a directory")
    spec = _json_file(root / CLASSES_FILE, roots) if (root / CLASSES_FILE).is_file() else {}
    if not isinstance(spec, dict):
        raise InvalidInput(f"{CLASSES_FILE} must hold a JSON object")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(spec.get("classes") or folders)
    missing = sorted(set(folders) - set(classes))
    if missing or len(set(classes)) != len(classes):
        raise InvalidInput(f"{CLASSES_FILE} 'classes' must list each class once, with every class folder: {missing}")
    images = [(path, label) for label, name in enumerate(classes) for path in _class_images(root / name)]
    if len(classes) < 2 or not images:
        raise InvalidInput(f"classification folder {folder!r} needs at least 2 classes and 1 image")
    if len(images) > MAX_EVAL_IMAGES:
        raise InvalidInput(f"classification folder has {len(images):,} images, more than {MAX_EVAL_IMAGES:,}")
    languages = list(languages or _languages_of(spec))
    prompts = {language: [_class_prompts(spec, name, language) for name in classes] for language in languages}
    return ClassificationSet(classes, images, prompts)


def _class_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _languages_of(spec: dict[str, Any]) -> list[str]:
    """Every language classes.json speaks (English first), or English alone."""
    found = {lang for table in ("names", "prompts") for per in (spec.get(table) or {}).values() for lang in per}
    found |= set(spec.get("templates") or {})
    return sorted(found, key=lambda lang: (lang != "en", lang)) or ["en"]


def _class_prompts(spec: dict[str, Any], name: str, language: str) -> list[str]:
    given = ((spec.get("prompts") or {}).get(name) or {}).get(language)
    if given:
        if not isinstance(given, list) or not all(isinstance(p, str) and p for p in given):
            raise InvalidInput(f"prompts of class {name!r} in {language!r} must be a list of strings")
        return given
    label = ((spec.get("names") or {}).get(name) or {}).get(language)
    if label is None and language == "en":
        label = name.replace("_", " ")  # the folder name is the English class name unless told otherwise
    if not isinstance(label, str) or not label:
        raise InvalidInput(f"class {name!r} has no name or prompts in language {language!r} ({CLASSES_FILE})")
    templates = (spec.get("templates") or {}).get(language) or DEFAULT_TEMPLATES.get(language)
    if not templates or not all(isinstance(t, str) and t.count("{label}") == 1 for t in templates):
        raise InvalidInput(f"no usable prompt templates (each with one {{label}}) for language {language!r}")
    return [t.replace("{label}", label) for t in templates]


def load_retrieval_set(manifest: str, roots: Sequence[Path]) -> RetrievalSet:
    """Read a caption manifest (see the module docstring); `InvalidInput` names the line that is wrong."""
    path = _allowed(manifest, roots, "caption manifest")
    try:
        lines = read_file(str(path), roots, MAX_FILE_BYTES).decode("utf-8").splitlines()
    except (SourceError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"caption manifest {manifest!r}: {exc}") from None
    images: dict[Path, int] = {}
    captions: dict[str, list[tuple[str, int]]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        image, per_language = _manifest_line(line, number, path.parent)
        index = images.setdefault(image, len(images))
        for language, texts in per_language.items():
            captions.setdefault(language, []).extend((text, index) for text in texts)
    if not captions:
        raise InvalidInput(f"caption manifest {manifest!r} holds no captions")
    if len(images) > MAX_EVAL_IMAGES:
        raise InvalidInput(f"caption manifest names {len(images):,} images, more than {MAX_EVAL_IMAGES:,}")
    return RetrievalSet(list(images), captions)


def _manifest_line(line: str, number: int, base: Path) -> tuple[Path, dict[str, list[str]]]:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidInput(f"caption manifest line {number}: not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
        raise InvalidInput(f"caption manifest line {number}: needs an 'image' path")
    given = record.get("captions")
    if isinstance(given, list):
        given = {str(record.get("language") or "default"): given}
    if not isinstance(given, dict) or not given:
        raise InvalidInput(f"caption manifest line {number}: 'captions' must be a list or a language -> list object")
    per_language = {}
    for language, texts in given.items():
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InvalidInput(f"caption manifest line {number}: captions must be non-empty strings")
        per_language[str(language)] = texts
    image = Path(record["image"])
    return (image if image.is_absolute() else base / image), per_language


# --- encoding and scoring -------------------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _read_image(path: Path, roots: Sequence[Path]) -> Image.Image:
    try:
        return decode_image(read_file(str(path), roots, MAX_FILE_BYTES), max_pixels=MAX_PIXELS, max_frames=10_000).image
    except (SourceError, DecodeError) as exc:
        raise InvalidInput(f"evaluation image {path}: {exc}") from None


def encode_image_files(
    encoder: Encoder, paths: Sequence[Path], roots: Sequence[Path], purpose: str, progress: Progress | None = None
) -> np.ndarray:
    """(n, dim) unit vectors of image files, one encoder batch at a time (so only a batch is decoded at once)."""
    batch = max(1, int(getattr(encoder, "image_batch_size", 32)))
    out = []
    for start in range(0, len(paths), batch):
        images = [_read_image(p, roots) for p in paths[start : start + batch]]
        out.append(encoder.encode_images(images, purpose=purpose))
        if progress is not None:
            progress(min(start + batch, len(paths)), len(paths))
    return _unit(np.concatenate(out)) if out else np.zeros((0, encoder.dim), dtype=np.float32)


def classification_metrics(similarity: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Top-1, top-5 (None under 5 classes) and mean per-class recall from (images, classes) similarities."""
    ranked = np.argsort(-similarity, axis=1, kind="stable")
    correct = ranked == labels[:, None]
    predicted = ranked[:, 0]
    recalls = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return {
        "top1": float(correct[:, :1].any(axis=1).mean()),
        "top5": float(correct[:, :5].any(axis=1).mean()) if similarity.shape[1] >= 5 else None,
        "mean_per_class_recall": float(np.mean(recalls)),
    }


def retrieval_metrics(
    similarity: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = RETRIEVAL_KS
) -> dict[str, dict[str, float]]:
    """R@k both ways from (captions, images) similarities; `caption_image[i]` is caption i's image."""
    n_captions, n_images = similarity.shape
    positive = np.zeros((n_captions, n_images), dtype=bool)
    positive[np.arange(n_captions), caption_image] = True
    by_text = np.argsort(-similarity, axis=1, kind="stable")  # images ranked for each caption
    by_image = np.argsort(-similarity.T, axis=1, kind="stable")  # captions ranked for each image
    text_hits = np.take_along_axis(positive, by_text, axis=1)
    image_hits = np.take_along_axis(positive.T, by_image, axis=1)
    has_caption = positive.any(axis=0)
    return {
        "text_to_image": {f"R@{k}": float(text_hits[:, :k].any(axis=1).mean()) for k in ks},
        "image_to_text": {f"R@{k}": float(image_hits[has_caption, :k].any(axis=1).mean()) for k in ks},
    }


def evaluate_classification(
    encoder: Encoder, data: ClassificationSet, roots: Sequence[Path], progress: Progress | None = None
) -> dict[str, Any]:
    """Zero-shot classification report: per language top-1 / top-5 / mean per-class recall, and their means."""
    paths = [path for path, _ in data.images]
    labels = np.array([label for _, label in data.images])
    images = encode_image_files(encoder, paths, roots, "classification", progress)
    per_language = {}
    for language, prompts in data.prompts.items():
        flat = _unit(encoder.encode_texts([p for group in prompts for p in group]))
        bounds = np.cumsum([0, *(len(group) for group in prompts)])
        classes = _unit(np.stack([flat[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:])]))
        per_language[language] = classification_metrics(images @ classes.T, labels)
    return {
        "task": "zero_shot_classification",
        "n_images": len(paths),
        "n_classes": len(data.classes),
        "languages": per_language,
        "mean": _mean(per_language),
    }


def evaluate_retrieval(
    encoder: Encoder, data: RetrievalSet, roots: Sequence[Path], progress: Progress | None = None
) -> dict[str, Any]:
    """Retrieval report: per language R@1/5/10 in both directions, and their means over languages."""
    images = encode_image_files(encoder, data.images, roots, "retrieval", progress)
    per_language = {}
    for language, pairs in sorted(data.captions.items()):
        used = sorted({index for _, index in pairs})  # the gallery: images with a caption in this language
        position = {index: i for i, index in enumerate(used)}
        texts = _unit(encoder.encode_texts([text for text, _ in pairs]))
        owners = np.array([position[index] for _, index in pairs])
        metrics = retrieval_metrics(texts @ images[used].T, owners)
        per_language[language] = {"n_images": len(used), "n_captions": len(pairs), **metrics}
    mean = {
        direction: _mean({lang: row[direction] for lang, row in per_language.items()})
        for direction in ("text_to_image", "image_to_text")
    }
    return {
        "task": "retrieval",
        "n_images": len(data.images),
        "n_captions": sum(len(p) for p in data.captions.values()),
        "languages": per_language,
        "mean": mean,
    }


def _mean(per_language: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    rows = list(per_language.values())
    keys = [k for k, v in rows[0].items() if not isinstance(v, dict)] if rows else []
    out: dict[str, float | None] = {}
    for key in keys:
        values = [row[key] for row in rows if row[key] is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


# --- whole reports ------------------------------------------------------------------------------------------------


def evaluate(
    encoder: Encoder, data: EvalData, roots: Sequence[Path], progress: Progress | None = None
) -> dict[str, Any]:
    """Every evaluation `data` names, for one encoder: {"encoder", "fingerprint", "classification"?, "retrieval"?}."""
    if not data.classification and not data.retrieval:
        raise InvalidInput("give a labelled folder (classification) and/or a caption manifest (retrieval)")
    report: dict[str, Any] = {"encoder": encoder.name, "fingerprint": encoder.fingerprint}
    if data.classification:
        labelled = load_classification_set(data.classification, roots, data.languages)
        report["classification"] = evaluate_classification(encoder, labelled, roots, progress)
    if data.retrieval:
        report["retrieval"] = evaluate_retrieval(encoder, load_retrieval_set(data.retrieval, roots), roots, progress)
    return report


def headline(report: dict[str, Any]) -> dict[str, float]:
    """The report's mean metrics as flat names ("classification.top1", "retrieval.text_to_image.R@1", ...)."""
    out: dict[str, float] = {}
    for key, value in (report.get("classification") or {}).get("mean", {}).items():
        if value is not None:
            out[f"classification.{key}"] = value
    for direction, metrics in (report.get("retrieval") or {}).get("mean", {}).items():
        out.update({f"retrieval.{direction}.{k}": v for k, v in metrics.items() if v is not None})
    return out


def compare(baseline: dict[str, Any], candidate: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Side by side: for each headline metric both reports have, {"a", "b", "delta"} (delta = b - a)."""
    a, b = headline(baseline), headline(candidate)
    return {name: {"a": a[name], "b": b[name], "delta": b[name] - a[name]} for name in a if name in b}
