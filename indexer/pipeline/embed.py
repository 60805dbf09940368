"""Embed: a batch of preprocessed images -> one L2-normalised vector each, through `Encoder.encode_pixels`.

Preprocessing already happened in the decode threads, so this stage is only the forward pass; it runs in the
job's own thread while the decode pool keeps filling the next batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from indexer.pipeline.flow import Prepared, StageClock
from internvl_models import Encoder


def embed_batch(encoder: Encoder, batch: Sequence[Prepared], clock: StageClock) -> np.ndarray:
    """float32 (len(batch), dim); an empty batch gives an empty array without touching the model."""
    if not batch:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    start = time.perf_counter()
    vectors = encoder.encode_pixels(torch.stack([item.pixels for item in batch]))
    clock.add("encode_s", time.perf_counter() - start)
    return vectors
