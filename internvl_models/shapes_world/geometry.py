"""Shape outlines in unit coordinates, shared by the layout (which needs exact boxes) and the renderer.

Coordinates are fractions of the image side, y pointing down, so one layout renders at any resolution and its
0-1000 boxes do not depend on the pixel size. Proportions are tuned so that each shape keeps its silhouette at
~10 px: the star's inner radius is fat, the cross arms are thick and the diamond is narrow enough never to pass
for a square turned by the allowed rotation.
"""

from __future__ import annotations

import math

Point = tuple[float, float]

# Largest rotation (degrees) per shape: more would turn a square into a diamond or a plus into an "x".
MAX_ROTATION: dict[str, float] = {
    "circle": 0.0,
    "square": 10.0,
    "triangle": 10.0,
    "star": 12.0,
    "cross": 10.0,
    "hexagon": 8.0,
    "diamond": 8.0,
}


def _regular(n: int, radius: float, start_deg: float) -> list[Point]:
    return [
        (
            radius * math.cos(math.radians(start_deg + 360.0 * k / n)),
            radius * math.sin(math.radians(start_deg + 360.0 * k / n)),
        )
        for k in range(n)
    ]


def _star(radius: float) -> list[Point]:
    # Inner radius 0.5 of the outer one: thinner spikes vanish when the image is down-sampled.
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.5
        angle = math.radians(-90.0 + 36.0 * k)
        points.append((r * math.cos(angle), r * math.sin(angle)))
    return points


def _cross(radius: float) -> list[Point]:
    a, t = radius * 0.95, radius * 0.34  # arm half-length, arm half-thickness
    return [(-t, -a), (t, -a), (t, -t), (a, -t), (a, t), (t, t), (t, a), (-t, a), (-t, t), (-a, t), (-a, -t), (-t, -t)]


def base_outline(shape: str, radius: float) -> list[Point]:
    """Unrotated polygon centred near the origin; a circle has none (it is drawn as an ellipse)."""
    if shape == "circle":
        return []
    if shape == "square":
        h = radius * 0.84  # equal-ish area to the circle of the same radius
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        return _regular(3, radius * 1.12, -90.0)
    if shape == "star":
        return _star(radius * 1.1)
    if shape == "cross":
        return _cross(radius)
    if shape == "hexagon":
        return _regular(6, radius, 0.0)
    if shape == "diamond":
        return [(0.0, -radius * 1.12), (radius * 0.7, 0.0), (0.0, radius * 1.12), (-radius * 0.7, 0.0)]
    raise ValueError(f"Unknown shape {shape!r}")


def placed_outline(shape: str, radius: float, rotation_deg: float, centre: Point) -> tuple[Point, ...]:
    """Rotate the outline and move it so that the centre of its bounding box lands on `centre`.

    Centring the box (not the centroid) makes the coarse position, which is read off the box, equal to the
    grid cell the layout asked for.
    """
    points = base_outline(shape, radius)
    if not points:
        return ()
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    rotated = [(x * c - y * s, x * s + y * c) for x, y in points]
    xs, ys = [p[0] for p in rotated], [p[1] for p in rotated]
    dx = centre[0] - (min(xs) + max(xs)) / 2
    dy = centre[1] - (min(ys) + max(ys)) / 2
    return tuple((x + dx, y + dy) for x, y in rotated)


def half_extent(shape: str, radius: float) -> float:
    """Upper bound of half the box side over all allowed rotations, used to keep shapes inside the image."""
    points = base_outline(shape, radius)
    if not points:
        return radius
    return max(math.hypot(x, y) for x, y in points)


def unit_box(shape: str, radius: float, centre: Point, outline: tuple[Point, ...]) -> tuple[float, float, float, float]:
    """Exact bounding box (x1, y1, x2, y2) in unit coordinates."""
    if not outline:
        return (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    xs, ys = [p[0] for p in outline], [p[1] for p in outline]
    return (min(xs), min(ys), max(xs), max(ys))
