"""InternVL-C/G against the official outputs on the tiny random checkpoint (../shared/parity, INTERNVL.md G).

The checkpoint goes through the public loader, so this also proves that the official config.json and key names
load as they are. Every array of internvl14b_outputs.npz is compared, float32 on CPU, max |diff| <= 1e-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from internvl_models.checkpoint import load_internvl

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
TOLERANCE = 1e-5

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def parity_dir() -> Path:
    if not (PARITY / "internvl14b_tiny").is_dir():
        pytest.skip(f"parity vectors absent: {PARITY} (they live in ../shared beside the repository)")
    return PARITY


def _our_outputs(model, pixels: torch.Tensor, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every quantity of internvl14b_outputs.npz, computed through the model's public pieces."""
    vision = model.vision_model(pixels, output_hidden_states=True)
    queries = model.encode_queries(vision.last_hidden_state)
    out = {
        "vision_last_hidden_state": vision.last_hidden_state,
        "vision_hidden_states": torch.stack(vision.hidden_states),  # (layers+1, B, N, C), embeddings first
        "clip_projector_out": model.clip_projector(vision.last_hidden_state),
        "qllama_query_last_hidden_state": queries,
        "clip_projector2_out": model.clip_projector2(queries),
        "image_embeds_C": model.encode_image(pixels, "C"),
        "image_embeds_G": model.encode_image(pixels, "G"),
        "text_last_hidden_state": model.text_hidden_states(ids),
        "text_embeds": model.encode_text(ids),
        "logit_scale": model.logit_scale,
    }
    for mode in ("C", "G"):
        out[f"logits_per_image_{mode}"], out[f"logits_per_text_{mode}"] = model(pixels, ids, mode)
    return out


def test_internvl_matches_official_outputs(parity_dir: Path) -> None:
    model = load_internvl(parity_dir / "internvl14b_tiny", device="cpu")
    assert model.logit_scale.dtype == torch.float32
    inputs = np.load(parity_dir / "internvl14b_inputs.npz")
    expected = np.load(parity_dir / "internvl14b_outputs.npz")
    ids = torch.from_numpy(inputs["input_ids"])
    # The official encode_text derives the mask from ids > 0; the stored mask must say the same.
    np.testing.assert_array_equal(inputs["attention_mask"], inputs["input_ids"] > 0)
    with torch.inference_mode():
        ours = _our_outputs(model, torch.from_numpy(inputs["pixel_values"]), ids)

    assert set(ours) == set(expected.files)
    diffs = {}
    for name in expected.files:
        got = ours[name].detach().float().numpy()
        assert got.shape == expected[name].shape, f"{name}: shape {got.shape} != {expected[name].shape}"
        diffs[name] = float(np.abs(got - expected[name]).max())
    print("max abs diff per array:", {k: f"{v:.2e}" for k, v in diffs.items()})
    bad = {k: v for k, v in diffs.items() if not v <= TOLERANCE}
    assert not bad, f"arrays off by more than {TOLERANCE}: {bad}"


def test_modes_are_distinct_and_unknown_mode_is_rejected(parity_dir: Path) -> None:
    from internvl_models.errors import InputError

    model = load_internvl(parity_dir / "internvl14b_tiny", device="cpu")
    pixels = torch.from_numpy(np.load(parity_dir / "internvl14b_inputs.npz")["pixel_values"])
    with torch.inference_mode():
        c, g = model.encode_image(pixels, "InternVL-C"), model.encode_image(pixels, "InternVL-G")
        # G is a sum of two unit vectors, returned un-normalised (pitfall F.4): its norm lies in (0, 2].
        norms = g.norm(dim=1)
        assert torch.all(norms > 0) and torch.all(norms <= 2 + 1e-6)
        assert not torch.allclose(c / c.norm(dim=1, keepdim=True), g / norms[:, None])
        with pytest.raises(InputError, match="Available"):
            model.encode_image(pixels, "B")
