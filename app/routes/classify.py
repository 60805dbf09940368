"""POST /v1/classify: zero-shot classification with calibrated probabilities."""

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from ..deps import ReadKey, SearcherDep, form_list
from ..errors import ErrorResponse
from ..schemas_classify import MAX_IMAGES, ClassifyRequest, ClassifyResponse

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 504)}
router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[ReadKey], responses=ERRORS)


@router.post("/classify", response_model=ClassifyResponse)
async def classify_image(body: ClassifyRequest, searcher: SearcherDep) -> ClassifyResponse:
    """Rank candidate labels for one or more images: each label fills a prompt ensemble (per language, or your own
    templates), and probabilities are a softmax over the encoder's logit_scale · cosine similarity. `results` holds
    one ranking per image; `labels` repeats the first image's."""
    return await run_in_threadpool(searcher.classify, body)


@router.post("/classify/image", response_model=ClassifyResponse)
async def classify_upload(
    searcher: SearcherDep,
    file: UploadFile | None = File(None, description="The image to classify."),
    files: list[UploadFile] | None = File(None, description=f"More images (at most {MAX_IMAGES} in all)."),
    labels: str = Form(..., description='Candidate labels: a JSON list, or comma-separated ("cat, dog").'),
    language: str = Form("en"),
    templates: str | None = Form(None, description='JSON list of templates, each with one "{label}".'),
    k: int | None = Form(None, ge=1, le=1000),
) -> ClassifyResponse:
    """`/v1/classify` with uploaded images (multipart/form-data): `file`, then every `files`, in order."""
    body = ClassifyRequest.model_construct(
        labels=form_list(labels, "labels") or [], language=language, templates=form_list(templates, "templates"), k=k
    )
    uploads = [await f.read() for f in [*([file] if file else []), *(files or [])]]
    return await run_in_threadpool(searcher.classify, body, uploads)
