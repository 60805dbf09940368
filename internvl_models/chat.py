"""InternVL 1.5 / 2 / 2.5 / 3 chat: InternViT -> pixel shuffle -> MLP projector -> a transformers causal LM.

The image tiles go through InternViT; the patch tokens of one layer (CLS dropped) are merged 2x2 into one token by
the pixel shuffle and projected to the LLM width by `mlp1`; those vectors replace the `<IMG_CONTEXT>` token
embeddings of the prompt, and the LLM runs on the result (INTERNVL.md D.2-D.4). The LLM is transformers' own
Qwen2 / Llama / Phi3 class; InternLM2 runs as Llama (its checkpoint keys are converted at load time).

Parameter names are the official ones (`vision_model.*`, `mlp1.{0,1,3}.*`, `language_model.*`), so an official
state dict loads as is. `load_chat_model` builds the model on the meta device and fills it strictly.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import transformers
from torch import nn

from .chat_config import ChatConfig, WeightRecipe, checkpoint_recipes
from .checkpoint import (
    CONFIG_NAME,
    key_listing,
    read_config,
    resolve_checkpoint,
    shard_shapes,
    shard_tensors,
    weight_files,
)
from .device import resolve_device, resolve_dtype
from .errors import CheckpointError, InputError, ModelError
from .intern_vit import InternViT

LM_HEAD_KEY = "language_model.lm_head.weight"


def pixel_shuffle(x: torch.Tensor, factor: int, version: str = "v2") -> torch.Tensor:
    """(T, h, w, C) patch grid -> (T, h/f, w/f, f*f*C): each f x f block of patches becomes one token (D.3).

    The channels of token (i, j) are the block's patches in row-major order, x[f*i + a, f*j + b] for (a, b) in
    row-major order. `v2` keeps the tokens row-major; `v1` (older checkpoints; upstream warns about it) leaves them
    transposed, i.e. (T, w/f, h/f, f*f*C), which is what those models were trained on.
    """
    if version not in ("v1", "v2"):
        raise InputError(f"pixel shuffle version {version!r} is not 'v1' or 'v2'")
    T, h, w, C = x.shape
    blocks = x.reshape(T, h // factor, factor, w // factor, factor, C)  # (T, i, a, j, b, C)
    tokens = blocks.permute(0, 1, 3, 2, 4, 5).reshape(T, h // factor, w // factor, factor * factor * C)
    return tokens if version == "v2" else tokens.transpose(1, 2)


def build_language_model(config: ChatConfig) -> transformers.PreTrainedModel:
    """The transformers causal LM named by the config (InternLM2 as LlamaForCausalLM), untied."""
    llm_config = config.build_llm_config()
    cls_name = "LlamaForCausalLM" if config.llm_architecture == "InternLM2ForCausalLM" else config.llm_architecture
    model = getattr(transformers, cls_name)(llm_config)
    # Generation settings are passed explicitly at every call, so the checkpoint's generic defaults (max_length
    # 20, top_k 50, ... stored in llm_config) must not leak in through the model's own generation config.
    model.generation_config = transformers.GenerationConfig()
    return model


class InternVLChat(nn.Module):
    """pixel tiles (T, 3, S, S) + prompt ids with `<IMG_CONTEXT>` runs -> next-token logits / generated ids."""

    def __init__(self, config: ChatConfig) -> None:
        super().__init__()
        self.config = config
        self.num_image_token = config.num_image_token
        self.vision_model = InternViT(config.vision)
        width = config.vision.hidden_size * config.shuffle_factor**2
        hidden = config.llm_hidden_size
        # LayerNorm with torch's default eps 1e-5 and exact-erf GELU, as upstream (D.2); indices 0/1/3 are the keys.
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.language_model = build_language_model(config)

    @property
    def image_token_id(self) -> int:
        if self.config.image_token_id is None:
            raise ModelError(
                "the <IMG_CONTEXT> token id is unknown: pass load_chat_model(..., image_token_id="
                "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>'))"
            )
        return self.config.image_token_id

    def extract_feature(self, pixel_values: torch.Tensor, ps_version: str | None = None) -> torch.Tensor:
        """(T, 3, S, S) tiles -> (T, num_image_token, D) LLM-space image tokens.

        `ps_version` overrides the checkpoint's pixel-shuffle order (for comparisons; a model only makes sense
        with the order it was trained with).
        """
        layer = self.config.select_layer
        out = self.vision_model(pixel_values, output_hidden_states=layer != -1)
        tokens = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # (T, 1+h*w, C)
        tokens = tokens[:, 1:]  # CLS dropped
        T, N, C = tokens.shape
        side = int(N**0.5)
        if side * side != N:
            raise InputError(f"tiles must be square: {N} patch tokens do not form a square grid")
        grid = pixel_shuffle(
            tokens.reshape(T, side, side, C), self.config.shuffle_factor, ps_version or self.config.ps_version
        )
        return self.mlp1(grid.reshape(T, -1, grid.shape[-1]))  # (T, n, f*f*C) -> (T, n, D)

    def embed(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, image_flags: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N) ids -> (B, N, D) input embeddings, image features written over the `<IMG_CONTEXT>` positions.

        Features fill the positions in order: batch row, then position, against tiles in order, then tokens.
        `image_flags` (T,) drops the tiles flagged 0 (the padding tiles of a training batch).
        """
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        vit = self.extract_feature(pixel_values)
        if image_flags is not None:
            vit = vit[image_flags.reshape(-1) == 1]
        slots = input_ids == self.image_token_id
        count = int(slots.sum())
        if count != vit.shape[0] * vit.shape[1]:
            raise InputError(
                f"the prompt has {count} <IMG_CONTEXT> tokens but the {vit.shape[0]} tiles give "
                f"{vit.shape[0]} x {vit.shape[1]} image tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), vit.to(embeds.dtype))

    def forward(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        image_flags: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, N, vocab) logits of the prompt, position ids 0..N-1 as upstream's training forward."""
        embeds = self.embed(input_ids, pixel_values, image_flags)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False).logits

    @torch.inference_mode()
    def generate(
        self,
        pixel_values: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 50,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ) -> torch.Tensor:
        """(B, new) generated ids, prompt excluded; rows that stop early are padded with `pad_token_id`.

        Batches are left-padded (`attention_mask` 0 on the padding). `eos_token_id` is the template's stop token
        (`tokenizer.convert_tokens_to_ids(template.stop_token)`); it is kept in the output. Sampling draws from
        torch's global generator. Upstream under transformers 4.37 returned one extra BOS placeholder first; this
        returns only the new tokens.
        """
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        sampling = {"temperature": temperature, "top_p": top_p, "top_k": top_k} if do_sample else {}
        settings = transformers.GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            eos_token_id=eos or None,
            pad_token_id=pad_token_id if pad_token_id is not None else (eos[0] if eos else 0),
            use_cache=True,
            **sampling,
        )
        return self.language_model.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, generation_config=settings
        )


