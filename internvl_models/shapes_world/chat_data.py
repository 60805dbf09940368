"""Training data of the shapes-world chat model: rendered scene banks with per-cell targets, and question-answer
conversations tokenized exactly as the inference path builds its prompts.

Batches are pure functions of (seed, step), which is what makes a resumed run equal a straight one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..conversation import get_template
from ..tiling import build_query, dynamic_tiles
from .questions import MAX_IMAGES, QUESTION_KINDS, make_question
from .scene import Scene, generate_scene, split_seeds
from .training_common import render_in_workers
from .vocab import COLOURS, LANGUAGES, POSITIONS, SHAPES, SIZES, derive_seed

if TYPE_CHECKING:
    from .train_chat import Recipe

TEMPLATE = "internvl2_5"


@dataclass
class SceneBank:
    scenes: list[Scene]
    pixels: torch.Tensor  # (N, 3, S, S) uint8: the one 1x1 tile the inference path makes of each scene
    cells: torch.Tensor  # (N, 9, 3) int64: colour, shape, size class per grid cell, 0 = empty
    boxes: torch.Tensor  # (N, 9, 4) float: the cell's object box, relative to the cell (0-1 = the cell)


def _render_chunk(seeds: Sequence[int], size: int) -> np.ndarray:
    out = np.empty((len(seeds), size, size, 3), dtype=np.uint8)
    for i, seed in enumerate(seeds):
        out[i] = np.asarray(dynamic_tiles(generate_scene(seed).image, image_size=size, max_num=1)[0])
    return out


def render_pixels(seeds: Sequence[int], size: int, workers: int) -> torch.Tensor:
    return render_in_workers(_render_chunk, seeds, size, workers)


N_COLOUR, N_SHAPE, N_SIZE = len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1  # classes of `cell_targets`; 0 = empty


def cell_targets(scene: Scene) -> tuple[torch.Tensor, torch.Tensor]:
    labels, boxes = torch.zeros(9, 3, dtype=torch.long), torch.zeros(9, 4)
    for obj in scene.objects:
        cell = POSITIONS.index(obj.position)
        labels[cell] = torch.tensor(
            [list(COLOURS).index(obj.colour) + 1, SHAPES.index(obj.shape) + 1, SIZES.index(obj.size) + 1]
        )
        col, row = cell % 3, cell // 3
        x1, y1, x2, y2 = obj.unit_box
        boxes[cell] = torch.tensor([x1 * 3 - col, y1 * 3 - row, x2 * 3 - col, y2 * 3 - row])
    return labels, boxes


def region_cells(grid: int) -> torch.Tensor:
    """(grid*grid,) the 3x3 cell holding the centre of each square region of a grid x grid layout, row-major."""
    band = (((torch.arange(grid) + 0.5) / grid) * 3).floor().long().clamp(max=2)
    return (band[:, None] * 3 + band[None, :]).flatten()


@dataclass
class Chunk:
    input_ids: torch.Tensor  # (B, L) conversations after the shared system prefix, right-padded
    labels: torch.Tensor  # (B, L) next-token targets (-100 outside the answers)
    answer: torch.Tensor  # (B, L) the batch-wide index of the answer each target belongs to (-1: none)
    images: torch.Tensor  # (I,) bank rows of the images, in prompt order


@dataclass
class Batch:
    chunks: list[Chunk]  # rows of similar length together: padding everything to the longest doubles the work
    kinds: list[str]  # of the answers, in answer-index order
    referents: torch.Tensor  # (A, 3) colour, shape, cell of the object each question is about (0 = not said)


Conversation = tuple[list[int], list[Any]]  # (bank rows of the images, the QAs asked about them in turn)


class Encoder:
    """Conversations -> ids, through the shipped tokenizer and the inference path's `build_query`."""

    def __init__(self, tokenizer: Any, num_image_token: int) -> None:
        self.tokenizer, self.num_image_token = tokenizer, num_image_token
        self.template = get_template(TEMPLATE)
        head = self.template.system_template.format(system_message=self.template.system_message)
        # Ends on the special <|im_start|>, so the tokens of every prompt start with exactly these.
        self.prefix = self._ids(head + self.template.sep + "<|im_start|>")

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode(self, n_images: int, qas: Sequence[Any]) -> tuple[list[int], list[tuple[int, int]]]:
        """(ids after the prefix, (start, end) of each answer). The first turn is exactly the inference prompt;
        each answer is tokenized on its own, as generation produces it, and closed by the stop token."""
        t = self.template
        query = build_query(t, qas[0].prompt(), num_image_token=self.num_image_token, num_patches_list=[1] * n_images)
        ids = self._ids(query)
        if ids[: len(self.prefix)] != self.prefix:
            raise RuntimeError("the prompt does not start with the shared system prefix")
        ids, spans = ids[len(self.prefix) :], []
        for k, qa in enumerate(qas):
            if k:  # tokenized after the stop token (then dropped), so the "\n" gets no word-start marker
                ids += self._ids(f"{t.sep}{t.roles[0]}{qa.question}{t.sep}{t.roles[1]}")[1:]
            answer = self._ids(qa.answer + t.stop_token)
            spans.append((len(ids), len(ids) + len(answer)))
            ids += answer
        return ids, spans


