"""Train the tiny InternVL2.5-style chat model of the shapes world and save it in the official `internvl_chat` layout.

    python -m internvl_models.shapes_world.train_chat --out DIR [--seed 0] [--resume] [--vision CKPT]

Same classes, checkpoint layout, prompt format and loader as a real InternVL2.5 checkpoint; only the config is tiny
(InternViT 84 px -> 3x3 pixel-shuffled image tokens per tile -> mlp1 -> a small Qwen2). The recipe:

* tokenizer: the chat SentencePiece model of `train_tokenizer(chat=True)`, shipped as a `tokenizer.json`
  (tokenizers' BPE with byte fallback; the ids equal SentencePiece's) because transformers cannot read a
  SentencePiece file without protobuf, which this environment lacks; the special tokens stay single ids;
* stage 1 (vision): the InternViT of the InternVL-C/G checkpoint (`--vision`, default the shipped shapes-world
  one), used as it is: linear probes of its pixel-shuffled tokens read colour 0.995, shape 0.88, cell 1.0 and
  the object box within the cell at IoU 0.84, and the few steps of this stage lowered shape to 0.82. Without a
  checkpoint a fresh tower is trained for `vision_steps` with training-only heads: each patch classifies its
  grid cell's colour / shape / size, each image token regresses the box of the object in its cell;
* stage 2 (chat): the tower is frozen, its pixel-shuffled features are computed once per training scene; mlp1
  and the LM learn question answering (every kind, all six languages, 1-4 images) in the exact prompt the
  inference code builds (template internvl2_5 with its system message), loss on the answer and the stop token
  only. Two training-only losses make the LM use the image (`referent_losses`): one attention head is told
  where the object a question is about lies (every image token is one grid cell), and what that head fetches
  is taught to carry the object's colour, shape, cell, image number and box. The system prompt is the same in
  every sample: it is run once per step and its key/value cache shared by the batch.

Deterministic: batches are a pure function of (seed, step); a run stopped (`--stop-after`) and continued with
`--resume` gives the same weights as a straight run (on CPU; CUDA kernels may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..chat import InternVLChat, pixel_shuffle
from ..chat_config import ChatConfig
from ..checkpoint import load_intern_vit
from ..config import InternViTConfig
from ..device import resolve_device
from ..intern_vit import InternViT
from ..tiling import IMG_CONTEXT
from .chat_data import (
    N_COLOUR,
    N_SHAPE,
    N_SIZE,
    TEMPLATE,
    Batch,
    Encoder,
    SceneBank,
    build_bank_split,
    collate,
    make_batch,
    region_cells,
    sample_conversations,
)
from .chat_objective import AuxHeads, answer_exact, answer_loss, chat_forward
from .chat_tokenizer import load_tokenizer, write_tokenizer
from .model_card import host_summary
from .questions import QUESTION_KINDS
from .tokenizer_training import train_tokenizer
from .training_common import cosine_lr, normalise_pixels, recipe_from_overrides, run_options, split_ce, training_parser
from .vocab import derive_seed

DEFAULT_VISION = Path(__file__).resolve().parent / "weights" / "internvl-shapes"
STATE_FILE, LOG_FILE = "state.pt", "training_log.json"


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights, besides the seed and the vision checkpoint."""

    image_size: int = 84  # only for a fresh tower; a loaded one keeps its own size and shape
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    llm_width: int = 192
    llm_layers: int = 4
    llm_heads: int = 4
    llm_kv_heads: int = 2
    vocab_size: int = 1500
    tokenizer_scenes: int = 400
    train_scenes: int = 16000
    val_questions: int = 210
    vision_steps: int = 0  # stage 1: a loaded C/G tower needs none, a fresh one does (120 worked)
    vision_batch: int = 128
    vision_lr: float = 1e-3
    steps: int = 2000
    batch_size: int = 64  # conversations
    turns: int = 1  # questions per conversation
    curriculum: tuple[float, ...] = (0.15, 0.3, 0.45)  # see make_batch
    lr: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    align_weight: float = 0.0  # 0.5 in an earlier recipe: it slowed the LM's reading of the image tokens down
    parse_weight: float = 0.5
    parse_layer: int = 1  # the LM hidden state (0 = embeddings) the question-referent head reads
    attend_weight: float = 1.0  # pointer loss: see `referent_attention`
    attend_layer: int = 2  # its queries are computed after two layers: room to gather the question first
    attend_heads: int = 1  # the first heads of attend_layer that are taught where to look
    retrieve_weight: float = 1.0  # what the pointer fetches: see `referent_losses` (needs attend_weight > 0)
    absent_sink: bool = True  # the pointer of a question about something absent targets the first token
    # Sampling weights of QUESTION_KINDS (colour, shape, count, position, existence, grounding, multi_image).
    kind_weights: tuple[float, ...] = (1.0, 1.0, 1.2, 1.0, 1.0, 3.0, 1.0)  # grounding: 27 tokens to get right
    eval_every: int = 100
    save_every: int = 50
    render_workers: int = 2

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> Recipe:
        return recipe_from_overrides(cls, overrides)


