"""Train the tiny InternVL-C/G of the shapes world and save it in the official InternVL-14B-224px layout.

    python -m internvl_models.shapes_world.train_internvl --out DIR [--seed 0] [--steps N] [--resume]

Same architecture classes, checkpoint layout and loader as the real model; only the config is tiny. The recipe:

* data: training scenes rendered once at the scene default size (224 px) and bicubic-squashed to the model size,
  exactly the path `retrieval_transform` takes at inference, kept as one uint8 tensor; captions (all-object
  descriptions, plus a fraction of short one-object queries) are generated per step in a random language with a
  fresh wording seed, so the text side never repeats;
* loss: symmetric InfoNCE for both heads (C: clip_projector over the ViT tokens; G: unit(C) + unit(queries ->
  clip_projector2), as `InternVL.encode_image` computes it) against the QLLaMA text feature, with every caption
  that the image satisfies counted as a positive (short queries have many);
* auxiliary losses, training only (the heads are not saved, so the checkpoint keeps the official key set): every
  ViT patch token classifies colour / shape / size of the 3x3 grid cell it lies in, and one linear head shared by
  the image and text embeddings decodes the whole cell grid from them. Full labels make this dense supervision
  free, and it teaches colour, shape and position in minutes where contrastive loss alone needs hours;
* classification-style term (`class_batch` > 0; on in the defaults): single-object scenes of only two colours,
  captioned like zero-shot prompts ("a photo of a red star."), InfoNCE with same-class positives, plus one colour /
  shape head shared by their image and text embeddings (`class_aux_weight`). Without it the text embedding never
  takes up shape: under unit normalisation a text direction the image embeddings lack only costs contrastive loss,
  and the image embedding carries little shape while the text has none, so neither side pulls the other (issue #4);
* AdamW, linear warmup + cosine decay, the temperature starting at 1/50 instead of CLIP's 1/0.07.

Deterministic: batches are a pure function of (seed, step), so a run stopped with `--stop-after` and continued
with `--resume` gives the same weights as a straight run (on CPU; CUDA kernels may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..checkpoint import save_internvl
from ..config import InternViTConfig, InternVLConfig, QLLaMAConfig
from ..device import resolve_device
from ..internvl import InternVL
from ..tokenizer import QLLaMATokenizer
from ..transforms import retrieval_transform
from . import evaluate
from .cg_batches import (
    N_CELLS,
    Batch,
    ClassBatch,
    SceneBank,
    build_bank,
    build_class_bank,
    make_batch,
    make_class_batch,
)
from .model_card import host_summary
from .tokenizer_training import CONFIG_FILE, MODEL_FILE, train_tokenizer
from .training_common import cosine_lr, normalise_pixels, recipe_from_overrides, run_options, split_ce, training_parser
from .vocab import COLOURS, SHAPES, SIZES

STATE_FILE = "state.pt"
LOG_FILE = "training_log.json"
N_COLOUR, N_SHAPE, N_SIZE = len(COLOURS) + 1, len(SHAPES) + 1, len(SIZES) + 1  # class 0 = empty cell


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, besides the seed. Defaults are the shipped model's."""

    image_size: int = 84
    patch_size: int = 14
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    num_query_token: int = 16
    embed_dim: int = 128
    pool_heads: int = 16
    layer_scale_init: float = 1.0  # InternViT-6B's 0.1 damps every residual branch of a 4-layer tower for ~500 steps
    vocab_size: int = 1500
    tokenizer_scenes: int = 400
    train_scenes: int = 30000  # half of them shape twins of the other half when shape_twins
    shape_twins: bool = (
        False  # True: every batch half originals, half their shape twins (scene.shape_twin); see MODEL_CARD
    )
    batch_size: int = 128
    steps: int = 700
    lr: float = 2e-3
    min_lr_ratio: float = 0.02
    weight_decay: float = 0.05
    warmup_steps: int = 40
    logit_scale_init: float = 50.0  # exp(logit_scale) at step 0; CLIP's 14.3 hardly moves in a short run
    logit_scale_max: float = 100.0
    query_fraction: float = 0.25  # share of short one-object queries among the captions
    aux_patch_weight: float = 1.0
    aux_cell_weight: float = 1.0  # colour / shape / size of each occupied cell from its mean patch token
    aux_embed_weight: float = 2.0
    grad_clip: float = 5.0
    eval_every: int = 100
    eval_scenes: int = 200
    save_every: int = 50
    render_workers: int = 2
    # Classification-style contrastive term (class_batch 0 = off). Each step adds `class_batch` single-object
    # scenes of only `class_colours` colours, captioned like zero-shot prompts without position ("a photo of a red
    # star."), with positives = same colour and shape: colour alone cannot solve that batch, only shape can.
    class_batch: int = 64
    class_scenes: int = 3000  # single-object training scenes rendered for it (drawn from the train split)
    class_colours: int = 2  # distinct colours per class batch
    class_weight: float = 1.0  # weight of its InfoNCE (C and G heads, as the main term)
    class_template_share: float = 0.5  # share of prompts from the classification templates, the rest query-style
    class_aux_weight: float = 5.0  # colour/shape CE of one linear head shared by image and text class embeddings

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> Recipe:
        return recipe_from_overrides(cls, overrides)


