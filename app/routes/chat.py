"""POST /v1/ask (grounded answers over a collection) and the OpenAI-compatible POST /v1/chat/completions (SSE with
`stream: true`) and GET /v1/models, so existing OpenAI clients work against this service."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ..chat_api import ChatDep
from ..deps import ReadKey
from ..errors import ErrorResponse
from ..schemas_chat import AskRequest, AskResponse, ChatCompletion, ChatCompletionRequest, ModelList

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 502, 503, 504)}
router = APIRouter(prefix="/v1", tags=["chat"], dependencies=[ReadKey], responses=ERRORS)
SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or with `stream: true` an SSE stream."}}


@router.post("/ask", response_model=AskResponse)
async def ask(body: AskRequest, chat: ChatDep) -> AskResponse:
    """Answer a question from a collection: retrieve, rerank by the chat model, answer with the relevant images;
    cited "Image-N" come back as image ids and grounding boxes in pixels. With `image_ids`: about those images."""
    return await chat.ask(body)


@router.post("/chat/completions", response_model=ChatCompletion, responses=SSE)
async def chat_completions(body: ChatCompletionRequest, chat: ChatDep) -> ChatCompletion | StreamingResponse:
    """OpenAI's chat completion: text and `image_url` parts (http(s), data: URLs, or this service's
    /v1/images/{id}/content?collection=NAME)."""
    result = await chat.completion(body)
    if isinstance(result, ChatCompletion):
        return result
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(result, media_type="text/event-stream", headers=headers)


@router.get("/models", response_model=ModelList)
async def models(chat: ChatDep) -> ModelList:
    """The chat model this service answers with (OpenAI's model list)."""
    return await chat.models()