def sample_conversations(
    bank: SceneBank, recipe: Recipe, rng: random.Random, n: int, pool: Sequence[int] | None = None
) -> list[Conversation]:
    """`n` conversations of `turns` questions in one language; multi-image ones (2-4 images) as often as
    `kind_weights` asks for multi-image questions, the others about one image with kinds drawn by the weights."""
    weights = recipe.kind_weights
    out: list[Conversation] = []
    while len(out) < n:
        multi = rng.random() < weights[-1] / sum(weights)
        rows = rng.sample(pool or range(len(bank.scenes)), rng.randint(2, MAX_IMAGES) if multi else 1)
        scenes = [bank.scenes[r] for r in rows]
        language, qas = rng.choice(LANGUAGES), []
        for _ in range(3 * recipe.turns):  # a few scenes admit no question of some kinds
            kind = "multi_image" if multi else rng.choices(QUESTION_KINDS[:-1], weights=weights[:-1])[0]
            qa = make_question(kind, scenes if multi else scenes[0], language, rng)
            qas += [qa] if qa is not None else []
            if len(qas) == recipe.turns:
                break
        if qas:
            out.append((rows, qas))
    return out


def _chunk(rows: Sequence[tuple[list[int], list[tuple[int, int]], list[int]]], first_answer: int) -> Chunk:
    width = max(len(ids) for ids, _, _ in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    answer = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, (row, spans, _) in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        for start, end in spans:  # position p predicts token p + 1
            labels[i, start - 1 : end - 1] = ids[i, start:end]
            answer[i, start - 1 : end - 1] = first_answer
            first_answer += 1
    return Chunk(ids, labels, answer, torch.tensor([r for *_, images in rows for r in images]))


def collate(encoder: Encoder, conversations: Sequence[Conversation], chunks: int = 3) -> Batch:
    rows = [(*encoder.encode(len(images), qas), images) for images, qas in conversations]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    size = math.ceil(len(rows) / chunks)
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    built, qas = [], [qa for group in groups for i in group for qa in conversations[i][1]]
    for group in groups:
        built.append(_chunk([rows[i] for i in group], sum(len(rows[i][1]) for g in groups[: len(built)] for i in g)))
    referents = torch.tensor([referent_labels(qa.target) for qa in qas])
    return Batch(built, [qa.kind for qa in qas], referents)


def referent_labels(mention: Any) -> list[int]:
    """Class ids of what a question says about its object (0 where it says nothing)."""
    if mention is None:
        return [0, 0, 0]
    return [list(COLOURS).index(mention.colour) + 1 if mention.colour else 0,
            SHAPES.index(mention.shape) + 1 if mention.shape else 0,
            POSITIONS.index(mention.position) + 1 if mention.position else 0]  # fmt: skip


def make_batch(bank: SceneBank, encoder: Encoder, recipe: Recipe, seed: int, step: int) -> Batch:
    """The batch of QA step `step`: a pure function of (seed, step), which is what makes resuming exact.

    Curriculum: until the fraction `curriculum[k]` of the QA steps, only scenes of at most k + 1 objects. With one
    object, finding the object a question is about is trivial, so the LM first learns the languages, the answer
    formats and to read attributes and boxes off the image tokens; the search among several objects comes after,
    when a wrong answer can only mean a wrong object."""
    rng = random.Random(derive_seed("chat-batch", seed, step))
    limit = next((k + 1 for k, end in enumerate(recipe.curriculum) if step < end * recipe.steps), 4)
    pool = [i for i, scene in enumerate(bank.scenes) if len(scene.objects) <= limit] if limit < 4 else None
    return collate(encoder, sample_conversations(bank, recipe, rng, recipe.batch_size, pool))


def build_bank_split(split: str, n: int, size: int, seed: int, workers: int = 1) -> SceneBank:
    seeds = split_seeds(split, n, seed)
    scenes = [generate_scene(s) for s in seeds]
    targets = [cell_targets(s) for s in scenes]
    pixels = render_pixels(seeds, size, workers)
    return SceneBank(scenes, pixels, torch.stack([t[0] for t in targets]), torch.stack([t[1] for t in targets]))
