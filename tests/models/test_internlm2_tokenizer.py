"""InternLM2's tokenizer (InternVL2-2B/8B/26B) loaded without the checkpoint's own code.

The official checkpoints ship `tokenizer.model` (SentencePiece), a tokenizer_config.json naming `InternLM2Tokenizer`
with an `auto_map` to `tokenization_internlm2.py`, and the InternVL tokens as added tokens past the SentencePiece
vocabulary. A tiny SentencePiece BPE model in exactly that layout is trained here. The expected ids follow the
official class's algorithm, written out with the sentencepiece library: split at the added tokens, SentencePiece
on every other chunk as is, `<s>` first. (When this was written, the official class itself, run under
transformers 4.37.2, gave the same ids as `InternLM2Tokenizer` here on these texts and on a model with the
nmt_nfkc normaliser and no dummy prefix.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from PIL import Image
from test_chat_model import INTERNLM2, LLAMA, _as_internlm2, _official_config, _randomise, _write

from internvl_models.chat import InternVLChat
from internvl_models.chat_config import ChatConfig
from internvl_models.chat_model import ChatModel, GenerationSettings
from internvl_models.chat_tokenizers import InternLM2Tokenizer, load_chat_tokenizer
from internvl_models.errors import CheckpointError

# In the SentencePiece model as user-defined symbols (InternLM2 has them at 92538-92543), then added past it.
IN_MODEL = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]
ADDED = ["<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
TRAINING = [
    "Which image shows a red star?", "a red circle and a blue square", "ein roter Kreis", "赤い円", "Image-1 Image-2",
    "the cat sat on the mat", "where is the dog", "hello world", "un cercle rouge", "一个红色的圆",
]  # fmt: skip
TEXTS = [
    "Which image shows a red star?", " leading space", "trailing space ", "double  space", "\n\nnewlines\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|><|im_start|>user\nImage-1: <img><IMG_CONTEXT>"
    "<IMG_CONTEXT></img>\nWhere is the red star?<|im_end|><|im_start|>assistant\n",
    "Image-2<ref>red star</ref><box>[[100, 200, 300, 400]]</box>", "<ref> red star </ref>", "赤い円と青い四角",
    "emoji 🙂 ok", "tabs\tand\ttabs", "<s>literal bos</s> and <unk>", "Isn't it? I'm here.", "", "a<|im_end|>b",
    "<IMG_CONTEXT>" * 3, "mixed 中文 and english",
]  # fmt: skip


def write_internlm2_tokenizer(directory: Path) -> spm.SentencePieceProcessor:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json as InternVL2-2B/8B ship them."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING * 40), model_prefix=str(directory / "tokenizer"), vocab_size=420,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, user_defined_symbols=IN_MODEL,
        normalization_rule_name="identity", add_dummy_prefix=True, remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    (directory / "tokenizer.vocab").unlink()
    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    ids = {t: sp.piece_to_id(t) for t in ["<unk>", "<s>", "</s>", *IN_MODEL]}
    ids |= {t: sp.get_piece_size() + i for i, t in enumerate(ADDED)}
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = {
        "added_tokens_decoder": {str(i): {"content": t, **flags} for t, i in ids.items()},
        "additional_special_tokens": IN_MODEL + ADDED,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
        "model_max_length": 1000000000000000019884624838656, "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer", "unk_token": "<unk>",
    }  # fmt: skip
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    specials = {"additional_special_tokens": IN_MODEL + ADDED, "bos_token": "<s>", "eos_token": "</s>",
                "pad_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    (directory / "special_tokens_map.json").write_text(json.dumps(specials))
    return sp


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("internlm2") / "tok"
    write_internlm2_tokenizer(directory)
    return directory


def official_ids(sp: spm.SentencePieceProcessor, added: dict[str, int], text: str) -> list[int]:
    """InternLM2Tokenizer's encoding: added tokens split out first, SentencePiece on each other chunk, BOS first."""
    split = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")")
    ids = [sp.bos_id()]
    for chunk in split.split(text):
        if chunk in added:
            ids.append(added[chunk])
        elif chunk:
            ids += sp.encode(chunk)
    return ids


