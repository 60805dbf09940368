"""The chat model without the parity folder: pixel shuffle layout, strict loading, InternLM2 key conversion, the
transformers "-hf" layout (checked against transformers' own InternVL implementation), generation controls.

Checkpoints are tiny, random and written to tmp_path in the layouts the loaders read.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from internvl_models.chat import InternVLChat, load_chat_model, pixel_shuffle
from internvl_models.chat_config import ChatConfig
from internvl_models.config import InternViTConfig
from internvl_models.errors import CheckpointError, InputError, ModelError

IMG = 5  # the <IMG_CONTEXT> id of these tiny vocabularies
VISION = InternViTConfig(
    hidden_size=16,
    num_attention_heads=2,
    intermediate_size=32,
    num_hidden_layers=2,
    image_size=56,
    qkv_bias=True,
    qk_normalization=False,
    norm_type="layer_norm",
    initializer_factor=1.0,
)
LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query: the InternLM2 split must respect the groups
    "attention_bias": True,  # InternLM2's `bias`: the split must cover the wqkv bias too
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def _official_config(llm: dict) -> dict:
    return {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "vision_config": VISION.to_official_config(),
        "llm_config": llm,
        "force_image_size": 56,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
    }


def _randomise(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith("norm.weight") or "norm1" in name or "norm2" in name else 0.0
            p.copy_(centre + 0.2 * torch.randn_like(p))


def _write(directory: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(directory / "model.safetensors"))
    return directory


@pytest.fixture(scope="module")
def reference() -> InternVLChat:
    """A random Llama-based chat model built in memory: the truth the loaded checkpoints must reproduce."""
    config = ChatConfig.from_official_config(_official_config(LLAMA))
    model = InternVLChat(dataclasses.replace(config, image_token_id=IMG)).eval()
    _randomise(model)
    return model


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 56, 56, generator=generator)
    ids = torch.randint(10, 64, (1, 14), generator=generator)
    ids[0, 2:10] = IMG  # 2 tiles x 4 tokens
    return pixels, ids


def _logits(model: InternVLChat) -> torch.Tensor:
    pixels, ids = _inputs()
    with torch.inference_mode():
        return model(pixels, ids)


def test_pixel_shuffle_merges_2x2_blocks_row_major() -> None:
    x = torch.arange(4 * 4, dtype=torch.float32).reshape(1, 4, 4, 1)  # value = 4*row + col
    v2 = pixel_shuffle(x, 2, "v2")
    assert v2.shape == (1, 2, 2, 4)
    for i in range(2):
        for j in range(2):
            block = [x[0, 2 * i, 2 * j], x[0, 2 * i, 2 * j + 1], x[0, 2 * i + 1, 2 * j], x[0, 2 * i + 1, 2 * j + 1]]
            assert v2[0, i, j].tolist() == torch.cat(block).tolist()
    assert torch.equal(pixel_shuffle(x, 2, "v1"), v2.transpose(1, 2))  # v1: the token grid left transposed


def test_official_layout_loads_strictly_and_reproduces_the_model(reference: InternVLChat, tmp_path: Path) -> None:
    directory = _write(tmp_path / "llama", _official_config(LLAMA), reference.state_dict())
    loaded = load_chat_model(directory, device="cpu", image_token_id=IMG)
    assert isinstance(loaded.language_model, transformers.LlamaForCausalLM)
    assert loaded.language_model.lm_head.weight is not loaded.language_model.get_input_embeddings().weight
    assert torch.equal(_logits(loaded), _logits(reference))


def test_phi3_llm_builds_and_round_trips(tmp_path: Path) -> None:
    """Phi3 (InternVL2-4B) uses transformers' Phi3ForCausalLM with its fused qkv_proj / gate_up_proj keys."""
    phi3 = {k: v for k, v in LLAMA.items() if k not in ("attention_bias", "num_key_value_heads")}
    phi3 |= {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "pad_token_id": 0, "eos_token_id": 2}
    raw = _official_config(phi3)
    model = InternVLChat(dataclasses.replace(ChatConfig.from_official_config(raw), image_token_id=IMG)).eval()
    _randomise(model)
    assert "language_model.model.layers.0.self_attn.qkv_proj.weight" in model.state_dict()
    loaded = load_chat_model(_write(tmp_path, raw, model.state_dict()), device="cpu", image_token_id=IMG)
    assert isinstance(loaded.language_model, transformers.Phi3ForCausalLM)
    assert torch.equal(_logits(loaded), _logits(model))


def test_tiles_larger_than_the_stored_position_embedding_are_interpolated(tmp_path: Path) -> None:
    """force_image_size != vision image_size: the tower keeps its stored 28 px embedding (as upstream builds it) and
    interpolates to the 56 px tiles; the token count follows the tile size."""
    raw = _official_config(LLAMA)
    raw["vision_config"] = dataclasses.replace(VISION, image_size=28).to_official_config()
    with torch.device("meta"):
        shapes = InternVLChat(ChatConfig.from_official_config(raw)).state_dict()
    state = {k: 0.1 * torch.randn(v.shape) for k, v in shapes.items()}
    loaded = load_chat_model(_write(tmp_path, raw, state), device="cpu", image_token_id=IMG)
    assert loaded.vision_model.embeddings.position_embedding.shape == (1, 1 + 2 * 2, 16)
    assert loaded.num_image_token == 4
    with torch.inference_mode():
        assert loaded.extract_feature(torch.randn(2, 3, 56, 56)).shape == (2, 4, 32)


