"""The search page at / and the offline API docs at /docs; their scripts and styles are under /web (no CDN)."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
router = APIRouter(include_in_schema=False)


@router.get("/")
def index_page() -> FileResponse:
    """Search box, image drop, collection selector, results grid, an Ask panel (POST /v1/ask) and classify."""
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@router.get("/docs")
def docs_page() -> FileResponse:
    """The API reference rendered in the browser from /openapi.json by a bundled script (no CDN assets)."""
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html")