def test_internlm2_tokenizer_encodes_as_the_official_one(tokenizer_dir: Path) -> None:
    tokenizer = load_chat_tokenizer(tokenizer_dir)
    assert isinstance(tokenizer, InternLM2Tokenizer)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    added = {spec["content"]: int(i) for i, spec in config["added_tokens_decoder"].items()}
    for token, index in added.items():
        assert tokenizer.convert_tokens_to_ids(token) == index, token
    assert tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") == sp.get_piece_size() + 2
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (1, 2, 0)
    assert len(tokenizer) == sp.get_piece_size() + len(ADDED)
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == official_ids(sp, added, text), text
    assert tokenizer("hi", add_special_tokens=False)["input_ids"] == sp.encode("hi")
    byte_pieces = tokenizer.convert_ids_to_tokens(tokenizer("🙂")["input_ids"])
    assert byte_pieces[-4:] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]  # not in the vocabulary: byte fallback


def test_internlm2_tokenizer_decodes_back_and_keeps_the_grounding_markup(tokenizer_dir: Path) -> None:
    tokenizer = load_chat_tokenizer(tokenizer_dir)
    for text in TEXTS:  # the identity normaliser loses nothing, so every text comes back unchanged
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    answer = tokenizer("Yes, Image-2<ref>red star</ref><box>[[1, 2, 3, 4]]</box><|im_end|>")["input_ids"]
    kept = "Yes, Image-2<ref>red star</ref><box>[[1, 2, 3, 4]]</box>"
    assert tokenizer.decode(answer, skip_special_tokens=True) == kept
    prefixes = [tokenizer.decode(answer[1:n], skip_special_tokens=True) for n in range(2, len(answer))]
    assert all(b.startswith(a.rstrip()) for a, b in zip(prefixes, prefixes[1:]))  # a stream only ever grows


def test_other_remote_code_tokenizers_are_refused_with_the_way_out(tokenizer_dir: Path, tmp_path: Path) -> None:
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "FancyTokenizer", "auto_map": {"AutoTokenizer": ["tok.FancyTokenizer", None]}})
    )
    with pytest.raises(CheckpointError, match=r"FancyTokenizer.*trust_remote_code.*LMDeploy, vLLM"):
        load_chat_tokenizer(custom)
    no_model = tmp_path / "no-model"
    no_model.mkdir()
    (no_model / "tokenizer_config.json").write_text((tokenizer_dir / "tokenizer_config.json").read_text())
    with pytest.raises(CheckpointError, match="no tokenizer.model"):
        load_chat_tokenizer(no_model)


def test_an_internvl2_style_checkpoint_answers_in_process(tokenizer_dir: Path, tmp_path: Path) -> None:
    """InternLM2 weights (converted at load) + the internlm2-chat template + this tokenizer, through ChatModel."""
    directory = tmp_path / "internvl2"
    write_internlm2_tokenizer(directory)
    vocab = len(load_chat_tokenizer(directory))
    model = InternVLChat(ChatConfig.from_official_config(_official_config({**LLAMA, "vocab_size": vocab}))).eval()
    _randomise(model)
    official = _official_config({**INTERNLM2, "vocab_size": vocab}) | {"template": "internlm2-chat"}
    _write(directory, official, _as_internlm2(model.state_dict()))
    chat = ChatModel.from_pretrained(directory, device="cpu")
    assert chat.template.name == "internlm2-chat"
    assert chat.stop_ids == {chat.tokenizer.convert_tokens_to_ids("<|im_end|>"), 2}
    image = Image.new("RGB", (80, 40), (200, 30, 40))
    ids, pixels = chat.encode_prompt([image], [("user", "<image>\nWhere is the red star?")])
    assert ids[0, 0].item() == 1  # <s>, as the official InternLM2 tokenizer adds it
    assert int((ids == chat.model.image_token_id).sum()) == len(pixels) * chat.model.num_image_token
    out = chat.generate([image], [("user", "<image>\nWhere is the red star?")], GenerationSettings(max_new_tokens=4))
    assert out.completion_tokens >= 1 and isinstance(out.text, str) and torch.is_tensor(pixels)