def test_corrupted_keys_are_named(reference: InternVLChat, tmp_path: Path) -> None:
    state = dict(reference.state_dict())
    state["mlp1.1.wieght"] = state.pop("mlp1.1.weight")  # renamed: missing + unexpected
    state["language_model.model.norm.weight"] = torch.ones(7)  # wrong shape
    directory = _write(tmp_path / "bad", _official_config(LLAMA), state)
    with pytest.raises(CheckpointError) as caught:
        load_chat_model(directory, device="cpu")
    message = str(caught.value)
    assert "missing keys (1): ['mlp1.1.weight']" in message
    assert "unexpected keys (1): ['mlp1.1.wieght']" in message
    assert "language_model.model.norm.weight: stored language_model.model.norm.weight [7] vs model [32]" in message


def _fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
    """Llama q/k/v rows -> InternLM2's wqkv rows: for each KV head g, its heads/kv query heads, then k_g, then v_g."""
    d = k.shape[0] // kv_heads
    groups = heads // kv_heads
    rows = []
    for g in range(kv_heads):
        rows += [q[(g * groups + j) * d : (g * groups + j + 1) * d] for j in range(groups)]
        rows += [k[g * d : (g + 1) * d], v[g * d : (g + 1) * d]]
    return torch.cat(rows)


