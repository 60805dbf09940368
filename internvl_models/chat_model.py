"""`ChatModel`: an InternVL2/2.5 chat checkpoint with its tokenizer and template behind plain methods.

    model = ChatModel.from_pretrained("OpenGVLab/InternVL2_5-1B")     # or a local directory
    model.answer([image1, image2], "Which image shows a red star?")  # "Image-2"
    for delta in model.stream([image], [("user", "<image>\\nDescribe it.")], GenerationSettings(temperature=0.7)):
        print(delta.text, end="")
    model.yes_probability(image, "Does this image show: a red star?")  # P("Yes") of the first answer token

Prompts are built exactly as the official `chat()` builds them (template from the checkpoint's config, dynamic
tiling, `Image-N: <image>` labels for several images, `<img><IMG_CONTEXT>…</img>` expansion), and generation stops
on the template's stop token. Decoding runs token by token over a KV cache, so a stream can be abandoned at any
step; each forward pass holds the model's lock, so concurrent streams interleave instead of colliding.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from .chat import InternVLChat, cache_kwargs, load_chat_model, output_cache
from .chat_config import ChatConfig
from .chat_tokenizers import load_chat_tokenizer
from .chat_types import (
    MAX_TOP_LOGPROBS,
    ChatDelta,
    ChatOutput,
    GenerationSettings,
    Message,
    TokenLogprob,
    yes_probability,
)
from .checkpoint import resolve_checkpoint
from .conversation import ChatTemplate, get_template, render
from .errors import CheckpointError, InputError
from .threads import CpuThreads
from .tiling import IMG_CONTEXT, add_image_placeholders, expand_image_placeholders, image_to_tiles

__all__ = ["MAX_TOP_LOGPROBS", "ChatDelta", "ChatModel", "ChatOutput", "GenerationSettings", "TokenLogprob"]


def config_tiles(config: ChatConfig, image: Image.Image) -> torch.Tensor:
    """(T, 3, S, S) tiles of one image, as a checkpoint's config asks (dynamic tiling, thumbnail)."""
    return image_to_tiles(
        image,
        image_size=config.image_size,
        min_num=config.min_dynamic_patch,
        max_num=config.max_dynamic_patch if config.dynamic_image_size else 1,
        use_thumbnail=config.use_thumbnail,
    )


