"""Stage 3 of retrieval: chat rerank and grounded answers over a collection (`ChatService`).

    service = ChatService(engine, LocalChatBackend(create_chat_model()))   # or RemoteChatBackend(url)
    service.rerank("photos", [(42, 0.31), (7, 0.29)], "a red star")       # P("yes") + retrieval score
    result = service.ask("Which image shows a red star?", "photos", k=8)  # retrieve -> rerank -> answer
    result.answer, result.citations, result.boxes

Rerank asks the chat model about each image "Does this image show: {query}?" and reads the probability of a "yes"
as the first answer token; the combined score is `weight * P(yes) + (1 - weight) * retrieval score`. Ask keeps the
images whose P(yes) reaches the threshold (none: the explicit not-found answer, nothing generated), puts the best
of them in one multi-image prompt, and maps the answer's "Image-N" back to image ids (only the prompt's images can
be cited) and its `<box>` coordinates (0-1000) to pixels of the image they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from indexer.chat_backends import ChatBackend, ChatRequest
from indexer.errors import InvalidInput
from indexer.vector_query import decode_query_image
from internvl_models.chat_types import GenerationSettings, yes_probability
from internvl_models.grounding import answer_boxes, box_image, box_to_pixels, cited_images

if TYPE_CHECKING:
    from indexer.engine import Engine

DEFAULT_RERANK_PROMPT = "Does this image show: {query}?"
NOT_FOUND_ANSWER = "Not found: none of the retrieved images shows what the question asks about."
MAX_PROMPT_IMAGES = 16


@dataclass(frozen=True)
class ChatOptions:
    """Service-wide defaults; most can be overridden per call."""

    rerank_prompt: str = DEFAULT_RERANK_PROMPT  # holds "{query}"
    # Weight of P(yes) in the combined score, the rest the retrieval score's: tuned on shapes-world validation
    # scenes (80 one-object queries, top 10): R@1 4 -> 5 at 0.05-0.1, down to 0 at 0.8 with the small chat model.
    rerank_weight: float = 0.1
    threshold: float = 0.5  # ask: images below this P(yes) are not relevant; none left -> "not found"
    max_images: int = 4  # ask: images in the answer prompt
    max_new_tokens: int = 256
    not_found_answer: str = NOT_FOUND_ANSWER

    def __post_init__(self) -> None:
        if "{query}" not in self.rerank_prompt:
            raise InvalidInput("the rerank prompt must hold '{query}'")
        if not 0.0 <= self.rerank_weight <= 1.0 or not 0.0 <= self.threshold <= 1.0:
            raise InvalidInput("rerank_weight and threshold must be within [0, 1]")
        if not 1 <= self.max_images <= MAX_PROMPT_IMAGES:
            raise InvalidInput(f"max_images must be within [1, {MAX_PROMPT_IMAGES}]")


@dataclass(frozen=True)
class Reranked:
    id: int
    retrieval_score: float
    yes_probability: float | None  # None: beyond the reranked top-N, left in retrieval order
    score: float | None  # the combined score (None when not reranked)


@dataclass(frozen=True)
class Citation:
    label: str  # "Image-2", as the prompt labelled the image
    image_id: int
    explicit: bool  # False: the only image of the prompt, which the answer is about without naming it


@dataclass(frozen=True)
class Grounding:
    ref: str | None
    box_1000: tuple[float, float, float, float]
    image_id: int | None  # None: the answer does not say which image the box is on
    box: tuple[float, ...] | None  # pixels (x1, y1, x2, y2) of that image


@dataclass
class AskResult:
    question: str
    answer: str
    found: bool
    model: str
    images: list[tuple[str, int]] = field(default_factory=list)  # (label, image id) in prompt order
    citations: list[Citation] = field(default_factory=list)
    boxes: list[Grounding] = field(default_factory=list)
    retrieved: list[Reranked] = field(default_factory=list)
    ignored_citations: list[str] = field(default_factory=list)  # "Image-N" naming no image of the prompt
    usage: dict[str, int] = field(default_factory=dict)


class ChatService:
    """Rerank and ask over an engine's collections with one chat backend."""

    def __init__(self, engine: Engine, backend: ChatBackend, options: ChatOptions | None = None) -> None:
        self.engine, self.backend, self.options = engine, backend, options or ChatOptions()

    def load_image(self, collection: str, image_id: int) -> Image.Image:
        """The stored original of an indexed image, decoded under the engine's limits, RGB."""
        data = self.engine.image_path(collection, int(image_id)).read_bytes()
        return decode_query_image(self.engine, data).convert("RGB")

    def yes_probability(self, image: Image.Image, query: str) -> float:
        prompt = self.options.rerank_prompt.format(query=query.strip().rstrip("?？").strip())
        return yes_probability(self.backend.first_token_logprobs(image, prompt))

    def rerank(
        self,
        collection: str,
        hits: Sequence[tuple[int, float]],
        query: str,
        *,
        top_n: int | None = None,
        weight: float | None = None,
    ) -> list[Reranked]:
        """`hits` ((id, retrieval score), best first): the first `top_n` (default all) reordered by the combined
        score; the rest follow in their retrieval order without chat scores."""
        if not query or not query.strip():
            raise InvalidInput("chat rerank needs a non-empty text query")
        weight = self.options.rerank_weight if weight is None else weight
        if not 0.0 <= weight <= 1.0:
            raise InvalidInput(f"rerank weight must be within [0, 1], got {weight}")
        top_n = len(hits) if top_n is None else top_n
        scored = []
        for image_id, score in hits[:top_n]:
            p = self.yes_probability(self.load_image(collection, image_id), query)
            scored.append(Reranked(image_id, score, p, weight * p + (1 - weight) * score))
        scored.sort(key=lambda r: r.score, reverse=True)  # stable: ties keep the retrieval order
        return scored + [Reranked(image_id, score, None, None) for image_id, score in hits[top_n:]]

    def ask(
        self,
        question: str,
        collection: str,
        *,
        k: int = 8,
        filter: Mapping[str, Any] | None = None,
        threshold: float | None = None,
        max_images: int | None = None,
        settings: GenerationSettings | None = None,
    ) -> AskResult:
        """Retrieve the k best images for the question, rerank them, answer from the relevant ones."""
        _check_question(question)
        threshold = self.options.threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise InvalidInput(f"threshold must be within [0, 1], got {threshold}")
        max_images = self.options.max_images if max_images is None else max_images
        _check_max_images(max_images)
        hits = self.engine.search(collection, text=question, k=k, filter=filter)
        ranked = self.rerank(collection, [(hit.id, hit.score) for hit in hits], question)
        relevant = [r for r in ranked if r.yes_probability is not None and r.yes_probability >= threshold]
        if not relevant:
            return AskResult(question, self.options.not_found_answer, False, self._model_name(), retrieved=ranked)
        result = self.ask_images(question, collection, [r.id for r in relevant[:max_images]], settings=settings)
        result.retrieved = ranked
        return result

    def ask_images(
        self,
        question: str,
        collection: str,
        image_ids: Sequence[int],
        *,
        settings: GenerationSettings | None = None,
    ) -> AskResult:
        """Answer about chosen images of a collection (no retrieval, no threshold), in the order given."""
        _check_question(question)
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        if not ids:
            raise InvalidInput("give at least one image id")
        _check_max_images(len(ids))
        images = [self.load_image(collection, i) for i in ids]
        settings = settings or GenerationSettings(max_new_tokens=self.options.max_new_tokens)
        output = self.backend.complete(ChatRequest.question(question, images, settings))
        result = read_answer(output.text, ids, images)
        result.question, result.model = question, self._model_name()
        result.usage = {"prompt_tokens": output.prompt_tokens, "completion_tokens": output.completion_tokens}
        return result

    def _model_name(self) -> str:
        return self.backend.model_name