# --- config -------------------------------------------------------------------------------------------------------
def official_config(recipe: Recipe, vision: InternViTConfig, tokenizer: Any) -> dict[str, Any]:
    """The `internvl_chat` config.json: one 84 px tile per image (max_dynamic_patch 1), template internvl2_5."""
    ids = tokenizer.convert_tokens_to_ids
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": recipe.llm_width,
        "intermediate_size": (recipe.llm_width * 11 // 4 + 7) // 8 * 8,
        "num_hidden_layers": recipe.llm_layers,
        "num_attention_heads": recipe.llm_heads,
        "num_key_value_heads": recipe.llm_kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "bos_token_id": ids("<s>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<unk>"),
    }
    return {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "vision_config": vision.to_official_config(),
        "llm_config": llm,
        "force_image_size": vision.image_size,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "template": TEMPLATE,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 1,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": "float32",
    }


def fresh_vision_config(recipe: Recipe) -> InternViTConfig:
    """InternViT-6B flavour (RMSNorm, QK-norm, no qkv bias), as the shapes-world InternVL-C/G tower."""
    w = recipe.vision_width
    return InternViTConfig(hidden_size=w, num_attention_heads=recipe.vision_heads, intermediate_size=4 * w,
                           num_hidden_layers=recipe.vision_layers, patch_size=14, image_size=recipe.image_size)  # fmt: skip


# --- stage 1: the vision tower ------------------------------------------------------------------------------------
class VisionHeads(nn.Module):
    """Training-only: patch -> its cell's colour/shape/size; pixel-shuffled token (the tokens mlp1 reads) ->
    the same and its cell's object box. A patch sees a quarter of a cell at most, too little for the shape."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.patch = nn.Linear(width, N_COLOUR + N_SHAPE + N_SIZE)
        self.token = nn.Linear(4 * width, N_COLOUR + N_SHAPE + N_SIZE)
        self.box = nn.Linear(4 * width, 4)


def shuffled_tokens(vit: InternViT, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch tokens (B, P, C), pixel-shuffled tokens (B, P/4, 4C)): what `extract_feature` feeds to mlp1."""
    tokens = vit(pixels).last_hidden_state[:, 1:]
    B, P, C = tokens.shape
    side = int(P**0.5)
    return tokens, pixel_shuffle(tokens.reshape(B, side, side, C), 2).reshape(B, -1, 4 * C)


def vision_loss(vit: InternViT, heads: VisionHeads, bank: SceneBank, index: torch.Tensor) -> tuple[torch.Tensor, dict]:
    device = heads.box.weight.device
    patches, shuffled = shuffled_tokens(vit, normalise_pixels(bank.pixels[index].to(device)))
    cells, boxes = bank.cells[index].to(device), bank.boxes[index].to(device)
    patch_cells = region_cells(int(patches.shape[1] ** 0.5)).to(device)
    cls = split_ce(heads.patch(patches), cells[:, patch_cells], (N_COLOUR, N_SHAPE, N_SIZE))
    token_cells = region_cells(int(shuffled.shape[1] ** 0.5)).to(device)
    cls = cls + split_ce(heads.token(shuffled), cells[:, token_cells], (N_COLOUR, N_SHAPE, N_SIZE))
    full = cells[:, token_cells, 0] > 0  # only tokens whose cell holds an object have a box
    box = F.smooth_l1_loss(heads.box(shuffled)[full], boxes[:, token_cells][full], beta=0.05)
    return cls + 4 * box, {"cls": float(cls.detach()), "box": float(box.detach())}