class ChatModel:
    """An InternVL chat checkpoint, its tokenizer and its conversation template."""

    def __init__(self, model: InternVLChat, tokenizer: transformers.PreTrainedTokenizerBase, *, name: str) -> None:
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.config = model.config
        self.template: ChatTemplate = get_template(self.config.template)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        stop = tokenizer.convert_tokens_to_ids(self.template.stop_token)
        self.stop_ids = {i for i in (stop, tokenizer.eos_token_id) if isinstance(i, int) and i >= 0}
        self.lock = threading.Lock()
        self._cpu_threads = CpuThreads(self.device)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype | None = None,
    ) -> ChatModel:
        """A checkpoint directory or hub id holding config.json, the weights and tokenizer files."""
        directory = resolve_checkpoint(source)
        tokenizer = load_chat_tokenizer(directory)
        image_token = tokenizer.convert_tokens_to_ids(IMG_CONTEXT)
        if not isinstance(image_token, int) or image_token == tokenizer.unk_token_id:
            raise CheckpointError(f"the tokenizer of {directory} has no {IMG_CONTEXT} token")
        model = load_chat_model(directory, device=device, dtype=dtype, image_token_id=image_token)
        name = str(source) if not Path(source).expanduser().is_dir() else Path(source).resolve().name
        return cls(model, tokenizer, name=name)

    # --- prompts ------------------------------------------------------------------------------------------------

    def tiles(self, image: Image.Image) -> torch.Tensor:
        return config_tiles(self.config, image)

    def render(self, messages: Sequence[Message], num_tiles: Sequence[int], system: str | None = None) -> str:
        """The full prompt for alternating user/assistant `messages` ending with a user turn, images expanded."""
        if not messages or messages[-1][0] != "user":
            raise InputError("the conversation must end with a user message")
        for i, (role, _) in enumerate(messages):
            if role != ("user", "assistant")[i % 2]:
                raise InputError("messages must alternate user and assistant, starting with user")
        if sum(text.count("<image>") for _, text in messages) < len(num_tiles):
            raise InputError(f"{len(num_tiles)} images but fewer '<image>' placeholders in the messages")
        prompt = render(self.template, [*(text for _, text in messages), None], self._system(system))
        return expand_image_placeholders(prompt, list(num_tiles), self.model.num_image_token)

    def _system(self, system: str | None) -> str | None:
        return system if system is not None else self.config.system_message

    def encode_prompt(
        self, images: Sequence[Image.Image], messages: Sequence[Message], system: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, N) prompt ids and the (T, 3, S, S) tiles of every image (None without images)."""
        tiles = [self.tiles(image) for image in images]
        prompt = self.render(messages, [len(t) for t in tiles], system)
        with self.lock:  # a fast tokenizer used from two threads at once can fail ("Already borrowed")
            ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=True)["input_ids"].to(self.device)
        expected = sum(len(t) for t in tiles) * self.model.num_image_token
        if int((ids == self.model.image_token_id).sum()) != expected:
            raise InputError(f"the messages hold {IMG_CONTEXT} tokens of their own; remove them from the text")
        pixels = torch.cat(tiles).to(self.device, self.dtype) if tiles else None
        return ids, pixels

    def embed(
        self, images: Sequence[Image.Image], messages: Sequence[Message], system: str | None = None
    ) -> torch.Tensor:
        """(1, N, D) input embeddings of the prompt, image features in place (the vision part runs here)."""
        ids, pixels = self.encode_prompt(images, messages, system)
        with self.lock, torch.inference_mode():
            return self.model.embed(ids, pixels)

    # --- generation ---------------------------------------------------------------------------------------------

    def stream(
        self,
        images: Sequence[Image.Image],
        messages: Sequence[Message],
        settings: GenerationSettings | None = None,
        *,
        system: str | None = None,
    ) -> Iterator[ChatDelta]:
        """The answer piece by piece; the last delta carries the finish reason, token counts and timings.

        The prompt is built (and bad input refused) before the first delta is produced.
        """
        settings = settings or GenerationSettings()
        start = time.perf_counter()
        embeds = self.embed(images, messages, system)
        return self._deltas(embeds, settings, start)

    def generate(
        self,
        images: Sequence[Image.Image],
        messages: Sequence[Message],
        settings: GenerationSettings | None = None,
        *,
        system: str | None = None,
    ) -> ChatOutput:
        text, last = "", None
        for delta in self.stream(images, messages, settings, system=system):
            text, last = text + delta.text, delta
        return ChatOutput(
            text, last.finish_reason, last.prompt_tokens, last.completion_tokens, last.prefill_s, last.decode_s,
            last.logprobs,
        )  # fmt: skip

    def answer(
        self, images: Sequence[Image.Image], question: str, settings: GenerationSettings | None = None, **kw: object
    ) -> str:
        """One question about `images` (placeholders added as the official chat() adds them); the answer text."""
        return self.generate(images, [("user", add_image_placeholders(question, len(images)))], settings, **kw).text

    def first_token_logprobs(
        self, images: Sequence[Image.Image], messages: Sequence[Message], k: int = MAX_TOP_LOGPROBS
    ) -> list[tuple[str, float]]:
        """The k most likely first answer tokens with their log-probabilities (one forward pass, no decoding)."""
        out = self.generate(images, messages, GenerationSettings(max_new_tokens=1, top_logprobs=k))
        return list(out.logprobs[0].top) if out.logprobs else []

    def yes_probability(self, image: Image.Image, question: str) -> float:
        """P("yes") as the first token of the answer to `question` about one image (see `yes_probability`)."""
        return yes_probability(self.first_token_logprobs([image], [("user", add_image_placeholders(question, 1))]))

    def _deltas(self, embeds: torch.Tensor, settings: GenerationSettings, start: float) -> Iterator[ChatDelta]:
        decoder = _TextAssembler(lambda ids: self._decode(ids, skip_special_tokens=True), settings.stop)
        logprobs: list[TokenLogprob] | None = [] if settings.top_logprobs is not None else None
        generator = None
        if settings.sampling and settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        cache, prefill_s, finish, generated, inputs = None, 0.0, "length", 0, embeds
        for step in range(settings.max_new_tokens):
            cache, logits = self._forward(inputs, cache)
            if step == 0:
                prefill_s = time.perf_counter() - start
            token_id = self._pick(logits, decoder.ids, settings, generator)
            generated += 1
            if logprobs is not None:
                logprobs.append(self._logprob(logits, token_id, settings.top_logprobs))
            if token_id in self.stop_ids:
                finish = "stop"
                break
            piece, stopped = decoder.add(token_id)
            if piece:
                yield ChatDelta(piece)
            if stopped:
                finish = "stop"
                break
            inputs = torch.tensor([[token_id]], device=self.device)
        decode_s = time.perf_counter() - start - prefill_s
        yield ChatDelta(
            decoder.finish(), finish, embeds.shape[1], generated, prefill_s, decode_s, logprobs,
        )  # fmt: skip

    def _forward(self, inputs: torch.Tensor, cache: object) -> tuple[object, torch.Tensor]:
        """One step: prefill from embeddings (cache None) or one new token id; (cache, float32 last logits)."""
        lm = self.model.language_model

        def step() -> object:
            if cache is None:
                return lm(inputs_embeds=inputs, use_cache=True, logits_to_keep=1)
            return lm(input_ids=inputs, **cache_kwargs(lm, cache), use_cache=True, logits_to_keep=1)

        with self.lock, torch.inference_mode():  # a decode step of a small model on a CPU is a small pass (threads.py)
            out = self._cpu_threads.run("prefill" if cache is None else "decode", inputs.shape[1], step)
        return output_cache(out), out.logits[0, -1].float()

    @staticmethod
    def _pick(
        logits: torch.Tensor, previous: list[int], settings: GenerationSettings, generator: torch.Generator | None
    ) -> int:
        if not settings.sampling:
            return int(torch.argmax(logits))
        # The order and semantics of transformers' sampling: temperature, then top-k, then top-p.
        scores, ids = logits.unsqueeze(0), torch.tensor([previous], dtype=torch.long)
        warpers = [TemperatureLogitsWarper(settings.temperature)]
        if settings.top_k:
            warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        for warper in warpers:
            scores = warper(ids, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _logprob(self, logits: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
        """Log-probabilities of the model's own distribution (before temperature / top-p), as OpenAI reports."""
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp, min(k, logp.numel())) if k else None
        alternatives = () if top is None else tuple(
            (self.token_text(int(i)), float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())
        )  # fmt: skip
        return TokenLogprob(self.token_text(token_id), float(logp[token_id]), alternatives)

    def token_text(self, token_id: int) -> str:
        return self._decode([token_id], skip_special_tokens=False)

    def _decode(self, ids: list[int], *, skip_special_tokens: bool) -> str:
        with self.lock:
            return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


