"""What the two shapes-world trainers share: rendering scenes in worker processes, pixel normalisation, the loss of
grouped labels, the learning-rate schedule, recipe overrides and the command line (output, seed, resuming, threads)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..transforms import IMAGENET_MEAN, IMAGENET_STD


def render_in_workers(
    render_chunk: Callable[[Sequence[Any], int], np.ndarray], keys: Sequence[Any], size: int, workers: int
) -> torch.Tensor:
    """(N, 3, S, S) uint8 pixels of `keys`, rendered by `render_chunk` (a module-level function: it is pickled) in
    `workers` processes when it pays. Rendering is pure per key, so the result does not depend on the split."""
    if workers <= 1 or len(keys) < 2000:
        arrays = [render_chunk(keys, size)]
    else:
        step = math.ceil(len(keys) / (4 * workers))
        chunks = [keys[i : i + step] for i in range(0, len(keys), step)]
        with ProcessPoolExecutor(workers) as pool:
            arrays = list(pool.map(render_chunk, chunks, [size] * len(chunks)))
    return torch.from_numpy(np.concatenate(arrays)).permute(0, 3, 1, 2).contiguous()


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> ImageNet-normalised float, as ToTensor + Normalize in the inference transforms."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def split_ce(logits: torch.Tensor, labels: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sum of cross-entropies of consecutive label groups: logits (..., sum(sizes)), labels (..., len(sizes))."""
    parts = logits.split(list(sizes), dim=-1)
    return sum(F.cross_entropy(p.reshape(-1, p.shape[-1]), labels[..., k].reshape(-1)) for k, p in enumerate(parts))


def cosine_lr(lr: float, step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine from lr down to lr * min_ratio at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def recipe_from_overrides(cls: type, overrides: dict[str, Any] | None) -> Any:
    """`cls(**overrides)` for a frozen recipe dataclass, naming unknown keys; JSON lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise ValueError(f"Unknown recipe keys {unknown}. Valid keys: {sorted(names)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items()})


def training_parser(description: str, steps_help: str, stop_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help=steps_help)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state (or --state-dir)")
    parser.add_argument("--stop-after", type=int, help=stop_help)
    parser.add_argument("--state-dir", help="where the periodic training state goes (default OUT/train_state)")
    parser.add_argument("--keep-state", action="store_true", help="keep the training state after the export")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--recipe", default="{}", help="JSON object of Recipe fields to override")
    return parser


def run_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(recipe overrides, keyword arguments of `train` other than `recipe`) from the parsed command line."""
    overrides = json.loads(args.recipe)
    if args.steps is not None:
        overrides["steps"] = args.steps
    options = {"seed": args.seed, "resume": args.resume, "stop_after": args.stop_after,
               "state_dir": args.state_dir, "keep_state": args.keep_state, "threads": args.threads}  # fmt: skip
    return overrides, options
