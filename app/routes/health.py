"""Liveness and readiness probes."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..metrics import render_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process is up and answering")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: every component the service needs is loaded and reachable")
def readyz(request: Request) -> JSONResponse:
    checks: dict[str, str] = request.app.state.readiness()
    ready = all(state == "ok" for state in checks.values())
    return JSONResponse(status_code=200 if ready else 503, content={"ready": ready, "checks": checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(render_metrics(request.app), media_type=CONTENT_TYPE_LATEST)
