"""Request and response models of /v1/ask and of the OpenAI-compatible /v1/chat/completions and /v1/models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from indexer.chat import MAX_PROMPT_IMAGES
from internvl_models.chat_types import MAX_TOP_LOGPROBS

from .schemas import MAX_ID, Name, _Strict

MAX_NEW_TOKENS = 4096

# --- /v1/ask ------------------------------------------------------------------------------------------------------


class AskRequest(_Strict):
    """A question (any language) about a collection: its k best images are retrieved (optionally filtered), reranked
    by the chat model, and the relevant ones answer it. With `image_ids`, those images answer it directly."""

    question: str = Field(..., min_length=1)
    collection: str = Name
    k: int = Field(8, ge=1, le=100, description="Images retrieved and reranked.")
    filter: dict[str, Any] | None = Field(None, description='Metadata filter of the retrieval, e.g. {"year": 2021}.')
    image_ids: list[Annotated[int, Field(ge=1, le=MAX_ID)]] | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_IMAGES, description="Ask about these images (no retrieval)."
    )
    threshold: float | None = Field(None, ge=0, le=1, description="Least P(yes) of a relevant image.")
    max_images: int | None = Field(None, ge=1, le=MAX_PROMPT_IMAGES, description="Images in the answer prompt.")
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS, description="Longest answer, in tokens.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"question": "Which image shows a red star?", "collection": "photos", "k": 8},
                {"question": "Where is the red star? Give its bounding box.", "collection": "photos",
                 "image_ids": [42]},
            ]
        },
    )  # fmt: skip

    @model_validator(mode="after")
    def _retrieval_or_ids(self) -> AskRequest:
        if self.image_ids is not None and (self.filter is not None or self.threshold is not None):
            raise ValueError("filter and threshold apply to retrieval; with image_ids nothing is retrieved")
        return self


class ImageLink(BaseModel):
    image_id: int
    image_url: str
    thumbnail_url: str


class PromptImage(ImageLink):
    label: str


class CitationOut(PromptImage):
    explicit: bool = Field(description="False: the prompt's only image, which the answer does not name.")


class BoxOut(BaseModel):
    ref: str | None = Field(description="The phrase the box grounds.")
    image_id: int | None = Field(description="The image the box is on (null: the answer does not say).")
    box: list[float] | None = Field(description="x1, y1, x2, y2 in pixels of that image.")
    box_1000: list[float] = Field(description="x1, y1, x2, y2 as the model wrote them (0-1000 of the image).")


class RetrievedOut(ImageLink):
    retrieval_score: float
    chat_score: float | None = Field(description='P("yes") that the image shows the question\'s subject.')
    rerank_score: float | None


class AskResponse(BaseModel):
    question: str
    answer: str
    found: bool = Field(description="False: no retrieved image was relevant; `answer` says so.")
    model: str
    citations: list[CitationOut]
    boxes: list[BoxOut]
    images: list[PromptImage] = Field(description="The images of the answer prompt, with their labels.")
    retrieved: list[RetrievedOut]
    ignored_citations: list[str] = Field(description='"Image-N" in the answer that names no image of the prompt.')
    usage: dict[str, int]
    took_ms: float

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "question": "Which image shows a red star?", "answer": "Image-2", "found": True,
                    "model": "internvl-chat-shapes",
                    "citations": [{"label": "Image-2", "image_id": 42, "explicit": True,
                                   "image_url": "/v1/images/42/content?collection=photos",
                                   "thumbnail_url": "/v1/images/42/thumbnail?collection=photos"}],
                    "boxes": [], "images": [], "retrieved": [], "ignored_citations": [],
                    "usage": {"prompt_tokens": 612, "completion_tokens": 4}, "took_ms": 840.0,
                }
            ]
        }
    )  # fmt: skip


# --- OpenAI-compatible chat ---------------------------------------------------------------------------------------


class _Open(BaseModel):
    """OpenAI clients send fields this server has no use for (user, store, metadata...): they are ignored."""

    model_config = ConfigDict(extra="ignore")


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str = Field(..., min_length=1, description="http(s) URL, data: URL, or /v1/images/{id}?collection=NAME.")
    detail: str | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class ChatCompletionRequest(_Open):
    """OpenAI's chat completion request. Images go in front of their message's text (InternVL's `Image-N:`
    labels when there are several) unless the text holds one `<image>` per image. `temperature` 0 is greedy."""

    model: str = Field(..., min_length=1)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="Not OpenAI's: sample from the k most likely tokens (0: off).")
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {"model": "internvl-chat-shapes", "temperature": 0, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "/v1/images/42/content?collection=photos"}},
                    {"type": "text", "text": "What colour is the star?"}]}]},
            ]
        },
    )  # fmt: skip

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.logprobs and self.stream:
            raise ValueError("logprobs are returned only without stream")
        return self

    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "chatcmpl-3f2a9c", "object": "chat.completion", "created": 1795000000,
                    "model": "internvl-chat-shapes",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "red"},
                                 "finish_reason": "stop", "logprobs": None}],
                    "usage": {"prompt_tokens": 58, "completion_tokens": 2, "total_tokens": 60},
                }
            ]
        }
    )  # fmt: skip


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "internvl-search"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"object": "list", "data": [{"id": "internvl-chat-shapes", "object": "model", "created": 1795000000,
                                             "owned_by": "internvl-search"}]}
            ]
        }
    )  # fmt: skip
