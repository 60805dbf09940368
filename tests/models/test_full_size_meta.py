"""The full-size presets, built on the meta device (no memory), against the key names and shapes of INTERNVL.md.

The expected key lists are written out here from the reference tables (A.3 for InternViT, B.4 for InternVL),
independently of the model code, so a renamed or reshaped parameter fails this test before a 28 GB load does.
"""

from __future__ import annotations

import pytest
import torch

from internvl_models.config import InternViTConfig, InternVLConfig, load_preset
from internvl_models.intern_vit import InternViT
from internvl_models.internvl import InternVL


def _vit_keys(C: int, inter: int, layers: int, positions: int, *, qkv_bias: bool, qk_norm: bool, ln: bool) -> dict:
    """INTERNVL.md A.3."""
    keys = {
        "embeddings.class_embedding": (1, 1, C),
        "embeddings.position_embedding": (1, positions, C),
        "embeddings.patch_embedding.weight": (C, 3, 14, 14),
        "embeddings.patch_embedding.bias": (C,),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        keys |= {
            p + "attn.qkv.weight": (3 * C, C),
            p + "attn.proj.weight": (C, C),
            p + "attn.proj.bias": (C,),
            p + "mlp.fc1.weight": (inter, C),
            p + "mlp.fc1.bias": (inter,),
            p + "mlp.fc2.weight": (C, inter),
            p + "mlp.fc2.bias": (C,),
            p + "norm1.weight": (C,),
            p + "norm2.weight": (C,),
            p + "ls1": (C,),
            p + "ls2": (C,),
        }
        if qkv_bias:
            keys[p + "attn.qkv.bias"] = (3 * C,)
        if qk_norm:
            keys |= {p + "attn.q_norm.weight": (C,), p + "attn.k_norm.weight": (C,)}
        if ln:
            keys |= {p + "norm1.bias": (C,), p + "norm2.bias": (C,)}
    return keys


def _pooling_keys(prefix: str, D: int, out: int) -> dict:
    keys = {f"{prefix}.cross_attn.proj.weight": (out, D), f"{prefix}.cross_attn.proj.bias": (out,)}
    for x in "qkv":
        keys |= {f"{prefix}.cross_attn.{x}.weight": (D, D), f"{prefix}.cross_attn.{x}_bias": (D,)}
        keys |= {f"{prefix}.norm1_{x}.weight": (D,), f"{prefix}.norm1_{x}.bias": (D,)}
    return keys


def _internvl_14b_keys() -> dict:
    """INTERNVL.md B.4: InternViT-6B + QLLaMA (LLaMA-7B, 49954 vocab, cross-attn in even layers) + heads."""
    vit = _vit_keys(3200, 12800, 48, 257, qkv_bias=False, qk_norm=True, ln=False)
    keys = {f"vision_model.{k}": v for k, v in vit.items()}
    D, V, F = 4096, 49954, 11008  # width, vocab, MLP width
    keys |= {
        "qllama.model.embed_tokens.weight": (V, D),
        "qllama.model.norm.weight": (D,),
        "qllama.lm_head.weight": (V, D),
    }
    for i in range(32):
        p = f"qllama.model.layers.{i}."
        keys |= {p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)}
        keys |= {p + f"self_attn.{x}_proj.weight": (D, D) for x in "qkvo"}
        keys |= {
            p + "mlp.gate_proj.weight": (F, D),
            p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F),
        }
        if i % 2 == 0:
            keys |= {p + "cross_attn.q_proj.weight": (D, D), p + "cross_attn.o_proj.weight": (D, D)}
            keys |= {p + "cross_attn.k_proj.weight": (D, 3200), p + "cross_attn.v_proj.weight": (D, 3200)}
            keys |= {p + "cross_attn.norm1.weight": (D,), p + "cross_attn.norm2.weight": (3200,)}
    keys |= {"query_tokens": (1, 96, D), "text_projection": (D, 768), "logit_scale": ()}
    keys |= _pooling_keys("clip_projector", 3200, 768) | _pooling_keys("clip_projector2", D, 768)
    keys |= {"itm_head.weight": (2, D), "itm_head.bias": (2,)}
    return keys


def _shapes(model: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _diff(got: dict, expected: dict) -> str:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    wrong = [f"{k}: {got[k]} != {expected[k]}" for k in sorted(set(got) & set(expected)) if got[k] != expected[k]]
    return f"missing {missing[:10]}, extra {extra[:10]}, wrong shapes {wrong[:10]}"


def test_internvl_14b_224px_on_meta() -> None:
    config = load_preset("internvl-14b-224px")
    assert isinstance(config, InternVLConfig)
    with torch.device("meta"):
        model = InternVL(config)
    got, expected = _shapes(model), _internvl_14b_keys()
    assert got == expected, _diff(got, expected)
    cross = [k for k in got if k.endswith("cross_attn.k_proj.weight") and k.startswith("qllama.")]
    assert len(cross) == 16
    # INTERNVL.md C: ~13.84B parameters including both embed_tokens and lm_head (untied at construction).
    n_params = sum(p.numel() for p in model.parameters())
    print(f"InternVL-14B-224px parameters: {n_params:,}")
    assert abs(n_params - 13.84e9) / 13.84e9 < 0.01
    assert all(p.is_meta for p in model.parameters())


def test_internvit_300m_448px_on_meta() -> None:
    config = load_preset("internvit-300m-448px")
    assert isinstance(config, InternViTConfig)
    assert (config.norm_type, config.qkv_bias, config.qk_normalization) == ("layer_norm", True, False)
    with torch.device("meta"):
        model = InternViT(config)
    expected = _vit_keys(1024, 4096, 24, (448 // 14) ** 2 + 1, qkv_bias=True, qk_norm=False, ln=True)
    got = _shapes(model)
    assert got == expected, _diff(got, expected)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"InternViT-300M-448px parameters: {n_params:,}")
    assert 0.29e9 < n_params < 0.31e9


def test_unknown_preset_lists_the_available_ones() -> None:
    from internvl_models.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="internvl-14b-224px"):
        load_preset("internvl-15b")


def test_force_image_size_builds_the_tower_for_that_size() -> None:
    config = InternVLConfig(force_image_size=364)
    with torch.device("meta"):
        model = InternVL(config)
    assert model.vision_model.embeddings.position_embedding.shape == (1, (364 // 14) ** 2 + 1, 3200)
    assert config.image_size == 364 and config.vision.image_size == 224
