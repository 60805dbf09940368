"""The open_clip back end of `Encoder`: any open_clip architecture, with pretrained, local or random weights.

A spec names the embedding space: `"<arch>/<pretrained tag>"` (downloaded by open_clip), `"<arch>/<weights file>"`
(a local state dict, `.pt`/`.pth`/`.bin`/`.safetensors`), or `"<arch>"` alone, which builds deterministic random
weights and exists for tests. Architecture names never contain "/", so everything after the first one is the
weights part, and an absolute path gives a double slash: `"ViT-B-32//models/b32.pt"`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import torch
from PIL import Image

from .device import resolve_device, resolve_dtype
from .encoder import Encoder, EncoderInfo, Purpose
from .errors import CheckpointError, UnknownModelError
from .transforms import to_rgb

DEFAULT_SEED = 0
_HASH_CHUNK = 1 << 20
# Named in the unknown-architecture error; the full list has ~150 entries.
_EXAMPLE_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-SO400M-14-SigLIP", "RN50", "convnext_base")


class OpenCLIPEncoder(Encoder):
    """An open_clip model behind the shared `Encoder` interface.

    Args:
        spec: `"<arch>/<pretrained tag or weights file>"` or `"<arch>"` (random weights, for tests).
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N" or a `torch.device`.
        dtype: defaults to bfloat16 on CUDA and float32 on the CPU.
        seed: seeds the random initialisation when the spec names no weights.
        cache_dir: where open_clip keeps downloaded pretrained weights (its default cache when None).

    Raises:
        UnknownModelError: the architecture is not one of `open_clip.list_models()`.
        CheckpointError: the weights file is missing or does not fit the architecture, or a download failed.
    """

    def __init__(
        self,
        spec: str,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        image_batch_size: int = 32,
        text_batch_size: int = 128,
        seed: int = DEFAULT_SEED,
        cache_dir: str | Path | None = None,
    ) -> None:
        arch, tag, weights = _parse_spec(spec)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        model, preprocess = _build_model(arch, tag, weights, seed=seed, cache_dir=cache_dir)
        # The temperature is read before any cast: exp() of a bf16 logit_scale loses about 1% of its value.
        logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = _build_tokenizer(arch, cache_dir)
        self._preprocess = preprocess
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        info = EncoderInfo(
            name=f"openclip:{spec}",
            dim=int(open_clip.get_model_config(arch)["embed_dim"]),
            fingerprint=_fingerprint(arch, tag, weights, seed),
            image_size=int(size if isinstance(size, int) else max(size)),
            logit_scale=logit_scale,
        )
        super().__init__(
            info, device=device, dtype=dtype, image_batch_size=image_batch_size, text_batch_size=text_batch_size
        )

    def preprocess_image(self, image: Image.Image, purpose: Purpose = "retrieval") -> torch.Tensor:
        # Our to_rgb first: open_clip's own convert("RGB") turns transparency black, clips 16-bit images and
        # ignores EXIF orientation. The rest (resize mode, interpolation, mean/std) is the pretrained tag's own,
        # which open_clip uses for retrieval and classification alike, so `purpose` changes nothing here.
        return self._preprocess(to_rgb(image)).float()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts).to(self.device, non_blocking=True)
        return self.model.encode_text(ids)


def _parse_spec(spec: str) -> tuple[str, str | None, Path | None]:
    """spec -> (arch, pretrained tag, local weights file); at most one of the last two is set."""
    arch, _, source = spec.partition("/")
    if arch not in open_clip.list_models():
        raise UnknownModelError(
            f"Unknown open_clip architecture {arch!r} in spec {spec!r}. Available include: "
            f"{', '.join(_EXAMPLE_ARCHS)} ({len(open_clip.list_models())} in all, see open_clip.list_models())"
        )
    if not source:
        return arch, None, None
    if open_clip.is_pretrained_cfg(arch, source):
        return arch, source, None
    tags = open_clip.list_pretrained_tags_by_model(arch)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{source!r} is neither a weights file nor a pretrained tag of {arch}. "
            f"Tags of {arch}: {', '.join(tags) if tags else 'none'}"
        )
    return arch, None, path.resolve()


def _build_model(arch: str, tag: str | None, weights: Path | None, *, seed: int, cache_dir: str | Path | None):
    """-> (float32 CPU model, open_clip's inference transform)."""
    # A private RNG stream: two builds with one seed get the same random weights, and the caller's global
    # RNG state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch,
                pretrained=tag,
                device="cpu",
                precision="fp32",
                pretrained_text=False,  # a random text tower must not reach for Hugging Face weights
                cache_dir=None if cache_dir is None else str(cache_dir),
            )
        except RuntimeError as e:
            if tag is None:
                raise
            raise CheckpointError(f"could not load pretrained weights {arch}/{tag}: {e}") from e
    if weights is not None:
        try:
            open_clip.load_checkpoint(model, str(weights), strict=True)
        except Exception as e:  # torch.load, safetensors and load_state_dict each raise their own types
            raise CheckpointError(f"weights file {weights} does not load into {arch}: {e}") from e
    return model, preprocess


def _build_tokenizer(arch: str, cache_dir: str | Path | None):
    try:
        return open_clip.get_tokenizer(arch, cache_dir=None if cache_dir is None else str(cache_dir))
    except OSError as e:  # architectures with a Hugging Face tokenizer download it on first use
        raise CheckpointError(f"could not load the tokenizer of {arch}: {e}") from e


def _fingerprint(arch: str, tag: str | None, weights: Path | None, seed: int) -> str:
    # The weights' identity, never their location: moving a file keeps its vectors compatible.
    parts: dict[str, object] = {"family": "open_clip", "arch": arch, "pretrained": tag}
    if weights is not None:
        parts["weights_sha256"] = _file_sha256(weights)
    elif tag is None:
        # Random weights depend on the seed and on the initialisation code of these versions.
        parts.update(seed=seed, open_clip=open_clip.__version__, torch=torch.__version__.split("+")[0])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
