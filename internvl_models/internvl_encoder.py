"""InternVL-C / InternVL-G as `Encoder`s: the official preprocessing, tokenizer and heads behind one interface."""

from __future__ import annotations

import hashlib
import os

import torch
from PIL import Image

from .checkpoint import checkpoint_fingerprint, load_internvl, resolve_checkpoint
from .device import resolve_device, resolve_dtype
from .encoder import Encoder, EncoderInfo, Purpose
from .internvl import InternVL
from .tokenizer import QLLaMATokenizer
from .transforms import classification_transform, retrieval_transform


class InternVLEncoder(Encoder):
    """One head ("C" or "G") of an InternVL-14B-style checkpoint.

    Images: retrieval squashes to S×S, classification resizes the shorter side and centre-crops (pitfall F.8);
    ImageNet mean/std. Texts: "summarize:" prefix, BOS/EOS, padded to the longest text of the batch — the
    feature is read at the EOS position, so padding further (the official 80) cannot change it.
    InternVL-G's image embedding (a sum of two unit vectors) is renormalised like every output of `Encoder`.
    """

    def __init__(
        self,
        model: InternVL,
        tokenizer: QLLaMATokenizer,
        *,
        mode: str,
        name: str,
        fingerprint: str,
        image_batch_size: int = 32,
        text_batch_size: int = 128,
        compile_images: bool = False,
    ) -> None:
        parameter = next(model.parameters())
        size = model.config.image_size
        info = EncoderInfo(
            name=name,
            dim=model.config.clip_embed_dim,
            fingerprint=fingerprint,
            image_size=size,
            logit_scale=float(model.logit_scale.detach().float().exp()),
        )
        super().__init__(
            info,
            device=parameter.device,
            dtype=parameter.dtype,
            image_batch_size=image_batch_size,
            text_batch_size=text_batch_size,
            compile_images=compile_images,
        )
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.mode = mode
        self._transforms = {"retrieval": retrieval_transform(size), "classification": classification_transform(size)}

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        *,
        mode: str,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
        image_batch_size: int = 32,
        text_batch_size: int = 128,
        compile_images: bool = False,
    ) -> InternVLEncoder:
        """Load a checkpoint directory or hub id (config.json, weights, tokenizer.model) for head `mode`."""
        directory = resolve_checkpoint(source)
        device = resolve_device(device)
        model = load_internvl(directory, device=device, dtype=resolve_dtype(dtype, device))
        tokenizer = QLLaMATokenizer.from_pretrained(directory)
        name = f"internvl-{mode.lower()}"
        # The head is part of the identity: C and G vectors of one checkpoint live in different spaces.
        fingerprint = hashlib.sha256(f"{name}:{checkpoint_fingerprint(directory)}".encode()).hexdigest()
        return cls(
            model,
            tokenizer,
            mode=mode,
            name=name,
            fingerprint=fingerprint,
            image_batch_size=image_batch_size,
            text_batch_size=text_batch_size,
            compile_images=compile_images,
        )

    def preprocess_image(self, image: Image.Image, purpose: Purpose = "retrieval") -> torch.Tensor:
        return self._transforms[purpose](image)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, mode=self.mode)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        input_ids, _ = self.tokenizer(texts)
        return self.model.encode_text(input_ids.to(self.device, non_blocking=True))