# --- transformers versions ---------------------------------------------------------------------------------------
@functools.cache
def _cache_keyword(forward_owner: type) -> str:
    parameters = inspect.signature(forward_owner.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(module: nn.Module, cache: object) -> dict[str, object]:
    """`{keyword: cache}` for a transformers LM's forward: transformers 5.25 renamed `past_key_values` to `cache`
    (the old name warns, and goes in 5.40); the GPU hosts run 5.17, which knows only the old one."""
    return {_cache_keyword(type(module)): cache}


def output_cache(out: object) -> object:
    """The key/value cache of a transformers model output, under either version's name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


# --- loading -----------------------------------------------------------------------------------------------------
def load_chat_model(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    image_token_id: int | None = None,
) -> InternVLChat:
    """An InternVL chat checkpoint (official `internvl_chat` or transformers "-hf" layout) in eval mode.

    Strict: every stored tensor must fill exactly one parameter with the right shape; missing, unexpected and
    mis-shaped keys are reported together (stored names) in a CheckpointError before any weight is read.
    `image_token_id` is the tokenizer's `<IMG_CONTEXT>` id; it overrides the config's (only "-hf" stores one).
    The LM head is tied to the input embeddings only for an "-hf" config that asks for it and a checkpoint that
    stores no `lm_head`; a stored head is always used as stored (transformers 5 does the same).
    """
    directory = resolve_checkpoint(source)
    try:
        config = ChatConfig.from_config_json(read_config(directory))
    except CheckpointError:
        raise
    except ModelError as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: {e}") from e
    if image_token_id is not None:
        config = dataclasses.replace(config, image_token_id=image_token_id)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    stored = {key: (file, shape) for file in weight_files(directory) for key, shape in shard_shapes(file).items()}
    with torch.device("meta"):
        model = InternVLChat(config)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    tie = config.tie_word_embeddings and not _stores_lm_head(config, set(stored))
    targets = [key for key in expected if not (tie and key == LM_HEAD_KEY)]
    recipes = checkpoint_recipes(config, targets, set(stored))
    _check_recipes(recipes, stored, expected, directory)
    _fill(model, recipes, stored, device=device, dtype=dtype)
    _rebuild_computed_buffers(model, device)
    if tie:
        model.language_model.lm_head.weight = model.language_model.get_input_embeddings().weight
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a guard for model code that adds state the checkpoint cannot fill
        raise CheckpointError(f"Tensors left on the meta device after loading {directory}: {left}")
    return model.eval()


def _stores_lm_head(config: ChatConfig, stored: set[str]) -> bool:
    recipe = checkpoint_recipes(config, [LM_HEAD_KEY], stored)[0]
    return all(source in stored for source in recipe.sources)


def _check_recipes(
    recipes: list[WeightRecipe],
    stored: dict[str, tuple[Path, tuple[int, ...]]],
    expected: dict[str, tuple[int, ...]],
    where: Path,
) -> None:
    """Every stored key used once, every recipe's sources present, every built shape the parameter's."""
    used = [source for recipe in recipes for source in recipe.sources]
    missing = sorted({source for source in used if source not in stored})
    unexpected = sorted(set(stored) - set(used))
    mismatched = []
    for recipe in recipes:
        if any(source not in stored for source in recipe.sources):
            continue
        try:  # run the conversion on meta tensors: shapes without reading a byte
            shape = tuple(recipe(*(torch.empty(stored[s][1], device="meta") for s in recipe.sources)).shape)
        except RuntimeError as e:
            shape = (f"not convertible: {e}",)
        if shape != expected[recipe.target]:
            sources = ", ".join(f"{s} {list(stored[s][1])}" for s in recipe.sources)
            mismatched.append(f"{recipe.target}: stored {sources} vs model {list(expected[recipe.target])}")
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"The weights in {where} do not match the architecture in its {CONFIG_NAME}:"
            + key_listing("missing keys", missing)
            + key_listing("unexpected keys", unexpected)
            + key_listing("shape mismatches", mismatched)
        )


def _fill(
    model: nn.Module,
    recipes: list[WeightRecipe],
    stored: dict[str, tuple[Path, tuple[int, ...]]],
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> None:
    """Read each shard once, build each parameter as soon as its sources are in, assign it in place of the meta
    tensor. A source is dropped once its last recipe has used it, so only tensors split across shards wait."""
    waiting_on = defaultdict(list)
    for recipe in recipes:
        for source in recipe.sources:
            waiting_on[source].append(recipe)
    uses = Counter(source for recipe in recipes for source in recipe.sources)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for key in uses:
        by_file[stored[key][0]].append(key)
    pending: dict[str, torch.Tensor] = {}
    for file, keys in by_file.items():
        part = {}
        for key, tensor in shard_tensors(file, sorted(keys)):
            pending[key] = tensor
            for recipe in waiting_on.pop(key):
                if all(source in pending for source in recipe.sources):
                    part[recipe.target] = _placed(recipe, pending, device, dtype)
                    for source in recipe.sources:
                        uses[source] -= 1
                        if uses[source] == 0:
                            del pending[source]
        model.load_state_dict(part, strict=False, assign=True)  # assign: replace the meta tensors, no copy
        del part


def _placed(
    recipe: WeightRecipe, pending: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    tensor = recipe(*(pending[source] for source in recipe.sources))
    tensor = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    # A converted tensor may be a view into a larger stored one (a slice of wqkv): copy it so that is freed.
    return tensor.clone() if recipe.build is not None else tensor


def _rebuild_computed_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers that no checkpoint stores (RoPE inverse frequencies) are still meta after loading: rebuild the small
    modules that own them from their config, on the target device (they compute the values in float32)."""
    for name, module in list(model.named_modules()):
        if not any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            continue
        if any(True for _ in module.parameters(recurse=False)) or not hasattr(module, "config"):
            continue  # left for the meta guard to report
        with torch.device(device):
            fresh = type(module)(module.config)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, fresh)
