"""API keys with scopes, per-caller rate limits, and the request limits every route shares (body size, time).

Keys come from `Settings.api_keys` and `Settings.api_keys_file`, as `scope:key` or, better, `scope:sha256:<hex>`
entries: only SHA-256 digests are kept in memory (`KeyRing`), so a key stored as a digest is never on the server in
the clear. When none are configured (allowed only on a loopback address) every route is open; otherwise every /v1
route needs a key, sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Scopes nest: `admin` ⊃ `write` ⊃
`read`. A presented key is hashed and compared with every digest in constant time; keys are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response
from .ratelimit import RateLimiter
from .settings import Settings, key_digest

SCOPE_RANK = {"read": 0, "write": 1, "admin": 2}


@dataclass(frozen=True)
class KeyRing:
    """The configured keys as (scope rank, SHA-256 digest) pairs."""

    entries: tuple[tuple[int, bytes], ...]

    @classmethod
    def from_pairs(cls, pairs: list[tuple[str, str]]) -> KeyRing:
        entries = []
        for scope, secret in pairs:
            digest = bytes.fromhex(secret[7:]) if secret.startswith("sha256:") else key_digest(secret)
            entries.append((SCOPE_RANK[scope], digest))
        return cls(tuple(entries))

    def rank(self, key: str) -> int | None:
        """The highest scope rank `key` holds. Every entry is compared, and all digests have the same length, so
        the time taken says nothing about which entry (or how much of one) matched."""
        best = None
        given = key_digest(key)
        for rank, digest in self.entries:
            if hmac.compare_digest(digest, given):
                best = max(best or 0, rank)
        return best


def granted_rank(pairs: list[tuple[str, str]], key: str) -> int | None:
    """The highest scope rank `key` holds among `(scope, key or "sha256:<hex>")` pairs."""
    return KeyRing.from_pairs(pairs).rank(key)


def presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("x-api-key") or None


def install_access_control(app: FastAPI, settings: Settings) -> None:
    """Build the key ring and the rate limiter once per app (the keys file is read here, not per request)."""
    app.state.keyring = KeyRing.from_pairs(settings.api_key_entries())
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)


def _access(app: FastAPI) -> tuple[KeyRing, RateLimiter]:
    if getattr(app.state, "keyring", None) is None:  # an app assembled without create_app (tests of parts)
        install_access_control(app, app.state.settings)
    return app.state.keyring, app.state.rate_limiter


def require_scope(scope: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing the request (401 no/unknown key, 403 too small a scope, 429 over the caller's rate).
    In-memory work only, so it runs on the event loop (`async`), not in FastAPI's thread pool."""
    needed = SCOPE_RANK[scope]

    async def check(request: Request) -> None:
        keyring, limiter = _access(request.app)
        if keyring.entries:
            key = presented_key(request)
            challenge = {"WWW-Authenticate": "Bearer"}
            if key is None:
                raise HTTPException(401, "an API key is required: Authorization: Bearer <key> or X-API-Key", challenge)
            rank = keyring.rank(key)
            if rank is None:
                raise HTTPException(401, "unknown API key", challenge)
            if rank < needed:
                raise HTTPException(403, f"this API key lacks the {scope!r} scope")
            caller = "key:" + key_digest(key).hex()[:16]
        else:
            caller = "address:" + (request.client.host if request.client else "unknown")
        wait = limiter.retry_after(caller)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise HTTPException(429, f"rate limit of {limiter.rate:g} requests/s exceeded; retry in {seconds} s",
                                {"Retry-After": str(seconds)})  # fmt: skip

    check.__name__ = f"require_{scope}_key"
    return check


def wait_budget(request: Request, timeout_s: float, share: float = 0.75) -> float:
    """Seconds a route may still spend waiting: `share` of the request time limit, counted from the request's arrival
    (reading and staging a large upload has already used some of it), so the answer comes before the 504."""
    started = request.scope.get("state", {}).get("started_at", time.monotonic())
    return max(0.0, timeout_s * share - (time.monotonic() - started))


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
        scope.setdefault("state", {})["started_at"] = time.monotonic()  # for `wait_budget`
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, 413, "too_large", self._too_large_message())
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:  # a timeout scope, not wait_for: in Python 3.11 wait_for runs the app in a second task per request
            async with asyncio.timeout(self.timeout_s):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if not started:
                message = f"the request took longer than {self.timeout_s:g} s"
                await self._refuse(scope, receive, send, 504, "timeout", message)

    def _too_large_message(self) -> str:
        return f"the request body is larger than the limit of {self.max_body_bytes:,} bytes"

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        await error_response(status, code, message)(scope, receive, send)
