"""Deterministic scene generator: 1-4 coloured shapes on a pale background, fully labelled.

A scene is a pure function of its seed. The layout (shapes, colours, sizes, boxes, background parameters) lives
in unit coordinates, so the same seed gives the same scene at every resolution, and the 0-1000 boxes used for
grounding do not depend on the render size. Pixels are rendered lazily on first access of `Scene.image`.

Layout rules, each there so that every question asked about a scene has one right answer:
* at most one object per cell of the 3x3 grid, with its box centre well inside the cell (coarse positions are
  never borderline);
* boxes overlap at most OVERLAP_LIMIT of the smaller box (every object stays recognisable);
* every object contrasts with the background under it (render.MIN_CONTRAST).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from PIL import Image

from . import geometry, render
from .vocab import COLOURS, POSITIONS, SHAPES, SIZES, derive_seed

DEFAULT_SIZE = 224
OVERLAP_LIMIT = 0.08
# Radius ranges (fraction of the image side) per size class; the gap between them keeps "small" and "large"
# apart even after down-sampling, and small shapes still span ~10 px at 64 px.
RADIUS_RANGES: dict[str, tuple[float, float]] = {"small": (0.08, 0.095), "large": (0.13, 0.15)}
CELL_JITTER = 0.2  # box centre stays within +-20% of a cell's width around the cell centre
MARGIN = 0.015  # keep shapes this far (unit coords) from the image border
COLOUR_JITTER = 12

# Scene seeds of each split; the ranges never overlap, so held-out scenes are never seen in training.
SPLITS: dict[str, range] = {
    "train": range(0, 1 << 40),
    "val": range(1 << 40, (1 << 40) + 1_000_000),
    "test": range((1 << 40) + 1_000_000, (1 << 40) + 2_000_000),
}


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. Boxes are (x1, y1, x2, y2); pixel boxes are exclusive at x2/y2."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    position: str  # coarse 3x3 position id, see vocab.POSITIONS
    box: tuple[int, int, int, int]  # pixels at the scene's render size
    box_1000: tuple[int, int, int, int]  # normalised to 0-1000 (InternVL grounding convention)
    rgb: tuple[int, int, int]  # the jittered colour actually drawn
    unit_box: tuple[float, float, float, float] = field(repr=False)
    outline: tuple[tuple[float, float], ...] = field(repr=False)  # polygon in unit coords; () for a circle

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": self.position,
            "box": list(self.box),
            "box_1000": list(self.box_1000),
            "rgb": list(self.rgb),
        }


@dataclass(frozen=True)
class Scene:
    seed: int
    size: int
    objects: tuple[SceneObject, ...]
    background: render.Background

    @cached_property
    def _pixels(self) -> Image.Image:
        return render.render_scene(self)

    @property
    def image(self) -> Image.Image:
        """The rendered RGB image (a fresh copy, so callers may draw on it)."""
        return self._pixels.copy()

    @property
    def split(self) -> str:
        return split_of(self.seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "size": self.size,
            "background": self.background.kind,
            "objects": [o.to_dict() for o in self.objects],
        }


def box_1000(unit_box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Integer 0-1000 box covering a unit box (floor the start, ceil the end, like the pixel boxes)."""
    x1, y1, x2, y2 = unit_box
    return (
        max(0, math.floor(x1 * 1000)),
        max(0, math.floor(y1 * 1000)),
        min(1000, math.ceil(x2 * 1000)),
        min(1000, math.ceil(y2 * 1000)),
    )


def _overlap_fraction(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / smaller


def _jittered_rgb(rng: random.Random, colour: str) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER))) for c in COLOURS[colour])
    return (r, g, b)


def _place(rng: random.Random, cell: str, size_class: str, shape: str) -> tuple[tuple[float, float], float, float]:
    """Centre, radius and rotation for a shape in a grid cell, clamped so the whole shape is inside the image."""
    radius = rng.uniform(*RADIUS_RANGES[size_class])
    index = POSITIONS.index(cell)
    column, row = index % 3, index // 3
    reach = geometry.half_extent(shape, radius) + MARGIN
    centre = []
    for k in (column, row):
        value = (k + 0.5 + rng.uniform(-CELL_JITTER, CELL_JITTER)) / 3
        centre.append(min(1 - reach, max(reach, value)))
    rotation = rng.uniform(-1, 1) * geometry.MAX_ROTATION[shape]
    return (centre[0], centre[1]), radius, rotation


def _sample_object(rng: random.Random, cell: str, size: int) -> SceneObject:
    shape, colour, size_class = rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(SIZES)
    return _make_object(rng, cell, size, shape, colour, size_class)


