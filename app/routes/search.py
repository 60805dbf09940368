"""POST /v1/search (JSON: text in any language, base64 image, image URL or indexed id) and POST /v1/search/image
(multipart upload). Queries share encoder passes with concurrent requests (see `deps.Searcher`).

Both answer with a `Server-Timing` header: `engine` is the milliseconds of encoding, nearest-neighbour search and
catalog reads behind the answer (timed where they ran; a micro-batched query counts its whole batch's pass), `total`
is `took_ms` (only `total` for `rerank: "chat"`). What a client measures beyond `total` is the HTTP layer's."""

from fastapi import APIRouter, File, Form, Response, UploadFile

from ..chat_api import ChatDep
from ..deps import ReadKey, SearcherDep, json_form_field
from ..errors import ErrorResponse
from ..schemas import SearchRequest, SearchResponse

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 502, 503, 504)}
router = APIRouter(prefix="/v1/search", tags=["search"], dependencies=[ReadKey], responses=ERRORS)


@router.post("", response_model=SearchResponse)
async def search(body: SearchRequest, searcher: SearcherDep, chat: ChatDep, response: Response) -> SearchResponse:
    """The k images closest to the query, best first, with scores (cosine), metadata and image/thumbnail URLs.
    `rerank: "chat"` reorders the top `rerank_top_n` of a text query by the chat model."""
    if body.rerank == "chat":
        result = await chat.search(body, searcher)
    else:
        result = await searcher.search(body)
    response.headers["Server-Timing"] = server_timing(result)
    return result


@router.post("/image", response_model=SearchResponse)
async def search_by_upload(
    searcher: SearcherDep,
    response: Response,
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
    result = await searcher.search(body, upload=await file.read())
    response.headers["Server-Timing"] = server_timing(result)
    return result


def server_timing(result: SearchResponse) -> str:
    engine = "" if result._engine_ms is None else f"engine;dur={result._engine_ms:.3f}, "
    return f"{engine}total;dur={result.took_ms:.3f}"
