"""The shapes world's held-out evaluation scenes written as ordinary evaluation data, for any evaluation tool:

* `write_classification_folder`: the single-object scenes of `evaluate.evaluate_classification` as a labelled
  folder (`<colour>_<shape>/NNNNN.png`) plus `classes.json` holding all 56 classes (also those no scene shows) with
  each language's full prompt ensemble, so a generic zero-shot evaluation scores exactly what that function does;
* `write_caption_manifest`: the multi-object scenes of `evaluate.evaluate_retrieval` with their caption in every
  language, as a JSONL caption manifest.

Images are PNG (lossless), so the pixels read back are the pixels the in-memory evaluation encodes.

    python -m internvl_models.shapes_world.eval_sets OUT_DIR [--n-scenes 500] [--split test]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from .captions import classification_prompts, describe_scene
from .evaluate import CLASSES, held_out_scenes
from .scene import DEFAULT_SIZE
from .vocab import LANGUAGES


def class_id(colour: str, shape: str) -> str:
    return f"{colour}_{shape}"


def write_classification_folder(
    directory: str | Path,
    n_scenes: int = 500,
    languages: Sequence[str] = LANGUAGES,
    split: str = "test",
    *,
    seed: int = 0,
    image_size: int = DEFAULT_SIZE,
) -> Path:
    """Write the labelled folder; returns it."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for i, (scene, image) in enumerate(held_out_scenes(split, n_scenes, seed, True, image_size)):
        target = root / class_id(scene.objects[0].colour, scene.objects[0].shape) / f"{i:05d}.png"
        target.parent.mkdir(exist_ok=True)
        image.save(target, format="PNG")
    spec = {
        "classes": [class_id(c, s) for c, s in CLASSES],
        "prompts": {
            class_id(c, s): {language: classification_prompts(language, c, s) for language in languages}
            for c, s in CLASSES
        },
    }
    (root / "classes.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1), encoding="utf-8")
    return root


def write_caption_manifest(
    directory: str | Path,
    n_scenes: int = 500,
    languages: Sequence[str] = LANGUAGES,
    split: str = "test",
    *,
    seed: int = 0,
    image_size: int = DEFAULT_SIZE,
) -> Path:
    """Write `images/` and `captions.jsonl` (one caption per scene and language); returns the manifest path."""
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    manifest = root / "captions.jsonl"
    with manifest.open("w", encoding="utf-8") as out:
        for i, (scene, image) in enumerate(held_out_scenes(split, n_scenes, seed, False, image_size)):
            relative = f"images/{split}_{i:05d}.png"
            image.save(root / relative, format="PNG")
            captions = {language: [describe_scene(scene, language, seed).text] for language in languages}
            out.write(json.dumps({"image": relative, "captions": captions}, ensure_ascii=False) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write shapes-world evaluation data (labelled folder + captions)")
    parser.add_argument("out", help="output directory (classification/ and retrieval/ are written inside)")
    parser.add_argument("--n-scenes", type=int, default=500)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    out = Path(args.out)
    folder = write_classification_folder(out / "classification", args.n_scenes, split=args.split)
    manifest = write_caption_manifest(out / "retrieval", args.n_scenes, split=args.split)
    print(f"labelled folder: {folder}\ncaption manifest: {manifest}")


if __name__ == "__main__":
    main()
