"""Rasterising a scene: backgrounds, anti-aliased shapes, and a preview grid for eyeballing the data.

Shapes are drawn as coverage masks at 4x the target resolution and box-filtered down, which gives exact
anti-aliasing, then alpha-composited in float. Only each object's own box is supersampled, so rendering stays
cheap at any size.
"""

from __future__ import annotations

import colorsys
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from .scene import Scene, SceneObject

SUPERSAMPLE = 4
BACKGROUND_KINDS: tuple[str, ...] = ("solid", "linear", "radial", "noise")
# Minimum RGB distance between an object's colour and the background under it; below this a pale pink shape on
# a pinkish background starts to disappear after down-sampling, so the layout resamples the background.
MIN_CONTRAST = 100.0


@dataclass(frozen=True)
class Background:
    """Parameters of a background; pixels follow from them (and the render size) deterministically."""

    kind: str  # one of BACKGROUND_KINDS
    colour_a: tuple[int, int, int]
    colour_b: tuple[int, int, int]  # second end of a gradient; equal to colour_a for solid / noise
    angle: float  # gradient direction in degrees (linear only)
    noise_sigma: float  # std of additive Gaussian noise, in 0-255 units
    noise_seed: int


def _pale_colour(rng: random.Random) -> tuple[int, int, int]:
    # Low saturation and high value keep every palette colour (black and yellow included) clearly visible.
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.7, 0.97))
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_background(rng: random.Random) -> Background:
    kind = rng.choice(BACKGROUND_KINDS)
    colour_a = _pale_colour(rng)
    colour_b = _pale_colour(rng) if kind in ("linear", "radial") else colour_a
    sigma = rng.uniform(4.0, 9.0) if kind == "noise" else rng.uniform(0.0, 2.5)
    return Background(kind, colour_a, colour_b, rng.uniform(0.0, 360.0), sigma, rng.getrandbits(32))


def _gradient_weight(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Blend weight of colour_b at unit coordinates (x, y), in [0, 1]."""
    if background.kind == "linear":
        dx, dy = math.cos(math.radians(background.angle)), math.sin(math.radians(background.angle))
        # Project onto the direction; corners of the unit square map to [0, 1] for every angle.
        proj = (x - 0.5) * dx + (y - 0.5) * dy
        half = 0.5 * (abs(dx) + abs(dy))
        return np.clip((proj + half) / (2 * half), 0.0, 1.0)
    if background.kind == "radial":
        return np.clip(np.hypot(x - 0.5, y - 0.5) / math.sqrt(0.5), 0.0, 1.0)
    return np.zeros_like(x)


def background_colour_at(background: Background, x: float, y: float) -> np.ndarray:
    """Noise-free background colour at one unit-coordinate point (for the contrast check)."""
    w = float(_gradient_weight(background, np.array(x), np.array(y)))
    return (1 - w) * np.array(background.colour_a, float) + w * np.array(background.colour_b, float)


def render_background(background: Background, size: int) -> np.ndarray:
    """(size, size, 3) float64 array in 0-255."""
    centres = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(centres, centres)
    w = _gradient_weight(background, x, y)[..., None]
    pixels = (1 - w) * np.array(background.colour_a, float) + w * np.array(background.colour_b, float)
    if background.noise_sigma > 0:
        noise = np.random.default_rng(background.noise_seed).normal(0.0, background.noise_sigma, (size, size, 1))
        pixels = pixels + noise  # one grey noise plane: colour noise would tint small shapes
    return pixels


def object_mask(obj: SceneObject, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Coverage in [0, 1] of one object over its pixel box at `size`; returns (mask, (x1, y1, x2, y2))."""
    x1, y1, x2, y2 = pixel_box(obj.unit_box, size)
    s = SUPERSAMPLE
    canvas = Image.new("L", ((x2 - x1) * s, (y2 - y1) * s), 0)
    draw = ImageDraw.Draw(canvas)

    def to_canvas(px: float, py: float) -> tuple[float, float]:
        return ((px * size - x1) * s, (py * size - y1) * s)

    if obj.outline:
        draw.polygon([to_canvas(px, py) for px, py in obj.outline], fill=255)
    else:
        ux1, uy1, ux2, uy2 = obj.unit_box
        (cx1, cy1), (cx2, cy2) = to_canvas(ux1, uy1), to_canvas(ux2, uy2)
        draw.ellipse([cx1, cy1, cx2 - 1, cy2 - 1], fill=255)  # PIL's ellipse box is inclusive
    mask = canvas.resize((x2 - x1, y2 - y1), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float64) / 255.0, (x1, y1, x2, y2)


def pixel_box(unit_box: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    """Smallest integer pixel box (x2, y2 exclusive) covering a unit box at `size`."""
    x1, y1, x2, y2 = unit_box
    return (
        max(0, math.floor(x1 * size)),
        max(0, math.floor(y1 * size)),
        min(size, math.ceil(x2 * size)),
        min(size, math.ceil(y2 * size)),
    )


def render_scene(scene: Scene, size: int | None = None) -> Image.Image:
    """Render `scene` as an RGB image of `size` (default: scene.size) pixels square."""
    size = size or scene.size
    pixels = render_background(scene.background, size)
    for obj in scene.objects:  # later objects are drawn on top, as listed
        mask, (x1, y1, x2, y2) = object_mask(obj, size)
        region = pixels[y1:y2, x1:x2]
        pixels[y1:y2, x1:x2] = region * (1 - mask[..., None]) + np.array(obj.rgb, float) * mask[..., None]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def preview_grid(
    scenes: Sequence[Scene], *, columns: int = 8, tile: int = 112, show_at: int | None = None
) -> Image.Image:
    """Tile scenes into one image. With `show_at`, each is rendered at that size and upscaled (nearest) to
    `tile`, which shows what a model training at that resolution actually sees."""
    rows = math.ceil(len(scenes) / columns)
    grid = Image.new("RGB", (columns * (tile + 4), rows * (tile + 4)), (255, 255, 255))
    for i, scene in enumerate(scenes):
        if show_at:
            image = render_scene(scene, scene.size).resize((show_at, show_at), Image.Resampling.BICUBIC)
            image = image.resize((tile, tile), Image.Resampling.NEAREST)
        else:
            image = render_scene(scene, tile)
        grid.paste(image, ((i % columns) * (tile + 4) + 2, (i // columns) * (tile + 4) + 2))
    return grid
