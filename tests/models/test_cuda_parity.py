"""The parity checkpoints on a CUDA device: float32 reproduces the official outputs, bfloat16 stays close to them.

The CPU parity tests (test_internvl_parity.py, test_chat_parity.py) pin the math; these pin the CUDA code paths
(SDPA's flash / memory-efficient kernels, bf16 with float32 norms) that only run on a GPU. Skipped without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from internvl_models.chat import load_chat_model
from internvl_models.checkpoint import load_internvl

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
# TF32 is off below, so float32 on the GPU differs from the CPU reference only by summation order and kernels.
FP32_TOLERANCE = 1e-4
BF16_MIN_COSINE = 0.99

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _require(*names: str) -> None:
    for name in names:
        if not (PARITY / name).exists():
            pytest.skip(f"parity vectors absent: {PARITY / name} (they live in ../shared beside the repository)")


def _cosines(got: torch.Tensor, expected: np.ndarray) -> torch.Tensor:
    want = torch.from_numpy(expected).float().flatten(1)
    return F.cosine_similarity(got.float().cpu().flatten(1), want, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_internvl_on_cuda_matches_official(dtype: torch.dtype) -> None:
    _require("internvl14b_tiny", "internvl14b_inputs.npz", "internvl14b_outputs.npz")
    model = load_internvl(PARITY / "internvl14b_tiny", device="cuda", dtype=dtype)
    inputs, expected = np.load(PARITY / "internvl14b_inputs.npz"), np.load(PARITY / "internvl14b_outputs.npz")
    pixels = torch.from_numpy(inputs["pixel_values"]).to("cuda", dtype)
    ids = torch.from_numpy(inputs["input_ids"]).cuda()
    with torch.inference_mode():
        got = {
            "image_embeds_C": model.encode_image(pixels, "C"),
            "image_embeds_G": model.encode_image(pixels, "G"),
            "text_embeds": model.encode_text(ids),
        }
    for name, value in got.items():
        assert value.device.type == "cuda" and value.dtype == dtype, name
        assert torch.isfinite(value).all(), name
        if dtype == torch.float32:
            diff = float((value.cpu() - torch.from_numpy(expected[name])).abs().max())
            print(f"{name} fp32 max |diff| {diff:.2e}")
            assert diff <= FP32_TOLERANCE, name
        else:
            cosine = _cosines(value, expected[name])
            print(f"{name} bf16 min cosine {float(cosine.min()):.5f}")
            assert cosine.min() >= BF16_MIN_COSINE, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chat_on_cuda_matches_official(dtype: torch.dtype) -> None:
    _require("chat_a", "chat_a_inputs.npz", "chat_a_outputs.npz", "chat_a_transcript.json")
    special = json.loads((PARITY / "chat_a_transcript.json").read_text())["tokenizer"]["special"]
    model = load_chat_model(PARITY / "chat_a", device="cuda", dtype=dtype, image_token_id=special["<IMG_CONTEXT>"])
    inputs, expected = np.load(PARITY / "chat_a_inputs.npz"), np.load(PARITY / "chat_a_outputs.npz")
    pixels = torch.from_numpy(inputs["pixel_values"]).to("cuda", dtype)
    ids = torch.from_numpy(inputs["chat_turn1_input_ids"]).cuda()
    with torch.inference_mode():
        vit = model.extract_feature(pixels)
        logits = model(pixels, ids, torch.ones_like(ids), image_flags=torch.ones(len(pixels), dtype=torch.long))
    assert torch.isfinite(logits).all()
    if dtype == torch.float32:
        for name, value in (("vit_embeds", vit), ("chat_turn1_logits", logits)):
            diff = float((value.float().cpu() - torch.from_numpy(expected[name])).abs().max())
            print(f"{name} fp32 max |diff| {diff:.2e}")
            assert diff <= FP32_TOLERANCE, name
        generated = model.generate(pixels, ids, max_new_tokens=6, eos_token_id=281)
        assert generated.tolist() == expected["chat_turn1_generated_ids"][:, 1:].tolist()
    else:
        for name, value in (("vit_embeds", vit), ("chat_turn1_logits", logits)):
            cosine = _cosines(value.reshape(-1, value.shape[-1]), expected[name].reshape(-1, value.shape[-1]))
            print(f"{name} bf16 min cosine {float(cosine.min()):.5f}")
            assert cosine.min() >= BF16_MIN_COSINE, name