@torch.no_grad()
def cache_features(vit: InternViT, bank: SceneBank, device: torch.device) -> torch.Tensor:
    """(N, tokens, 4C) pixel-shuffled features of every bank scene from the frozen tower, float32 on CPU."""
    vit.eval()
    chunks = [shuffled_tokens(vit, normalise_pixels(bank.pixels[i : i + 256].to(device)))[1].cpu()
              for i in range(0, len(bank.scenes), 256)]  # fmt: skip
    return torch.cat(chunks)


# --- optimisation, evaluation, state ------------------------------------------------------------------------------
def make_optimizer(params: Sequence[tuple[str, nn.Parameter]], lr: float, wd: float) -> torch.optim.Optimizer:
    """AdamW; no decay on norms, biases, embeddings and position/class tokens."""
    skip = ("embed_tokens", "position_embedding", "class_embedding")
    decay = [p for n, p in params if p.ndim >= 2 and not any(s in n for s in skip)]
    plain = [p for n, p in params if not (p.ndim >= 2 and not any(s in n for s in skip))]
    groups = [{"params": decay, "weight_decay": wd}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


@torch.no_grad()
def quick_eval(model, heads, feats, bank, batches: Sequence[Batch], prefix: torch.Tensor) -> dict[str, float]:
    """Teacher-forced exact match per kind on fixed held-out-scene questions (equal to greedy exact match of the
    canonical answer; grounding is stricter here than the IoU >= 0.5 criterion)."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for batch in batches:
        logits, targets, rows, _ = chat_forward(model, heads, feats, bank, batch, prefix)
        exact = answer_exact(logits, targets, rows)
        for kind, ok in zip(batch.kinds, exact.tolist(), strict=True):
            hits.setdefault(kind, []).append(ok)
    model.train()
    return {f"val_{k}": round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({**state, "torch_rng": torch.get_rng_state()}, tmp)
    tmp.replace(path)  # atomic: an interrupted save leaves the previous state intact


def export(model: InternVLChat, config: dict, state_dir: Path, out: Path) -> None:
    """config.json + model.safetensors (official keys) + the tokenizer files."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(state_dir, out)


# --- the run ------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    recipe: Recipe
    seed: int
    state_dir: Path
    device: torch.device
    report: Callable[[str], None]
    log: dict
    started: float = dataclasses.field(default_factory=time.monotonic)
    elapsed_before: float = 0.0  # training time of the earlier processes of a resumed run

    def elapsed(self) -> float:
        return round(self.elapsed_before + time.monotonic() - self.started, 1)

    def load(self) -> dict | None:
        """The saved state, checked to come from this recipe and seed; None when there is none."""
        path = self.state_dir / STATE_FILE
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["log"]["recipe"] != self.log["recipe"] or state["log"]["seed"] != self.seed:
            raise ValueError(f"{path} was written by a different recipe or seed; start afresh without --resume")
        self.log.update(state["log"])
        self.elapsed_before = state["log"]["elapsed_s"]
        torch.set_rng_state(state["torch_rng"])
        return state

    def save(self, **state: Any) -> None:
        self.log["elapsed_s"] = self.elapsed()
        save_state(self.state_dir / STATE_FILE, {**state, "log": self.log})

    def record(self, stage: str, step: int, window: list[dict], extra: dict) -> None:
        row = {"stage": stage, "step": step}
        row.update({k: round(sum(w[k] for w in window) / len(window), 4) for k in window[0]} if window else {})
        row.update(extra, elapsed_s=self.elapsed())
        self.log["curve"].append(row)
        self.report(json.dumps(row))


def load_vision(run: Run, vision: Path | None) -> InternViT:
    if vision is not None and (vision / "config.json").is_file():
        run.log["vision_init"] = str(vision)
        return load_intern_vit(vision, device="cpu", dtype=torch.float32).train()
    run.log["vision_init"] = "scratch"
    return InternViT(fresh_vision_config(run.recipe))


def _optimise(params: list[nn.Parameter], opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, clip: float):
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def train_vision(run: Run, vit: InternViT, bank: SceneBank, state: dict | None, stop_at: int) -> int:
    """Stage 1 (global steps 0 .. vision_steps); returns the step reached."""
    torch.manual_seed(derive_seed("chat-vision-heads", run.seed))  # not the global stream: a resumed run re-enters here
    recipe, heads = run.recipe, VisionHeads(vit.config.hidden_size)
    vit.to(run.device).train()
    heads.to(run.device)
    named = [*vit.named_parameters(), *heads.named_parameters()]
    opt = make_optimizer(named, recipe.vision_lr, recipe.weight_decay)
    step = 0
    if state is not None:
        vit.load_state_dict(state["vision"])
        step = min(state["step"], recipe.vision_steps)
        if state["step"] < recipe.vision_steps:
            heads.load_state_dict(state["heads"])
            opt.load_state_dict(state["optimizer"])
    window: list[dict] = []
    while step < min(recipe.vision_steps, stop_at):
        rng = random.Random(derive_seed("vision-batch", run.seed, step))
        index = torch.tensor(rng.sample(range(len(bank.scenes)), recipe.vision_batch))
        loss, parts = vision_loss(vit, heads, bank, index)
        lr = cosine_lr(recipe.vision_lr, step, recipe.vision_steps, 10, recipe.min_lr_ratio)
        _optimise([p for _, p in named], opt, loss, lr, recipe.grad_clip)
        step, window = step + 1, [*window, parts]
        if step % recipe.eval_every == 0 or step == recipe.vision_steps:
            run.record("vision", step, window, {})
            window = []
        if step % recipe.save_every == 0 or step in (stop_at, recipe.vision_steps):
            run.save(step=step, vision=vit.state_dict(), heads=heads.state_dict(), optimizer=opt.state_dict())
    return step


def train_qa(run: Run, model: InternVLChat, data: dict, state: dict | None, stop_at: int) -> int:
    """Stage 2 (global steps vision_steps .. vision_steps + steps); returns the global step reached."""
    recipe, first = run.recipe, run.recipe.vision_steps
    torch.manual_seed(derive_seed("chat-aux-heads", run.seed))  # as in train_vision: same heads whether resumed or not
    heads = AuxHeads(model.config.llm_hidden_size).to(run.device)
    model.vision_model.requires_grad_(False)
    named = [(n, p) for n, p in [*model.named_parameters(), *heads.named_parameters()] if p.requires_grad]
    opt = make_optimizer(named, recipe.lr, recipe.weight_decay)
    step = first
    if state is not None and state["step"] > first:
        model.load_state_dict(state["model"])
        heads.load_state_dict(state["heads"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
    prefix = torch.tensor(data["encoder"].prefix, device=run.device)
    window: list[dict] = []
    while step < min(first + recipe.steps, stop_at):
        batch = make_batch(data["bank"], data["encoder"], recipe, run.seed, step - first)
        attend = (recipe.attend_layer, recipe.attend_heads) if recipe.attend_weight else None
        logits, targets, rows, aux = chat_forward(
            model, heads, data["feats"], data["bank"], batch, prefix, recipe.parse_layer, attend, recipe.absent_sink
        )
        answer = answer_loss(logits, targets, rows)
        loss = answer + recipe.align_weight * aux[0] + recipe.parse_weight * aux[1] + recipe.attend_weight * aux[2]
        loss = loss + recipe.retrieve_weight * aux[3]
        lr = cosine_lr(recipe.lr, step - first, recipe.steps, recipe.warmup_steps, recipe.min_lr_ratio)
        _optimise([p for _, p in named], opt, loss, lr, recipe.grad_clip)
        step, window = (
            step + 1,
            [
                *window,
                {
                    "answer": float(answer.detach()),
                    **{k: float(v.detach()) for k, v in zip(("align", "parse", "attend", "retrieve"), aux)},
                },
            ],
        )
        if (step - first) % recipe.eval_every == 0 or step == first + recipe.steps:
            val = quick_eval(model, heads, data["val_feats"], data["val_bank"], data["val_batches"], prefix)
            run.record("qa", step, window, val)
            window = []
        if (step - first) % recipe.save_every == 0 or step == stop_at:
            run.save(step=step, vision=model.vision_model.state_dict(), model=model.state_dict(),
                     heads=heads.state_dict(), optimizer=opt.state_dict())  # fmt: skip
    return step


def qa_data(run: Run, vit: InternViT, bank: SceneBank, encoder: Encoder) -> dict:
    """Frozen-tower features of the training scenes, and fixed validation batches on held-out scenes."""
    recipe = run.recipe
    val_bank = build_bank_split("val", max(60, recipe.val_questions // 2), vit.config.image_size, run.seed)
    rng = random.Random(derive_seed("chat-val", run.seed))
    single = dataclasses.replace(recipe, kind_weights=(1,) * len(QUESTION_KINDS), turns=1)
    questions = sample_conversations(val_bank, single, rng, recipe.val_questions)
    batches = [collate(encoder, questions[i : i + 64]) for i in range(0, len(questions), 64)]
    return {
        "bank": bank,
        "encoder": encoder,
        "feats": cache_features(vit, bank, run.device),
        "val_bank": val_bank,
        "val_feats": cache_features(vit, val_bank, run.device),
        "val_batches": batches,
    }


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
    vision: str | Path | None = DEFAULT_VISION,
    report: Callable[[str], None] = print,
) -> dict:
    """Train (or continue) and export to `out`; returns the training log. `stop_after` (a global step: vision
    steps first, then QA steps) ends the run early with the state saved, for a later `resume=True` call."""
    recipe = recipe or Recipe()
    out = Path(out)
    state_dir = Path(state_dir) if state_dir else out / "train_state"
    state_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    log = {"recipe": dataclasses.asdict(recipe), "seed": seed, "curve": [], "elapsed_s": 0.0, "host": host_summary()}
    run = Run(recipe, seed, state_dir, resolve_device("auto"), report, log)
    train_tokenizer(state_dir, recipe.vocab_size, chat=True, n_scenes=recipe.tokenizer_scenes, seed=seed)
    write_tokenizer(state_dir, state_dir / "tokenizer")
    tokenizer = load_tokenizer(state_dir / "tokenizer")
    vit = load_vision(run, Path(vision) if vision else None)
    if run.log["vision_init"] == "scratch" and not recipe.vision_steps:
        raise ValueError("a fresh vision tower (no --vision checkpoint) needs stage 1: set the recipe's vision_steps")
    config = official_config(recipe, vit.config, tokenizer)
    chat_config = dataclasses.replace(
        ChatConfig.from_config_json(config), image_token_id=tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
    )
    model = InternVLChat(chat_config)  # built before any loading, so both runs draw the same initial weights
    state = run.load() if resume else None
    bank = build_bank_split("train", recipe.train_scenes, vit.config.image_size, seed, recipe.render_workers)
    report(f"{len(bank.scenes)} training scenes ready after {run.elapsed():.0f} s on {run.device}")
    total = recipe.vision_steps + recipe.steps
    stop_at = min(total, stop_after if stop_after is not None else total)
    step = train_vision(run, vit, bank, state, stop_at)
    if step < recipe.vision_steps:
        return log
    model.vision_model.load_state_dict(vit.state_dict())
    model.to(run.device).train()
    if recipe.attend_weight:  # the pointer loss reads attention weights, which only eager attention returns
        model.language_model.set_attn_implementation("eager")
    data = qa_data(run, model.vision_model, bank, Encoder(tokenizer, model.num_image_token))
    step = train_qa(run, model, data, state, stop_at)
    if step >= total:
        export(model.eval(), config, state_dir, out)
        log["wall_time_s"] = run.elapsed()
        (out / LOG_FILE).write_text(json.dumps(log, indent=1) + "\n")
        if not keep_state:
            shutil.rmtree(state_dir)
    return log


def main(argv: Sequence[str] | None = None) -> None:
    parser = training_parser(__doc__.split("\n")[0], "QA steps (default: the recipe's)",
                             "stop at this global step, keeping the state for --resume")  # fmt: skip
    parser.add_argument(
        "--vision", default=str(DEFAULT_VISION), help="InternVL-C/G checkpoint for the tower ('' = none)"
    )
    args = parser.parse_args(argv)
    overrides, options = run_options(args)
    train(args.out, recipe=Recipe.from_overrides(overrides), vision=args.vision or None, **options)


if __name__ == "__main__":
    main()
