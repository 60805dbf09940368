"""Evaluation and encoder switching: POST /v1/eval, and per collection POST migrate, GET migration, POST rollback,
DELETE previous. Writing (and model-loading) operations need a write key, the irreversible purge an admin key."""

import time
from functools import partial

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ..deps import AdminKey, EngineDep, ReadKey, WriteKey
from ..errors import ErrorResponse
from ..schemas import CollectionOut, collection_out
from ..schemas_lifecycle import (
    EvalRequest,
    EvalResponse,
    MigrateRequest,
    MigrationOut,
    encoder_choices,
    eval_data,
    migration_out,
)

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503, 504)}
router = APIRouter(prefix="/v1", tags=["lifecycle"], dependencies=[ReadKey], responses=ERRORS)


@router.post("/eval", response_model=EvalResponse, dependencies=[WriteKey])
async def evaluate(body: EvalRequest, engine: EngineDep) -> EvalResponse:
    """Zero-shot classification (top-1, top-5, mean per-class recall) on a labelled folder and image<->text
    retrieval (R@1/5/10 both ways) on a caption manifest, for one encoder or two side by side."""
    start = time.perf_counter()
    result = await run_in_threadpool(engine.evaluate_encoders, eval_data(body), encoder_choices(body))
    return EvalResponse(**result, took_ms=(time.perf_counter() - start) * 1e3)


@router.post("/collections/{name}/migrate", status_code=202, response_model=MigrationOut, dependencies=[WriteKey])
async def migrate(name: str, body: MigrateRequest, engine: EngineDep) -> MigrationOut:
    """Start re-embedding every image with another encoder into a shadow index (a background job; searches keep
    using the current index), optionally gated by an evaluation, then switch atomically. Follow it at
    GET /v1/collections/{name}/migration or /v1/jobs/{id}."""
    evaluation = eval_data(body.evaluation) if body.evaluation is not None else None
    start = partial(engine.migrate, evaluation=evaluation, max_regression=body.max_regression)
    await run_in_threadpool(start, name, body.encoder, body.checkpoint)
    return migration_out(await run_in_threadpool(engine.migration_state, name))


@router.get("/collections/{name}/migration", response_model=MigrationOut)
async def read_migration(name: str, engine: EngineDep) -> MigrationOut:
    """The serving encoder, the shadow being built, the previous encoder kept for a rollback, and the latest
    migration job with its gate report."""
    return migration_out(await run_in_threadpool(engine.migration_state, name))


@router.post("/collections/{name}/rollback", response_model=CollectionOut, dependencies=[WriteKey])
async def rollback(name: str, engine: EngineDep) -> CollectionOut:
    """Serve the encoder used before the last switch again (images added since are embedded for it first); the
    encoder serving now is kept in turn, so the switch can be redone the same way."""
    return collection_out(await run_in_threadpool(engine.rollback, name))


@router.delete("/collections/{name}/previous", response_model=CollectionOut, dependencies=[AdminKey])
async def purge_previous(name: str, engine: EngineDep) -> CollectionOut:
    """Delete the index and embeddings kept for a rollback; no rollback is possible afterwards (admin scope, like
    deleting a collection: nothing can bring it back)."""
    return collection_out(await run_in_threadpool(engine.purge_previous, name))
