"""bfloat16 (the default dtype on CUDA) on CPU with the tiny checkpoint: finite, and close to float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internvl_models.checkpoint import load_internvl

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
TINY = PARITY / "internvl14b_tiny"


def _embeddings(model) -> dict[str, torch.Tensor]:
    inputs = np.load(PARITY / "internvl14b_inputs.npz")
    pixels, ids = torch.from_numpy(inputs["pixel_values"]), torch.from_numpy(inputs["input_ids"])
    with torch.inference_mode():
        logits_c, _ = model(pixels, ids, "C")
        return {
            "image_C": model.encode_image(pixels, "C"),
            "image_G": model.encode_image(pixels, "G"),
            "text": model.encode_text(ids),
            "logits_C": logits_c,
        }


def test_bf16_is_finite_and_close_to_fp32() -> None:
    if not TINY.is_dir():
        pytest.skip(f"parity vectors absent: {TINY} (they live in ../shared beside the repository)")
    model16 = load_internvl(TINY, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in model16.parameters()} == {torch.bfloat16}
    full, half = _embeddings(load_internvl(TINY, device="cpu")), _embeddings(model16)
    for name in ("image_C", "image_G", "text"):
        assert half[name].dtype == torch.bfloat16, name
        assert torch.isfinite(half[name]).all(), name
        cosine = F.cosine_similarity(half[name].float(), full[name], dim=1)
        assert (cosine > 0.99).all(), f"{name}: cosine {cosine.tolist()}"
    # Logits are exp(3.5) ~ 33 times a cosine: bf16's 3 significant digits allow an error of a few tenths.
    assert torch.isfinite(half["logits_C"]).all()
    assert (half["logits_C"].float() - full["logits_C"]).abs().max() < 1.0
