"""The closed vocabulary of the shapes world: shapes, colours, size classes, coarse positions and languages.

Every other module refers to these string ids; words in a particular language live in `languages/`. Colours are
chosen to stay separable after bicubic down-sampling to 64 px and against every background the renderer makes
(backgrounds are pale or mid-tone and low-saturation; see render.py), so a tiny model can learn them.
"""

from __future__ import annotations

import hashlib

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon", "diamond")

# sRGB base colours; each object gets a small per-object jitter so the model cannot key on exact values.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (245, 135, 15),
    "yellow": (245, 210, 25),
    "green": (35, 155, 55),
    "blue": (30, 80, 225),
    "purple": (130, 50, 180),
    "pink": (245, 110, 190),
    "black": (25, 25, 30),
}

SIZES: tuple[str, ...] = ("small", "large")

# Coarse position = the 3x3 grid cell holding the centre of the object's box, row-major from the top left.
POSITIONS: tuple[str, ...] = (
    "top_left", "top", "top_right",
    "left", "center", "right",
    "bottom_left", "bottom", "bottom_right",
)  # fmt: skip

LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "de", "fr", "es")


def position_of_cell(column: int, row: int) -> str:
    """Grid cell (0..2, 0..2) -> position id."""
    return POSITIONS[row * 3 + column]


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any mix of ints and strings.

    Python's hash() is salted per process, so it would break "same seed -> same scene" across runs; a
    cryptographic digest of the repr is stable everywhere.
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
