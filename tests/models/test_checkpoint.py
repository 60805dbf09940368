"""Checkpoint loading: layouts, strictness, the embed/lm_head tie, save round trip, fingerprints, official configs.

All checkpoints here are written into tmp_path from the tiny official checkpoint in ../shared/parity.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from internvl_models.checkpoint import (
    EMBED_KEY,
    LM_HEAD_KEY,
    checkpoint_fingerprint,
    load_intern_vit,
    load_internvl,
    save_internvl,
)
from internvl_models.config import InternViTConfig, InternVLConfig, QLLaMAConfig
from internvl_models.device import resolve_device, resolve_dtype
from internvl_models.errors import CheckpointError, ModelError

PARITY = Path(__file__).resolve().parents[2].parent / "shared" / "parity"
TINY = PARITY / "internvl14b_tiny"


@pytest.fixture(scope="module")
def tiny() -> Path:
    if not TINY.is_dir():
        pytest.skip(f"parity vectors absent: {TINY} (they live in ../shared beside the repository)")
    return TINY


@pytest.fixture(scope="module")
def tiny_state(tiny: Path) -> dict[str, torch.Tensor]:
    return load_file(tiny / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tiny: Path) -> tuple[torch.Tensor, ...]:
    return _outputs(load_internvl(tiny, device="cpu"))


def _outputs(model) -> tuple[torch.Tensor, ...]:
    inputs = np.load(PARITY / "internvl14b_inputs.npz")
    pixels, ids = torch.from_numpy(inputs["pixel_values"]), torch.from_numpy(inputs["input_ids"])
    with torch.inference_mode():
        return model.encode_image(pixels, "C"), model.encode_image(pixels, "G"), model.encode_text(ids)


def _assert_same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _write_checkpoint(tiny: Path, directory: Path, state: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny / "config.json", directory / "config.json")
    save_file(state, str(directory / "model.safetensors"))
    return directory


def _write_shards(tiny: Path, directory: Path, state: dict[str, torch.Tensor], fmt: str, n: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny / "config.json", directory / "config.json")
    keys = sorted(state)
    weight_map = {}
    for i in range(n):
        name = f"model-{i + 1:05d}-of-{n:05d}.safetensors" if fmt == "safetensors" else f"pytorch_model-{i + 1}.bin"
        part = {k: state[k] for k in keys[i::n]}
        if fmt == "safetensors":
            save_file(part, str(directory / name))
        else:
            torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


# --- layouts ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoints_load_like_the_single_file(tiny, tiny_state, reference, tmp_path, fmt) -> None:
    directory = _write_shards(tiny, tmp_path / fmt, tiny_state, fmt)
    assert len(list(directory.glob("*.safetensors" if fmt == "safetensors" else "*.bin"))) == 3
    _assert_same(_outputs(load_internvl(directory, device="cpu")), reference)


def test_single_pytorch_bin_loads_like_safetensors(tiny, tiny_state, reference, tmp_path) -> None:
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    torch.save(tiny_state, tmp_path / "pytorch_model.bin")
    _assert_same(_outputs(load_internvl(tmp_path, device="cpu")), reference)


def test_a_directory_without_weights_is_a_clear_error(tiny, tmp_path) -> None:
    shutil.copy(tiny / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_internvl(tmp_path, device="cpu")


def test_a_shard_index_naming_an_absent_file_is_an_error(tiny, tiny_state, tmp_path) -> None:
    directory = _write_shards(tiny, tmp_path / "s", tiny_state, "safetensors")
    (directory / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        load_internvl(directory, device="cpu")


# --- strictness ------------------------------------------------------------------------------------------------
def test_missing_key_is_named(tiny, tiny_state, tmp_path) -> None:
    state = {k: v for k, v in tiny_state.items() if k != "vision_model.encoder.layers.1.ls2"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*vision_model\.encoder\.layers\.1\.ls2"):
        load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")


def test_unexpected_key_is_named(tiny, tiny_state, tmp_path) -> None:
    state = {**tiny_state, "vision_model.encoder.layers.0.attn.qkv.bias": torch.zeros(144)}
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\).*layers\.0\.attn\.qkv\.bias"):
        load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")


def test_shape_mismatch_is_named(tiny, tiny_state, tmp_path) -> None:
    state = {**tiny_state, "text_projection": torch.zeros(64, 31)}
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\).*text_projection: stored \[64, 31\]"):
        load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")


def test_all_three_problems_are_reported_at_once(tiny, tiny_state, tmp_path) -> None:
    state = {k: v for k, v in tiny_state.items() if k != "query_tokens"}
    state["extra.weight"] = torch.zeros(1)
    state["logit_scale"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")
    message = str(info.value)
    assert "query_tokens" in message and "extra.weight" in message and "logit_scale" in message


def test_unreachable_hub_id_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="internvl-search-tests/no-such-model"):
        load_internvl("internvl-search-tests/no-such-model", device="cpu")


def test_a_source_that_is_neither_directory_nor_hub_id(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="neither"):
        load_internvl(tmp_path / "absent" / "dir", device="cpu")


# --- the embed_tokens / lm_head tie (pitfall F.1) ----------------------------------------------------------------
def _assert_tied(model, expected: torch.Tensor) -> None:
    assert model.qllama.lm_head.weight is model.qllama.model.embed_tokens.weight
    assert torch.equal(model.qllama.model.embed_tokens.weight, expected)


def test_only_embed_tokens_stored_fills_lm_head(tiny, tiny_state, reference, tmp_path) -> None:
    state = {k: v for k, v in tiny_state.items() if k != LM_HEAD_KEY}
    model = load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")
    _assert_tied(model, tiny_state[EMBED_KEY])
    _assert_same(_outputs(model), reference)


def test_only_lm_head_stored_fills_embed_tokens(tiny, tiny_state, reference, tmp_path) -> None:
    state = {k: v for k, v in tiny_state.items() if k != EMBED_KEY}
    model = load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")
    _assert_tied(model, tiny_state[LM_HEAD_KEY])
    _assert_same(_outputs(model), reference)


def test_embed_tokens_wins_when_the_two_differ(tiny, tiny_state, reference, tmp_path, caplog) -> None:
    state = {**tiny_state, LM_HEAD_KEY: tiny_state[LM_HEAD_KEY] + 1.0}
    with caplog.at_level(logging.WARNING, logger="internvl_models.checkpoint"):
        model = load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")
    _assert_tied(model, tiny_state[EMBED_KEY])
    assert "differ" in caplog.text
    _assert_same(_outputs(model), reference)


def test_both_tied_keys_absent_is_missing(tiny, tiny_state, tmp_path) -> None:
    state = {k: v for k, v in tiny_state.items() if k not in (EMBED_KEY, LM_HEAD_KEY)}
    with pytest.raises(CheckpointError, match="embed_tokens"):
        load_internvl(_write_checkpoint(tiny, tmp_path, state), device="cpu")


# --- meta loading, dtype, device -----------------------------------------------------------------------------------
def test_meta_loading_leaves_no_meta_tensors(tiny) -> None:
    model = load_internvl(tiny, device="auto" if not torch.cuda.is_available() else "cpu")
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert tensors and not [name for name, t in tensors.items() if t.is_meta or t.device.type != "cpu"]
    assert {t.dtype for t in tensors.values()} == {torch.float32}  # CPU default
    assert not model.training


def test_dtype_and_device_defaults() -> None:
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="Available"):
        resolve_dtype("float8", torch.device("cpu"))


# --- saving ----------------------------------------------------------------------------------------------------
def test_save_then_load_round_trip(tiny, tiny_state, reference, tmp_path) -> None:
    model = load_internvl(tiny, device="cpu")
    save_internvl(model, model.config, tmp_path / "saved")
    saved = load_file(tmp_path / "saved" / "model.safetensors")
    assert set(saved) == set(tiny_state)  # the official key set, both tied keys included
    assert all(torch.equal(saved[k], tiny_state[k]) for k in saved)
    reloaded = load_internvl(tmp_path / "saved", device="cpu")
    assert reloaded.config == model.config
    _assert_same(_outputs(reloaded), reference)
    with pytest.raises(ModelError):
        save_internvl(model, InternVLConfig(), tmp_path / "other")


def test_load_intern_vit_nested_and_bare(tiny, tiny_state, reference, tmp_path) -> None:
    from internvl_models.intern_vit import InternViT

    pixels = torch.from_numpy(np.load(PARITY / "internvl14b_inputs.npz")["pixel_values"])
    with torch.inference_mode():
        expected = load_internvl(tiny, device="cpu").vision_model(pixels).last_hidden_state
        nested = load_intern_vit(tiny, device="cpu")  # vision_model.* of the InternVL checkpoint
        assert isinstance(nested, InternViT) and torch.equal(nested(pixels).last_hidden_state, expected)
        # A bare InternViT repo: the config is the vision config and the keys have no prefix.
        bare = tmp_path / "bare"
        bare.mkdir()
        vision_raw = json.loads((tiny / "config.json").read_text())["vision_config"]
        (bare / "config.json").write_text(json.dumps(vision_raw))
        prefix = "vision_model."
        save_file(
            {k[len(prefix) :]: v for k, v in tiny_state.items() if k.startswith(prefix)},
            str(bare / "model.safetensors"),
        )
        assert torch.equal(load_intern_vit(bare, device="cpu")(pixels).last_hidden_state, expected)


# --- fingerprints ----------------------------------------------------------------------------------------------
def test_fingerprint_is_stable_and_tracks_weights_and_config(tiny, tiny_state, tmp_path) -> None:
    base = checkpoint_fingerprint(tiny)
    assert len(base) == 64 and base == checkpoint_fingerprint(tiny)
    copy = _write_checkpoint(tiny, tmp_path / "copy", dict(tiny_state))
    shutil.copy(tiny / "model.safetensors", copy / "model.safetensors")
    os.utime(copy / "model.safetensors", (1, 1))  # mtimes and paths do not count
    assert checkpoint_fingerprint(copy) == base
    changed = dict(tiny_state)
    changed["logit_scale"] = changed["logit_scale"] + 0.5
    assert checkpoint_fingerprint(_write_checkpoint(tiny, tmp_path / "w", changed)) != base
    raw = json.loads((tiny / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**raw, "clip_embed_dim": 33}))
    assert checkpoint_fingerprint(copy) != base
    (copy / "config.json").write_text(json.dumps({**raw, "transformers_version": "9.9"}, indent=4))
    assert checkpoint_fingerprint(copy) == base  # a re-save by another tool is the same model


# --- official config.json ------------------------------------------------------------------------------------------
def test_official_config_round_trip_and_strict_dicts(tiny) -> None:
    config = InternVLConfig.from_official_config(json.loads((tiny / "config.json").read_text()))
    assert config.qllama.vision_hidden_size == config.vision.hidden_size == 48
    assert InternVLConfig.from_official_config(config.to_official_config()) == config
    assert InternVLConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="Unknown keys.*'hidden_sise'"):
        InternViTConfig.from_dict({"hidden_sise": 3})
    with pytest.raises(ModelError, match="Unknown keys"):
        InternVLConfig.from_dict({"qllama": {"vocab": 3}})
    with pytest.raises(ModelError, match="Unknown keys"):
        QLLaMAConfig.from_dict({"num_query_tokens": 3})


def test_top_level_query_settings_win_over_qllama_config(tiny) -> None:
    # Pitfall B.1: the official config copies its top-level values into qllama_config; a reload without a
    # top-level cross_attention_frequency uses the default 2, whatever qllama_config says.
    raw = json.loads((tiny / "config.json").read_text())
    raw["qllama_config"] = {**raw["qllama_config"], "num_query_token": 7, "cross_attention_frequency": 3}
    config = InternVLConfig.from_official_config(raw)
    assert (config.num_query_token, config.cross_attention_frequency) == (96, 2)
    config = InternVLConfig.from_official_config({**raw, "num_query_token": 32, "cross_attention_frequency": 4})
    assert (config.num_query_token, config.cross_attention_frequency) == (32, 4)


@pytest.mark.parametrize(
    "patch",
    [
        {"model_type": "internvl_chat"},
        {"use_backbone_lora": 8},
        {"qllama_config": {"rope_scaling": {"type": "linear"}}},
    ],
)
def test_unsupported_official_configs_are_refused(tiny, patch) -> None:
    raw = json.loads((tiny / "config.json").read_text())
    if "qllama_config" in patch:
        raw["qllama_config"] = {**raw["qllama_config"], **patch["qllama_config"]}
    else:
        raw.update(patch)
    with pytest.raises(CheckpointError):
        InternVLConfig.from_official_config(raw)
