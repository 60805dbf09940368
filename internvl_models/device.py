"""Where and in which precision models run: one rule for every back end."""

from __future__ import annotations

import torch

from .errors import ModelError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` -> cuda when available, else cpu; otherwise what torch.device understands, checked to exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"invalid device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None/"auto" -> bfloat16 on CUDA (what the model cards run), float32 elsewhere (CPU bf16 matmuls are slow)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"Unknown dtype {dtype!r}. Available: {sorted(DTYPES)} or 'auto'")
        return DTYPES[dtype]
    return dtype
