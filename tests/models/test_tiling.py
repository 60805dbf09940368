"""Dynamic tiling and prompt assembly against the official decisions, tiles and prompts (../shared/parity)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from internvl_models.conversation import get_template
from internvl_models.errors import InputError
from internvl_models.tiling import (
    IMG_CONTEXT,
    add_image_placeholders,
    build_query,
    candidate_grids,
    choose_grid,
    dynamic_tiles,
    expand_image_placeholders,
    image_to_tiles,
)
from internvl_models.transforms import retrieval_transform

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"


def _load(name: str) -> Path:
    if not (PARITY / name).is_file():
        pytest.skip(f"parity vectors absent: {PARITY / name} (they live in ../shared beside the repository)")
    return PARITY / name


@pytest.mark.parity
def test_grid_decisions_match_official() -> None:
    official = json.loads(_load("preprocess_dynamic.json").read_text())
    size, min_num = official["image_size"], official["min_num"]
    wrong = []
    for row in official["rows"]:
        grid = choose_grid(row["width"], row["height"], image_size=size, min_num=min_num, max_num=row["max_num"])
        tiles = grid[0] * grid[1] + (1 if official["use_thumbnail"] and grid != (1, 1) else 0)
        if (grid, tiles) != ((row["grid_cols"], row["grid_rows"]), row["num_tiles_incl_thumbnail"]):
            wrong.append((row, grid, tiles))
    assert not wrong
    assert len(official["rows"]) == 28


@pytest.mark.parity
@pytest.mark.parametrize("max_num", [6, 12])
def test_tiles_match_official_pixels(max_num: int) -> None:
    official = np.load(_load("preprocess_tiles.npz"))
    image = Image.fromarray(official["image"])  # 61 x 37: a 3 x 2 grid of 28 px tiles for either max_num
    tiles = dynamic_tiles(image, image_size=28, max_num=max_num, use_thumbnail=True)
    assert len(tiles) == len(official["tiles"]) == 7
    for k, (tile, expected) in enumerate(zip(tiles, official["tiles"], strict=True)):
        assert np.array_equal(np.asarray(tile), expected), f"tile {k} differs"


@pytest.mark.parity
def test_transcript_prompts_reproduced() -> None:
    """The prompt strings of chat_a's transcript (4 image tokens per tile there) and their image-token counts."""
    transcript = json.loads(_load("chat_a_transcript.json").read_text())
    template = get_template("internvl2_5")
    turn1 = transcript["chat_turn1"]
    question = add_image_placeholders(turn1["question"], 1)
    query = build_query(template, question, num_image_token=4, num_patches_list=turn1["num_patches_list"])
    assert query == turn1["query"]
    assert query.count(IMG_CONTEXT) == 4 * 3
    turn2 = transcript["chat_turn2"]
    history = [(question, turn1["response"])]
    assert (
        build_query(template, turn2["question"], num_image_token=4, num_patches_list=[3], history=history)
        == (turn2["query"])
    )
    batch = transcript["batch_chat"]
    counts = [q.count(IMG_CONTEXT) for q in batch["queries"]]
    assert counts == [4 * n for n in batch["num_patches_list"]]


def test_large_square_image_gets_the_larger_tied_grid() -> None:
    # 1x1, 2x2 and 3x3 tie on aspect ratio; a later one wins if the image has > half its pixels (D.6).
    assert choose_grid(2000, 2000, max_num=6) == (2, 2)
    assert choose_grid(2000, 2000, max_num=12) == (3, 3)
    assert choose_grid(300, 300, max_num=12) == (1, 1)


def test_candidate_grids_are_sorted_by_area_within_bounds() -> None:
    grids = candidate_grids(2, 6)
    areas = [c * r for c, r in grids]
    assert areas == sorted(areas) and min(areas) == 2 and max(areas) == 6
    assert len(grids) == len(set(grids)) == sum(1 for c in range(1, 7) for r in range(1, 7) if 2 <= c * r <= 6)
    with pytest.raises(InputError):
        candidate_grids(3, 2)


def test_tiles_are_row_major_and_thumbnail_comes_last() -> None:
    # A 2x1 grid of solid colours: tile 0 must be the left half, tile 1 the right half, then the whole image.
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    tiles = dynamic_tiles(image, image_size=32, max_num=2)
    assert [t.size for t in tiles] == [(32, 32)] * 3
    assert tiles[0].getpixel((16, 16)) == (255, 0, 0) and tiles[1].getpixel((16, 16)) == (0, 0, 255)
    assert tiles[2].getpixel((4, 16)) == (255, 0, 0) and tiles[2].getpixel((28, 16)) == (0, 0, 255)
    assert len(dynamic_tiles(image, image_size=32, max_num=2, use_thumbnail=False)) == 2
    assert len(dynamic_tiles(image, image_size=64, max_num=1)) == 1  # one tile: no thumbnail


def test_image_to_tiles_normalises_each_tile() -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    pixels = image_to_tiles(image, image_size=28, max_num=4)
    expected = torch.stack([retrieval_transform(28)(t) for t in dynamic_tiles(image, image_size=28, max_num=4)])
    assert pixels.shape == (len(expected), 3, 28, 28) and pixels.dtype == torch.float32
    assert torch.equal(pixels, expected)
    grey = image_to_tiles(image.convert("L"), image_size=28, max_num=4)  # any mode is made RGB first
    assert grey.shape == pixels.shape


def test_placeholders_expand_in_order_with_per_image_tile_counts() -> None:
    question = add_image_placeholders("Compare them.", 2)
    assert question == "Image-1: <image>\nImage-2: <image>\nCompare them."
    assert add_image_placeholders("Describe.", 1) == "<image>\nDescribe."
    assert add_image_placeholders("<image> and this?", 1) == "<image> and this?"  # already placed: untouched
    expanded = expand_image_placeholders(question, [3, 1], num_image_token=2)
    assert expanded == (
        "Image-1: <img>" + IMG_CONTEXT * 6 + "</img>\nImage-2: <img>" + IMG_CONTEXT * 2 + "</img>\nCompare them."
    )
    with pytest.raises(InputError, match="2 images but only 1"):
        expand_image_placeholders("<image>\nQ", [1, 1], num_image_token=2)
