"""Dynamic tiling of an image for the InternVL 1.5-3 chat models, and the prompt that carries the tiles.

Tiling (INTERNVL.md D.6): the image is resized to the grid of `image_size` tiles whose aspect ratio is closest to
its own, cut into tiles in row-major order, and followed by a thumbnail of the whole image when there is more than
one tile. Prompt assembly (D.4): each `<image>` placeholder of the query becomes `<img>`, then
`num_image_token` × tiles `<IMG_CONTEXT>` tokens (the model writes the image features there), then `</img>`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from .conversation import ChatTemplate, render
from .errors import InputError
from .transforms import retrieval_transform, to_rgb

IMG_START = "<img>"
IMG_END = "</img>"
IMG_CONTEXT = "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"


def candidate_grids(min_num: int, max_num: int) -> list[tuple[int, int]]:
    """Every (cols, rows) with min_num <= cols*rows <= max_num, by area.

    The official code collects the grids in a Python set and stable-sorts them by area, so grids of equal area
    keep the set's iteration order; building the same set keeps exact ties resolved the same way.
    """
    if not 1 <= min_num <= max_num:
        raise InputError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = {(c, r) for c in range(1, max_num + 1) for r in range(1, max_num + 1) if min_num <= c * r <= max_num}
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_grid(
    width: int, height: int, *, image_size: int = 448, min_num: int = 1, max_num: int = 12
) -> tuple[int, int]:
    """The (cols, rows) grid for a width x height image: the closest aspect ratio, first in area order.

    On an exact tie a later (larger) grid wins only if the image has more than half of its pixels, so a large
    square photo gets 2x2 or 3x3 tiles instead of 1x1 (the same float arithmetic as upstream, so ties match).
    """
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(
    image: Image.Image, *, image_size: int = 448, min_num: int = 1, max_num: int = 12, use_thumbnail: bool = True
) -> list[Image.Image]:
    """The tiles of one image: the grid's tiles in row-major order, then the thumbnail (only if > 1 tile)."""
    cols, rows = choose_grid(image.width, image.height, image_size=image_size, min_num=min_num, max_num=max_num)
    resized = image.resize((cols * image_size, rows * image_size))  # PIL's default filter (bicubic), as upstream
    tiles = []
    for k in range(cols * rows):
        left, top = (k % cols) * image_size, (k // cols) * image_size
        tiles.append(resized.crop((left, top, left + image_size, top + image_size)))
    if use_thumbnail and len(tiles) != 1:
        tiles.append(image.resize((image_size, image_size)))
    return tiles


def image_to_tiles(
    image: Image.Image, *, image_size: int = 448, min_num: int = 1, max_num: int = 12, use_thumbnail: bool = True
) -> torch.Tensor:
    """One image -> float32 (T, 3, image_size, image_size), normalised: the model cards' `load_image`.

    The image is made RGB (with EXIF orientation applied, unlike upstream's bare convert) before tiling; each tile
    then goes through the same squash + ImageNet normalisation as retrieval, which is a no-op resize for tiles.
    """
    transform = retrieval_transform(image_size)
    tiles = dynamic_tiles(
        to_rgb(image), image_size=image_size, min_num=min_num, max_num=max_num, use_thumbnail=use_thumbnail
    )
    return torch.stack([transform(tile) for tile in tiles])


def image_tokens(num_tiles: int, num_image_token: int) -> str:
    """The text that stands for one image of `num_tiles` tiles in the prompt."""
    return IMG_START + IMG_CONTEXT * (num_image_token * num_tiles) + IMG_END


def add_image_placeholders(question: str, num_images: int) -> str:
    """A first-turn question that has no `<image>` gets one per image in front, as the official chat() does for
    one image (`<image>\\n`); several images get the model cards' `Image-1: <image>\\n` lines."""
    if num_images == 0 or IMAGE_PLACEHOLDER in question:
        return question
    if num_images == 1:
        return f"{IMAGE_PLACEHOLDER}\n{question}"
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, num_images + 1)) + question


def expand_image_placeholders(prompt: str, num_patches_list: Sequence[int], num_image_token: int) -> str:
    """Replace the first remaining `<image>` by each image's tokens in turn (images in the order of the tiles)."""
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found < len(num_patches_list):
        raise InputError(f"{len(num_patches_list)} images but only {found} '{IMAGE_PLACEHOLDER}' in the prompt")
    for num_tiles in num_patches_list:
        prompt = prompt.replace(IMAGE_PLACEHOLDER, image_tokens(num_tiles, num_image_token), 1)
    return prompt


def build_query(
    template: ChatTemplate,
    question: str,
    *,
    num_image_token: int,
    num_patches_list: Sequence[int] = (),
    history: Sequence[tuple[str, str]] = (),
    system_message: str | None = None,
) -> str:
    """The full prompt of one chat turn, image tokens expanded, ready for the tokenizer.

    `question` is used as given: on a first turn pass it through `add_image_placeholders`, and keep that form in
    `history` for the later turns, whose image placeholders (now inside the history) are expanded the same way.
    """
    messages: list[str | None] = [text for pair in history for text in pair]
    prompt = render(template, [*messages, question, None], system_message)
    return expand_image_placeholders(prompt, num_patches_list, num_image_token)
