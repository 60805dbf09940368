"""The `Encoder` interface shared by every embedding back end (InternVL-C/G, open_clip).

A back end supplies three pieces — how one PIL image becomes a pixel tensor, how a batch of pixels becomes
features, how a batch of strings becomes features — and this base class does the rest the same way for all of
them: batching, device and dtype placement, `torch.inference_mode`, L2 normalisation and float32 numpy output.

Batch sizes (memory.py): the configured sizes are upper bounds. On CUDA the image batch is lowered, once, to what
the free memory holds (measured per item at the first call), and any forward pass that still runs out of memory is
retried on smaller batches, which are kept. Pixels go to the GPU from pinned memory, without blocking the host.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .memory import AdaptiveBatch, choose_batch_size, free_memory_bytes, measure_per_item_bytes
from .threads import CpuThreads

Purpose = Literal["retrieval", "classification"]


@dataclass(frozen=True)
class EncoderInfo:
    """What a collection records about the embedding space its vectors live in."""

    name: str  # registry name, e.g. "internvl-c" or "openclip:ViT-B-32/laion2b_s34b_b79k"
    dim: int
    fingerprint: str  # changes whenever the weights change; vectors of two fingerprints never mix
    image_size: int
    logit_scale: float  # exp(learned temperature): multiplies cosine similarities before a softmax


class Encoder(ABC):
    """Turns images and texts into L2-normalised float32 vectors of one embedding space."""

    def __init__(
        self,
        info: EncoderInfo,
        *,
        device: torch.device,
        dtype: torch.dtype,
        image_batch_size: int = 32,
        text_batch_size: int = 128,
        compile_images: bool = False,
    ) -> None:
        if image_batch_size < 1 or text_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        self.info = info
        self.device = device
        self.dtype = dtype
        self.image_batch_size = image_batch_size
        self.text_batch_size = text_batch_size
        # One forward pass at a time: ingestion threads and serving threads share one model (and one GPU), and
        # interleaved passes would only fight over memory and kernels.
        self._forward_lock = threading.Lock()
        self._image_batches: AdaptiveBatch | None = None  # planned at the first image batch (needs its shape)
        self._text_batches = AdaptiveBatch(text_batch_size, "text")
        self._cpu_threads = CpuThreads(device)  # small CPU passes on one thread (threads.py)
        # torch.compile fuses what lies between the image tower's GEMMs (norms, layer scales, residual adds): 1.05-1.1x
        # the images/s on CPU for ~25 s of compiling at the first batch, and again at the first batch of another
        # size (bench/RESULTS.md), hence opt-in. Text keeps eager: its shapes change with every batch.
        self._compiled_image_features = torch.compile(self._image_features) if compile_images else None

    # --- what a back end implements -------------------------------------------------------------------------
    @abstractmethod
    def preprocess_image(self, image: Image.Image, purpose: Purpose = "retrieval") -> torch.Tensor:
        """One PIL image (any mode) -> normalised pixels (3, S, S), float32 on the CPU. Safe to call from threads.

        `purpose` picks the geometry where a model was evaluated with two: InternVL squashes the whole image for
        retrieval and centre-crops for classification.
        """

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) on self.device/self.dtype -> (B, dim) features, not necessarily normalised."""

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """A batch of strings -> (B, dim) features, not necessarily normalised."""

    # --- shared behaviour ------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def fingerprint(self) -> str:
        return self.info.fingerprint

    def encode_images(self, images: Sequence[Image.Image], purpose: Purpose = "retrieval") -> np.ndarray:
        """PIL images -> float32 (n, dim), unit rows."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), self.image_batch_size):
            chunk = images[start : start + self.image_batch_size]
            out.append(self.encode_pixels(torch.stack([self.preprocess_image(im, purpose) for im in chunk])))
        return np.concatenate(out)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Already preprocessed pixels (B, 3, S, S) -> float32 (B, dim), unit rows; batches internally."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise InputError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        if pixels.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        with torch.inference_mode():
            batches = self._image_batch_plan(pixels)
            return np.concatenate(batches.map(len(pixels), lambda a, b: self._encode_pixel_batch(pixels[a:b])))

    def _encode_pixel_batch(self, chunk: torch.Tensor) -> np.ndarray:
        if self.device.type == "cuda" and chunk.device.type == "cpu":
            # Pinned host memory: the copy runs as DMA without blocking the host; the cast to the model's dtype
            # happens on the device, after the copy, not on the CPU.
            chunk = chunk.pin_memory().to(self.device, non_blocking=True)
        chunk = chunk.to(self.device, self.dtype)
        with self._forward_lock:
            forward = self._compiled_image_features or self._image_features
            features = self._cpu_threads.run("image", len(chunk), lambda: forward(chunk))
        return _unit_rows(features)

    def _image_batch_plan(self, pixels: torch.Tensor) -> AdaptiveBatch:
        """The image batch size, planned once from free device memory (CUDA) or the configured size (CPU)."""
        if self._image_batches is None:
            size = self.image_batch_size
            if self.device.type == "cuda":

                def probe(n: int) -> object:
                    return self._image_features(
                        torch.zeros((n, *pixels.shape[1:]), device=self.device, dtype=self.dtype)
                    )

                with self._forward_lock:
                    per_item = measure_per_item_bytes(probe, self.device)
                size = choose_batch_size(free_memory_bytes(self.device), per_item, self.image_batch_size)
            self._image_batches = AdaptiveBatch(size, "image")
        return self._image_batches

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings in any language -> float32 (n, dim), unit rows."""
        if isinstance(texts, str):
            raise InputError("encode_texts takes a list of strings, not a single string")
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = list(texts)
        with torch.inference_mode():
            return np.concatenate(self._text_batches.map(len(texts), lambda a, b: self._encode_text_batch(texts[a:b])))

    def _encode_text_batch(self, texts: list[str]) -> np.ndarray:
        # Text activations stay small next to the weights (a few hundred tokens per batch, packed by the InternVL
        # back end), so the text batch is not planned from memory; back-off alone covers it.
        with self._forward_lock:
            features = self._cpu_threads.run("text", len(texts), lambda: self._text_features(texts))
        return _unit_rows(features)


def _unit_rows(features: torch.Tensor) -> np.ndarray:
    # Normalise in float32: in bf16 the norm of a 768-wide vector is only good to ~3 digits.
    features = features.float()
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return features.cpu().numpy().astype(np.float32, copy=False)
