"""The chat-era InternViT (InternVL 1.5-3) against the official outputs on the tiny chat checkpoints.

chat_a is the 300M style (LayerNorm, qkv bias, no QK-norm), chat_b the 6B style (RMSNorm, QK-norm over the full
width, no qkv bias). Only the `vision_model.*` keys are loaded; the rest of the chat model is another module.
`vision_last_hidden_state_84` feeds 84 px images to a tower trained at 56 px: position-embedding interpolation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from internvl_models.checkpoint import load_intern_vit

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
TOLERANCE = 1e-5

pytestmark = pytest.mark.parity


def _max_diff(got: torch.Tensor, expected: np.ndarray) -> float:
    assert tuple(got.shape) == expected.shape, f"shape {tuple(got.shape)} != {expected.shape}"
    return float(np.abs(got.float().numpy() - expected).max())


@pytest.mark.parametrize(
    ("name", "norm_type", "qkv_bias", "qk_normalization"),
    [("chat_a", "layer_norm", True, False), ("chat_b", "rms_norm", False, True)],
)
def test_chat_vision_tower_matches_official(name: str, norm_type: str, qkv_bias: bool, qk_normalization: bool) -> None:
    if not (PARITY / name).is_dir():
        pytest.skip(f"parity vectors absent: {PARITY / name} (they live in ../shared beside the repository)")
    model = load_intern_vit(PARITY / name, device="cpu")
    # The two checkpoints must really exercise the two variants.
    assert (model.config.norm_type, model.config.qkv_bias, model.config.qk_normalization) == (
        norm_type,
        qkv_bias,
        qk_normalization,
    )
    inputs = np.load(PARITY / f"{name}_inputs.npz")
    expected = np.load(PARITY / f"{name}_outputs.npz")
    with torch.inference_mode():
        out = model(torch.from_numpy(inputs["pixel_values"]), output_hidden_states=True)
        out_84 = model(torch.from_numpy(inputs["pixel_values_84"]))
    diffs = {
        "vision_last_hidden_state": _max_diff(out.last_hidden_state, expected["vision_last_hidden_state"]),
        "vision_hidden_states": _max_diff(torch.stack(out.hidden_states), expected["vision_hidden_states"]),
        "vision_last_hidden_state_84": _max_diff(out_84.last_hidden_state, expected["vision_last_hidden_state_84"]),
    }
    print(name, "max abs diff:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert all(v <= TOLERANCE for v in diffs.values()), diffs
