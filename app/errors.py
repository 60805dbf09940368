"""One error schema for every 4xx/5xx response, and the handlers that produce it.

Every error body is `{"error": {"code": str, "message": str, "detail": any}}`. Stack traces never leave the
server: an unexpected exception is logged with its request id and answered with a generic 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexer import errors as engine_errors
from internvl_models import errors as model_errors

log = logging.getLogger("internvl_search.errors")


class ErrorBody(BaseModel):
    code: str
    message: str
    detail: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_response(status: int, code: str, message: str, detail: Any = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, detail=detail))
    return JSONResponse(status_code=status, content=body.model_dump(mode="json"))


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    507: "insufficient_storage",
    503: "unavailable",
}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = _HTTP_CODES.get(exc.status_code, "error")
    response = error_response(exc.status_code, code, str(exc.detail))
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {"loc": [str(part) for part in err.get("loc", ())], "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    where = ".".join(first["loc"])
    return error_response(422, "invalid_input", f"{where}: {first['msg']}" if where else first["msg"], problems)


# Domain exceptions -> (status, code). Order matters: the first matching class wins, so subclasses come first.
DOMAIN_ERRORS: list[tuple[type[Exception], int, str]] = [
    (engine_errors.NotFound, 404, "not_found"),
    (engine_errors.UpstreamTimeout, 504, "upstream_timeout"),
    (engine_errors.UpstreamError, 502, "upstream_error"),
    (engine_errors.ChatUnavailable, 503, "chat_unavailable"),
    (engine_errors.SpaceChanged, 409, "space_changed"),  # the collection switched encoders: ask again
    (engine_errors.Conflict, 409, "conflict"),
    (engine_errors.InvalidInput, 422, "invalid_input"),
    (engine_errors.Busy, 503, "busy"),
    (engine_errors.SchemaNotCurrent, 503, "schema_not_current"),
    (engine_errors.CorruptData, 503, "corrupt_data"),
    (engine_errors.StorageFull, 507, "insufficient_storage"),
    (model_errors.UnknownModelError, 422, "unknown_model"),
    (model_errors.InputError, 422, "invalid_input"),
    (model_errors.CheckpointError, 503, "model_unavailable"),
]


def status_of(exc: Exception) -> tuple[int, str]:
    for cls, status, code in DOMAIN_ERRORS:
        if isinstance(exc, cls):
            return status, code
    return 500, "internal_error"


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status, code = status_of(exc)
    if status >= 500:
        log.warning("service unavailable", extra={"path": request.url.path, "error": str(exc)})
    response = error_response(status, code, str(exc))
    if isinstance(exc, engine_errors.Busy):
        response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return response


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    reason = engine_errors.storage_full_reason(exc)
    if reason is not None:  # a write that found the disk full: nothing was stored, and retrying later will work
        log.warning("storage full", extra={"path": request.url.path, "error": reason})
        return error_response(
            507, "insufficient_storage", f"{reason}; the request was not completed: retry once space is freed"
        )
    log.exception("unhandled error", extra={"path": request.url.path})
    return error_response(500, "internal_error", "internal server error; the request id is in the X-Request-ID header")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(engine_errors.IndexerError, _domain_error)
    app.add_exception_handler(model_errors.ModelError, _domain_error)
    app.add_exception_handler(Exception, _unexpected_error)
