"""internvl_models: InternVL-C/G and open_clip encoders and InternVL2/2.5 chat as a library (no HTTP, SQL or FAISS
in here)."""

from .encoder import Encoder, EncoderInfo
from .errors import CheckpointError, InputError, ModelError, UnknownModelError
from .registry import (
    create_chat_model,
    create_encoder,
    describe_encoders,
    list_chat_models,
    list_encoders,
    register_encoder,
)

__all__ = [
    "CheckpointError",
    "Encoder",
    "EncoderInfo",
    "InputError",
    "ModelError",
    "UnknownModelError",
    "create_chat_model",
    "create_encoder",
    "describe_encoders",
    "list_chat_models",
    "list_encoders",
    "register_encoder",
]
