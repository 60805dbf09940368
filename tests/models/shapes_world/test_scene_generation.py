"""Scene generator: determinism, splits, and boxes / positions / colours that agree with the drawn pixels."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from internvl_models.shapes_world import COLOURS, POSITIONS, SHAPES, SPLITS, generate_scene, split_of, split_seeds
from internvl_models.shapes_world.render import MIN_CONTRAST, object_mask, render_background
from internvl_models.shapes_world.scene import OVERLAP_LIMIT

SEEDS = range(60)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(s) for s in SEEDS]


def test_same_seed_gives_identical_pixels() -> None:
    a, b = generate_scene(1234), generate_scene(1234)
    assert a == b
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(generate_scene(1235).image))


def test_layout_does_not_depend_on_render_size() -> None:
    big, small = generate_scene(77, size=224), generate_scene(77, size=64)
    assert small.image.size == (64, 64) and big.image.size == (224, 224)
    assert [(o.shape, o.colour, o.position, o.box_1000) for o in big.objects] == [
        (o.shape, o.colour, o.position, o.box_1000) for o in small.objects
    ]


def test_image_property_returns_a_copy() -> None:
    scene = generate_scene(5)
    scene.image.paste((0, 0, 0), (0, 0, 50, 50))
    assert np.asarray(scene.image)[:50, :50].sum() > 0


def test_vocabulary_is_covered(scenes) -> None:
    objects = [o for s in scenes for o in s.objects]
    more = [o for s in (generate_scene(s) for s in range(60, 200)) for o in s.objects]
    assert {o.shape for o in objects + more} == set(SHAPES) and len(SHAPES) >= 6
    assert {o.colour for o in objects + more} == set(COLOURS) and len(COLOURS) >= 8
    assert {o.position for o in objects + more} == set(POSITIONS)
    assert {o.size for o in objects} == {"small", "large"}
    assert set(Counter(len(s.objects) for s in scenes)) == {1, 2, 3, 4}


def test_boxes_are_inside_the_image_and_consistent(scenes) -> None:
    for scene in scenes:
        for obj in scene.objects:
            x1, y1, x2, y2 = obj.box
            assert 0 <= x1 < x2 <= scene.size and 0 <= y1 < y2 <= scene.size
            assert all(0 <= v <= 1000 for v in obj.box_1000)
            scaled = [v * scene.size / 1000 for v in obj.box_1000]
            assert max(abs(a - b) for a, b in zip(scaled, obj.box)) <= 1.5


def test_box_is_the_drawn_extent_of_the_object(scenes) -> None:
    for scene in scenes[:20]:
        for obj in scene.objects:
            mask, (x1, y1, x2, y2) = object_mask(obj, scene.size)
            ys, xs = np.nonzero(mask > 0.02)
            drawn = (x1 + xs.min(), y1 + ys.min(), x1 + xs.max() + 1, y1 + ys.max() + 1)
            assert max(abs(a - b) for a, b in zip(drawn, obj.box)) <= 1, (scene.seed, obj)


@pytest.mark.parametrize("size", [224, 64])
def test_object_colour_dominates_its_box(scenes, size: int) -> None:
    for scene in scenes[:30]:
        pixels = np.asarray(generate_scene(scene.seed, size=size).image, dtype=float)
        for obj in generate_scene(scene.seed, size=size).objects:
            x1, y1, x2, y2 = obj.box
            region = pixels[y1:y2, x1:x2]
            close = np.linalg.norm(region - np.array(obj.rgb), axis=-1) < 40
            # Stars fill ~43% of their box; anti-aliased edges count for less at 64 px.
            assert close.mean() > (0.3 if size == 224 else 0.2), (scene.seed, obj)


def test_position_is_the_grid_cell_of_the_box_centre_with_a_margin(scenes) -> None:
    for scene in scenes:
        assert len({o.position for o in scene.objects}) == len(scene.objects)  # one object per cell
        for obj in scene.objects:
            cx = (obj.unit_box[0] + obj.unit_box[2]) / 2
            cy = (obj.unit_box[1] + obj.unit_box[3]) / 2
            column, row = int(cx * 3), int(cy * 3)
            assert POSITIONS[row * 3 + column] == obj.position
            # never borderline: at least 4% of the image away from the cell edges
            assert min(cx * 3 % 1, 1 - cx * 3 % 1, cy * 3 % 1, 1 - cy * 3 % 1) > 0.12


def test_objects_barely_overlap_and_contrast_with_the_background(scenes) -> None:
    for scene in scenes:
        background = render_background(scene.background, scene.size)
        for i, a in enumerate(scene.objects):
            x1, y1, x2, y2 = a.box
            assert math.dist(background[y1:y2, x1:x2].mean(axis=(0, 1)), COLOURS[a.colour]) > MIN_CONTRAST * 0.8
            for b in scene.objects[i + 1 :]:
                iw = min(a.unit_box[2], b.unit_box[2]) - max(a.unit_box[0], b.unit_box[0])
                ih = min(a.unit_box[3], b.unit_box[3]) - max(a.unit_box[1], b.unit_box[1])
                if iw > 0 and ih > 0:
                    area = min((o.unit_box[2] - o.unit_box[0]) * (o.unit_box[3] - o.unit_box[1]) for o in (a, b))
                    assert iw * ih / area <= OVERLAP_LIMIT + 1e-9


def test_splits_never_overlap() -> None:
    ranges = sorted((r.start, r.stop) for r in SPLITS.values())
    assert all(stop <= next_start for (_, stop), (next_start, _) in zip(ranges, ranges[1:]))
    for name in SPLITS:
        seeds = split_seeds(name, 50, seed=3)
        assert len(set(seeds)) == 50 and all(split_of(s) == name for s in seeds)
        assert seeds == split_seeds(name, 50, seed=3) and seeds != split_seeds(name, 50, seed=4)
    assert generate_scene(split_seeds("test", 1)[0]).split == "test"
    with pytest.raises(ValueError, match="Available"):
        split_seeds("holdout", 1)
