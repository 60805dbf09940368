"""What one training step of the shapes-world InternVL-C/G sees: the rendered scene bank, the caption batch of a
step with its positives, and the single-object batch of the classification-style term (train_internvl.py).

Every batch is a pure function of (seed, step), which is what makes a resumed run equal a straight one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ..tokenizer import QLLaMATokenizer
from .captions import Caption, describe_scene, query_caption
from .content import Mention, scene_satisfies
from .languages import get_language
from .scene import Scene, generate_scene, shape_twin, split_seeds
from .training_common import render_in_workers
from .vocab import COLOURS, LANGUAGES, POSITIONS, SHAPES, SIZES, derive_seed

if TYPE_CHECKING:
    from .train_internvl import Recipe

N_CELLS = len(POSITIONS)  # the 3x3 grid of coarse positions


# --- scenes ---------------------------------------------------------------------------------------------------------
@dataclass
class SceneBank:
    """The training scenes: layouts (for captions and positives), pixels and per-cell labels."""

    scenes: list[Scene]
    pixels: torch.Tensor  # (N, 3, S, S) uint8, squashed from 224 px as retrieval_transform does
    cells: torch.Tensor  # (N, 9, 3) int64: colour, shape, size class per grid cell, 0 = empty


def _scene(key: tuple) -> Scene:
    """(seed, twin) or (seed, twin, single): `single` draws the one-object layout of the seed."""
    seed, twin, *rest = key
    scene = generate_scene(seed, min_objects=1, max_objects=1) if rest and rest[0] else generate_scene(seed)
    return shape_twin(scene) if twin else scene


def _render_chunk(keys: Sequence[tuple], size: int) -> np.ndarray:
    """(n, S, S, 3) uint8: scenes rendered at their default size, then resized like the inference transform."""
    out = np.empty((len(keys), size, size, 3), dtype=np.uint8)
    for i, key in enumerate(keys):
        out[i] = np.asarray(_scene(key).image.resize((size, size), Image.Resampling.BICUBIC))
    return out


def render_pixels(seeds: Sequence[tuple], size: int, workers: int) -> torch.Tensor:
    return render_in_workers(_render_chunk, seeds, size, workers)


def cell_labels(scene: Scene) -> torch.Tensor:
    """(9, 3): colour / shape / size class of the object in each grid cell (the layout allows one per cell)."""
    labels = torch.zeros(N_CELLS, 3, dtype=torch.long)
    for obj in scene.objects:
        cell = POSITIONS.index(obj.position)
        labels[cell, 0] = list(COLOURS).index(obj.colour) + 1
        labels[cell, 1] = SHAPES.index(obj.shape) + 1
        labels[cell, 2] = SIZES.index(obj.size) + 1
    return labels


def build_bank(recipe: Recipe, seed: int) -> SceneBank:
    """Scenes 0..n-1 are originals; with shape twins, scene n + i is the twin of scene i."""
    n = recipe.train_scenes // 2 if recipe.shape_twins else recipe.train_scenes
    seeds = split_seeds("train", n, seed)
    keys = [(s, False) for s in seeds] + ([(s, True) for s in seeds] if recipe.shape_twins else [])
    return _bank(keys, recipe)


def build_class_bank(recipe: Recipe, seed: int) -> SceneBank | None:
    """Single-object training scenes for the classification-style term (None when it is off)."""
    if recipe.class_batch <= 0:
        return None
    seeds = split_seeds("train", recipe.class_scenes, derive_seed("single-object bank", seed))
    return _bank([(s, False, True) for s in seeds], recipe)


def _bank(keys: Sequence[tuple], recipe: Recipe) -> SceneBank:
    scenes = [_scene(k) for k in keys]  # layouts only: pixels are rendered in the workers
    pixels = render_pixels(keys, recipe.image_size, recipe.render_workers)
    return SceneBank(scenes, pixels, torch.stack([cell_labels(s) for s in scenes]))


@dataclass
class Batch:
    index: torch.Tensor  # (B,) rows of the bank
    input_ids: list[torch.Tensor]  # length-bucketed chunks of right-padded ids
    order: torch.Tensor  # position of each text (in batch order) inside the concatenated chunks
    positives: torch.Tensor  # (B texts, B images) bool: image j satisfies caption i
    full: torch.Tensor  # (B,) bool: the caption describes every object (so it determines every cell)


def _object_key(scene: Scene) -> tuple:
    return tuple(sorted((o.colour, o.shape, o.position) for o in scene.objects))


def positives_matrix(scenes: Sequence[Scene], captions: Sequence[Caption]) -> torch.Tensor:
    """(T, B) bool, caption i satisfied by scene j; full captions only need checking against equal object sets."""
    by_key: dict[tuple, list[int]] = {}
    for j, scene in enumerate(scenes):
        by_key.setdefault(_object_key(scene), []).append(j)
    out = torch.zeros(len(captions), len(scenes), dtype=torch.bool)
    for i, caption in enumerate(captions):
        if caption.content.complete:
            candidates = by_key.get(_object_key(scenes[i]), [])  # caption i describes scene i
        else:
            candidates = range(len(scenes))
        for j in candidates:
            out[i, j] = scene_satisfies(scenes[j], caption.content)
    return out


def bucket_ids(
    tokenizer: QLLaMATokenizer, texts: Sequence[str], chunks: int = 4
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Tokenize, sort by length and pad per chunk: Chinese/Japanese captions are twice as long as the rest, and
    padding everything to the longest wastes half the text compute. The EOS feature does not see padding."""
    rows = [tokenizer.encode(t) for t in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    size = math.ceil(len(rows) / chunks)
    out = []
    for start in range(0, len(rows), size):
        part = [rows[i] for i in order[start : start + size]]
        ids = torch.zeros(len(part), max(len(r) for r in part), dtype=torch.long)
        for k, row in enumerate(part):
            ids[k, : len(row)] = torch.tensor(row)
        out.append(ids)
    inverse = torch.empty(len(rows), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(rows))
    return out, inverse


@dataclass
class ClassBatch:
    index: torch.Tensor  # (C,) rows of the single-object bank
    input_ids: list[torch.Tensor]
    order: torch.Tensor
    positives: torch.Tensor  # (C, C) bool: same colour and shape
    labels: torch.Tensor  # (C, 2) colour, shape (0-based)


def class_prompt(colour: str, shape: str, language: str, rng: random.Random, template_share: float) -> str:
    """A zero-shot style prompt for (colour, shape), no position: a classification template or a short query,
    with the language's synonyms drawn from `rng`."""
    lang = get_language(language)
    mention = Mention(colour, shape)
    if rng.random() < template_share:
        return rng.choice(lang.classification_templates).format_map(lang.forms(mention, rng))
    return lang.query(mention, rng)


def make_class_batch(bank: SceneBank, tokenizer: QLLaMATokenizer, recipe: Recipe, seed: int, step: int) -> ClassBatch:
    """`class_batch` single-object scenes of `class_colours` colours (a pure function of (seed, step))."""
    rng = random.Random(derive_seed("class-batch", seed, step))
    colours = set(rng.sample(list(COLOURS), recipe.class_colours))
    pool = [i for i, s in enumerate(bank.scenes) if s.objects[0].colour in colours]
    index = rng.sample(pool, min(recipe.class_batch, len(pool)))
    objects = [bank.scenes[i].objects[0] for i in index]
    texts = [class_prompt(o.colour, o.shape, rng.choice(LANGUAGES), rng, recipe.class_template_share) for o in objects]
    ids, order = bucket_ids(tokenizer, texts, chunks=2)
    labels = torch.tensor([[list(COLOURS).index(o.colour), SHAPES.index(o.shape)] for o in objects])
    positives = (labels[:, None, :] == labels[None, :, :]).all(-1)
    return ClassBatch(torch.tensor(index), ids, order, positives, labels)


def make_batch(bank: SceneBank, tokenizer: QLLaMATokenizer, recipe: Recipe, seed: int, step: int) -> Batch:
    """The batch of `step`: a pure function of (seed, step), which is what makes resuming exact."""
    rng = random.Random(derive_seed("batch", seed, step))
    if recipe.shape_twins:  # pairs that only shape tells apart
        n = len(bank.scenes) // 2
        half = rng.sample(range(n), recipe.batch_size // 2)
        index = half + [i + n for i in half]
    else:
        index = rng.sample(range(len(bank.scenes)), recipe.batch_size)
    scenes = [bank.scenes[i] for i in index]
    captions = []
    for scene in scenes:
        language = rng.choice(LANGUAGES)
        short = rng.random() < recipe.query_fraction
        captions.append((query_caption if short else describe_scene)(scene, language, rng.getrandbits(32)))
    ids, order = bucket_ids(tokenizer, [c.text for c in captions])
    full = torch.tensor([c.content.complete for c in captions])
    return Batch(torch.tensor(index), ids, order, positives_matrix(scenes, captions), full)