def build_config(recipe: Recipe, vocab_size: int) -> InternVLConfig:
    """A tiny InternVL-14B-shaped config: InternViT-6B flavour (RMSNorm, QK-norm, no qkv bias) + QLLaMA."""
    vision = InternViTConfig(
        hidden_size=recipe.vision_width,
        num_attention_heads=recipe.vision_heads,
        intermediate_size=4 * recipe.vision_width,
        num_hidden_layers=recipe.vision_layers,
        patch_size=recipe.patch_size,
        image_size=recipe.image_size,
        initializer_factor=recipe.layer_scale_init,
    )
    qllama = QLLaMAConfig(
        vocab_size=vocab_size,
        hidden_size=recipe.text_width,
        intermediate_size=(8 * recipe.text_width // 3 + 7) // 8 * 8,  # LLaMA's 8/3 ratio, rounded to 8
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        max_position_embeddings=128,  # texts are at most 80 tokens (the tokenizer's max_length)
        num_query_token=recipe.num_query_token,
        vision_hidden_size=recipe.vision_width,
    )
    return InternVLConfig(
        vision=vision, qllama=qllama, clip_embed_dim=recipe.embed_dim, attn_pool_num_heads=recipe.pool_heads
    )


# --- model, auxiliary heads, loss ---------------------------------------------------------------------------------
class AuxHeads(nn.Module):
    """Training-only classifiers: per patch token and per embedding (all cells).

    A patch token classifies (its cell, the colour there), (its cell, the shape there), (its cell, the size):
    the *joint* classes make each token carry content bound to position, which attention pooling can then
    average without mixing up which object is where. With plain per-cell content targets the pooled embedding
    learns the grid several times slower.
    """

    def __init__(self, vision_width: int, embed_dim: int, class_head: bool = False) -> None:
        super().__init__()
        self.patch = nn.Linear(vision_width, N_CELLS * (N_COLOUR + N_SHAPE + N_SIZE))
        self.scene = nn.Linear(embed_dim, N_CELLS * (N_COLOUR + N_SHAPE))
        # Shape is learned from this one: per-patch targets are mostly "empty cell" and a patch sees a fragment
        # of its object, and with them alone the tower learned colour and position but shape stayed at chance.
        self.cell = nn.Linear(vision_width, N_COLOUR + N_SHAPE + N_SIZE)
        # Classification-style term only (class_aux_weight > 0): colour / shape of a single-object embedding,
        # one head for image and text, so both put shape along the same directions from the start.
        if class_head:
            self.klass = nn.Linear(embed_dim, len(COLOURS) + len(SHAPES))


def patch_cells(image_size: int, patch_size: int) -> torch.Tensor:
    """(P,) the 3x3 grid cell holding each patch centre, row-major like the ViT's patch order."""
    grid = image_size // patch_size
    centre = (torch.arange(grid) + 0.5) / grid
    band = (centre * 3).floor().long().clamp(max=2)
    return (band[:, None] * 3 + band[None, :]).flatten()


def contrastive(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over unit vectors with soft targets spread evenly over all positives."""
    logits = scale * text @ image.t()  # (T, B)
    targets = positives.float()
    t2i = -(targets / targets.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    i2t = -(targets / targets.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (t2i + i2t) / 2


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def scene_ce(heads: AuxHeads, embeds: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of decoding every cell's colour and shape from unit embeddings (size: said only sometimes).

    The unit vectors are scaled to unit-variance entries: early on all embeddings point almost the same way, and
    on raw unit vectors the head would need huge weights to read the small differences."""
    logits = heads.scene(embeds * math.sqrt(embeds.shape[1])).view(len(embeds), N_CELLS, N_COLOUR + N_SHAPE)
    return split_ce(logits, cells[..., :2], (N_COLOUR, N_SHAPE))


def encode_captions(model: InternVL, batch: Batch | ClassBatch, device: torch.device) -> torch.Tensor:
    """Unit text embeddings of a batch's captions, in batch order (they are encoded in length-bucketed chunks)."""
    text = torch.cat([model.encode_text(ids.to(device)) for ids in batch.input_ids])
    return _unit(text[batch.order.to(device)])


def class_term(
    model: InternVL, heads: AuxHeads, recipe: Recipe, batch: ClassBatch, image_c: torch.Tensor, image_g: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The classification-style losses of the single-object batch: InfoNCE of its C and G image embeddings against
    its prompts (same colour and shape = positive) and, with `class_aux_weight`, the shared colour / shape head."""
    device = image_c.device
    text = encode_captions(model, batch, device)
    positives, scale = batch.positives.to(device), model.logit_scale.exp()
    out = {"cls": (contrastive(image_c, text, positives, scale) + contrastive(image_g, text, positives, scale)) / 2}
    if recipe.class_aux_weight > 0:
        embeds = torch.cat([image_c, image_g, text])
        logits = heads.klass(embeds * math.sqrt(embeds.shape[1]))
        out["cls_aux"] = split_ce(logits, batch.labels.to(device).repeat(3, 1), (len(COLOURS), len(SHAPES)))
    return out


def compute_loss(
    model: InternVL,
    heads: AuxHeads,
    batch: Batch,
    bank: SceneBank,
    recipe: Recipe,
    cells_of_patch: torch.Tensor,
    class_batch: ClassBatch | None = None,
    class_bank: SceneBank | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    device = cells_of_patch.device
    pixels = normalise_pixels(bank.pixels[batch.index].to(device))
    if class_batch is not None:  # one ViT / query pass for both image sets
        pixels = torch.cat([pixels, normalise_pixels(class_bank.pixels[class_batch.index].to(device))])
    tokens = model.vision_model(pixels).last_hidden_state  # (B, 1+P, Cv)
    image_c = _unit(model.clip_projector(tokens))
    image_g = _unit(image_c + _unit(model.clip_projector2(model.encode_queries(tokens))))  # forward()'s G
    n_main = len(batch.index)
    extra: dict[str, torch.Tensor] = {}
    if class_batch is not None:
        extra = class_term(model, heads, recipe, class_batch, image_c[n_main:], image_g[n_main:])
        tokens, image_c, image_g = tokens[:n_main], image_c[:n_main], image_g[:n_main]
    text = encode_captions(model, batch, device)
    scale = model.logit_scale.exp()
    positives = batch.positives.to(device)
    loss_c = contrastive(image_c, text, positives, scale)
    loss_g = contrastive(image_g, text, positives, scale)
    cells = bank.cells[batch.index].to(device)  # (B, 9, 3)
    joint = cells[:, cells_of_patch] * N_CELLS + cells_of_patch[None, :, None]  # (B, P, 3): (cell, class) ids
    aux_patch = split_ce(heads.patch(tokens[:, 1:]), joint, [N_CELLS * n for n in (N_COLOUR, N_SHAPE, N_SIZE)])
    pool = torch.nn.functional.one_hot(cells_of_patch, N_CELLS).t().float()
    per_cell = torch.einsum("cp,bpd->bcd", pool / pool.sum(1, keepdim=True).clamp(min=1), tokens[:, 1:])  # (B, 9, Cv)
    occupied = cells[..., 0] > 0
    aux_cell = split_ce(heads.cell(per_cell[occupied]), cells[occupied], (N_COLOUR, N_SHAPE, N_SIZE))
    aux_image = (scene_ce(heads, image_c, cells) + scene_ce(heads, image_g, cells)) / 2
    full = batch.full.to(device)  # only an all-object caption determines every cell
    aux_text = scene_ce(heads, text[full], cells[full])
    aux = recipe.aux_patch_weight * aux_patch + recipe.aux_cell_weight * aux_cell
    aux = aux + recipe.aux_embed_weight * (aux_image + aux_text)
    loss = loss_c + loss_g + aux
    if "cls" in extra:
        loss = loss + recipe.class_weight * extra["cls"]
    if "cls_aux" in extra:
        loss = loss + recipe.class_aux_weight * extra["cls_aux"]
    parts = {
        "loss": loss,
        "c": loss_c,
        "g": loss_g,
        "aux_patch": aux_patch,
        "aux_cell": aux_cell,
        "aux_img": aux_image,
        "aux_txt": aux_text,
        **extra,
    }
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def make_optimizer(model: InternVL, heads: AuxHeads, recipe: Recipe) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases, embeddings, position/query tokens and the temperature."""
    no_decay_names = ("embed_tokens", "position_embedding", "class_embedding", "query_tokens", "logit_scale")
    decay, plain = [], []
    for name, param in [*model.named_parameters(), *heads.named_parameters()]:
        skip = param.ndim < 2 or any(n in name for n in no_decay_names)
        (plain if skip else decay).append(param)
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)


def learning_rate(recipe: Recipe, step: int) -> float:
    return cosine_lr(recipe.lr, step, recipe.steps, recipe.warmup_steps, recipe.min_lr_ratio)


# --- quick held-out evaluation ------------------------------------------------------------------------------------
class LiveEncoder:
    """The training model behind the two methods `evaluate` calls, with the inference preprocessing and tokenizer
    (not `InternVLEncoder`, which would freeze the model it wraps)."""

    def __init__(self, model: InternVL, tokenizer: QLLaMATokenizer, mode: str) -> None:
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self._transform = retrieval_transform(model.config.image_size)
        self._device = next(model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image], purpose: str = "retrieval") -> np.ndarray:
        pixels = torch.stack([self._transform(im) for im in images]).to(self._device)
        out = [self.model.encode_image(pixels[i : i + 128], self.mode) for i in range(0, len(pixels), 128)]
        return _unit(torch.cat(out)).float().cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), 256):
            ids, _ = self.tokenizer(list(texts[i : i + 256]))
            out.append(self.model.encode_text(ids.to(self._device)))
        return _unit(torch.cat(out)).float().cpu().numpy()


