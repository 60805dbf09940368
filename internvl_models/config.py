"""Architecture configs as frozen dataclasses, plus the mapping to and from the official `config.json` layout.

Two ways in:

* `from_dict` is our own strict format (the field names of the dataclasses, nested as `vision` / `qllama`):
  an unknown key is an error, so a typo in a preset never silently falls back to a default.
* `from_official_config` reads what the official code's `save_pretrained` writes (`model_type: internvl`,
  `vision_config`, `qllama_config`). Those dicts carry dozens of generic HF keys (`top_k`, `id2label`, ...), so
  this path reads the keys it knows, ignores the rest, and refuses the few values that would change the maths in
  ways this library does not implement (LoRA wrappers, rope scaling, a non-GELU vision MLP, ...).

`to_official_config` writes the official layout back, so our own checkpoints load in the official code too.
Defaults are the InternVL-14B-224px release values, which are also the official classes' defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ModelError, UnknownModelError

PRESET_DIR = Path(__file__).resolve().parent / "configs"


def _strict_kwargs(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of `cls`; any other key is an error naming the valid ones."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ModelError(f"Unknown keys {unknown} for {cls.__name__}. Valid keys: {names}")
    return dict(data)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ModelError(message)


def _refuse(condition: bool, message: str) -> None:
    """An official config.json asks for something this library does not implement."""
    if condition:
        raise CheckpointError(message)


@dataclass(frozen=True)
class InternViTConfig:
    """InternViT. Defaults: InternViT-6B of InternVL-14B-224px (RMSNorm, QK-norm over the full width, no qkv bias).

    The 300M chat tower is `norm_type="layer_norm", qkv_bias=True, qk_normalization=False` (INTERNVL.md A.4).
    """

    hidden_size: int = 3200
    num_attention_heads: int = 25
    intermediate_size: int = 12800
    num_hidden_layers: int = 48
    patch_size: int = 14
    image_size: int = 224  # the size the position embeddings were trained for; other sizes are interpolated
    num_channels: int = 3
    qkv_bias: bool = False
    qk_normalization: bool = True
    norm_type: str = "rms_norm"  # norm1/norm2; q_norm/k_norm are RMSNorm whatever this says
    layer_norm_eps: float = 1e-6  # every norm of the tower, q_norm and k_norm included
    initializer_factor: float = 0.1  # init value of the layer scales ls1/ls2 (checkpoints overwrite it)
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_attention_heads == 0, "hidden_size must be divisible by the heads")
        _require(self.norm_type in ("rms_norm", "layer_norm"), f"norm_type {self.norm_type!r} is not supported")
        _require(self.image_size % self.patch_size == 0, "image_size must be a multiple of patch_size")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_positions(self) -> int:
        """Rows of the position embedding: one per patch of an image_size image, plus CLS."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InternViTConfig:
        return cls(**_strict_kwargs(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_official_config(cls, raw: Mapping[str, Any]) -> InternViTConfig:
        """An official `InternVisionConfig` dict (a `vision_config`, or a bare InternViT repo's config.json)."""
        _refuse(raw.get("hidden_act", "gelu") != "gelu", f"vision hidden_act {raw.get('hidden_act')!r} != 'gelu'")
        # InternVL 1.0 has no norm_type field: all its norms are RMSNorm (INTERNVL.md A.1).
        known = {f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw}
        return cls(**known)

    def to_official_config(self) -> dict[str, Any]:
        return {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            "hidden_act": "gelu",
            "use_flash_attn": False,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "drop_path_rate": 0.0,
            **self.to_dict(),
        }


@dataclass(frozen=True)
class QLLaMAConfig:
    """QLLaMA: a LLaMA-7B decoder with learnable queries and cross-attention into the vision tokens.

    `vision_hidden_size` is the width of the vision tokens the cross-attention reads. The official code hard-codes
    3200 (INTERNVL.md F.2); here it is taken from the vision config, which gives 3200 for the release.
    `num_query_token` is also the sequence length from which cross-attention applies (hard-coded 96 upstream).
    """

    vocab_size: int = 49954
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    num_query_token: int = 96
    cross_attention_frequency: int = 2  # cross-attention in the layers with idx % frequency == 0
    vision_hidden_size: int = 3200
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _require(self.hidden_size % self.num_attention_heads == 0, "hidden_size must be divisible by the heads")
        _require(self.cross_attention_frequency >= 1, "cross_attention_frequency must be >= 1")
        _require(self.num_query_token >= 1, "num_query_token must be >= 1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def has_cross_attention(self, layer_idx: int) -> bool:
        return layer_idx % self.cross_attention_frequency == 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QLLaMAConfig:
        return cls(**_strict_kwargs(cls, data))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_official_config(
        cls, raw: Mapping[str, Any], *, vision_hidden_size: int, num_query_token: int, cross_attention_frequency: int
    ) -> QLLaMAConfig:
        """An official `qllama_config` (a transformers LlamaConfig dict); missing keys take LlamaConfig defaults."""
        heads = raw.get("num_attention_heads", 32)
        _refuse(raw.get("hidden_act", "silu") != "silu", f"qllama hidden_act {raw.get('hidden_act')!r} != 'silu'")
        _refuse(raw.get("rope_scaling") is not None, f"qllama rope_scaling {raw.get('rope_scaling')!r} unsupported")
        _refuse(bool(raw.get("attention_bias", False)), "qllama attention_bias=True is not supported")
        _refuse(raw.get("num_key_value_heads") not in (None, heads), "QLLaMA has no grouped-query attention")
        return cls(
            vocab_size=raw.get("vocab_size", 32000),  # LlamaConfig's default, as the official loader would use
            hidden_size=raw.get("hidden_size", 4096),
            intermediate_size=raw.get("intermediate_size", 11008),
            num_hidden_layers=raw.get("num_hidden_layers", 32),
            num_attention_heads=heads,
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=raw.get("rope_theta", 10000.0),
            num_query_token=num_query_token,
            cross_attention_frequency=cross_attention_frequency,
            vision_hidden_size=vision_hidden_size,
            pad_token_id=raw.get("pad_token_id", 0),
            bos_token_id=raw.get("bos_token_id", 1),
            eos_token_id=raw.get("eos_token_id", 2),
            initializer_range=raw.get("initializer_range", 0.02),
        )

    def to_official_config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "num_key_value_heads": self.num_attention_heads,
            "rope_scaling": None,
            "attention_bias": False,
            "tie_word_embeddings": False,
            **{k: v for k, v in self.to_dict().items() if k != "vision_hidden_size"},  # upstream: hard-coded
        }


@dataclass(frozen=True)
class InternVLConfig:
    """InternVL-C/G (InternVL-14B-224px): InternViT + QLLaMA + the two attention-pooling projectors."""

    vision: InternViTConfig = field(default_factory=InternViTConfig)
    qllama: QLLaMAConfig = field(default_factory=QLLaMAConfig)
    clip_embed_dim: int = 768  # output width of clip_projector, clip_projector2 and text_projection
    attn_pool_num_heads: int = 16
    force_image_size: int | None = None  # if set, the vision tower is built (and stored) for this size
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        _require(
            self.qllama.vision_hidden_size == self.vision.hidden_size,
            f"qllama.vision_hidden_size {self.qllama.vision_hidden_size} != vision.hidden_size "
            f"{self.vision.hidden_size}: the cross-attention reads the vision tokens",
        )
        for width in (self.vision.hidden_size, self.qllama.hidden_size):
            _require(width % self.attn_pool_num_heads == 0, f"width {width} not divisible by attn_pool_num_heads")

    @property
    def num_query_token(self) -> int:
        return self.qllama.num_query_token

    @property
    def cross_attention_frequency(self) -> int:
        return self.qllama.cross_attention_frequency

    @property
    def vision_tower(self) -> InternViTConfig:
        """The vision config the model is built with: force_image_size resizes the stored position embedding."""
        if self.force_image_size is None:
            return self.vision
        return dataclasses.replace(self.vision, image_size=self.force_image_size)

    @property
    def image_size(self) -> int:
        return self.vision_tower.image_size

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InternVLConfig:
        kwargs = _strict_kwargs(cls, data)
        vision = InternViTConfig.from_dict(kwargs.pop("vision", {}))
        qllama_dict = {"vision_hidden_size": vision.hidden_size, **kwargs.pop("qllama", {})}  # derived if absent
        return cls(vision=vision, qllama=QLLaMAConfig.from_dict(qllama_dict), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_official_config(cls, raw: Mapping[str, Any]) -> InternVLConfig:
        """The official InternVL-14B `config.json` dict (`model_type: internvl`)."""
        _refuse(raw.get("model_type") != "internvl", f"model_type {raw.get('model_type')!r} is not 'internvl'")
        _refuse(
            "vision_config" not in raw or "qllama_config" not in raw, "config needs vision_config and qllama_config"
        )
        for key in ("use_backbone_lora", "use_qllama_lora"):
            _refuse(bool(raw.get(key, 0)), f"{key}={raw.get(key)}: LoRA-wrapped checkpoints change the key names")
        vision = InternViTConfig.from_official_config(raw["vision_config"])
        # Pitfall B.1: the official InternVLConfig copies its own num_query_token / cross_attention_frequency
        # into qllama_config, so the top-level values win. cross_attention_frequency is not serialised at the
        # top level, so an official reload always uses the default 2 whatever qllama_config stores.
        qllama = QLLaMAConfig.from_official_config(
            raw["qllama_config"],
            vision_hidden_size=vision.hidden_size,
            num_query_token=raw.get("num_query_token", 96),
            cross_attention_frequency=raw.get("cross_attention_frequency", 2),
        )
        return cls(
            vision=vision,
            qllama=qllama,
            clip_embed_dim=raw.get("clip_embed_dim", 768),
            attn_pool_num_heads=raw.get("attn_pool_num_heads", 16),
            force_image_size=raw.get("force_image_size"),
            initializer_range=raw.get("initializer_range", 0.02),
        )

    def to_official_config(self) -> dict[str, Any]:
        return {
            "architectures": ["InternVLModel"],
            "auto_map": {
                "AutoConfig": "configuration_internvl.InternVLConfig",
                "AutoModel": "modeling_internvl.InternVLModel",
            },
            "model_type": "internvl",
            "vision_config": self.vision.to_official_config(),
            "qllama_config": self.qllama.to_official_config(),
            "clip_embed_dim": self.clip_embed_dim,
            "attn_pool_num_heads": self.attn_pool_num_heads,
            "num_query_token": self.num_query_token,
            # Written at the top level too: the official loader takes it from there (else it falls back to 2).
            "cross_attention_frequency": self.cross_attention_frequency,
            "force_image_size": self.force_image_size,
            "hidden_size": self.qllama.hidden_size,
            "label_smoothing": 0.0,
            "use_backbone_lora": 0,
            "use_qllama_lora": 0,
            "initializer_range": self.initializer_range,
        }


def list_presets() -> list[str]:
    """Names of the presets shipped in `internvl_models/configs/`."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> InternVLConfig | InternViTConfig:
    """A shipped preset (official config.json layout) as a config: InternVLConfig, or InternViTConfig for a tower."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise UnknownModelError(f"Unknown preset {name!r}. Available: {list_presets()}")
    raw = json.loads(path.read_text())
    if raw.get("model_type") == "internvl":
        return InternVLConfig.from_official_config(raw)
    return InternViTConfig.from_official_config(raw)