def _make_object(
    rng: random.Random, cell: str, size: int, shape: str, colour: str, size_class: str, rgb: tuple | None = None
) -> SceneObject:
    centre, radius, rotation = _place(rng, cell, size_class, shape)
    outline = geometry.placed_outline(shape, radius, rotation, centre)
    unit = geometry.unit_box(shape, radius, centre, outline)
    return SceneObject(
        shape=shape,
        colour=colour,
        size=size_class,
        position=cell,
        box=render.pixel_box(unit, size),
        box_1000=box_1000(unit),
        rgb=rgb or _jittered_rgb(rng, colour),
        unit_box=unit,
        outline=outline,
    )


def _visible(obj: SceneObject, background: render.Background) -> bool:
    x1, y1, x2, y2 = obj.unit_box
    points = [(x1, y1), (x2, y1), (x1, y2), (x2, y2), ((x1 + x2) / 2, (y1 + y2) / 2)]
    base = COLOURS[obj.colour]
    return all(math.dist(base, render.background_colour_at(background, x, y)) >= render.MIN_CONTRAST for x, y in points)


def _layout(rng: random.Random, count: int, size: int) -> list[SceneObject]:
    """Place up to `count` objects; a slot that finds no room after 30 tries is dropped (rare, deterministic)."""
    objects: list[SceneObject] = []
    for _ in range(count):
        free = [p for p in POSITIONS if p not in {o.position for o in objects}]
        for _attempt in range(30):
            candidate = _sample_object(rng, rng.choice(free), size)
            if all(_overlap_fraction(candidate.unit_box, o.unit_box) <= OVERLAP_LIMIT for o in objects):
                objects.append(candidate)
                break
    return objects


def generate_scene(seed: int, *, size: int = DEFAULT_SIZE, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """The scene for `seed`, rendered at `size` px square. Same seed -> same layout at any size, same pixels at
    the same size."""
    if not 1 <= min_objects <= max_objects <= 4:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {min_objects}, {max_objects}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    rng = random.Random(derive_seed("scene", seed))
    objects = _layout(rng, rng.randint(min_objects, max_objects), size)
    background = render.sample_background(rng)
    for _ in range(50):
        if all(_visible(o, background) for o in objects):
            break
        background = render.sample_background(rng)
    else:  # a flat light grey contrasts with every palette colour
        background = render.Background("solid", (232, 232, 232), (232, 232, 232), 0.0, 0.0, 0)
    return Scene(seed=seed, size=size, objects=tuple(objects), background=background)


def shape_twin(scene: Scene) -> Scene:
    """The scene with other shapes: same seed, background, colours, sizes and cells, but at least one object (each
    with probability 1/2) redrawn as another shape. A training hard negative that only shape tells apart: in
    random batches colour and position alone identify almost every scene, and a model learns no more than that.
    The layout rules still hold (an object that finds no valid placement keeps its shape)."""
    rng = random.Random(derive_seed("shape-twin", scene.seed))
    change = [rng.random() < 0.5 for _ in scene.objects]
    change[rng.randrange(len(change))] = True
    objects: list[SceneObject] = []
    for k, (obj, swap) in enumerate(zip(scene.objects, change, strict=True)):
        others = [*objects, *scene.objects[k + 1 :]]
        for _attempt in range(30 if swap else 0):
            shape = rng.choice([s for s in SHAPES if s != obj.shape])
            twin = _make_object(rng, obj.position, scene.size, shape, obj.colour, obj.size, obj.rgb)
            fits = all(_overlap_fraction(twin.unit_box, o.unit_box) <= OVERLAP_LIMIT for o in others)
            if fits and _visible(twin, scene.background):
                objects.append(twin)
                break
        else:
            objects.append(obj)
    return Scene(seed=scene.seed, size=scene.size, objects=tuple(objects), background=scene.background)


def split_of(seed: int) -> str:
    """Name of the split a scene seed belongs to."""
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise ValueError(f"seed {seed} is in no split; ranges: { {k: (v.start, v.stop) for k, v in SPLITS.items()} }")


def split_seeds(split: str, n: int, seed: int = 0) -> list[int]:
    """`n` distinct scene seeds drawn from `split`, deterministic in `seed`."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}. Available: {sorted(SPLITS)}")
    seeds = SPLITS[split]
    if n > len(seeds):
        raise ValueError(f"split {split!r} has only {len(seeds)} scenes, asked for {n}")
    rng = random.Random(derive_seed("split", split, seed))
    return [seeds[i] for i in rng.sample(range(len(seeds)), n)]
