"""Checkpoint I/O: resolve a source, read config.json and the weights in the official layout, load strictly.

Loading builds the model on the meta device (no memory, no init) and then assigns each shard's tensors straight
into place, converted to the target device and dtype one tensor at a time, so peak memory is about one copy of
the weights. Keys must match exactly: missing, unexpected and wrongly shaped keys are all reported at once in a
CheckpointError before any tensor is read. The one tolerated difference is the embed_tokens / lm_head tie.

Weight layouts, in the order they are looked for: `model.safetensors`, `model.safetensors.index.json` (+ shards),
`pytorch_model.bin`, `pytorch_model.bin.index.json` (+ shards; read with `weights_only=True`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import InternViTConfig, InternVLConfig
from .device import resolve_device, resolve_dtype
from .errors import CheckpointError, ModelError
from .intern_vit import InternViT
from .internvl import InternVL
from .layers import fuse_projections

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHT_LAYOUTS = (  # (single file, index of shards), safetensors first
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
EMBED_KEY = "qllama.model.embed_tokens.weight"
LM_HEAD_KEY = "qllama.lm_head.weight"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer; .bin only if needed
_VOLATILE_CONFIG_KEYS = {"_commit_hash", "_name_or_path", "transformers_version", "torch_dtype"}
_FULL_HASH_LIMIT = 256 * 2**20  # files up to this size are hashed in full by checkpoint_fingerprint
_SAMPLES, _SAMPLE_BYTES = 8, 2**20

Model = TypeVar("Model", bound=nn.Module)


# --- source, device, dtype ---------------------------------------------------------------------------------------
def resolve_checkpoint(source: str | os.PathLike[str]) -> Path:
    """A local checkpoint directory as is, or a hub id ("owner/name") downloaded with huggingface_hub."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _HUB_ID.match(str(source)):
        raise CheckpointError(f"{str(source)!r} is neither a checkpoint directory nor a hub id like 'owner/name'")
    try:
        directory = Path(snapshot_download(str(source), allow_patterns=_HUB_PATTERNS))
        if not any(directory.glob("*.safetensors")):  # old repos ship only pytorch_model*.bin
            directory = Path(snapshot_download(str(source), allow_patterns=["*.bin", "*.bin.index.json"]))
    except Exception as e:  # the hub raises HTTP, offline, auth and disk errors of many unrelated types
        raise CheckpointError(f"Could not download {str(source)!r} from the Hugging Face hub: {e}") from e
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path}: {e}") from e


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, in one of the layouts of WEIGHT_LAYOUTS."""
    for single, index in WEIGHT_LAYOUTS:
        if (directory / single).is_file():
            return [directory / single]
        if (directory / index).is_file():
            try:
                weight_map = json.loads((directory / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"Cannot read the shard index {directory / index}: {e}") from e
            files = [directory / name for name in sorted(set(weight_map.values()))]
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{directory / index} lists shards that are absent: {absent}")
            return files
    expected = [name for layout in WEIGHT_LAYOUTS for name in layout]
    present = sorted(p.name for p in directory.iterdir())
    raise CheckpointError(f"No weights in {directory}: expected one of {expected}; found {present}")


# --- reading shards ----------------------------------------------------------------------------------------------
def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    # mmap: tensors are paged in when copied, so a shard never sits in memory twice. weights_only: no pickled code.
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def shard_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of one shard; for safetensors from the header alone."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as f:
                return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
        return {key: tuple(t.shape) for key, t in _torch_load(file).items()}
    except Exception as e:  # corrupt headers surface as several exception types
        raise CheckpointError(f"Cannot read the weight file {file}: {e}") from e


def shard_tensors(file: Path, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    if file.suffix == ".safetensors":
        with safe_open(file, framework="pt") as f:
            for key in keys:
                yield key, f.get_tensor(key)
    else:
        state = _torch_load(file)
        for key in keys:
            yield key, state[key]


def key_listing(title: str, items: list[str], limit: int = 25) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}): {items[:limit]}{more}"


# --- strict loading ----------------------------------------------------------------------------------------------
def _plan_load(
    model: nn.Module, files: list[Path], prefix: str, tie: tuple[str, str] | None, where: Path
) -> dict[Path, dict[str, str]]:
    """file -> {stored key: our key}, after checking that the stored keys and shapes match the model exactly."""
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    stored: dict[str, tuple[Path, str, tuple[int, ...]]] = {}  # our key -> (file, stored key, shape)
    for file in files:
        for key, shape in shard_shapes(file).items():
            if key.startswith(prefix):
                stored[key[len(prefix) :]] = (file, key, shape)
    optional: set[str] = set()
    if tie is not None:
        winner, follower = tie
        if winner not in stored and follower in stored:
            stored[winner] = stored.pop(follower)  # only the follower is stored: it is read into the winner
        optional = {follower}  # filled by tying to the winner when absent
    missing = sorted(set(expected) - set(stored) - optional)
    unexpected = sorted(set(stored) - set(expected))
    mismatched = [
        f"{key}: stored {list(shape)} vs model {list(expected[key])}"
        for key, (_, _, shape) in sorted(stored.items())
        if key in expected and shape != expected[key]
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"The weights in {where} do not match the architecture in its {CONFIG_NAME}:"
            + key_listing("missing keys", missing)
            + key_listing("unexpected keys", unexpected)
            + key_listing("shape mismatches", mismatched)
        )
    plan: dict[Path, dict[str, str]] = {file: {} for file in files}
    for ours, (file, key, _) in stored.items():
        plan[file][key] = ours
    return plan


def _tie_embeddings(model: nn.Module, winner: str, follower: str, follower_stored: bool) -> None:
    """Make `follower` the same Parameter as `winner` (see load_internvl for why embed_tokens wins)."""
    weight = model.get_parameter(winner)
    if follower_stored and not torch.equal(model.get_parameter(follower), weight):
        log.warning("%s and %s differ in the checkpoint; %s is used for both (pitfall F.1)", winner, follower, winner)
    module_name, _, attr = follower.rpartition(".")
    setattr(model.get_submodule(module_name), attr, weight)


def _load_weights(
    model: Model,
    directory: Path,
    *,
    prefix: str,
    device: torch.device,
    dtype: torch.dtype,
    tie: tuple[str, str] | None = None,
) -> Model:
    """Fill a meta-device model from the checkpoint in `directory`, shard by shard, strictly."""
    files = weight_files(directory)
    plan = _plan_load(model, files, prefix, tie, directory)
    loaded: set[str] = set()
    for file, keys in plan.items():
        part = {
            keys[key]: tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            for key, tensor in shard_tensors(file, sorted(keys))
        }
        model.load_state_dict(part, strict=False, assign=True)  # assign: replace the meta tensors, no copy
        loaded.update(part)
        del part
    if tie is not None:
        _tie_embeddings(model, tie[0], tie[1], follower_stored=tie[1] in loaded)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a guard for model code that adds state the checkpoint cannot fill
        raise CheckpointError(f"Tensors left on the meta device after loading {directory}: {left}")
    return model.eval()


def _parse(directory: Path, parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except CheckpointError:
        raise
    except ModelError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from e


def load_internvl(
    source: str | os.PathLike[str], *, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None
) -> InternVL:
    """An InternVL-C/G checkpoint (official InternVL-14B layout) from a directory or hub id, in eval mode.

    Tie rule (pitfall F.1): `qllama.lm_head.weight` becomes the same tensor as `qllama.model.embed_tokens.weight`,
    and **embed_tokens wins** when the checkpoint stores two different tensors (a warning is logged). That is
    what the official model-card path (`from_pretrained(..., low_cpu_mem_usage=True)`) does, and the text
    encoder only ever reads embed_tokens, so retrieval results equal the model card's whichever tensor lm_head
    held. If only one of the two is stored, it fills both.
    """
    directory = resolve_checkpoint(source)
    config = _parse(directory, lambda: InternVLConfig.from_official_config(read_config(directory)))
    device = resolve_device(device)
    with torch.device("meta"):
        model = InternVL(config)
    model = _load_weights(
        model, directory, prefix="", device=device, dtype=resolve_dtype(dtype, device), tie=(EMBED_KEY, LM_HEAD_KEY)
    )
    return fuse_projections(model)  # one GEMM for QLLaMA's q/k/v (and cross-attention k/v), same outputs


def load_intern_vit(
    source: str | os.PathLike[str], *, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None
) -> InternViT:
    """The InternViT of a checkpoint: `vision_model.*` of an InternVL / InternVL-chat checkpoint (other keys are
    ignored), or the whole state dict of a bare InternViT repo (whose config.json is the vision config itself).
    """
    directory = resolve_checkpoint(source)
    raw = read_config(directory)
    nested = "vision_config" in raw
    config = _parse(directory, lambda: InternViTConfig.from_official_config(raw["vision_config"] if nested else raw))
    if nested and raw.get("force_image_size"):  # the stored position embedding has the forced size
        config = dataclasses.replace(config, image_size=raw["force_image_size"])
    device = resolve_device(device)
    with torch.device("meta"):
        model = InternViT(config)
    prefix = "vision_model." if nested else ""
    return _load_weights(model, directory, prefix=prefix, device=device, dtype=resolve_dtype(dtype, device))


# --- saving and fingerprints -------------------------------------------------------------------------------------
def save_internvl(model: InternVL, config: InternVLConfig, directory: str | os.PathLike[str]) -> Path:
    """Write `config.json` + `model.safetensors` in the official layout (both tied embedding keys included)."""
    if config != model.config:
        raise ModelError("save_internvl: config differs from the config the model was built with")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        # safetensors refuses shared storage: the tied lm_head, and the views of fused projections, get copies.
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen:
            tensor = tensor.clone()
        seen.add(storage)
        state[key] = tensor
    official = {**config.to_official_config(), "torch_dtype": str(model.logit_scale.dtype).removeprefix("torch.")}
    tmp = directory / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / "model.safetensors")  # atomic: a crash never leaves a half-written weight file
    (directory / CONFIG_NAME).write_text(json.dumps(official, indent=2, sort_keys=True) + "\n")
    return directory


def _strip_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_volatile(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS}
    return value


def _hash_file(digest: Any, file: Path, full: bool) -> None:
    size = file.stat().st_size
    digest.update(f"{file.name}\0{size}\0".encode())
    with file.open("rb") as f:
        if full or size <= _FULL_HASH_LIMIT:
            while chunk := f.read(2**24):
                digest.update(chunk)
            return
        if file.suffix == ".safetensors":  # 8-byte length + JSON header: every name, dtype, shape and offset
            head = f.read(8)
            digest.update(head + f.read(int.from_bytes(head, "little")))
        for i in range(_SAMPLES):
            f.seek((size - _SAMPLE_BYTES) * i // (_SAMPLES - 1))
            digest.update(f.read(_SAMPLE_BYTES))


def checkpoint_fingerprint(source: str | os.PathLike[str], *, full: bool = False) -> str:
    """A stable sha256 (hex) identifying a checkpoint's architecture and weights.

    Covers: config.json as canonical JSON without the keys that change with the saving tool rather than the
    model (`_commit_hash`, `_name_or_path`, `transformers_version`, `torch_dtype`); then, per weight file in name
    order, its name, its size and its content. The content is hashed in full for files up to 256 MiB (or all
    files with `full=True`); a bigger file contributes its safetensors header (all names, dtypes, shapes,
    offsets) plus 8 evenly spaced 1 MiB samples, which makes fingerprinting a 28 GB checkpoint take a second
    but could miss an edit that keeps every shape and touches none of the samples.
    Not covered: paths, mtimes, tokenizer and other non-weight files.
    """
    directory = resolve_checkpoint(source)
    digest = hashlib.sha256()
    config = _strip_volatile(read_config(directory))
    digest.update(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    for file in weight_files(directory):
        _hash_file(digest, file, full)
    return digest.hexdigest()
