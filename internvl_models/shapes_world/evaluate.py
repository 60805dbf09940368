"""Held-out evaluation of an image-text encoder on the shapes world, scored by meaning rather than by index.

    python -m internvl_models.shapes_world.evaluate CHECKPOINT_DIR [--n-scenes 500] [--heads c,g]

* `evaluate_retrieval`: text -> image over `n_scenes` held-out scenes, one all-object caption per scene and
  language (`describe_scene`). A retrieved scene is a hit when it *satisfies* the caption (`scene_satisfies`), so
  a different scene holding exactly the described objects counts too. R@1 / R@5 per language.
* `evaluate_classification`: zero-shot over single-object scenes and all colour x shape classes; each class is
  the mean of its prompt ensemble (the language's classification templates), as CLIP does. Top-1 per language.

Both take anything with the `Encoder` methods `encode_images(images, purpose)` and `encode_texts(texts)`; the CLI
loads the checkpoint with `create_encoder`, the path the service uses.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from .captions import classification_prompts, describe_scene
from .content import scene_satisfies
from .scene import DEFAULT_SIZE, Scene, generate_scene, split_seeds
from .vocab import COLOURS, LANGUAGES, SHAPES

CLASSES: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


class SupportsEncode(Protocol):
    def encode_images(self, images: Sequence[Image.Image], purpose: str = ...) -> np.ndarray: ...

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@lru_cache(maxsize=8)
def held_out_scenes(split: str, n: int, seed: int, single: bool, size: int) -> tuple[tuple[Scene, Image.Image], ...]:
    """Scenes of `split` with their images (cached: a training run evaluates the same scenes again and again).
    `single` draws one-object layouts from the same seeds."""
    objects = {"min_objects": 1, "max_objects": 1} if single else {}
    scenes = [generate_scene(s, size=size, **objects) for s in split_seeds(split, n, seed)]
    return tuple((scene, scene.image) for scene in scenes)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _summary(per_language: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Mean and worst over languages, and the largest shortfall of a language behind English."""
    metrics = next(iter(per_language.values())).keys()
    out: dict[str, Any] = {"mean": {}, "min": {}}
    for m in metrics:
        values = [row[m] for row in per_language.values()]
        out["mean"][m] = round(float(np.mean(values)), 4)
        out["min"][m] = round(float(np.min(values)), 4)
    if "en" in per_language:
        out["max_gap_to_en"] = {
            m: round(max(per_language["en"][m] - row[m] for row in per_language.values()), 4) for m in metrics
        }
    return out


def evaluate_retrieval(
    encoder: SupportsEncode,
    n_scenes: int = 500,
    languages: Sequence[str] = LANGUAGES,
    split: str = "test",
    *,
    seed: int = 0,
    ks: Sequence[int] = (1, 5),
    image_size: int = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Text -> image R@k per language, semantic hits, over `n_scenes` scenes of `split` (1-4 objects each)."""
    pairs = held_out_scenes(split, n_scenes, seed, False, image_size)
    scenes = [scene for scene, _ in pairs]
    images = _unit(encoder.encode_images([image for _, image in pairs], purpose="retrieval"))
    per_language: dict[str, dict[str, float]] = {}
    for language in languages:
        captions = [describe_scene(scene, language, seed) for scene in scenes]
        texts = _unit(encoder.encode_texts([c.text for c in captions]))
        ranked = np.argsort(-(texts @ images.T), axis=1, kind="stable")[:, : max(ks)]
        hits = np.array([[scene_satisfies(scenes[j], c.content) for j in row] for c, row in zip(captions, ranked)])
        per_language[language] = {f"R@{k}": round(float(hits[:, :k].any(axis=1).mean()), 4) for k in ks}
    return {"task": "text_to_image", "split": split, "n_scenes": n_scenes, **per_language, **_summary(per_language)}


def class_embeddings(encoder: SupportsEncode, language: str) -> np.ndarray:
    """(56, dim): per class the normalised mean of its normalised prompt embeddings (CLIP's prompt ensembling)."""
    prompts = [classification_prompts(language, colour, shape) for colour, shape in CLASSES]
    flat = _unit(encoder.encode_texts([p for group in prompts for p in group]))
    out, start = [], 0
    for group in prompts:
        out.append(flat[start : start + len(group)].mean(axis=0))
        start += len(group)
    return _unit(np.stack(out))


def evaluate_classification(
    encoder: SupportsEncode,
    n_scenes: int = 500,
    languages: Sequence[str] = LANGUAGES,
    split: str = "test",
    *,
    seed: int = 0,
    image_size: int = DEFAULT_SIZE,
) -> dict[str, Any]:
    """Zero-shot top-1 per language over single-object scenes and all colour x shape classes."""
    pairs = held_out_scenes(split, n_scenes, seed, True, image_size)
    labels = np.array([CLASSES.index((s.objects[0].colour, s.objects[0].shape)) for s, _ in pairs])
    images = _unit(encoder.encode_images([image for _, image in pairs], purpose="classification"))
    per_language = {}
    for language in languages:
        predicted = (images @ class_embeddings(encoder, language).T).argmax(axis=1)
        per_language[language] = {"top1": round(float((predicted == labels).mean()), 4)}
    return {
        "task": "zero_shot_classification",
        "split": split,
        "n_scenes": n_scenes,
        "n_classes": len(CLASSES),
        **per_language,
        **_summary(per_language),
    }


def evaluate_checkpoint(checkpoint: str, heads: Sequence[str] = ("c", "g"), n_scenes: int = 500) -> dict[str, Any]:
    """Both evaluations for each head of a checkpoint, loaded as the service loads it."""
    from ..registry import create_encoder  # the registry pulls in every back end; only the CLI needs it

    report = {}
    for head in heads:
        encoder = create_encoder(f"internvl-{head}", checkpoint, device="cpu")
        report[f"internvl-{head}"] = {
            "retrieval": evaluate_retrieval(encoder, n_scenes),
            "classification": evaluate_classification(encoder, n_scenes),
        }
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Shapes-world retrieval and zero-shot evaluation (JSON report)")
    parser.add_argument("checkpoint", help="InternVL-C/G checkpoint directory or hub id")
    parser.add_argument("--n-scenes", type=int, default=500)
    parser.add_argument("--heads", default="c,g", help="comma-separated subset of c,g")
    parser.add_argument("--out", help="also write the report to this JSON file")
    args = parser.parse_args(argv)
    heads = [h.strip().lower() for h in args.heads.split(",") if h.strip()]
    text = json.dumps(evaluate_checkpoint(args.checkpoint, heads, args.n_scenes), indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
