"""The client side of bench.api, in a process of its own: an HTTP load generator sharing the server's process
(and its GIL) slowed the server it measured, most of all at 128 clients, where the client's own Python work
competed with every server thread. Light imports only (httpx): the process starts in well under a second.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def _search(http: httpx.AsyncClient, i: int) -> httpx.Response:
    return await http.post("/v1/search", json={"collection": "bench", "text": f"query {i}", "k": 10})


async def _ping(http: httpx.AsyncClient, i: int) -> httpx.Response:
    return await http.get("/ping")


_IMAGES: dict[int, str] = {}


def query_image(i: int) -> str:
    """One of 16 small random PNGs, base64 (a query image as a client would send it)."""
    if i % 16 not in _IMAGES:
        import base64
        import io
        import random

        from PIL import Image

        rng = random.Random(i % 16)
        out = io.BytesIO()
        Image.frombytes("RGB", (64, 48), bytes(rng.randrange(256) for _ in range(64 * 48 * 3))).save(out, "PNG")
        _IMAGES[i % 16] = base64.b64encode(out.getvalue()).decode()
    return _IMAGES[i % 16]


async def _image_search(http: httpx.AsyncClient, i: int) -> httpx.Response:
    return await http.post("/v1/search", json={"collection": "bench", "image_base64": query_image(i), "k": 10})


async def _ping_async(http: httpx.AsyncClient, i: int) -> httpx.Response:
    return await http.get("/ping-async")


SENDERS = {"search": _search, "image-search": _image_search, "ping": _ping, "ping-async": _ping_async}


def server_timing_ms(response: httpx.Response, metric: str = "engine") -> float | None:
    """A duration of the response's Server-Timing header, or None without it: `engine` (what /v1/search spent
    encoding and searching) or `total` (the route's own time, from its call to its answer)."""
    for part in response.headers.get("server-timing", "").split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == metric:
            return float(duration)
    return None


async def one_client_times(base: str, n: int, kind: str = "search", first: int = 0) -> list[tuple[float, float | None]]:
    """(milliseconds, the server's engine milliseconds or None) of n requests sent one after another on one
    connection, after a warm-up."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        send = SENDERS[kind]
        (await send(http, -1)).raise_for_status()
        times = []
        for i in range(first, first + n):
            start = time.perf_counter()
            response = await send(http, i)
            times.append(((time.perf_counter() - start) * 1e3, server_timing_ms(response)))
            response.raise_for_status()
    return times


async def load(base: str, clients: int, requests: int, kind: str = "search", first: int = 0) -> dict[str, object]:
    """`requests` calls of the `kind` request (numbered from `first`) spread over `clients` concurrent connections:
    the raw samples of this process (see `summary`). A failure (an HTTP status >= 400, or the exception of a request
    that got no answer) is counted by kind: a figure to report, not a reason to lose the run."""
    send = SENDERS[kind]
    times: list[float] = []
    in_route: list[float] = []  # the server's own time per request (Server-Timing `total`), where it says
    errors: Counter[str] = Counter()
    counter = iter(range(first, first + requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            try:
                response = await send(http, i)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
                continue
            if response.status_code >= 400:
                errors[str(response.status_code)] += 1
                continue
            times.append((time.perf_counter() - start) * 1e3)
            total = server_timing_ms(response, "total")
            if total is not None:
                in_route.append(total)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
        await send(http, -1)  # warm-up
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"times": times, "in_route": in_route, "errors": dict(errors), "wall": wall}


def summary(parts: list[dict[str, object]]) -> dict[str, object]:
    """Latency p50/p99, requests/s and failures of one load spread over client processes (`load`'s parts, run at
    the same time): requests/s is all answers over the longest part's wall time."""
    times = [t for part in parts for t in part["times"]]
    in_route = [t for part in parts for t in part["in_route"]]
    errors: Counter[str] = Counter()
    for part in parts:
        errors.update(part["errors"])
    if not times:
        raise RuntimeError(f"no request was answered: {dict(errors)}")
    p50, p99 = percentiles(times)
    report: dict[str, object] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    report["requests_per_s"] = round(len(times) / max(part["wall"] for part in parts), 1)
    if in_route:  # how much of the latency the route itself took (the rest: waits in uvicorn, loopback, client)
        report["in_route_p50_ms"], report["in_route_p99_ms"] = (round(x, 2) for x in percentiles(in_route))
    if errors:
        report["errors"] = dict(errors)
    return report


def one_client(base: str, n: int, kind: str = "search", first: int = 0) -> list[tuple[float, float | None]]:
    return asyncio.run(one_client_times(base, n, kind, first))


def clients(base: str, count: int, requests: int, kind: str = "search", first: int = 0) -> dict[str, object]:
    """One process's part of a load (`load`), for a process pool."""
    return asyncio.run(load(base, count, requests, kind, first))
