"""POST /v1/embed: texts (any language) and images -> unit vectors of one encoder."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..deps import ReadKey, SearcherDep
from ..errors import ErrorResponse
from ..schemas_classify import EmbedRequest, EmbedResponse

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 413, 422, 504)}
router = APIRouter(prefix="/v1", tags=["embed"], dependencies=[ReadKey], responses=ERRORS)


@router.post("/embed", response_model=EmbedResponse)
async def embed_inputs(body: EmbedRequest, searcher: SearcherDep) -> EmbedResponse:
    """L2-normalised float32 vectors (as JSON lists) of the texts and base64 images, in request order."""
    return await run_in_threadpool(searcher.embed, body)
