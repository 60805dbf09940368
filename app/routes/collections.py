"""/v1/collections: create, list, inspect and delete collections."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool

from ..deps import AdminKey, EngineDep, ReadKey, WriteKey
from ..errors import ErrorResponse
from ..schemas import CollectionCreate, CollectionList, CollectionOut, collection_out

ERRORS = {401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 404: {"model": ErrorResponse}}
router = APIRouter(prefix="/v1/collections", tags=["collections"], dependencies=[ReadKey], responses=ERRORS)


@router.post("", status_code=201, response_model=CollectionOut, dependencies=[WriteKey],
             responses={409: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})  # fmt: skip
async def create_collection(body: CollectionCreate, engine: EngineDep) -> CollectionOut:
    """Create an empty collection bound to an encoder and its current weights (409 if the name exists)."""
    info = await run_in_threadpool(
        engine.create_collection, body.name, encoder=body.encoder, checkpoint=body.checkpoint,
        index_kind=body.index_kind, storage=body.storage,
    )  # fmt: skip
    return collection_out(info)


@router.get("", response_model=CollectionList)
async def list_collections(engine: EngineDep) -> CollectionList:
    """Every collection with its encoder, fingerprint, index kind and image counts."""
    infos = await run_in_threadpool(engine.list_collections)
    return CollectionList(collections=[collection_out(info) for info in infos])


@router.get("/{name}", response_model=CollectionOut)
async def read_collection(name: str, engine: EngineDep) -> CollectionOut:
    """One collection: counts per image status, vectors served, encoder and fingerprint."""
    return collection_out(await run_in_threadpool(engine.get_collection, name))


@router.delete("/{name}", status_code=204, dependencies=[AdminKey], response_class=Response)
async def delete_collection(name: str, engine: EngineDep) -> Response:
    """Delete the collection with its images, index, embeddings, stored originals and jobs (admin scope)."""
    await run_in_threadpool(engine.delete_collection, name)
    return Response(status_code=204)
