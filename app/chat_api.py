"""The chat side of the HTTP API and CLI: builds the chat backend from settings (once, on first use) and turns
requests of /v1/ask, /v1/search with `rerank: "chat"`, /v1/chat/completions and /v1/models into `ChatService` and
backend calls, and their results into response models (or an SSE stream)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qs, urlsplit

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from indexer.chat import MAX_PROMPT_IMAGES, ChatOptions, ChatService
from indexer.chat_backends import ChatBackend, ChatRequest, LocalChatBackend, RemoteChatBackend, Turn
from indexer.errors import ChatUnavailable, IndexerError, InvalidInput, NotFound
from indexer.vector_query import decode_base64, decode_query_image, download
from internvl_models.chat_types import ChatDelta, ChatOutput, GenerationSettings, TokenLogprob
from internvl_models.errors import ModelError

from . import schemas
from . import schemas_chat as cs
from .deps import engine_of
from .errors import status_of
from .settings import Settings

if TYPE_CHECKING:
    from PIL import Image

    from indexer import Engine

    from .deps import Searcher

log = logging.getLogger("internvl_search.chat")
OWN_IMAGE_PATH = "/v1/images/"


def build_backend(settings: Settings) -> ChatBackend:
    """The remote server of CHAT_URL, else the chat model CHAT_MODEL (or the default) loaded in this process."""
    if settings.chat_url:
        return RemoteChatBackend(
            settings.chat_url, model=settings.chat_model, api_key=settings.chat_api_key or None,
            timeout_s=settings.chat_timeout_s,
        )  # fmt: skip
    from internvl_models import create_chat_model

    source = settings.chat_model
    try:
        model = create_chat_model(source, device=settings.chat_device or settings.device, dtype=settings.dtype)
    except ModelError as exc:
        raise ChatUnavailable(
            f"the chat model {source or '(default)'} cannot be loaded: {exc}. Set INTERNVL_SEARCH_CHAT_MODEL to a "
            "checkpoint directory or hub id, or INTERNVL_SEARCH_CHAT_URL to an OpenAI-compatible server"
        ) from None
    return LocalChatBackend(model)


def chat_options(settings: Settings) -> ChatOptions:
    return ChatOptions(threshold=settings.chat_threshold)


class ChatAPI:
    """One chat backend per service, created on first use (a load failure is retried by the next request)."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings
        self._service: ChatService | None = None
        self._lock = threading.Lock()

    def service(self) -> ChatService:
        with self._lock:
            if self._service is None:
                self._service = ChatService(self.engine, build_backend(self.settings), chat_options(self.settings))
            return self._service

    def close(self) -> None:
        with self._lock:
            if self._service is not None:
                self._service.backend.close()
                self._service = None

    # --- /v1/ask and rerank -------------------------------------------------------------------------------------

    async def ask(self, req: cs.AskRequest) -> cs.AskResponse:
        start = time.perf_counter()
        self._check_text(req.question)
        service = await run_in_threadpool(self.service)
        settings = GenerationSettings(max_new_tokens=req.max_tokens or service.options.max_new_tokens)
        if req.image_ids is not None:
            call = partial(service.ask_images, req.question, req.collection, req.image_ids, settings=settings)
        else:
            call = partial(
                service.ask, req.question, req.collection, k=req.k, filter=req.filter, threshold=req.threshold,
                max_images=req.max_images, settings=settings,
            )  # fmt: skip
        result = await run_in_threadpool(call)
        return ask_response(req.collection, result, (time.perf_counter() - start) * 1e3)

    async def search(self, req: schemas.SearchRequest, searcher: Searcher) -> schemas.SearchResponse:
        """Search for max(k, rerank_top_n) hits, rerank the top `rerank_top_n` with the chat model, keep k."""
        start = time.perf_counter()
        if req.text is None:
            raise InvalidInput('rerank "chat" needs a text query')
        self._check_text(req.text)
        wide_k = max(req.k, min(req.rerank_top_n, self.settings.max_k))
        wide = await searcher.search(req.model_copy(update={"k": wide_k, "rerank": "none"}))
        service = await run_in_threadpool(self.service)
        pairs = [(hit.id, hit.score) for hit in wide.results]
        ranked = await run_in_threadpool(service.rerank, req.collection, pairs, req.text, top_n=req.rerank_top_n)
        by_id = {hit.id: hit for hit in wide.results}
        results = [
            by_id[r.id].model_copy(update={"chat_score": r.yes_probability, "rerank_score": r.score})
            for r in ranked[: req.k]
        ]
        took_ms = (time.perf_counter() - start) * 1e3
        return schemas.SearchResponse(collection=req.collection, results=results, took_ms=took_ms)

    def _check_text(self, text: str) -> None:
        if len(text) > self.settings.max_text_chars:
            raise InvalidInput(f"text has {len(text):,} characters; the limit is {self.settings.max_text_chars:,}")

    # --- OpenAI-compatible ----------------------------------------------------------------------------------------

    async def models(self) -> cs.ModelList:
        service = await run_in_threadpool(self.service)
        name = await run_in_threadpool(lambda: service.backend.model_name)
        return cs.ModelList(data=[cs.ModelCard(id=name, created=int(time.time()))])

    async def completion(self, req: cs.ChatCompletionRequest) -> cs.ChatCompletion | Iterator[bytes]:
        """The completion, or (stream: true) the SSE byte chunks; bad input is refused before streaming starts."""
        service = await run_in_threadpool(self.service)
        backend = service.backend
        name = await run_in_threadpool(lambda: backend.model_name)
        if req.model != name:
            raise NotFound(f"model {req.model!r} is not served here; GET /v1/models lists {name!r}")
        request = await run_in_threadpool(self.chat_request, req)
        if req.stream:
            deltas = await run_in_threadpool(backend.stream, request)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return sse_chunks(deltas, name, include_usage)
        output = await run_in_threadpool(backend.complete, request)
        return completion_response(output, name)

    def chat_request(self, req: cs.ChatCompletionRequest) -> ChatRequest:
        """OpenAI messages -> turns with their images fetched and decoded (same rules and limits as search)."""
        system, turns, images = [], [], []
        for message in req.messages:
            parts = message.content
            if not isinstance(parts, list):
                parts = [cs.TextPart(type="text", text=parts or "")]
            texts = [p.text for p in parts if isinstance(p, cs.TextPart)]
            urls = [p.image_url.url for p in parts if isinstance(p, cs.ImagePart)]
            if message.role in ("system", "developer"):
                if urls:
                    raise InvalidInput("a system message cannot hold images")
                system.append("\n".join(texts))
                continue
            if urls and message.role == "assistant":
                raise InvalidInput("an assistant message cannot hold images")
            if len(images) + len(urls) > MAX_PROMPT_IMAGES:
                raise InvalidInput(f"at most {MAX_PROMPT_IMAGES} images per request")
            images += [self.fetch_image(url) for url in urls]
            turns.append(Turn(message.role, "\n".join(texts), len(urls)))
        settings = GenerationSettings(
            max_new_tokens=req.max_completion_tokens or req.max_tokens or 512, temperature=req.temperature,
            top_p=req.top_p, top_k=req.top_k, seed=req.seed, stop=req.stops(),
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        )  # fmt: skip
        return ChatRequest(merge_turns(turns), tuple(images), "\n\n".join(system) if system else None, settings)

    def fetch_image(self, url: str) -> Image.Image:
        """An image_url: data: URL, http(s) URL (fetched as ingestion fetches), or an image of this service."""
        if url.startswith("data:"):
            data = decode_base64(url, self.engine.config.max_source_bytes)
        elif url.startswith(("http://", "https://")):
            data = download(self.engine, url)
        elif url.startswith(OWN_IMAGE_PATH):
            data = self.engine.image_path(*own_image(url)).read_bytes()
        else:
            raise InvalidInput(
                "image_url must be an http(s) URL, a data: URL, or an image of this service "
                f"({OWN_IMAGE_PATH}{{id}}/content?collection=NAME); got {url[:80]!r}"
            )
        return decode_query_image(self.engine, data).convert("RGB")


