"""API keys with scopes, and the request limits every route shares (body size, time).

Keys come from `Settings.api_keys` (`scope:key` pairs). When none are configured (allowed only on a loopback
address) every route is open; otherwise every /v1 route needs a key, sent as `Authorization: Bearer <key>` or
`X-API-Key: <key>`. Scopes nest: `admin` ⊃ `write` ⊃ `read`. Keys are compared in constant time and never logged.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("x-api-key") or None


def granted_rank(pairs: list[tuple[str, str]], key: str) -> int | None:
    """The highest scope rank `key` holds; every configured key is compared, so timing reveals nothing."""
    best = None
    given = key.encode()
    for scope, expected in pairs:
        if hmac.compare_digest(expected.encode(), given):
            best = max(best or 0, SCOPE_RANK[scope])
    return best


def require_scope(scope: str) -> Callable[[Request], None]:
    """A dependency refusing the request (401 no/unknown key, 403 too small a scope) when keys are configured."""
    needed = SCOPE_RANK[scope]

    def check(request: Request) -> None:
        pairs = request.app.state.settings.api_key_pairs()
        if not pairs:
            return
        key = presented_key(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if key is None:
            raise HTTPException(401, "an API key is required: Authorization: Bearer <key> or X-API-Key", challenge)
        rank = granted_rank(pairs, key)
        if rank is None:
            raise HTTPException(401, "unknown API key", challenge)
        if rank < needed:
            raise HTTPException(403, f"this API key lacks the {scope!r} scope")

    check.__name__ = f"require_{scope}_key"
    return check


class LimitsMiddleware:
    """Refuses a declared Content-Length over `max_body_bytes` with 413 before reading anything, and answers 504
    past `timeout_s`. Streamed (chunked) bodies are counted by Starlette's `RequestBodyLimitMiddleware`, which
    `create_app` installs inside this one with the same limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, timeout_s: float) -> None:
        self.app, self.max_body_bytes, self.timeout_s = app, max_body_bytes, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, 413, "too_large", self._too_large_message())
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.timeout_s)
        except TimeoutError:
            if not started:
                message = f"the request took longer than {self.timeout_s:g} s"
                await self._refuse(scope, receive, send, 504, "timeout", message)

    def _too_large_message(self) -> str:
        return f"the request body is larger than the limit of {self.max_body_bytes:,} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        await error_response(status, code, message)(scope, receive, send)
