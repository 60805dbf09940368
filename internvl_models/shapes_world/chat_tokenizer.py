"""The chat model's tokenizer files: the shapes-world SentencePiece model as a transformers fast tokenizer.

transformers cannot read a SentencePiece file without protobuf, which this environment lacks, so the chat
checkpoint ships a `tokenizer.json` (tokenizers' BPE with byte fallback) whose ids equal SentencePiece's; the
InternVL special tokens stay single ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from .tokenizer_training import CHAT_SPECIAL_TOKENS, MODEL_FILE

# Tokens a chat answer may contain and `skip_special_tokens` must keep: the grounding markup.
KEPT_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")


def sentencepiece_to_tokenizers(model_file: Path) -> Tokenizer:
    """The SentencePiece BPE model as a `tokenizers` BPE with the same pieces and ids.

    SentencePiece merges the pair whose result has the best score; a tokenizers BPE applies merges by rank, so
    every split of every piece into two pieces becomes a merge ranked by the merged piece's id (= score order).
    Text gets "▁" for spaces and one in front (SentencePiece's dummy prefix) but, unlike SentencePiece, none in
    front of a text that starts with a special token, which is the behaviour of transformers' Llama tokenizers.
    """
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    specials = {"<unk>", "<s>", "</s>", *CHAT_SPECIAL_TOKENS}
    merges = []
    for piece, pid in vocab.items():
        if piece in specials or sp.is_byte(pid):
            continue
        merges += [(pid, vocab[piece[:k]], piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in vocab and piece[k:] in vocab]  # fmt: skip
    merges.sort()
    bpe = models.BPE(vocab, [(a, b) for *_, a, b in merges], unk_token="<unk>", byte_fallback=True, fuse_unk=True)  # noqa: S106
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    # Added in id order (their ids are SentencePiece's); the grounding markup as plain added tokens, so that
    # decoding with skip_special_tokens=True, as the official chat() does, keeps the boxes of an answer.
    for token in sorted(specials, key=vocab.__getitem__):
        added = AddedToken(token, special=token not in KEPT_TOKENS, normalized=False)
        (tokenizer.add_tokens if token in KEPT_TOKENS else tokenizer.add_special_tokens)([added])
    return tokenizer


def write_tokenizer(state_dir: Path, out: Path) -> None:
    """tokenizer.json + tokenizer_config.json, loadable with AutoTokenizer.from_pretrained(out). No BOS is added,
    as with the Qwen2 tokenizers of InternVL2.5; `<|im_end|>` (the template's stop token) is the EOS."""
    out.mkdir(parents=True, exist_ok=True)
    sentencepiece_to_tokenizers(state_dir / MODEL_FILE).save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    return transformers.AutoTokenizer.from_pretrained(str(directory))