def quick_eval(model: InternVL, tokenizer: QLLaMATokenizer, recipe: Recipe) -> dict[str, float]:
    """Mean text->image R@1 over the six languages on `eval_scenes` validation scenes, for both heads."""
    model.eval()
    try:
        out = {}
        for mode in ("C", "G"):
            report = evaluate.evaluate_retrieval(
                LiveEncoder(model, tokenizer, mode), n_scenes=recipe.eval_scenes, split="val"
            )
            out[f"val_r1_{mode.lower()}"] = report["mean"]["R@1"]
        return out
    finally:
        model.train()


# --- training state -----------------------------------------------------------------------------------------------
def save_state(path: Path, step: int, model: InternVL, heads: AuxHeads, opt: torch.optim.Optimizer, log: dict) -> None:
    state = {
        "step": step,
        "model": model.state_dict(),
        "heads": heads.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "log": log,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: an interrupted save leaves the previous state intact


def load_state(path: Path, model: InternVL, heads: AuxHeads, opt: torch.optim.Optimizer, log: dict) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["log"]["recipe"] != log["recipe"] or state["log"]["seed"] != log["seed"]:
        raise ValueError(f"{path} was written by a different recipe or seed; start afresh without --resume")
    model.load_state_dict(state["model"])
    heads.load_state_dict(state["heads"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    log.update(state["log"])
    return int(state["step"])


def export(model: InternVL, state_dir: Path, out: Path) -> None:
    """config.json + model.safetensors (official layout) and the tokenizer files into `out`."""
    with torch.no_grad():  # the loader ties lm_head to embed_tokens and warns when they differ
        model.qllama.lm_head.weight.copy_(model.qllama.model.embed_tokens.weight)
    save_internvl(model.to("cpu"), model.config, out)
    for name in (MODEL_FILE, CONFIG_FILE):
        shutil.copyfile(state_dir / name, out / name)


# --- the run ------------------------------------------------------------------------------------------------------
def _setup(recipe: Recipe, seed: int, state_dir: Path, device: torch.device) -> tuple:
    torch.manual_seed(seed)
    train_tokenizer(state_dir, recipe.vocab_size, n_scenes=recipe.tokenizer_scenes, seed=seed)
    tokenizer = QLLaMATokenizer.from_pretrained(state_dir)
    model = InternVL(build_config(recipe, tokenizer.vocab_size))
    with torch.no_grad():
        model.logit_scale.fill_(math.log(recipe.logit_scale_init))
    heads = AuxHeads(
        recipe.vision_width, recipe.embed_dim, class_head=recipe.class_batch > 0 and recipe.class_aux_weight > 0
    )
    model.to(device).train()
    heads.to(device).train()
    return tokenizer, model, heads, make_optimizer(model, heads, recipe)


def _train_step(
    model, heads, opt, batch, bank, recipe, cells_of_patch, step, class_batch=None, class_bank=None
) -> dict[str, float]:
    for group in opt.param_groups:
        group["lr"] = learning_rate(recipe, step)
    loss, parts = compute_loss(model, heads, batch, bank, recipe, cells_of_patch, class_batch, class_bank)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([*model.parameters(), *heads.parameters()], recipe.grad_clip)
    opt.step()
    with torch.no_grad():  # CLIP's clamp: a temperature below 1/100 makes training unstable
        model.logit_scale.clamp_(0.0, math.log(recipe.logit_scale_max))
    return parts


def _record(log: dict, step: int, window: list[dict[str, float]], model: InternVL, extra: dict) -> dict:
    row = {"step": step, **{k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]}}
    row["temperature_inv"] = round(float(model.logit_scale.detach().exp()), 2)
    row.update(extra)
    row["elapsed_s"] = round(log["elapsed_s"], 1)
    log["curve"].append(row)
    return row


def train(
    out: str | Path,
    *,
    seed: int = 0,
    recipe: Recipe | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    state_dir: str | Path | None = None,
    keep_state: bool = False,
    threads: int | None = 2,
    report: Callable[[str], None] = print,
) -> dict:
    """Train (or continue) and export to `out`; returns the training log. `stop_after` ends the run early at
    that step with the state saved, so a later `resume=True` call can continue it."""
    recipe = recipe or Recipe()
    out, started = Path(out), time.monotonic()
    state_dir = Path(state_dir) if state_dir else out / "train_state"
    state_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device("auto")
    tokenizer, model, heads, opt = _setup(recipe, seed, state_dir, device)
    log: dict[str, Any] = {"recipe": dataclasses.asdict(recipe), "seed": seed, "curve": [], "elapsed_s": 0.0}
    log["host"] = host_summary()
    step = load_state(state_dir / STATE_FILE, model, heads, opt, log) if resume else 0
    elapsed_before = log["elapsed_s"]
    bank = build_bank(recipe, seed)
    class_bank = build_class_bank(recipe, seed)
    report(f"{len(bank.scenes)} training scenes ready after {time.monotonic() - started:.0f} s on {device}")
    cells_of_patch = patch_cells(recipe.image_size, recipe.patch_size).to(device)
    window: list[dict[str, float]] = []
    last = min(recipe.steps, stop_after or recipe.steps)
    while step < last:
        batch = make_batch(bank, tokenizer, recipe, seed, step)
        class_batch = make_class_batch(class_bank, tokenizer, recipe, seed, step) if class_bank else None
        window.append(
            _train_step(model, heads, opt, batch, bank, recipe, cells_of_patch, step, class_batch, class_bank)
        )
        step += 1
        log["elapsed_s"] = elapsed_before + time.monotonic() - started
        evaluating = step % recipe.eval_every == 0 or step == recipe.steps
        if evaluating:
            row = _record(log, step, window, model, quick_eval(model, tokenizer, recipe))
            report(json.dumps(row))
            window = []
        if step % recipe.save_every == 0 or step == last:
            save_state(state_dir / STATE_FILE, step, model, heads, opt, log)
    if step >= recipe.steps:
        export(model, state_dir, out)
        log["wall_time_s"] = round(log["elapsed_s"], 1)
        (out / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n")
        if not keep_state:
            shutil.rmtree(state_dir)
    return log


def main(argv: Sequence[str] | None = None) -> None:
    parser = training_parser(__doc__.split("\n")[0], "total optimiser steps (default: the recipe's)",
                             "stop at this step, keeping the state for --resume")  # fmt: skip
    args = parser.parse_args(argv)
    overrides, options = run_options(args)
    train(args.out, recipe=Recipe.from_overrides(overrides), **options)


if __name__ == "__main__":
    main()
