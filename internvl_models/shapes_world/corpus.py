"""Datasets built from the generator: contrastive pairs, question answering, the demo corpus on disk, and the
plain text the tokenizers are trained on. Everything is a pure function of (split, n, languages, seed)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .captions import Caption, classification_prompts, describe_scene, query_caption
from .content import CaptionContent
from .questions import QA, QUESTION_KINDS, make_question
from .scene import DEFAULT_SIZE, SPLITS, Scene, generate_scene, split_seeds
from .vocab import COLOURS, LANGUAGES, SHAPES, derive_seed

CAPTION_STYLES = ("full", "query", "mixed")


@dataclass(frozen=True)
class Pair:
    """One image-text pair for contrastive training."""

    image: Image.Image
    caption: str
    language: str
    content: CaptionContent
    scene: Scene


def _check_languages(languages: Sequence[str]) -> None:
    unknown = sorted(set(languages) - set(LANGUAGES))
    if unknown or not languages:
        raise ValueError(f"Unknown or no languages {unknown}. Available: {list(LANGUAGES)}")


def iter_pairs(
    split: str = "train",
    n: int = 1000,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    style: str = "full",
) -> Iterator[Pair]:
    """`n` (image, caption) pairs over `n` distinct scenes of `split`, languages in rotation (balanced).

    style "full" describes every object; "query" gives a short phrase about one object; "mixed" is 80/20.
    """
    _check_languages(languages)
    if style not in CAPTION_STYLES:
        raise ValueError(f"Unknown caption style {style!r}. Available: {list(CAPTION_STYLES)}")
    rng = random.Random(derive_seed("pairs", split, seed))
    for i, scene_seed in enumerate(split_seeds(split, n, seed)):
        scene = generate_scene(scene_seed, size=size)
        language = languages[i % len(languages)]
        short = style == "query" or (style == "mixed" and rng.random() < 0.2)
        caption = (query_caption if short else describe_scene)(scene, language, seed)
        yield Pair(scene.image, caption.text, language, caption.content, scene)


def _qa_scenes(kind: str, split: str, rng: random.Random, size: int, max_images: int) -> list[Scene]:
    seeds = SPLITS[split]
    count = rng.randint(2, max_images) if kind == "multi_image" else 1
    return [generate_scene(seeds[rng.randrange(len(seeds))], size=size) for _ in range(count)]


def iter_qa(
    split: str = "train",
    n: int = 1000,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
    *,
    kinds: Sequence[str] = QUESTION_KINDS,
    size: int = DEFAULT_SIZE,
    max_images: int = 4,
) -> Iterator[QA]:
    """`n` questions with answers. Kinds and languages rotate so both are balanced, and existence questions
    alternate yes / no. Each QA has .images, .question, .answer, .kind, .language (and .scenes, .value)."""
    _check_languages(languages)
    unknown = sorted(set(kinds) - set(QUESTION_KINDS))
    if unknown:
        raise ValueError(f"Unknown question kinds {unknown}. Available: {list(QUESTION_KINDS)}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Available: {sorted(SPLITS)}")
    rng = random.Random(derive_seed("qa", split, seed))
    existence_asked = 0
    for i in range(n):
        kind = kinds[i % len(kinds)]
        language = languages[(i // len(kinds)) % len(languages)]
        want = existence_asked % 2 == 0 if kind == "existence" else None
        qa = None
        while qa is None:  # a few scenes admit no question of a kind (e.g. two identical objects only)
            qa = make_question(kind, _qa_scenes(kind, split, rng, size, max_images), language, rng, want=want)
        existence_asked += kind == "existence"
        yield qa


def write_demo_corpus(
    directory: str | Path,
    n: int = 64,
    *,
    split: str = "test",
    size: int = DEFAULT_SIZE,
    image_format: str = "png",
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
) -> Path:
    """Write `n` scenes as image files plus `manifest.jsonl` (one JSON object per image: relative path, seed,
    split, objects, and a caption + a query per language with their structured content). Returns the manifest
    path."""
    _check_languages(languages)
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    manifest = root / "manifest.jsonl"
    with manifest.open("w", encoding="utf-8") as out:
        for i, scene_seed in enumerate(split_seeds(split, n, seed)):
            scene = generate_scene(scene_seed, size=size)
            relative = f"images/{split}_{i:05d}.{'png' if image_format == 'png' else 'jpg'}"
            options = {"quality": 92} if image_format == "jpeg" else {}
            scene.image.save(root / relative, format=image_format.upper(), **options)
            record = {
                "path": relative,
                "split": split,
                **scene.to_dict(),
                "captions": {code: describe_scene(scene, code, seed).to_dict() for code in languages},
                "queries": {code: query_caption(scene, code, seed).to_dict() for code in languages},
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return manifest


def iter_texts(n_scenes: int = 400, languages: Sequence[str] = LANGUAGES, seed: int = 0) -> Iterator[str]:
    """Every kind of text the models will read or write, for tokenizer training: captions (also with the
    InternVL-C "summarize:" prefix), queries, zero-shot prompts, questions and answers (grounding included)."""
    _check_languages(languages)
    rng = random.Random(derive_seed("texts", seed))
    for language in languages:
        for colour in (None, *COLOURS):
            for shape in (None, *SHAPES):
                if colour or shape:
                    yield from classification_prompts(language, colour, shape)
    previous: Scene | None = None
    for i, scene_seed in enumerate(split_seeds("train", n_scenes, seed)):
        scene = generate_scene(scene_seed, size=32)  # pixels are never rendered here; size only sets boxes
        for li, language in enumerate(languages):
            caption: Caption = describe_scene(scene, language, seed + i)
            yield caption.text
            yield "summarize:" + caption.text
            yield query_caption(scene, language, seed + i).text
            kind = QUESTION_KINDS[(i + li) % len(QUESTION_KINDS)]
            if kind == "multi_image" and previous is None:
                continue
            qa = make_question(kind, [previous, scene] if kind == "multi_image" else scene, language, rng)
            if qa is not None:
                yield qa.prompt() if kind == "multi_image" else qa.question  # "Image-1: <image>\n..." labels
                yield qa.answer
        previous = scene
