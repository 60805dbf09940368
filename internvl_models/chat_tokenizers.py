"""The tokenizer of a chat checkpoint, without running code shipped in the checkpoint (no `trust_remote_code`).

Most checkpoints name a tokenizer class of transformers and load with `AutoTokenizer`. The InternLM2-based ones
(InternVL2-2B/8B/26B, InternVL-Chat-V1-5, Mini-InternVL-Chat-2B-V1-5) name `InternLM2Tokenizer`, a class that
exists only as `tokenization_internlm2.py` in the checkpoint. It is a SentencePiece tokenizer (`tokenizer.model`)
and is rebuilt here on transformers' `SentencePieceBackend`:

* encoding gives the official class's ids: the text is split at the added tokens of tokenizer_config.json, every
  other chunk is encoded by SentencePiece as is (its normalisation, its dummy "▁" prefix per chunk), `<s>` first
  and no `</s>` (its `add_bos_token` / `add_eos_token`);
* decoding is SentencePiece's decoding of each run of ordinary pieces, added tokens kept verbatim. The official
  class also puts a space in front of each special token and applies transformers' English clean-up (" ." -> ".",
  " n't" -> "n't") to every text; both are left out, because they alter answers and make the decoded text of a
  growing answer jump back (a stream could not send it piece by piece);
* the grounding markup (`<ref>`, `<box>`, `<quad>` and their ends) is an ordinary added token here, so that an
  answer decoded with `skip_special_tokens=True` keeps its boxes; the official config lists it as special.

Any other tokenizer that only custom code can load is refused with a message that says what to do instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import transformers
from transformers.tokenization_utils_base import AddedToken
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

from .errors import CheckpointError

INTERNLM2_CLASSES = ("InternLM2Tokenizer", "InternLM2TokenizerFast")  # as tokenizer_class or in auto_map
VOCAB_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
# Tokens an answer may hold that skip_special_tokens must keep: the grounding markup.
KEPT_TOKENS = frozenset({"<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"})
_PATTERNS = {(True, False): "bos", (False, False): "none", (False, True): "eos", (True, True): "bos_eos"}
REMOTE_CODE_ADVICE = (
    "this library never runs code shipped in a checkpoint (trust_remote_code); serve the checkpoint with an "
    "OpenAI-compatible server that runs it (LMDeploy, vLLM) and use that server for chat instead"
)


class InternLM2Tokenizer(SentencePieceBackend):
    """InternLM2's SentencePiece tokenizer (see the module docstring for how it matches the official one)."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file: str, *, add_bos_token: bool = True, add_eos_token: bool = False, **kwargs: Any):
        kwargs["special_tokens_pattern"] = _PATTERNS[(bool(add_bos_token), bool(add_eos_token))]
        # legacy: every chunk between added tokens goes to SentencePiece unchanged, dummy prefix included, as the
        # official `_tokenize` does (the non-legacy path rewrites the model's normaliser and needs protobuf).
        super().__init__(vocab_file=vocab_file, legacy=True, **kwargs)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        out: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in self._added_tokens_encoder:
                out += [self.sp_model.decode(run), token]
                run = []
            else:
                run.append(token)
        out.append(self.sp_model.decode(run))
        return "".join(out)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return config


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with "content"."""
    return value.get("content") if isinstance(value, dict) else value


def load_internlm2_tokenizer(directory: Path, config: dict[str, Any]) -> InternLM2Tokenizer:
    """The tokenizer of an InternLM2-based checkpoint: `tokenizer.model` + the added tokens of its config."""
    vocab = directory / VOCAB_FILE
    if not vocab.is_file():
        raise CheckpointError(f"{directory} has an InternLM2 tokenizer but no {VOCAB_FILE} (its SentencePiece model)")
    added: dict[int, AddedToken] = {}
    try:
        for index, spec in config.get("added_tokens_decoder", {}).items():
            content = spec["content"]
            special = bool(spec.get("special", True)) and content not in KEPT_TOKENS
            added[int(index)] = AddedToken(content, lstrip=bool(spec.get("lstrip")), rstrip=bool(spec.get("rstrip")),
                                           normalized=False, special=special)  # fmt: skip
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{directory / CONFIG_FILE} has an unreadable added_tokens_decoder: {e}") from e
    extra = [_token_text(t) for t in config.get("additional_special_tokens", []) if _token_text(t) not in KEPT_TOKENS]
    specials = {name: _token_text(config.get(name, default)) for name, default in
                (("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"), ("pad_token", "</s>"))}  # fmt: skip
    try:
        tokenizer = InternLM2Tokenizer(
            str(vocab), add_bos_token=config.get("add_bos_token", True), add_eos_token=config.get("add_eos_token", False),
            added_tokens_decoder=added, extra_special_tokens=extra, clean_up_tokenization_spaces=False,
            model_max_length=config.get("model_max_length", int(1e30)), **specials,
        )  # fmt: skip
    except (OSError, RuntimeError, ValueError) as e:  # sentencepiece raises OSError / RuntimeError on a bad model
        raise CheckpointError(f"Cannot load the InternLM2 tokenizer of {directory}: {type(e).__name__}: {e}") from e
    return tokenizer


def load_chat_tokenizer(directory: Path) -> transformers.PreTrainedTokenizerBase:
    """The checkpoint's tokenizer: InternLM2's rebuilt here, any other through AutoTokenizer (never remote code)."""
    config = _read_config(directory)
    named = config.get("tokenizer_class")
    auto_map = config.get("auto_map")
    custom = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else None
    custom = [c for c in ([custom] if isinstance(custom, str) else custom or []) if isinstance(c, str)]
    if named in INTERNLM2_CLASSES or any(c.rsplit(".", 1)[-1] in INTERNLM2_CLASSES for c in custom):
        return load_internlm2_tokenizer(directory, config)
    if custom and not _is_transformers_class(named):
        raise CheckpointError(f"the tokenizer of {directory} ({named or custom[0]}) exists only as code in the "
                              f"checkpoint; {REMOTE_CODE_ADVICE}")  # fmt: skip
    try:
        # An empty config: the tokenizer class comes from tokenizer_config.json, not from an `internvl_chat`
        # config.json that transformers does not know (it would warn, and gain nothing).
        return transformers.AutoTokenizer.from_pretrained(
            str(directory), config=transformers.PretrainedConfig(), trust_remote_code=False
        )
    except Exception as e:  # transformers raises OSError, ValueError, ImportError... for unreadable tokenizers
        raise CheckpointError(f"Cannot load the tokenizer of {directory}: {type(e).__name__}: {e}") from e


def _is_transformers_class(name: Any) -> bool:
    """Whether transformers itself has the tokenizer class (then a checkpoint's auto_map is not needed)."""
    if not isinstance(name, str) or not name:
        return False
    return any(getattr(transformers, n, None) is not None for n in (name, name.removesuffix("Fast")))