def own_image(url: str) -> tuple[str, int]:
    """(collection, image id) of "/v1/images/{id}[/content]?collection=NAME"."""
    parts = urlsplit(url)
    segments = parts.path[len(OWN_IMAGE_PATH) :].strip("/").split("/")
    collection = parse_qs(parts.query).get("collection", [None])[0]
    if not segments[0].isdigit() or len(segments) > 2 or segments[1:] not in ([], ["content"]) or not collection:
        raise InvalidInput(f"an image of this service is {OWN_IMAGE_PATH}{{id}}/content?collection=NAME, got {url!r}")
    return collection, int(segments[0])


def merge_turns(turns: list[Turn]) -> tuple[Turn, ...]:
    """Consecutive messages of one role become one turn; the conversation must start and end with the user."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].role == turn.role:
            last = merged.pop()
            turn = Turn(turn.role, f"{last.text}\n{turn.text}", last.images + turn.images)
        merged.append(turn)
    if not merged or merged[0].role != "user" or merged[-1].role != "user":
        raise InvalidInput("messages must start and end with a user message (after any system message)")
    return tuple(merged)


# --- responses ----------------------------------------------------------------------------------------------------


def ask_response(collection: str, result, took_ms: float) -> cs.AskResponse:  # noqa: ANN001 - indexer.chat.AskResult
    def links(image_id: int) -> dict:
        return {"image_id": image_id, **schemas.image_urls(collection, image_id)}

    return cs.AskResponse(
        question=result.question, answer=result.answer, found=result.found, model=result.model,
        citations=[cs.CitationOut(label=c.label, explicit=c.explicit, **links(c.image_id)) for c in result.citations],
        boxes=[cs.BoxOut(ref=b.ref, image_id=b.image_id, box=list(b.box) if b.box else None,
                         box_1000=list(b.box_1000)) for b in result.boxes],
        images=[cs.PromptImage(label=label, **links(i)) for label, i in result.images],
        retrieved=[cs.RetrievedOut(retrieval_score=r.retrieval_score, chat_score=r.yes_probability,
                                   rerank_score=r.score, **links(r.id)) for r in result.retrieved],
        ignored_citations=result.ignored_citations, usage=result.usage, took_ms=took_ms,
    )  # fmt: skip


def _logprob_out(item: TokenLogprob) -> cs.TokenLogprobOut:
    top = [cs.TopLogprob(token=t, logprob=lp, bytes=list(t.encode())) for t, lp in item.top]
    return cs.TokenLogprobOut(token=item.token, logprob=item.logprob, bytes=list(item.token.encode()), top_logprobs=top)


def completion_response(output: ChatOutput, model: str) -> cs.ChatCompletion:
    logprobs = (
        None if output.logprobs is None else cs.ChoiceLogprobs(content=[_logprob_out(t) for t in output.logprobs])
    )
    usage = cs.Usage(
        prompt_tokens=output.prompt_tokens, completion_tokens=output.completion_tokens,
        total_tokens=output.prompt_tokens + output.completion_tokens,
    )  # fmt: skip
    choice = cs.Choice(message=cs.AssistantMessage(content=output.text), finish_reason=output.finish_reason,
                       logprobs=logprobs)  # fmt: skip
    return cs.ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
                             choices=[choice], usage=usage)  # fmt: skip


def sse_chunks(deltas: Iterator[ChatDelta], model: str, include_usage: bool) -> Iterator[bytes]:
    """OpenAI's stream: `chat.completion.chunk` events, a usage event if asked, then `[DONE]`. A failure after the
    stream started can no longer change the status code: it is sent as an `error` event in the one error schema."""
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}  # fmt: skip

    def event(choices: list, **extra: object) -> bytes:
        return f"data: {json.dumps({**head, 'choices': choices, **extra}, ensure_ascii=False)}\n\n".encode()

    yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    try:
        for delta in deltas:
            if delta.text:
                yield event([{"index": 0, "delta": {"content": delta.text}, "finish_reason": None}])
            if delta.finish_reason is not None:
                yield event([{"index": 0, "delta": {}, "finish_reason": delta.finish_reason}])
                if include_usage:
                    total = delta.prompt_tokens + delta.completion_tokens
                    usage = {"prompt_tokens": delta.prompt_tokens, "completion_tokens": delta.completion_tokens,
                             "total_tokens": total}  # fmt: skip
                    yield event([], usage=usage)
    except (IndexerError, ModelError) as exc:
        status, code = status_of(exc)
        yield f"data: {json.dumps({'error': {'code': code, 'message': str(exc), 'detail': status}})}\n\n".encode()
    except Exception:  # noqa: BLE001 - the status line is sent; say so in the stream instead of a broken connection
        log.exception("chat stream failed")
        yield b'data: {"error": {"code": "internal_error", "message": "the answer stream failed", "detail": 500}}\n\n'
    yield b"data: [DONE]\n\n"


_CREATE_LOCK = threading.Lock()


async def get_chat(request: Request) -> ChatAPI:
    """The app's ChatAPI, made on first use (nothing loads until a chat request needs the backend; making it reads
    no file, so it runs on the event loop)."""
    engine, state = engine_of(request), request.app.state
    with _CREATE_LOCK:
        if getattr(state, "chat", None) is None:
            state.chat = ChatAPI(engine, state.settings)
        return state.chat


ChatDep = Annotated[ChatAPI, Depends(get_chat)]
