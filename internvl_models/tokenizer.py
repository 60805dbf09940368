"""The QLLaMA text tokenizer of InternVL-C / InternVL-G (InternVL-14B-224px).

The official code wraps transformers' *slow* `LlamaTokenizer` (SentencePiece, Chinese-LLaMA vocabulary of 49954
pieces, transformers 4.37 "legacy" behaviour). This module reproduces its ids with the `sentencepiece` library
alone, so the runtime needs no transformers:

* every text becomes `"summarize:" + text` — no space, in every language (INTERNVL.md B.6, pitfall 7);
* the literal strings `<unk>`, `<s>` and `</s>` inside a text are special tokens, as in the slow tokenizer, whose
  added-token trie splits them out before SentencePiece sees the text; each remaining chunk is encoded on its own
  (legacy mode), so a chunk that follows a special token gets SentencePiece's dummy "▁" prefix again;
* BOS (1) first and EOS (2) last; truncation to `max_length` (80) cuts the text pieces and keeps both;
* right padding with id 0 (`<unk>`), because the model reads the text feature at `sum(ids > 0) - 1` (pitfall 3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm
import torch

from .errors import CheckpointError, InputError

PROMPT_PREFIX = "summarize:"
MAX_LENGTH = 80
PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
VOCAB_FILE = "tokenizer.model"

# The slow tokenizer's added tokens. None is a prefix of another, so a regex alternation splits exactly as the
# transformers trie does (earliest match, then longest).
_SPECIAL_PIECES = {"<unk>": PAD_ID, "<s>": BOS_ID, "</s>": EOS_ID}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(p) for p in _SPECIAL_PIECES) + ")")


class QLLaMATokenizer:
    """Strings -> right-padded QLLaMA input ids, identical to the official InternVL-C/G tokenizer wrappers.

    Args:
        model_file: the SentencePiece `tokenizer.model` of the checkpoint.
        prefix: prepended to every text; the released model was trained with `"summarize:"`.
        max_length: the longest sequence produced, BOS and EOS included.
    """

    def __init__(self, model_file: str | Path, *, prefix: str = PROMPT_PREFIX, max_length: int = MAX_LENGTH) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS (>= 2), got {max_length}")
        path = Path(model_file)
        if not path.is_file():
            raise CheckpointError(f"SentencePiece model file not found: {path}")
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise CheckpointError(f"{path} is not a readable SentencePiece model: {e}") from e
        # The id constants are the official ones; a different model file would silently shift every feature.
        found = (self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if found != (PAD_ID, BOS_ID, EOS_ID):
            raise CheckpointError(f"{path}: expected <unk>, <s>, </s> at ids 0, 1, 2; got {found}")
        self.model_file = path
        self.prefix = prefix
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> QLLaMATokenizer:
        """Loads `tokenizer.model` from a checkpoint directory; keyword arguments go to the constructor."""
        directory = Path(directory)
        path = directory / VOCAB_FILE
        if not path.is_file():
            raise CheckpointError(
                f"no {VOCAB_FILE} in {directory}: an InternVL-C/G checkpoint directory must hold the QLLaMA "
                f"SentencePiece tokenizer file next to config.json"
            )
        return cls(path, **kwargs)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    def encode(self, text: str) -> list[int]:
        """One text -> `[BOS, "summarize:" + text pieces..., EOS]`, truncated to `max_length`, not padded."""
        if not isinstance(text, str):
            raise InputError(f"texts must be strings, got {type(text).__name__}")
        ids: list[int] = []
        for chunk in _SPECIAL_RE.split(self.prefix + text):
            if not chunk:
                continue  # the slow tokenizer skips empty chunks, so no lone "▁" appears around special tokens
            if chunk in _SPECIAL_PIECES:
                ids.append(_SPECIAL_PIECES[chunk])
            else:
                ids.extend(self._sp.encode(chunk))
        # Truncation removes text pieces from the right and only then adds BOS/EOS, so both always survive.
        return [BOS_ID, *ids[: self.max_length - 2], EOS_ID]

    def __call__(
        self, texts: Sequence[str], *, pad_to: Literal["longest", "max_length"] = "longest"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of strings -> `(input_ids, attention_mask)`, both int64 of shape (B, L).

        `pad_to="longest"` makes L the longest sequence of the batch (the official `.pth` wrapper);
        `"max_length"` makes it `max_length` (the official Hugging Face wrapper). The attention mask marks the
        real tokens by position, as the Hugging Face tokenizer does; note that the official model instead masks
        with `input_ids > 0`, which also hides a literal `<unk>` in a text.
        """
        if isinstance(texts, str):
            raise InputError("the tokenizer takes a list of strings, not a single string")
        if pad_to not in ("longest", "max_length"):
            raise ValueError(f"pad_to must be 'longest' or 'max_length', got {pad_to!r}")
        if len(texts) == 0:
            raise InputError("the tokenizer needs at least one text, got an empty list")
        rows = [self.encode(t) for t in texts]
        length = self.max_length if pad_to == "max_length" else max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return input_ids, attention_mask

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text without BOS, EOS and padding; for debugging and tests."""
        keep = [int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)]
        return self._sp.decode(keep)

    def __repr__(self) -> str:
        return f"QLLaMATokenizer({str(self.model_file)!r}, prefix={self.prefix!r}, max_length={self.max_length})"
