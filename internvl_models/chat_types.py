"""The plain data of chat generation, importable without torch or transformers: how to generate
(`GenerationSettings`), what comes back (`ChatDelta`, `ChatOutput`, `TokenLogprob`), and P("yes") for rerank."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import InputError

MAX_TOP_LOGPROBS = 20  # what OpenAI-compatible servers return at most; rerank reads the same number in process
# The first answer token counts as a "yes" when it reads as one of these (stripped, lower-cased, end punctuation
# dropped). The rerank question is asked in English, but a multilingual model may answer in the user's language.
YES_WORDS = frozenset({"yes", "是", "是的", "有", "はい", "ja", "oui", "sí", "si"})
NO_WORDS = frozenset({"no", "不", "不是", "没有", "いいえ", "nein", "non"})


@dataclass(frozen=True)
class GenerationSettings:
    """How to continue a prompt. `temperature == 0` is greedy decoding (as OpenAI's API); `top_k == 0` is off.

    `stop`: extra strings that end the answer (not included). `top_logprobs`: record each token's log-probability
    and that many alternatives (None: record nothing). `seed`: a sampled answer becomes reproducible.
    """

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (0.0 <= self.temperature <= 2.0, f"temperature must be within [0, 2], got {self.temperature}"),
            (0.0 < self.top_p <= 1.0, f"top_p must be within (0, 1], got {self.top_p}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
            (
                self.top_logprobs is None or 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS,
                f"top_logprobs must be within [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, log-probability, and the most likely alternatives at its step."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class ChatDelta:
    """A piece of a streamed answer. The last one has `finish_reason` ("stop" or "length") and the totals."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    logprobs: list[TokenLogprob] | None = None


@dataclass
class ChatOutput:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    prefill_s: float = 0.0
    decode_s: float = 0.0
    logprobs: list[TokenLogprob] | None = field(default=None)


Message = tuple[str, str]  # (role "user" | "assistant", text with one "<image>" per image of that turn)


def is_yes(token: str) -> bool:
    """A first answer token that reads as yes: a yes word, or a piece that can only begin one. Small vocabularies
    split "yes" ("y" + "es"); "y" begins "yes" and no "no" word, "n" begins "no" and "nein" and is not counted."""
    text = token.strip().lower().rstrip(".!,。！、")
    if not text:
        return False
    if text in YES_WORDS:
        return True
    begins_yes = any(word.startswith(text) for word in YES_WORDS)
    return begins_yes and not any(word.startswith(text) for word in NO_WORDS)


def yes_probability(top: Sequence[tuple[str, float]]) -> float:
    """P("yes") of a first answer token from its (token text, log-probability) alternatives: the summed
    probability of every alternative that reads as a yes (e.g. "Yes" and " yes"), in [0, 1]."""
    return min(1.0, sum(math.exp(logprob) for token, logprob in top if is_yes(token)))
