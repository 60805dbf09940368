"""/v1/jobs: the state of ingestion jobs, and cancelling them."""

from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.concurrency import run_in_threadpool

from ..deps import EngineDep, ReadKey, WriteKey
from ..errors import ErrorResponse
from ..schemas import MAX_ID, JobList, JobOut, job_out

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422)}
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[ReadKey], responses=ERRORS)


@router.get("", response_model=JobList)
async def list_jobs(
    engine: EngineDep,
    collection: str | None = Query(None, description="Only this collection's jobs."),
    state: list[str] | None = Query(None, description="Only jobs in these states (repeatable)."),
    limit: int = Query(100, ge=1, le=1000),
) -> JobList:
    """Recent jobs, newest first (counters only; GET one job for its failures)."""
    infos = await run_in_threadpool(engine.list_jobs, collection, states=state, limit=limit)
    return JobList(jobs=[job_out(info) for info in infos])


@router.get("/{job_id}", response_model=JobOut)
async def read_job(job_id: Id, engine: EngineDep) -> JobOut:
    """A job's state, counters (added, duplicates, failed), timings and up to 20 failures with reasons."""
    return job_out(await run_in_threadpool(engine.get_job, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[WriteKey])
async def cancel_job(job_id: Id, engine: EngineDep) -> JobOut:
    """Cancel a queued or running job; a running one stops at its next batch and keeps what it wrote."""
    return job_out(await run_in_threadpool(engine.cancel_job, job_id))


@router.post("/{job_id}/retry", response_model=JobOut, dependencies=[WriteKey],
             responses={409: {"model": ErrorResponse}})  # fmt: skip
async def retry_job(job_id: Id, engine: EngineDep) -> JobOut:
    """Run a failed job again from where it stopped (e.g. once a full disk has space again); 409 if it is done."""
    return job_out(await run_in_threadpool(engine.retry_job, job_id))