def _as_internlm2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    heads, kv = LLAMA["num_attention_heads"], LLAMA["num_key_value_heads"]
    out = {k: v for k, v in state.items() if not k.startswith("language_model.")}
    lm = "language_model.model."
    out[lm + "tok_embeddings.weight"] = state[lm + "embed_tokens.weight"]
    out[lm + "norm.weight"] = state[lm + "norm.weight"]
    out["language_model.output.weight"] = state["language_model.lm_head.weight"]
    renames = {
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.up_proj": "feed_forward.w3",
        "mlp.down_proj": "feed_forward.w2",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(LLAMA["num_hidden_layers"]):
        layer = f"{lm}layers.{i}."
        for suffix in ("weight", "bias"):
            qkv = [state[f"{layer}self_attn.{p}_proj.{suffix}"] for p in "qkv"]
            out[f"{layer}attention.wqkv.{suffix}"] = _fuse_wqkv(*qkv, heads=heads, kv_heads=kv)
        for ours, theirs in renames.items():
            for key in [k for k in state if k.startswith(f"{layer}{ours}.")]:
                out[key.replace(f"{layer}{ours}.", f"{layer}{theirs}.")] = state[key]
    return out


INTERNLM2 = {
    "architectures": ["InternLM2ForCausalLM"],
    "model_type": "internlm2",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "bias": True,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def test_fused_wqkv_follows_the_internlm2_layout(reference: InternVLChat) -> None:
    """The test's own fusion agrees with InternLM2's attention, which reads wqkv output as (kv, heads/kv + 2, d)."""
    attn = reference.language_model.model.layers[0].self_attn
    heads, kv, d = 4, 2, 8
    wqkv = _fuse_wqkv(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, heads, kv)
    x = torch.randn(3, 32)
    grouped = (x @ wqkv.T).reshape(3, kv, heads // kv + 2, d)
    with torch.no_grad():
        assert torch.allclose(grouped[:, :, :-2].reshape(3, -1), x @ attn.q_proj.weight.T, atol=1e-6)
        assert torch.allclose(grouped[:, :, -2].reshape(3, -1), x @ attn.k_proj.weight.T, atol=1e-6)
        assert torch.allclose(grouped[:, :, -1].reshape(3, -1), x @ attn.v_proj.weight.T, atol=1e-6)


def test_internlm2_checkpoint_is_remapped_onto_llama(reference: InternVLChat, tmp_path: Path) -> None:
    state = _as_internlm2(reference.state_dict())
    directory = _write(tmp_path / "internlm2", _official_config(INTERNLM2), state)
    loaded = load_chat_model(directory, device="cpu", image_token_id=IMG)
    assert isinstance(loaded.language_model, transformers.LlamaForCausalLM)
    diff = (_logits(loaded) - _logits(reference)).abs().max().item()
    assert diff <= 1e-6, diff
    pixels, ids = _inputs()
    assert torch.equal(
        loaded.generate(pixels, ids, max_new_tokens=4), reference.generate(pixels, ids, max_new_tokens=4)
    )
    # Strictness speaks the stored names.
    del state["language_model.model.layers.1.attention.wqkv.weight"]
    _write(tmp_path / "internlm2_bad", _official_config(INTERNLM2), state)
    with pytest.raises(CheckpointError, match=r"language_model\.model\.layers\.1\.attention\.wqkv\.weight"):
        load_chat_model(tmp_path / "internlm2_bad", device="cpu")


def _native_reference(tie: bool) -> transformers.InternVLForConditionalGeneration:
    vision = {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 32}
    vision |= {"image_size": 56, "patch_size": 14, "norm_type": "rms_norm", "use_qk_norm": True}
    text = {k: v for k, v in LLAMA.items() if k not in ("architectures", "attention_bias")}
    text |= {"model_type": "qwen2", "tie_word_embeddings": tie}
    config = transformers.InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=IMG, vision_feature_layer=-2, tie_word_embeddings=tie
    )
    model = transformers.InternVLForConditionalGeneration(config).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn_like(p))
    return model


def _rename_to_model_prefixed(directory: Path) -> None:
    """Rewrite a saved checkpoint in the key layout INTERNVL.md D.8 describes (transformers reads both)."""
    renames = [
        ("vision_tower.", "model.vision_tower."),
        ("multi_modal_projector.", "model.multi_modal_projector."),
        ("language_model.model.", "model.language_model."),
        ("language_model.lm_head.", "lm_head."),
    ]
    state = load_file(str(directory / "model.safetensors"))
    for old, new in renames:
        state = {(new + k[len(old) :] if k.startswith(old) else k): v for k, v in state.items()}
    save_file(state, str(directory / "model.safetensors"))


def _count_split_qkv(directory: Path) -> int:
    """Vision layers whose q/k/v projections were written to different shards."""
    weight_map = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    files = defaultdict(set)
    for key, file in weight_map.items():
        if ".attention." in key and key.endswith("_proj.weight"):
            files[key.split(".attention.")[0]].add(file)
    return sum(len(f) > 1 for f in files.values())


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("layout", ["as_saved", "model_prefixed", "sharded"])
def test_hf_layout_matches_transformers_internvl(tie: bool, layout: str, tmp_path: Path) -> None:
    native = _native_reference(tie)
    native.save_pretrained(tmp_path, max_shard_size="6KB" if layout == "sharded" else "1GB")
    if layout == "model_prefixed":
        _rename_to_model_prefixed(tmp_path)
    if layout == "sharded":  # tensors fused at load time come from different files
        assert _count_split_qkv(tmp_path) >= 1
    loaded = load_chat_model(tmp_path, device="cpu")
    assert loaded.config.select_layer == -2 and loaded.config.image_token_id == IMG
    assert (loaded.language_model.lm_head.weight is loaded.language_model.get_input_embeddings().weight) == tie
    pixels, ids = _inputs()
    with torch.inference_mode():
        expected = native(input_ids=ids, pixel_values=pixels).logits
        if layout == "model_prefixed":  # the renamed file still is a checkpoint transformers itself loads
            reread = transformers.InternVLForConditionalGeneration.from_pretrained(tmp_path).eval()
            assert torch.allclose(reread(input_ids=ids, pixel_values=pixels).logits, expected, atol=1e-6)
        diff = (loaded(pixels, ids) - expected).abs().max().item()
    assert diff <= 1e-5, diff


def test_generation_stops_on_the_separator_and_samples_reproducibly(reference: InternVLChat) -> None:
    pixels, ids = _inputs()
    greedy = reference.generate(pixels, ids, max_new_tokens=5)
    assert greedy.shape == (1, 5)
    first = int(greedy[0, 0])
    assert reference.generate(pixels, ids, max_new_tokens=5, eos_token_id=first).tolist() == [[first]]
    torch.manual_seed(3)
    sampled = reference.generate(pixels, ids, max_new_tokens=5, do_sample=True, temperature=1.5, top_k=0)
    torch.manual_seed(3)
    again = reference.generate(pixels, ids, max_new_tokens=5, do_sample=True, temperature=1.5, top_k=0)
    assert torch.equal(sampled, again) and sampled.shape == (1, 5)


def test_image_token_mismatch_and_unknown_token_id_are_clear_errors(reference: InternVLChat) -> None:
    pixels, ids = _inputs()
    with pytest.raises(InputError, match="8 <IMG_CONTEXT> tokens but the 1 tiles"):
        reference(pixels[:1], ids)
    config = dataclasses.replace(reference.config, image_token_id=None)
    with torch.device("meta"):
        model = InternVLChat(config)
    with pytest.raises(ModelError, match="image_token_id"):
        _ = model.image_token_id


def test_configs_that_are_not_chat_models_are_refused() -> None:
    with pytest.raises(CheckpointError, match="load_internvl"):
        ChatConfig.from_config_json({"model_type": "internvl", "vision_config": {}, "qllama_config": {}})
    with pytest.raises(CheckpointError, match="GPT2LMHeadModel"):
        ChatConfig.from_official_config(_official_config({**LLAMA, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match="LoRA"):
        ChatConfig.from_official_config({**_official_config(LLAMA), "use_llm_lora": 8})
