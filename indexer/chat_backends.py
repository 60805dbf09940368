"""Where chat answers come from: the chat model in this process, or an OpenAI-compatible server over HTTP.

Both take the same `ChatRequest` (turns with images attached) and give the same results, so rerank and ask do not
know which one they talk to. A turn's images go in front of its text, labelled as InternVL's model cards do
("<image>\\n" for a conversation with one image, "Image-N: <image>\\n" lines for several, numbered across the
conversation), unless the text already holds one "<image>" per image. The remote backend sends the images as
PNG data URLs in front of the text, which is what an OpenAI-compatible InternVL server (LMDeploy, vLLM, this
service) turns back into the same prompt.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from PIL import Image

from indexer.errors import ChatUnavailable, UpstreamError, UpstreamTimeout
from internvl_models.chat_types import MAX_TOP_LOGPROBS, ChatDelta, ChatOutput, GenerationSettings, TokenLogprob
from internvl_models.tiling import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    from internvl_models.chat_model import ChatModel

ROLES = ("user", "assistant")


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    images: int = 0  # how many of ChatRequest.images belong to this turn (in order)


@dataclass(frozen=True)
class ChatRequest:
    turns: tuple[Turn, ...]
    images: tuple[Image.Image, ...] = ()
    system: str | None = None  # None: the checkpoint's own system message
    settings: GenerationSettings = field(default_factory=GenerationSettings)

    @classmethod
    def question(cls, question: str, images: Sequence[Image.Image], settings: GenerationSettings) -> ChatRequest:
        return cls((Turn("user", question, len(images)),), tuple(images), settings=settings)


def render_turns(turns: Sequence[Turn]) -> list[tuple[str, str]]:
    """(role, text with image placeholders) per turn, labelled as the module docstring says."""
    total = sum(turn.images for turn in turns)
    out, number = [], 0
    for turn in turns:
        text = turn.text
        if turn.images and text.count(IMAGE_PLACEHOLDER) != turn.images:
            if total == 1:
                text = f"{IMAGE_PLACEHOLDER}\n{text}"
            else:
                labels = range(number + 1, number + turn.images + 1)
                text = "".join(f"Image-{n}: {IMAGE_PLACEHOLDER}\n" for n in labels) + text
        number += turn.images
        out.append((turn.role, text))
    return out


class ChatBackend(Protocol):
    """What rerank, ask and /v1/chat/completions need from a chat model."""

    @property
    def model_name(self) -> str: ...

    def complete(self, request: ChatRequest) -> ChatOutput: ...

    def stream(self, request: ChatRequest) -> Iterator[ChatDelta]: ...

    def first_token_logprobs(self, image: Image.Image, question: str) -> list[tuple[str, float]]: ...

    def close(self) -> None: ...


class LocalChatBackend:
    """The chat model in this process."""

    def __init__(self, model: ChatModel) -> None:
        self.model = model

    @property
    def model_name(self) -> str:
        return self.model.name

    def complete(self, request: ChatRequest) -> ChatOutput:
        return self.model.generate(request.images, render_turns(request.turns), request.settings, system=request.system)

    def stream(self, request: ChatRequest) -> Iterator[ChatDelta]:
        return self.model.stream(request.images, render_turns(request.turns), request.settings, system=request.system)

    def first_token_logprobs(self, image: Image.Image, question: str) -> list[tuple[str, float]]:
        return self.model.first_token_logprobs([image], render_turns([Turn("user", question, 1)]))

    def close(self) -> None:
        pass


def image_data_url(image: Image.Image) -> str:
    """A lossless PNG data URL: the server sees exactly the pixels this process would have used."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The request as OpenAI chat messages: each turn's images as image_url parts in front of its text."""
    messages: list[dict[str, Any]] = [] if request.system is None else [{"role": "system", "content": request.system}]
    images = iter(request.images)
    for turn in request.turns:
        if not turn.images:
            messages.append({"role": turn.role, "content": turn.text})
            continue
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(next(images))}} for _ in range(turn.images)
        ]
        messages.append({"role": turn.role, "content": [*parts, {"type": "text", "text": turn.text}]})
    return messages


def openai_sampling(settings: GenerationSettings) -> dict[str, Any]:
    body: dict[str, Any] = {"max_tokens": settings.max_new_tokens, "temperature": settings.temperature}
    if settings.top_p < 1.0:
        body["top_p"] = settings.top_p
    if settings.top_k:
        body["top_k"] = settings.top_k  # not OpenAI's, but vLLM and LMDeploy take it
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.stop:
        body["stop"] = list(settings.stop)
    if settings.top_logprobs is not None:
        body |= {"logprobs": True, "top_logprobs": settings.top_logprobs}
    return body


