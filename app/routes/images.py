"""/v1/images/{id}: an indexed image's record, its original, a thumbnail; metadata updates and deletes."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from indexer.thumbnails import thumbnail_path

from ..deps import EngineDep, ReadKey, WriteKey
from ..errors import ErrorResponse
from ..schemas import MAX_ID, ImageOut, MetadataPatch, image_out

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 422)}
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
router = APIRouter(prefix="/v1/images", tags=["images"], dependencies=[ReadKey], responses=ERRORS)
Collection = Query(..., min_length=1, max_length=100, description="The collection the image belongs to.")
CACHE = {"Cache-Control": "private, max-age=86400"}  # content never changes under an id


@router.get("/{image_id}", response_model=ImageOut)
async def read_image(image_id: Id, engine: EngineDep, collection: str = Collection) -> ImageOut:
    """An image's record: source, size, format, content hash, metadata, status."""
    return image_out(await run_in_threadpool(engine.get_image, collection, image_id))


@router.get("/{image_id}/content", response_class=FileResponse, responses={200: {"content": {"image/*": {}}}})
async def read_image_content(image_id: Id, engine: EngineDep, collection: str = Collection) -> FileResponse:
    """The stored original file, as it was uploaded or fetched."""
    info = await run_in_threadpool(engine.get_image, collection, image_id)
    path = await run_in_threadpool(engine.image_path, collection, image_id)
    media = f"image/{(info.format or 'octet-stream').lower()}" if info.format else "application/octet-stream"
    return FileResponse(path, media_type=media, headers=CACHE)


@router.get("/{image_id}/thumbnail", response_class=FileResponse, responses={200: {"content": {"image/jpeg": {}}}})
async def read_thumbnail(
    image_id: Id, engine: EngineDep, collection: str = Collection, size: int = Query(256, description="64-512")
) -> FileResponse:
    """A JPEG at most `size` (64, 128, 256 or 512) pixels on its longer side, made once and cached."""
    path = await run_in_threadpool(thumbnail_path, engine, collection, image_id, size)
    return FileResponse(path, media_type="image/jpeg", headers=CACHE)


@router.patch("/{image_id}", response_model=ImageOut, dependencies=[WriteKey])
async def update_image(image_id: Id, body: MetadataPatch, engine: EngineDep, collection: str = Collection) -> ImageOut:
    """Replace the image's metadata, or merge keys into it (`merge: true`; a null value removes a key)."""
    info = await run_in_threadpool(engine.update_metadata, collection, image_id, body.metadata, merge=body.merge)
    return image_out(info)


@router.delete("/{image_id}", status_code=204, dependencies=[WriteKey], response_class=Response)
async def delete_image(image_id: Id, engine: EngineDep, collection: str = Collection) -> Response:
    """Remove the image from search, the embeddings and the stored originals."""
    await run_in_threadpool(engine.delete_images, collection, [image_id])
    return Response(status_code=204)
