"""Reduced JPEG decoding (`reduce_jpeg_decode`): a large JPEG decodes at 1/2, 1/4 or 1/8 scale, still at least twice
the model input on both sides, and the preprocessed pixels stay close to those of a full decode."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from factories import photo_jpeg
from PIL import Image

from internvl_models.transforms import (
    IMAGENET_STD,
    JPEG_REDUCE_MARGIN,
    classification_transform,
    reduce_jpeg_decode,
    retrieval_transform,
)


@pytest.mark.parametrize("size", [(4032, 3024), (1920, 1080), (1000, 747), (700, 300), (300, 200)])
@pytest.mark.parametrize("target", [56, 224, 448])
def test_the_smallest_scale_that_keeps_both_sides_twice_the_input(size: tuple[int, int], target: int) -> None:
    image = Image.open(io.BytesIO(photo_jpeg(size)))
    reduce_jpeg_decode(image, target)
    image.load()
    scale = size[0] / image.width
    assert scale in (1, 2, 4, 8)
    if scale > 1:  # reduced: never below the margin
        assert min(image.size) >= JPEG_REDUCE_MARGIN * target
    if scale < 8:  # and as far as the margin allows: the next scale would have gone below it
        assert min(size[0] // (2 * scale), size[1] // (2 * scale)) < JPEG_REDUCE_MARGIN * target


def test_other_formats_and_decoded_images_are_left_alone() -> None:
    png = io.BytesIO()
    Image.new("RGB", (2000, 1500), "red").save(png, "PNG")
    image = Image.open(png)
    assert reduce_jpeg_decode(image, 56) is None and image.size == (2000, 1500)
    decoded = Image.open(io.BytesIO(photo_jpeg((2000, 1500))))
    decoded.load()
    assert reduce_jpeg_decode(decoded, 56) is None and decoded.size == (2000, 1500)


def test_it_returns_the_upright_size_the_image_had_before() -> None:
    rotated = Image.open(io.BytesIO(photo_jpeg((1200, 800), orientation=6)))
    assert reduce_jpeg_decode(rotated, 100) == (800, 1200) and rotated.size == (300, 200)
    flipped = Image.open(io.BytesIO(photo_jpeg((1200, 800), orientation=3)))
    assert reduce_jpeg_decode(flipped, 100) == (1200, 800)
    assert reduce_jpeg_decode(Image.open(io.BytesIO(photo_jpeg((1200, 800)))), 500) is None  # not reduced


def _level_error(data: bytes, transform, size: int) -> tuple[float, float]:  # noqa: ANN001
    """Mean and 99th-percentile absolute difference, in 8-bit levels, between the preprocessed pixels of a reduced
    and of a full decode."""
    full = transform(Image.open(io.BytesIO(data)))
    image = Image.open(io.BytesIO(data))
    reduce_jpeg_decode(image, size)
    reduced = transform(image)
    levels = (reduced - full).abs() * float(np.mean(IMAGENET_STD)) * 255
    return float(levels.mean()), float(np.percentile(levels.numpy(), 99))


def _assert_close_to_full_decode(photos: dict[str, bytes], size: int) -> None:
    for name, data in photos.items():
        for transform in (retrieval_transform(size), classification_transform(size)):
            mean, p99 = _level_error(data, transform, size)
            assert mean < 1.5 and p99 < 8, (name, size, mean, p99)


@pytest.mark.parametrize("size", [84, 224])
def test_reduced_pixels_stay_within_about_a_level_of_a_full_decode(size: int) -> None:
    _assert_close_to_full_decode(
        {f"{w}x{h}": photo_jpeg((w, h), seed=w) for w, h in ((4032, 3024), (1600, 1200))}, size
    )


@pytest.mark.parametrize("size", [84, 224])
def test_same_on_real_photos(size: int, shared_dir: Path) -> None:
    """At a margin of 1x instead of 2x the mean error reached 7 levels on these photos."""
    _assert_close_to_full_decode({p.name: p.read_bytes() for p in sorted((shared_dir / "images").glob("*.jpg"))}, size)
