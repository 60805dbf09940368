"""A tiny InternVL2.5-style chat checkpoint for tests, written in the official `internvl_chat` layout
(config.json + model.safetensors + tokenizer.json/tokenizer_config.json) and read back by the real loaders
(`load_chat_model`, `transformers.AutoTokenizer`).

The tokenizer is a `tokenizers` BPE over the 256 UTF-8 bytes (any text in any language), plus the chat template's
special tokens and a few whole words as added tokens.

Two kinds of weights:

* random (default): every parameter drawn at random; answers are gibberish but depend on the images and the text.
* scripted: the same architecture with weights set by hand so that greedy decoding after the prompt always writes
  `SCRIPT` (attention and MLP outputs are zero, the embeddings are one-hot and the LM head maps each script token
  to the next), and the first answer token is "Yes" with probability `YES_PROBABILITY` (else "No"). That makes
  the plumbing around the model (citations, boxes, thresholds) checkable through the real model code.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models

from internvl_models.chat import InternVLChat
from internvl_models.chat_config import ChatConfig
from internvl_models.config import InternViTConfig

SPECIAL = ["<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<img>", "</img>", "<IMG_CONTEXT>"]
MARKUP = ["<ref>", "</ref>", "<box>", "</box>"]
WORDS = ["Yes", "No", "Image-1", "Image-2", "Image-3", "Image-4", "red star", "[[100, 200, 300, 400]]"]
# The scripted answer, token by token (every token once, so a bigram chain can spell it), ending on the stop token.
SCRIPT = ["Yes", "<0x2C>", "<0x20>", "Image-2", "<ref>", "red star", "</ref>", "<box>", "[[100, 200, 300, 400]]"]
SCRIPT += ["</box>", "<|im_end|>"]
SCRIPT_TEXT = "Yes, Image-2<ref>red star</ref><box>[[100, 200, 300, 400]]</box>"
YES_PROBABILITY = 0.9
TILE = 28  # 2 x 2 patches of 14 px, pixel-shuffled into one image token per tile


def vocabulary() -> list[str]:
    """The ids: <unk> and the 256 byte tokens (the BPE model's own), then the added tokens in order."""
    return ["<unk>", *(f"<0x{b:02X}>" for b in range(256)), *SPECIAL[1:], *MARKUP, *WORDS]


def write_tokenizer(directory: Path) -> None:
    vocab = {token: i for i, token in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.BPE({t: vocab[t] for t in vocab if t.startswith("<0x") or t == "<unk>"}, [],
                                     unk_token="<unk>", byte_fallback=True))  # fmt: skip
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    for token in vocabulary():
        if token.startswith("<0x") or token == "<unk>":
            continue
        added = AddedToken(token, special=token in SPECIAL, normalized=False)
        (tokenizer.add_special_tokens if token in SPECIAL else tokenizer.add_tokens)([added])
        assert tokenizer.token_to_id(token) == vocab[token], token
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def official_config(hidden: int, layers: int, *, max_tiles: int) -> dict:
    vocab = vocabulary()
    vision = InternViTConfig(
        hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2, image_size=TILE,
        qkv_bias=True, qk_normalization=False, norm_type="layer_norm", initializer_factor=1.0,
    )  # fmt: skip
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": len(vocab),
        "hidden_size": hidden,
        "intermediate_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "eos_token_id": vocab.index("<|im_end|>"),
        "pad_token_id": vocab.index("<|endoftext|>"),
    }
    return {
        "model_type": "internvl_chat",
        "architectures": ["InternVLChatModel"],
        "vision_config": vision.to_official_config(),
        "llm_config": llm,
        "force_image_size": TILE,
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "template": "internvl2_5",
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": max_tiles,
    }


def _randomise(model: InternVLChat, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if name.endswith("norm.weight") or "norm1" in name or "norm2" in name else 0.0
            p.copy_(centre + 0.3 * torch.randn(p.shape, generator=generator))


def _printable_answers(model: InternVLChat) -> None:
    """Random answers in readable text: the LM head cannot favour control or non-ASCII bytes (logit 0 while the
    others spread around 0), and "Yes" / "No" stand out often enough for rerank scores to vary."""
    vocab = vocabulary()
    with torch.no_grad():
        head = model.language_model.lm_head.weight
        for b in [*range(0x20), *range(0x7F, 0x100)]:
            head[vocab.index(f"<0x{b:02X}>")] = 0.0
        for word in ("Yes", "No"):
            head[vocab.index(word)] *= 3.0


def _script(model: InternVLChat) -> None:
    """Residual stream = one-hot embedding of the current token; LM head: each token -> the next script token."""
    vocab = vocabulary()
    lm = model.language_model
    hidden = lm.config.hidden_size
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
        lm.get_input_embeddings().weight.copy_(torch.eye(len(vocab), hidden))
        lm.model.norm.weight.fill_(1.0)
        head = lm.lm_head.weight
        head.zero_()
        scale = 1.0 / math.sqrt(hidden)  # RMSNorm scales a one-hot vector to sqrt(hidden)
        first = vocab.index("<0x0A>")  # every prompt ends with "<|im_start|>assistant\n"
        chain = [first, *(vocab.index(t) for t in SCRIPT)]
        for a, b in zip(chain, chain[1:]):
            head[b, a] = 30.0 * scale
        head[vocab.index("No"), first] = (30.0 - math.log(YES_PROBABILITY / (1 - YES_PROBABILITY))) * scale


def _calibrate_yes(directory: Path, model: InternVLChat) -> None:
    """Make "Yes" about as likely as the best token as the first answer to a rerank-style question, so that the
    P("yes") of random weights varies from image to image instead of being 0 everywhere."""
    from PIL import Image

    from internvl_models import create_chat_model

    loaded = create_chat_model(directory, device="cpu")
    lm = loaded.model.language_model
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    queries = ("a red circle", "Which image shows a red circle", "a blue star", "Where is the circle")
    with torch.no_grad():
        states = []
        for query in queries:
            embeds = loaded.embed([image], [("user", f"<image>\nDoes this image show: {query}?")])
            states.append(lm.model(inputs_embeds=embeds).last_hidden_state[0, -1])
        hidden = torch.stack(states).mean(0)
        target = max(float((lm.lm_head.weight @ h).max()) for h in states) + 0.5
        model.language_model.lm_head.weight[vocabulary().index("Yes")] = hidden * (target / float(hidden @ hidden))


def make_tiny_chat_checkpoint(directory: Path, *, seed: int = 0, scripted: bool = False, max_tiles: int = 4) -> Path:
    """Write a tiny chat checkpoint to `directory` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    raw = official_config(hidden=len(vocab) if scripted else 64, layers=1 if scripted else 2, max_tiles=max_tiles)
    model = InternVLChat(ChatConfig.from_official_config(raw)).eval()
    _randomise(model, seed)
    if scripted:
        _script(model)
    else:
        _printable_answers(model)
    (directory / "config.json").write_text(json.dumps(raw, indent=2))
    write_tokenizer(directory)
    _save(model, directory)
    if not scripted:
        _calibrate_yes(directory, model)
        _save(model, directory)
    return directory


def _save(model: InternVLChat, directory: Path) -> None:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
