"""Train small SentencePiece tokenizers on shapes-world text, compatible with LlamaTokenizer conventions.

Two variants:
* retrieval (InternVL-C/G text tower): ids unk 0, bos 1, eos 2, and padding with id 0 as the official QLLaMA
  wrapper does (SentencePiece itself gets no pad piece: pad and unk share id 0);
* chat (`chat=True`): the same plus the InternVL special tokens as user-defined symbols, so each is one id.

Both split digits into single pieces (box coordinates tokenize compositionally) and use byte fallback, so any
text encodes. Chinese and Japanese have no spaces, so BPE would happily learn whole clauses ("左上角有一个") as
single pieces; during training every CJK character is therefore cut off from its neighbours with
SentencePiece's `pretokenization_delimiter`. That only constrains which pieces are learned: at encode time
text is passed as is and CJK comes out as short (mostly single-character) pieces.
"""

from __future__ import annotations

import hashlib
import io
import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from .corpus import iter_texts
from .vocab import LANGUAGES

MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>",
    "<|im_start|>", "<|im_end|>",
)  # fmt: skip
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 0
_DELIMITER = "\x1f"  # ASCII unit separator: never occurs in generated text
# Characters a user is likely to type that templates rarely produce; seen once, they become single pieces
# instead of three byte-fallback ids.
_EXTRA_CHARACTERS = (
    "，。、？！：；（）「」『』…・ー～ 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ "
    "äöüßÄÖÜ àâçéèêëîïôùûüÿœÀÂÇÉÈÊËÎÏÔÙÛÜŸŒ áéíóúñüÁÉÍÓÚÑ¿¡ .,;:!?()[]{}<>\"'-_/|+*=%&#@"
)


def _is_cjk(ch: str) -> bool:
    # Han ideographs, kana, and full-width punctuation ("，", "？", "（") all come from East Asian scripts whose
    # Unicode names start with one of these words.
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "FULLWIDTH", "IDEOGRAPHIC"))


def split_cjk(text: str) -> str:
    """Put the training delimiter around every CJK character, so no learned piece spans two of them."""
    out = []
    for ch in text:
        out.append(f"{_DELIMITER}{ch}{_DELIMITER}" if _is_cjk(ch) else ch)
    return "".join(out).replace(_DELIMITER * 2, _DELIMITER).strip(_DELIMITER)


def training_options(vocab_size: int, *, chat: bool) -> dict[str, object]:
    """SentencePiece trainer options; everything that affects the model file is fixed here."""
    return {
        "model_type": "bpe",  # as LLaMA
        "vocab_size": vocab_size,
        "hard_vocab_limit": False,  # a small corpus may not support every merge; fewer pieces is fine
        "character_coverage": 1.0,  # keep every CJK character seen; byte fallback covers the rest
        "byte_fallback": True,
        "split_digits": True,
        "split_by_unicode_script": True,
        "split_by_number": True,
        "max_sentencepiece_length": 12,
        "pretokenization_delimiter": _DELIMITER,
        "normalization_rule_name": "identity",  # LlamaTokenizer does not normalise; decode(encode(x)) == x
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": False,
        "allow_whitespace_only_pieces": True,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_id": -1,  # padding reuses id 0 (<unk>), as the official InternVL-C tokenizer wrapper does
        "user_defined_symbols": list(CHAT_SPECIAL_TOKENS) if chat else [],
        # Determinism: one thread, every sentence used, no shuffling.
        "num_threads": 1,
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "minloglevel": 2,
    }


def _chat_texts(texts: Sequence[str]) -> list[str]:
    """Conversation-shaped lines, so special tokens are seen in context next to ordinary text."""
    turns = []
    for question, answer in zip(texts[::2], texts[1::2]):
        turns.append(
            f"<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n{question}<|im_end|>"
            f"<|im_start|>assistant\n{answer}<|im_end|>"
        )
    return turns


def train_tokenizer(
    output_dir: str | Path,
    vocab_size: int = 1500,
    *,
    chat: bool = False,
    n_scenes: int = 400,
    languages: Sequence[str] = LANGUAGES,
    seed: int = 0,
) -> Path:
    """Train on the text of `n_scenes` training scenes in `languages` and write `tokenizer.model` and
    `tokenizer_config.json` into `output_dir`. Same arguments -> same model file bytes. Returns the model path."""
    if not 300 <= vocab_size <= 32000:
        raise ValueError(f"vocab_size must be in [300, 32000] (byte fallback alone takes 259 ids), got {vocab_size}")
    texts = [_EXTRA_CHARACTERS, *iter_texts(n_scenes, languages, seed)]
    if chat:
        texts += _chat_texts(texts)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(split_cjk(t) for t in texts),
        model_writer=model,
        **training_options(vocab_size, chat=chat),
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    path.write_bytes(model.getvalue())
    (out / CONFIG_FILE).write_text(
        json.dumps(_config(path, chat, vocab_size, len(texts)), indent=2, ensure_ascii=False)
    )
    return path


def _config(path: Path, chat: bool, vocab_size: int, n_texts: int) -> dict[str, object]:
    """LlamaTokenizer-style config, plus what this tokenizer was trained from."""
    config: dict[str, object] = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",  # id 0, as the official InternVL-C wrapper pads
        "pad_token_id": PAD_ID,
        "model_max_length": 80 if not chat else 4096,
        "shapes_world": {
            "variant": "chat" if chat else "retrieval",
            "requested_vocab_size": vocab_size,
            "vocab_size": spm.SentencePieceProcessor(model_file=str(path)).get_piece_size(),
            "training_texts": n_texts,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
    }
    if chat:
        config["additional_special_tokens"] = list(CHAT_SPECIAL_TOKENS)
    return config
