"""POST /v1/search (JSON: text in any language, base64 image, image URL or indexed id) and POST /v1/search/image
(multipart upload). Text queries share encoder passes with concurrent requests (see `deps.Searcher`)."""

from fastapi import APIRouter, File, Form, UploadFile

from ..chat_api import ChatDep
from ..deps import ReadKey, SearcherDep, json_form_field
from ..errors import ErrorResponse
from ..schemas import SearchRequest, SearchResponse

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 502, 503, 504)}
router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[ReadKey], responses=ERRORS)


@router.post("", response_model=SearchResponse)
async def search(body: SearchRequest, searcher: SearcherDep, chat: ChatDep) -> SearchResponse:
    """The k images closest to the query, best first, with scores (cosine), metadata and image/thumbnail URLs.
    `rerank: "chat"` reorders the top `rerank_top_n` of a text query by the chat model."""
    if body.rerank == "chat":
        return await chat.search(body, searcher)
    return await searcher.search(body)


@router.post("/image", response_model=SearchResponse)
async def search_by_upload(
    searcher: SearcherDep,
    file: UploadFile = File(..., description="The query image."),
    collection: str = Form(..., min_length=1, max_length=100),
    k: int = Form(10, ge=1),
    filter: str | None = Form(None, description="Metadata filter as a JSON object."),
    min_score: float | None = Form(None, ge=-1, le=1),
    offset: int = Form(0, ge=0, le=10_000),
) -> SearchResponse:
    """Image-to-image search with an uploaded query image (multipart/form-data)."""
    # The form fields were validated above; the upload stands in for SearchRequest's one query field.
    body = SearchRequest.model_construct(
        collection=collection, k=k, filter=json_form_field(filter, "filter"), min_score=min_score, offset=offset
    )
    return await searcher.search(body, upload=await file.read())
