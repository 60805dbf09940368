"""POST /v1/index: queue an ingestion job from uploads (images and/or manifests, multipart) or references (JSON)."""

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from ..auth import wait_budget
from ..deps import EngineDep, IndexRequestDep, SettingsDep, WriteKey
from ..errors import ErrorResponse
from ..schemas import IndexAccepted, IndexJson, job_out

UPLOAD_FORM = {
    "type": "object",
    "required": ["collection"],
    "description": "Image `files` and/or one or more `manifest` files; at least one file in all.",
    "properties": {
        "collection": {"type": "string", "examples": ["photos"]},
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "manifest": {
            "type": "string",
            "format": "binary",
            "description": "JSONL or CSV, one image a row: a `path` (absolute, under the allowed roots) or `url` "
            "column, every other column metadata.",
        },
        "metadata": {"type": "string", "description": "JSON object merged into every image's metadata."},
    },
}
BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": IndexJson.model_json_schema()},
    "multipart/form-data": {"schema": UPLOAD_FORM},
}}}  # fmt: skip
ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 415, 422)}
FINISHED = {200: {"model": IndexAccepted, "description": "The job finished within the wait (`wait=true`)."}}
router = APIRouter(prefix="/v1", tags=["index"], dependencies=[WriteKey], responses=ERRORS)


@router.post("/index", status_code=202, response_model=IndexAccepted, openapi_extra=BODY, responses=FINISHED)
async def index_images(
    request: IndexRequestDep,
    engine: EngineDep,
    settings: SettingsDep,
    incoming: Request,
    wait: bool = Query(False, description="Wait (up to most of the request timeout) for the job to finish."),
) -> JSONResponse:
    """Queue an ingestion job (202 with its id); with `wait=true`, small jobs come back finished (200)."""
    collection, items, metadata = request
    job_id = await run_in_threadpool(engine.submit, collection, items, metadata=metadata)
    if wait:
        job = await run_in_threadpool(engine.wait_job, job_id, wait_budget(incoming, settings.request_timeout_s))
    else:
        job = await run_in_threadpool(engine.get_job, job_id)
    body = IndexAccepted(job_id=job_id, state=job.state, status_url=f"/v1/jobs/{job_id}", job=job_out(job))
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if job.finished else 202)