RETRY_STATUSES = {429, 502, 503, 504}


class RemoteChatBackend:
    """An OpenAI-compatible chat server (`base_url` ends in /v1, as OpenAI clients take it).

    Connection failures and 429/502/503/504 answers are retried `retries` times with a growing pause; a timeout is
    not retried (the server may still be working on it). Every failure becomes one error that names the server.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._model = model

    @property
    def model_name(self) -> str:
        """The configured model, else the first one the server lists (asked once)."""
        if self._model is None:
            listed = self._json(self._send("GET", "/models")).get("data") or []
            names = [m.get("id") for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)]
            if not names:
                raise UpstreamError(f"the chat server at {self.base_url} lists no models at /models")
            self._model = names[0]
        return self._model

    def complete(self, request: ChatRequest) -> ChatOutput:
        body = {"model": self.model_name, "messages": openai_messages(request), **openai_sampling(request.settings)}
        data = self._json(self._send("POST", "/chat/completions", json=body))
        try:
            choice, usage = data["choices"][0], data.get("usage") or {}
            text = choice["message"].get("content") or ""
            logprobs = _logprobs(choice.get("logprobs"))
            return ChatOutput(
                text, choice.get("finish_reason") or "stop", int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)), logprobs=logprobs,
            )  # fmt: skip
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"the chat server at {self.base_url} sent an unreadable completion: {exc!r}") from None

    def stream(self, request: ChatRequest) -> Iterator[ChatDelta]:
        """Opens the stream now (so refusals raise here), then yields its pieces."""
        body = {"model": self.model_name, "messages": openai_messages(request), **openai_sampling(request.settings)}
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        response = self._send("POST", "/chat/completions", json=body, stream=True)
        return self._stream_deltas(response)

    def first_token_logprobs(self, image: Image.Image, question: str) -> list[tuple[str, float]]:
        settings = GenerationSettings(max_new_tokens=1, top_logprobs=MAX_TOP_LOGPROBS)
        output = self.complete(ChatRequest.question(question, [image], settings))
        if not output.logprobs:
            raise UpstreamError(
                f"the chat server at {self.base_url} returned no logprobs; chat rerank needs a server that supports "
                "`logprobs` and `top_logprobs` (vLLM, LMDeploy, internvl-search)"
            )
        return list(output.logprobs[0].top)

    def close(self) -> None:
        self.client.close()

    # --- HTTP ---------------------------------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        where = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self.client.build_request(method, path, **kwargs)
                response = self.client.send(request, stream=stream)
            except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
                raise UpstreamTimeout(
                    f"the chat server at {where} did not answer within {self.timeout_s:g} s"
                ) from None
            except httpx.TransportError as exc:  # connection refused / reset, connect timeout: worth another try
                if last:
                    raise ChatUnavailable(f"the chat server at {where} is unreachable: {exc}") from None
                time.sleep(self.backoff_s * 2**attempt)
                continue
            if response.status_code < 400:
                return response
            if response.status_code in RETRY_STATUSES and not last:
                pause = _retry_after(response) or self.backoff_s * 2**attempt
                response.close()
                time.sleep(min(pause, 10.0))
                continue
            raise self._refusal(response, where)
        raise AssertionError("unreachable")  # the loop always returns or raises

    @staticmethod
    def _refusal(response: httpx.Response, where: str) -> UpstreamError:
        try:
            body = response.read().decode("utf-8", "replace")
        finally:
            response.close()
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = body[:300]
        if response.status_code in RETRY_STATUSES:
            return ChatUnavailable(f"the chat server at {where} is unavailable ({response.status_code}): {message}")
        return UpstreamError(f"the chat server at {where} refused the request ({response.status_code}): {message}")

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise UpstreamError(
                f"the chat server at {self.base_url} answered with something that is not JSON"
            ) from None
        if not isinstance(data, dict):
            raise UpstreamError(f"the chat server at {self.base_url} answered with a JSON {type(data).__name__}")
        return data

    def _stream_deltas(self, response: httpx.Response) -> Iterator[ChatDelta]:
        usage, finish = {}, None
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise UpstreamError(f"the chat server at {self.base_url} failed mid-stream: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield ChatDelta(text)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"the chat stream from {self.base_url} broke: {exc!r}") from None
        finally:
            response.close()
        yield ChatDelta(
            "", finish or "stop", int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _logprobs(raw: Any) -> list[TokenLogprob] | None:
    """OpenAI's `choice.logprobs` -> ours (None when the server sent none)."""
    if not raw or not raw.get("content"):
        return None
    return [
        TokenLogprob(
            item["token"],
            float(item["logprob"]),
            tuple((t["token"], float(t["logprob"])) for t in item["top_logprobs"]),
        )
        for item in raw["content"]
    ]
