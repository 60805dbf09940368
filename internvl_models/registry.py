"""The model registry: every embedding space the project knows, created by name, and the chat models.

`create_encoder("internvl-c" | "internvl-g", checkpoint=...)` loads an InternVL-14B-style checkpoint (hub id or
local directory); `create_encoder("openclip:<arch>/<pretrained tag or weights file>")` builds an open_clip model
(`openclip:<arch>` alone gives seeded random weights, for tests only). `create_chat_model(name_or_path)` loads an
InternVL2/2.5 chat checkpoint (default: the shipped shapes-world chat model, else an official InternVL2.5).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .encoder import Encoder
from .errors import UnknownModelError

if TYPE_CHECKING:
    from .chat_model import ChatModel

OPENCLIP_PREFIX = "openclip:"
OFFICIAL_INTERNVL_CHECKPOINT = "OpenGVLab/InternVL-14B-224px"
# The embedded default: a tiny InternVL-C/G trained on the shapes world, shipped in the package (MODEL_CARD.md).
SHAPES_WORLD_CHECKPOINT = Path(__file__).parent / "shapes_world" / "weights" / "internvl-shapes"
SHAPES_WORLD_CHAT_CHECKPOINT = Path(__file__).parent / "shapes_world" / "weights" / "internvl-chat-shapes"
SHAPES_WORLD_CHAT_NAME = "internvl-chat-shapes"
OFFICIAL_CHAT_CHECKPOINT = "OpenGVLab/InternVL2_5-1B"
# Official chat releases whose layout `load_chat_model` reads and whose tokenizer transformers loads natively (Qwen2,
# Phi-3, Llama). The InternLM2-based ones (InternVL2/2.5-2B, -8B, -26B) load as models, but their tokenizer needs
# the repository's own code, which is never run here: serve those through INTERNVL_SEARCH_CHAT_URL (LMDeploy).
OFFICIAL_CHAT_MODELS = (
    "OpenGVLab/InternVL2-1B",
    "OpenGVLab/InternVL2-4B",
    "OpenGVLab/InternVL2_5-1B",
    "OpenGVLab/InternVL2_5-1B-MPO",
    "OpenGVLab/InternVL2_5-4B",
    "OpenGVLab/InternVL2_5-4B-MPO",
    "OpenGVLab/InternVL2_5-38B",
    "OpenGVLab/InternVL2_5-78B",
)


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
    compile_images: bool = False,
) -> Encoder:
    """Build the encoder `name` from `checkpoint` (the entry's default when None).

    For open_clip, a `checkpoint` given separately is a weights file and replaces the part after the "/".
    `compile_images` runs the image tower through torch.compile (opt-in: it pays ~1.1x for ~25 s at the first batch).
    """
    options = {
        "device": device,
        "dtype": dtype,
        "image_batch_size": image_batch_size,
        "text_batch_size": text_batch_size,
        "compile_images": compile_images,
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


# --- chat models --------------------------------------------------------------------------------------------------


def default_chat_checkpoint() -> str:
    """The shipped shapes-world chat model when present, else an official InternVL2.5 release."""
    if (SHAPES_WORLD_CHAT_CHECKPOINT / "config.json").is_file():
        return str(SHAPES_WORLD_CHAT_CHECKPOINT)
    return OFFICIAL_CHAT_CHECKPOINT


def list_chat_models() -> list[str]:
    """The names `create_chat_model` knows: the shipped shapes-world model (when installed) and official hub ids.
    Any other local checkpoint directory or hub id in the official layout works too."""
    shipped = [SHAPES_WORLD_CHAT_NAME] if (SHAPES_WORLD_CHAT_CHECKPOINT / "config.json").is_file() else []
    return [*shipped, *OFFICIAL_CHAT_MODELS]


def create_chat_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
) -> ChatModel:
    """A `ChatModel` from a checkpoint directory or hub id (None: `default_chat_checkpoint()`)."""
    from .chat_model import ChatModel  # transformers' LLM classes are only imported by those who chat

    source = name_or_path or default_chat_checkpoint()
    if str(source) == SHAPES_WORLD_CHAT_NAME:
        if not (SHAPES_WORLD_CHAT_CHECKPOINT / "config.json").is_file():
            raise UnknownModelError(
                f"{SHAPES_WORLD_CHAT_NAME!r} is not installed here ({SHAPES_WORLD_CHAT_CHECKPOINT} has no config.json)"
            )
        source = SHAPES_WORLD_CHAT_CHECKPOINT
    return ChatModel.from_pretrained(source, device=device, dtype=dtype)