class _TextAssembler:
    """Token ids -> the answer text in stable pieces, with the official clean-up (special tokens skipped, leading
    and trailing whitespace stripped) and user stop strings applied, so the pieces add up to the final text.

    Held back until known: an incomplete UTF-8 character (U+FFFD at the end), trailing whitespace, and a tail that
    could be the start of a stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str]) -> None:
        self.decode, self.stop = decode, tuple(stop)
        self.ids: list[int] = []
        self.sent = ""
        self.cut = False  # a stop string ended the answer

    def _text(self) -> str:
        text = self.decode(self.ids).lstrip()
        for stop in self.stop:
            at = text.find(stop)
            if at >= 0:
                text, self.cut = text[:at], True
        return text

    def add(self, token_id: int) -> tuple[str, bool]:
        """(new stable text, whether a stop string was reached)."""
        self.ids.append(token_id)
        text = self._text()
        if self.cut:
            return "", True
        safe = text.rstrip("\ufffd")
        safe = safe[: len(safe) - self._partial_stop(safe)].rstrip()
        return self._send(safe), False

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def _send(self, safe: str) -> str:
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent) :], safe
        return piece

    def finish(self) -> str:
        """The rest of the answer: everything not sent yet, trailing whitespace stripped."""
        final = self._text().strip()
        if final.startswith(self.sent):
            return final[len(self.sent) :]
        return ""
