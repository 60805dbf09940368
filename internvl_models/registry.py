"""The encoder registry: every embedding space the project knows, created by name.

`create_encoder("internvl-c" | "internvl-g", checkpoint=...)` loads an InternVL-14B-style checkpoint (hub id or
local directory); `create_encoder("openclip:<arch>/<pretrained tag or weights file>")` builds an open_clip model
(`openclip:<arch>` alone gives seeded random weights, for tests only).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .encoder import Encoder
from .errors import UnknownModelError

OPENCLIP_PREFIX = "openclip:"
OFFICIAL_INTERNVL_CHECKPOINT = "OpenGVLab/InternVL-14B-224px"
# The embedded default: a tiny InternVL-C/G trained on the shapes world, shipped in the package (MODEL_CARD.md).
SHAPES_WORLD_CHECKPOINT = Path(__file__).parent / "shapes_world" / "weights" / "internvl-shapes"


def default_internvl_checkpoint() -> str:
    """The shipped shapes-world checkpoint when present (it is in every install), else the official release."""
    if (SHAPES_WORLD_CHECKPOINT / "config.json").is_file():
        return str(SHAPES_WORLD_CHECKPOINT)
    return OFFICIAL_INTERNVL_CHECKPOINT


EncoderFactory = Callable[..., Encoder]


@dataclass(frozen=True)
class EncoderEntry:
    name: str
    factory: EncoderFactory  # (checkpoint, *, device, dtype, image_batch_size, text_batch_size) -> Encoder
    description: str


_ENCODERS: dict[str, EncoderEntry] = {}


def register_encoder(name: str, factory: EncoderFactory, description: str) -> None:
    if name in _ENCODERS or name.startswith(OPENCLIP_PREFIX):
        raise ValueError(f"encoder name {name!r} is taken")
    _ENCODERS[name] = EncoderEntry(name, factory, description)


def list_encoders() -> list[str]:
    """Registered names, plus the open_clip family written as its pattern."""
    return [*sorted(_ENCODERS), f"{OPENCLIP_PREFIX}<arch>/<pretrained>"]


def describe_encoders() -> dict[str, str]:
    return {entry.name: entry.description for entry in _ENCODERS.values()}


def create_encoder(
    name: str,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    image_batch_size: int = 32,
    text_batch_size: int = 128,
) -> Encoder:
    """Build the encoder `name` from `checkpoint` (the entry's default when None).

    For open_clip, a `checkpoint` given separately is a weights file and replaces the part after the "/".
    """
    options = {
        "device": device,
        "dtype": dtype,
        "image_batch_size": image_batch_size,
        "text_batch_size": text_batch_size,
    }
    if name.startswith(OPENCLIP_PREFIX):
        from .openclip_encoder import OpenCLIPEncoder  # open_clip is only imported by those who use it

        spec = name.removeprefix(OPENCLIP_PREFIX)
        if checkpoint is not None:
            spec = f"{spec.split('/', 1)[0]}/{os.fspath(checkpoint)}"
        return OpenCLIPEncoder(spec, **options)
    entry = _ENCODERS.get(name)
    if entry is None:
        raise UnknownModelError(f"Unknown encoder {name!r}. Available: {list_encoders()}")
    return entry.factory(checkpoint, **options)


def _internvl_factory(mode: str) -> EncoderFactory:
    def build(checkpoint: str | os.PathLike[str] | None, **options: object) -> Encoder:
        from .internvl_encoder import InternVLEncoder

        return InternVLEncoder.from_pretrained(checkpoint or default_internvl_checkpoint(), mode=mode, **options)

    return build


register_encoder(
    "internvl-c", _internvl_factory("C"), "InternVL-C: InternViT features, attention-pooled (contrastive head)"
)
register_encoder(
    "internvl-g", _internvl_factory("G"), "InternVL-G: InternVL-C plus QLLaMA queries cross-attending to the image"
)