def read_answer(text: str, ids: Sequence[int], images: Sequence[Image.Image]) -> AskResult:
    """An answer about `images` (labelled Image-1..N in order, ids `ids`) -> citations and boxes in pixels."""
    labels = [f"Image-{n}" for n in range(1, len(ids) + 1)]
    cited, invalid = cited_images(text, len(ids))
    citations = [Citation(labels[n - 1], ids[n - 1], True) for n in cited]
    if not citations and len(ids) == 1:
        citations = [Citation(labels[0], ids[0], False)]
    boxes = []
    for box in answer_boxes(text):
        number = box_image(text, box, len(ids))
        image = images[number - 1] if number else None
        pixels = box_to_pixels(box.box, image.width, image.height) if image is not None else None
        boxes.append(Grounding(box.ref, box.box, ids[number - 1] if number else None, pixels))
    return AskResult(
        question="", answer=text, found=True, model="", images=list(zip(labels, ids)), citations=citations,
        boxes=boxes, ignored_citations=[f"Image-{n}" for n in invalid],
    )  # fmt: skip


def _check_question(question: str) -> None:
    if not isinstance(question, str) or not question.strip():
        raise InvalidInput("question must be a non-empty string")


def _check_max_images(n: int) -> None:
    if not 1 <= n <= MAX_PROMPT_IMAGES:
        raise InvalidInput(f"between 1 and {MAX_PROMPT_IMAGES} images can go in one prompt, got {n}")
