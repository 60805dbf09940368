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
from open_clip.transformer import text_global_pool
from PIL import Image

from .device import resolve_device, resolve_dtype
from .encoder import Encoder, EncoderInfo, Purpose
from .errors import CheckpointError, UnknownModelError
from .transforms import to_rgb

DEFAULT_SEED = 0
_HASH_CHUNK = 1 << 20
# Named in the unknown-architecture error; the full list has ~150 entries.
_EXAMPLE_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-SO400M-14-SigLIP", "RN50", "convnext_base")
# When a text batch is cut into groups of similar length, each group pads to its longest text: at least this share
# of the tokens a group computes are real (the goal for text queries is 0.8).
MIN_REAL_TOKEN_FRACTION = 0.8


class OpenCLIPEncoder(Encoder):
    """An open_clip model behind the shared `Encoder` interface.

    Args:
        spec: `"<arch>/<pretrained tag or weights file>"` or `"<arch>"` (random weights, for tests).
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N" or a `torch.device`.
        dtype: defaults to bfloat16 on CUDA and float32 on the CPU.
        seed: seeds the random initialisation when the spec names no weights.
        cache_dir: where open_clip keeps downloaded pretrained weights (its default cache when None).
        compile_images: torch.compile the image tower (see `Encoder`).

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
        compile_images: bool = False,
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
            info, device=device, dtype=dtype, image_batch_size=image_batch_size, text_batch_size=text_batch_size,
            compile_images=compile_images,
        )  # fmt: skip

    def preprocess_image(self, image: Image.Image, purpose: Purpose = "retrieval") -> torch.Tensor:
        # Our to_rgb first: open_clip's own convert("RGB") turns transparency black, clips 16-bit images and
        # ignores EXIF orientation. The rest (resize mode, interpolation, mean/std) is the pretrained tag's own,
        # which open_clip uses for retrieval and classification alike, so `purpose` changes nothing here.
        return self._preprocess(to_rgb(image)).float()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        """open_clip pads every text to the context length (77 for CLIP), and `encode_text` computes all of it: a
        10-token query is then 13% real work. In a causal text tower read out at the end-of-text token, nothing
        after that token reaches the output, so each group of similar-length texts runs cut after its longest
        text's last token: the same vectors (up to float rounding), at the cost of the real tokens. Towers whose
        output depends on the padding (bidirectional attention, first/last-token pooling) run as open_clip does."""
        ids = self.tokenizer(texts).to(self.device, non_blocking=True)
        ends = self._text_ends(ids)
        if ends is None:
            return self.model.encode_text(ids)
        features: torch.Tensor | None = None
        for group in length_groups(ends.tolist(), MIN_REAL_TOKEN_FRACTION):
            rows = torch.tensor(group, device=ids.device)
            out = self._causal_text_features(ids[rows, : int(ends[rows].max()) + 1])
            if features is None:
                features = out.new_empty((len(texts), out.shape[-1]))
            features[rows] = out
        return features

    def _text_ends(self, ids: torch.Tensor) -> torch.Tensor | None:
        """The position each text is read out at, or None when the tower cannot be cut there."""
        model = self.model
        if not isinstance(model, open_clip.CLIP) or model.attn_mask is None:
            return None
        if model.text_pool_type == "argmax":  # the end-of-text token has the largest id
            return ids.argmax(dim=-1)
        if model.text_pool_type == "eos" and model.text_eos_id is not None:
            return (ids == model.text_eos_id).int().argmax(dim=-1)
        return None

    def _causal_text_features(self, ids: torch.Tensor) -> torch.Tensor:
        """`CLIP.encode_text` on `ids` of any length up to the context: the positional table and the causal mask
        are cut to it."""
        model, length = self.model, ids.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(ids).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, ids, model.text_pool_type, eos_token_id=model.text_eos_id)
        projection = model.text_projection
        if projection is None:
            return x
        return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


def length_groups(ends: list[int], min_real_fraction: float) -> list[list[int]]:
    """Indices of texts (read out at positions `ends`) in groups of similar length, shortest first: each group pads
    to its longest member, and at least `min_real_fraction` of the tokens it computes are real."""
    groups: list[list[int]] = []
    real = 0
    for index in sorted(range(len(ends)), key=ends.__getitem__):
        length = ends[index] + 1
        if groups and (len(groups[-1]) + 1) * length * min_real_fraction <= real + length:
            groups[-1].append(index)
            real += length
        else:
            groups.append([index])
            real = length
    return groups


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
