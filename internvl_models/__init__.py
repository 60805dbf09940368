"""internvl_models: InternVL-C/G and open_clip encoders and InternVL2/2.5 chat as a library (no HTTP, SQL or FAISS
in here).

Names are re-exported lazily, so `from internvl_models import errors` (the HTTP layer's error mapping, and with it
every CLI command) does not import torch: `internvl-search --help` took 3.4 s, 2.1 s of it importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Encoder": "internvl_models.encoder",
    "EncoderInfo": "internvl_models.encoder",
    "CheckpointError": "internvl_models.errors",
    "InputError": "internvl_models.errors",
    "ModelError": "internvl_models.errors",
    "UnknownModelError": "internvl_models.errors",
    "create_chat_model": "internvl_models.registry",
    "create_encoder": "internvl_models.registry",
    "describe_encoders": "internvl_models.registry",
    "list_chat_models": "internvl_models.registry",
    "list_encoders": "internvl_models.registry",
    "register_encoder": "internvl_models.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'internvl_models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
