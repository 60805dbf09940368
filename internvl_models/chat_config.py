"""The InternVL 1.5-3 chat architecture as data: `ChatConfig`, read from either checkpoint layout, plus the map from
a checkpoint's stored tensors to the parameters of `chat.InternVLChat`.

Two layouts are read:

* **official** (`model_type: internvl_chat`, INTERNVL.md D.1/D.2): `vision_config` + `llm_config`; keys
  `vision_model.*`, `mlp1.*`, `language_model.*` with the LLM's own names. InternLM2 LLMs are run by transformers'
  `LlamaForCausalLM`, so their keys are renamed and the fused `wqkv` split per KV group at load time.
* **transformers "-hf"** (`model_type: internvl` with `text_config`, D.8): the converted repos; the vision tower's
  q/k/v are fused back into `qkv` and the projector renamed to `mlp1`. Both the current prefixes
  (`model.vision_tower.*`, `model.language_model.*`, `lm_head.*`) and the pre-4.52 ones (`vision_tower.*`,
  `language_model.model.*`, `language_model.lm_head.*`) are accepted, as transformers accepts both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import transformers

from .config import InternViTConfig
from .errors import CheckpointError, ModelError

OFFICIAL, HF = "internvl_chat", "hf"
# The LLM class the official config names -> the transformers config class that builds it (InternLM2 runs as Llama).
LLM_CONFIG_CLASSES = {
    "Qwen2ForCausalLM": "Qwen2Config",
    "LlamaForCausalLM": "LlamaConfig",
    "Phi3ForCausalLM": "Phi3Config",
    "InternLM2ForCausalLM": "LlamaConfig",
}
_HF_TEXT_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM", "phi3": "Phi3ForCausalLM"}
HF_DEFAULT_IMAGE_TOKEN_ID = 151667  # transformers' InternVLConfig default: `<IMG_CONTEXT>` of the Qwen2 tokenizer


def _refuse(condition: bool, message: str) -> None:
    if condition:
        raise CheckpointError(message)


@dataclass(frozen=True)
class ChatConfig:
    """InternVLChatModel: InternViT -> pixel shuffle -> mlp1 -> a transformers causal LM (INTERNVL.md D.1-D.3).

    `llm_config` is the checkpoint's LLM config dict as stored (for an "-hf" checkpoint, its `text_config`);
    `llm_architecture` says how to read it. `image_token_id` is the `<IMG_CONTEXT>` id: it belongs to the tokenizer,
    so only the "-hf" layout stores it; otherwise the caller supplies it. `system_message` (a config.json override
    of the template's, D.5) is None when absent. `tie_word_embeddings` is never true for the official layout (D.1).
    """

    vision: InternViTConfig
    llm_architecture: str
    llm_config: Mapping[str, Any] = field(default_factory=dict)
    select_layer: int = -1
    force_image_size: int | None = None
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    template: str = "internvl2_5"
    dynamic_image_size: bool = True
    use_thumbnail: bool = True
    min_dynamic_patch: int = 1
    max_dynamic_patch: int = 12
    system_message: str | None = None
    image_token_id: int | None = None
    layout: str = OFFICIAL
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        def require(ok: bool, message: str) -> None:
            if not ok:
                raise ModelError(message)

        require(
            self.llm_architecture in LLM_CONFIG_CLASSES,
            f"LLM {self.llm_architecture!r} is not one of {sorted(LLM_CONFIG_CLASSES)}",
        )
        require(self.ps_version in ("v1", "v2"), f"ps_version {self.ps_version!r} is not 'v1' or 'v2'")
        require(self.layout in (OFFICIAL, HF), f"layout {self.layout!r} is not {OFFICIAL!r} or {HF!r}")
        factor = round(1 / self.downsample_ratio)
        require(
            abs(factor * self.downsample_ratio - 1) < 1e-9,
            f"1/downsample_ratio {self.downsample_ratio} must be an integer",
        )
        grid = self.image_size // self.vision.patch_size
        require(grid % factor == 0, f"the {grid}x{grid} patch grid cannot be pixel-shuffled by {factor}")
        layers = self.vision.num_hidden_layers
        require(
            -(layers + 1) <= self.select_layer <= layers,
            f"select_layer {self.select_layer} is outside the {layers + 1} hidden states",
        )

    @property
    def image_size(self) -> int:
        """The tile size. The tower itself keeps vision.image_size (the size of its stored position embedding, as
        upstream builds it) and interpolates the embedding to the tiles' patch grid when the two differ."""
        return self.force_image_size or self.vision.image_size

    @property
    def shuffle_factor(self) -> int:
        return round(1 / self.downsample_ratio)

    @property
    def num_image_token(self) -> int:
        """`<IMG_CONTEXT>` tokens per tile (256 at 448 px), with the official arithmetic (D.3)."""
        return int((self.image_size // self.vision.patch_size) ** 2 * (self.downsample_ratio**2))

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm_config["hidden_size"])

    @classmethod
    def from_config_json(cls, raw: Mapping[str, Any]) -> ChatConfig:
        """Either layout, told apart by model_type (InternVL-C/G also says `internvl`: it has `qllama_config`)."""
        model_type = raw.get("model_type")
        if model_type == "internvl_chat":
            return cls.from_official_config(raw)
        if model_type == "internvl" and "text_config" in raw:
            return cls.from_hf_config(raw)
        hint = " (an InternVL-C/G checkpoint: load it with load_internvl)" if "qllama_config" in raw else ""
        raise CheckpointError(f"model_type {model_type!r} is not an InternVL chat config{hint}")

    @classmethod
    def from_official_config(cls, raw: Mapping[str, Any]) -> ChatConfig:
        """The official `InternVLChatConfig` dict (`model_type: internvl_chat`)."""
        _refuse("vision_config" not in raw or "llm_config" not in raw, "config needs vision_config and llm_config")
        for key in ("use_backbone_lora", "use_llm_lora"):
            _refuse(bool(raw.get(key, 0)), f"{key}={raw.get(key)}: LoRA-wrapped checkpoints change the key names")
        llm = dict(raw["llm_config"])
        architecture = (llm.get("architectures") or [""])[0]
        _refuse(
            architecture not in LLM_CONFIG_CLASSES,
            f"llm_config architecture {architecture!r} is not one of {sorted(LLM_CONFIG_CLASSES)}",
        )
        known = (
            "select_layer",
            "force_image_size",
            "downsample_ratio",
            "ps_version",
            "template",
            "dynamic_image_size",
            "use_thumbnail",
            "min_dynamic_patch",
            "max_dynamic_patch",
            "system_message",
        )
        return cls(
            vision=InternViTConfig.from_official_config(raw["vision_config"]),
            llm_architecture=architecture,
            llm_config=llm,
            **{key: raw[key] for key in known if raw.get(key) is not None},
        )

    @classmethod
    def from_hf_config(cls, raw: Mapping[str, Any]) -> ChatConfig:
        """transformers' `InternVLConfig` dict (`model_type: internvl`, `vision_config` + `text_config`)."""
        text = dict(raw["text_config"])
        architecture = _HF_TEXT_ARCHITECTURES.get(text.get("model_type", "qwen2"))
        _refuse(
            architecture is None,
            f"text_config model_type {text.get('model_type')!r} is not one of {sorted(_HF_TEXT_ARCHITECTURES)}",
        )
        _refuse(
            raw.get("vision_feature_select_strategy", "default") != "default",
            "vision_feature_select_strategy 'full' (keep CLS) is not the InternVL recipe",
        )
        _refuse(not isinstance(raw.get("vision_feature_layer", -1), int), "a list of vision_feature_layer")
        _refuse(raw.get("projector_hidden_act", "gelu") != "gelu", "projector_hidden_act must be 'gelu'")
        vision = _hf_vision_config(raw.get("vision_config") or {})
        return cls(
            vision=vision,
            llm_architecture=architecture,
            llm_config=text,
            select_layer=raw.get("vision_feature_layer", -1),
            downsample_ratio=raw.get("downsample_ratio", 0.5),
            ps_version="v2",  # the native pixel shuffle always transposes back (pitfall F.9)
            image_token_id=raw.get("image_token_id", HF_DEFAULT_IMAGE_TOKEN_ID),
            layout=HF,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", True)),  # transformers' default: tied
        )

    def build_llm_config(self) -> transformers.PretrainedConfig:
        """The transformers config of the language model: the stored dict, InternLM2 translated to Llama, never
        tied (tying is decided by the loader from what the checkpoint stores), SDPA attention."""
        raw = dict(self.llm_config)
        if self.llm_architecture == "InternLM2ForCausalLM":
            raw = _internlm2_as_llama(raw)
        raw.update(tie_word_embeddings=False, attn_implementation="sdpa")
        return getattr(transformers, LLM_CONFIG_CLASSES[self.llm_architecture])(**raw)


def _square(value: Any, name: str) -> int:
    sizes = list(value) if isinstance(value, (list, tuple)) else [value, value]
    _refuse(len(set(sizes)) != 1, f"vision {name} {value!r} is not square")
    return int(sizes[0])


def _hf_vision_config(raw: Mapping[str, Any]) -> InternViTConfig:
    """transformers' InternVLVisionConfig -> ours (names per D.8; missing keys take transformers' defaults)."""
    _refuse(raw.get("hidden_act", "gelu") != "gelu", f"vision hidden_act {raw.get('hidden_act')!r} != 'gelu'")
    _refuse(not raw.get("use_mean_pooling", True), "use_mean_pooling=False adds a final vision LayerNorm")
    _refuse(not raw.get("use_absolute_position_embeddings", True), "the tower needs absolute position embeddings")
    _refuse(bool(raw.get("use_mask_token", False)), "use_mask_token=True (a pre-training tower) is not supported")
    return InternViTConfig(
        hidden_size=raw.get("hidden_size", 1024),
        num_attention_heads=raw.get("num_attention_heads", 16),
        intermediate_size=raw.get("intermediate_size", 4096),
        num_hidden_layers=raw.get("num_hidden_layers", 24),
        patch_size=_square(raw.get("patch_size", 14), "patch_size"),
        image_size=_square(raw.get("image_size", 448), "image_size"),
        num_channels=raw.get("num_channels", 3),
        qkv_bias=raw.get("attention_bias", False),
        qk_normalization=raw.get("use_qk_norm", False),
        norm_type=raw.get("norm_type", "layer_norm"),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-6),
        initializer_factor=raw.get("layer_scale_init_value", 0.1),
        initializer_range=raw.get("initializer_range", 0.02),
    )


def _internlm2_as_llama(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An InternLM2 config as LlamaConfig kwargs. Missing keys take InternLM2Config's defaults, which differ from
    Llama's (vocabulary, bias=True). `bias` covers wqkv and wo only; the MLP never has one."""
    heads = raw.get("num_attention_heads", 32)
    out = {
        "vocab_size": raw.get("vocab_size", 103168),
        "hidden_size": raw.get("hidden_size", 4096),
        "intermediate_size": raw.get("intermediate_size", 11008),
        "num_hidden_layers": raw.get("num_hidden_layers", 32),
        "num_attention_heads": heads,
        "num_key_value_heads": raw.get("num_key_value_heads") or heads,
        "hidden_act": raw.get("hidden_act", "silu"),
        "max_position_embeddings": raw.get("max_position_embeddings", 2048),
        "initializer_range": raw.get("initializer_range", 0.02),
        "rms_norm_eps": raw.get("rms_norm_eps", 1e-6),
        "pad_token_id": raw.get("pad_token_id", 0),
        "bos_token_id": raw.get("bos_token_id", 1),
        "eos_token_id": raw.get("eos_token_id", 2),
        "attention_bias": raw.get("bias", True),
        "mlp_bias": False,
        "rope_theta": raw.get("rope_theta", 10000),
    }
    scaling = raw.get("rope_scaling")
    if scaling:  # InternLM2 writes {"type": "linear" | "dynamic", "factor": f}
        _refuse(scaling.get("type") not in ("linear", "dynamic"), f"InternLM2 rope_scaling {scaling!r}")
        out["rope_scaling"] = {"rope_type": scaling["type"], "factor": scaling["factor"]}
    return out


# --- stored tensors -> our parameters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightRecipe:
    """How one parameter of the model is made from stored tensors: `build(*sources)`, or the one source as is."""

    target: str
    sources: tuple[str, ...]
    build: Callable[..., torch.Tensor] | None = None

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        return tensors[0] if self.build is None else self.build(*tensors)


def split_wqkv(wqkv: torch.Tensor, part: str, heads: int, kv_heads: int) -> torch.Tensor:
    """InternLM2's fused rows `[q x heads/kv, k, v] x kv` (D.2) -> the q, k or v rows in Llama's order."""
    groups = heads // kv_heads
    grouped = wqkv.reshape(kv_heads, groups + 2, -1, *wqkv.shape[1:])  # (KV, groups+2, D, [C])
    if part == "q":
        return grouped[:, :groups].reshape(-1, *wqkv.shape[1:])  # q head g*groups+j uses kv head g, as Llama's GQA
    return grouped[:, groups if part == "k" else groups + 1].reshape(-1, *wqkv.shape[1:])


def _concat(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


# (pattern on our key, stored key template(s), build factory taking the match). First match wins; no match: as is.
Rule = tuple[str, tuple[str, ...], Callable[[re.Match[str]], Callable[..., torch.Tensor]] | None]


def _internlm2_rules(heads: int, kv_heads: int) -> list[Rule]:
    lm = r"^language_model\.model\.layers\.(\d+)\."
    out = r"language_model.model.layers.\1."
    return [
        (r"^language_model\.model\.embed_tokens\.(.*)", (r"language_model.model.tok_embeddings.\1",), None),
        (
            lm + r"self_attn\.([qkv])_proj\.(.*)",
            (out + r"attention.wqkv.\3",),
            lambda m: partial(split_wqkv, part=m.group(2), heads=heads, kv_heads=kv_heads),
        ),
        (lm + r"self_attn\.o_proj\.(.*)", (out + r"attention.wo.\2",), None),
        (lm + r"mlp\.gate_proj\.(.*)", (out + r"feed_forward.w1.\2",), None),
        (lm + r"mlp\.up_proj\.(.*)", (out + r"feed_forward.w3.\2",), None),
        (lm + r"mlp\.down_proj\.(.*)", (out + r"feed_forward.w2.\2",), None),
        (lm + r"input_layernorm\.(.*)", (out + r"attention_norm.\2",), None),
        (lm + r"post_attention_layernorm\.(.*)", (out + r"ffn_norm.\2",), None),
        (r"^language_model\.lm_head\.(.*)", (r"language_model.output.\1",), None),
    ]


def _hf_rules(stored: set[str]) -> list[Rule]:
    new = any(key.startswith("model.vision_tower.") for key in stored)
    vit, proj = (
        ("model.vision_tower.", "model.multi_modal_projector.") if new else ("vision_tower.", "multi_modal_projector.")
    )
    text, head = ("model.language_model.", "lm_head.") if new else ("language_model.model.", "language_model.lm_head.")
    layer, out = r"^vision_model\.encoder\.layers\.(\d+)\.", vit + r"encoder.layer.\1."
    return [
        (r"^vision_model\.embeddings\.class_embedding$", (vit + "embeddings.cls_token",), None),
        (r"^vision_model\.embeddings\.position_embedding$", (vit + "embeddings.position_embeddings",), None),
        (
            r"^vision_model\.embeddings\.patch_embedding\.(.*)",
            (vit + r"embeddings.patch_embeddings.projection.\1",),
            None,
        ),
        (layer + r"attn\.qkv\.(.*)", tuple(out + f"attention.{p}_proj." + r"\2" for p in "qkv"), lambda m: _concat),
        (layer + r"attn\.proj\.(.*)", (out + r"attention.projection_layer.\2",), None),
        (layer + r"attn\.([qk])_norm\.(.*)", (out + r"attention.\2_norm.\3",), None),
        (layer + r"ls([12])$", (out + r"lambda_\2",), None),
        (layer + r"norm1\.(.*)", (out + r"layernorm_before.\2",), None),
        (layer + r"norm2\.(.*)", (out + r"layernorm_after.\2",), None),
        (layer + r"mlp\.(.*)", (out + r"mlp.\2",), None),
        (r"^mlp1\.0\.(.*)", (proj + r"layer_norm.\1",), None),
        (r"^mlp1\.1\.(.*)", (proj + r"linear_1.\1",), None),
        (r"^mlp1\.3\.(.*)", (proj + r"linear_2.\1",), None),
        (r"^language_model\.model\.(.*)", (text + r"\1",), None),
        (r"^language_model\.lm_head\.(.*)", (head + r"\1",), None),
    ]


def _apply_rules(target: str, rules: list[Rule]) -> WeightRecipe:
    for pattern, templates, factory in rules:
        match = re.match(pattern, target)
        if match:
            sources = tuple(match.expand(t) for t in templates)
            return WeightRecipe(target, sources, factory(match) if factory else None)
    return WeightRecipe(target, (target,))


def checkpoint_recipes(config: ChatConfig, targets: list[str], stored: set[str]) -> list[WeightRecipe]:
    """One recipe per model parameter in `targets`, for the layout of `config` and the keys the files hold."""
    if config.layout == HF:
        rules = _hf_rules(stored)
    elif config.llm_architecture == "InternLM2ForCausalLM":
        llm = config.build_llm_config()
        rules = _internlm2_rules(llm.num_attention_heads, llm.num_key_value_heads)
    else:
        rules = []
    return [_apply_rules(target, rules) for target in targets]
