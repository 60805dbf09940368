"""Batch sizes from free memory, and the back-off that keeps an encoder answering when memory runs out.

Out-of-memory is injected for real: a tiny InternVL encoder whose forward pass raises torch.OutOfMemoryError (the
exception CUDA raises) for batches above a budget, the way a GPU with that much free memory would. The vectors
must be the ones an unconstrained encoder gives, and the reduced batch size must stick.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import make_tiny_internvl_checkpoint

from internvl_models import create_encoder
from internvl_models.memory import (
    AdaptiveBatch,
    choose_batch_size,
    free_memory_bytes,
    is_out_of_memory,
    measure_per_item_bytes,
)

GiB = 2**30


def test_choose_batch_size_is_what_fits_in_free_memory() -> None:
    # 10 GiB free, 80% of it usable, 100 MiB per image: 81 fit, rounded down to a multiple of 8.
    assert choose_batch_size(10 * GiB, 100 * 2**20, 256) == 80
    assert choose_batch_size(10 * GiB, 100 * 2**20, 32) == 32  # the configured size caps it
    assert choose_batch_size(10 * GiB, 100 * 2**20, 256, headroom=0.5) == 48
    assert choose_batch_size(700 * 2**20, 100 * 2**20, 256) == 5  # below 8: no rounding
    assert choose_batch_size(50 * 2**20, 100 * 2**20, 256) == 1  # nothing fits: still one at a time
    assert choose_batch_size(0, 100 * 2**20, 256) == 1
    assert choose_batch_size(None, 100 * 2**20, 64) == 64  # CPU: no memory figure
    assert choose_batch_size(10 * GiB, None, 64) == 64
    with pytest.raises(ValueError):
        choose_batch_size(GiB, 1.0, 0)


def test_cpu_has_no_memory_plan() -> None:
    cpu = torch.device("cpu")
    assert free_memory_bytes(cpu) is None
    assert measure_per_item_bytes(lambda n: None, cpu) is None


def test_out_of_memory_is_recognised() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only runtime errors carry device failures


def test_adaptive_batch_halves_retries_and_keeps_the_smaller_size(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[int, int]] = []

    def run(start: int, stop: int) -> list[int]:
        calls.append((start, stop))
        if stop - start > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return list(range(start, stop))

    batches = AdaptiveBatch(16, "image")
    with caplog.at_level(logging.WARNING, logger="internvl_models.memory"):
        out = batches.map(20, run)
    assert [i for part in out for i in part] == list(range(20))  # every item once, in order
    assert batches.size == 2  # 16 -> 8 -> 4 -> 2: halving stops at the first size that fits
    assert calls[:4] == [(0, 16), (0, 8), (0, 4), (0, 2)]
    assert "ran out of memory" in caplog.text
    calls.clear()
    batches.map(4, run)
    assert calls == [(0, 2), (2, 4)]  # the next call starts at the reduced size


def test_adaptive_batch_reraises_other_errors_and_oom_at_one() -> None:
    def broken(start: int, stop: int) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        AdaptiveBatch(8).map(8, broken)

    def always_oom(start: int, stop: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    batches = AdaptiveBatch(8)
    with pytest.raises(torch.OutOfMemoryError):
        batches.map(3, always_oom)
    assert batches.size == 1


class _Budget:
    """Wraps a forward function so that batches larger than `limit` raise torch.OutOfMemoryError."""

    def __init__(self, forward, limit: int) -> None:  # noqa: ANN001 - a bound method of the encoder
        self.forward, self.limit, self.sizes = forward, limit, []

    def __call__(self, batch):  # noqa: ANN001, ANN204
        self.sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory: a batch of {len(batch)} > {self.limit} (injected)")
        return self.forward(batch)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_internvl_checkpoint(tmp_path_factory.mktemp("tiny-memory"))


def test_encoder_backs_off_on_out_of_memory_with_the_same_vectors(checkpoint: Path) -> None:
    reference = create_encoder("internvl-g", checkpoint, device="cpu")
    squeezed = create_encoder("internvl-g", checkpoint, device="cpu", image_batch_size=16, text_batch_size=16)
    squeezed._image_features = _Budget(squeezed._image_features, limit=5)
    squeezed._text_features = _Budget(squeezed._text_features, limit=3)
    pixels = torch.randn(13, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    texts = [f"a red circle number {i}" for i in range(11)]

    np.testing.assert_allclose(squeezed.encode_pixels(pixels), reference.encode_pixels(pixels), atol=1e-6)
    np.testing.assert_allclose(squeezed.encode_texts(texts), reference.encode_texts(texts), atol=1e-6)
    # The failed batch is halved until one fits (13 -> 6 -> 3), and the rest goes at that size.
    assert squeezed._image_features.sizes == [13, 6, 3, 3, 3, 3, 1]
    assert squeezed._text_features.sizes == [11, 5, 2, 2, 2, 2, 2, 1]
    # The reduced sizes stick: the next calls do not run out of memory again.
    squeezed._image_features.sizes.clear()
    squeezed.encode_pixels(pixels[:8])
    assert squeezed._image_features.sizes == [3, 3, 2]


@pytest.mark.gpu
def test_batch_plan_on_cuda_fits_free_memory(checkpoint: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    device = torch.device("cuda")
    encoder = create_encoder("internvl-c", checkpoint, device="cuda", image_batch_size=64)
    pixels = torch.randn(4, 3, 56, 56)
    vectors = encoder.encode_pixels(pixels)
    assert vectors.shape == (4, encoder.dim) and np.isfinite(vectors).all()
    assert 1 <= encoder._image_batches.size <= 64

    def probe(n: int) -> torch.Tensor:
        return torch.empty(n, 64 * 2**20, dtype=torch.uint8, device=device) + 1  # two buffers of 64 MiB per item

    per_item = measure_per_item_bytes(probe, device)
    assert 100 * 2**20 <= per_item <= 160 * 2**20
    assert free_memory_bytes(device) > 0
