"""HTTP search service: latency (p50/p99) and requests/s of POST /v1/search at 1, 8, 32 and 128 concurrent
clients, with cross-request micro-batching on and off, against the same searches called on the engine in-process,
and a trivial FastAPI route (GET returning a constant JSON object) served the same way: the server overhead of
/v1/search (its HTTP p50 at one client minus the in-process p50) is stated as a multiple of that route's p50. The
one-client figures behind that ratio are measured in interleaved turns (`overhead`). `repeated_text_next_page`: a
text's second page against a new text's first, in-process (the text-vector cache at work); `more_like_this`: a
search by an indexed image's id against one by its bytes, in-process (the vector read from the index);
`asgi_layer`: the app's HTTP layer alone, a stubbed /v1/search called as ASGI against the trivial route. Image queries (base64 PNGs,
decoded by the server) are also sent at 1, 8 and 32 clients, batching on and off.

    python -m bench.api                                   # tiny random InternVL checkpoint, 200 images
    python -m bench.api --checkpoint path/to/internvl-c --images 2000 --requests 400 --device cuda
    python -m bench.api --vectors 100000                  # + 100k synthetic vectors: searches over 100,200
    python -m bench.api --vectors 100000 --index-kind flat   # the same, searched exactly

`--vectors N` grows the collection without encoding N images: after the real images are ingested, N clustered
random unit vectors (bench/search.py's mixture, the encoder's dimension) are written as catalog rows + embeddings +
index entries with the catalog and store functions a job's batch writer uses, then the index is maintained as after a
job (at 100k "auto" becomes HNSW). Queries are still real text encoded per request, so the figures include encoding.

A uvicorn server runs in this process on 127.0.0.1 (a free port; loopback only) serving an engine on a temporary
data dir; clients are httpx async clients in two processes of their own (bench/http_client.py, `CLIENT_PROCESSES`).
Each configuration sends a bounded number of text queries (distinct strings; the text-vector cache is off).
"overhead" is HTTP p50 at one client minus the in-process p50 of the same call (encode + search), i.e. what the
service layer (parsing, validation, threads, JSON, loopback TCP) adds. The in-process calls run on the main thread;
`in_process_on_a_worker_thread` repeats them from a pool thread, where a server runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import platform
import socket
import statistics
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image

from app import schemas
from app.main import create_app
from app.settings import load_settings
from indexer import Engine, EngineConfig, IngestItem
from indexer.catalog import migrate, repo
from indexer.catalog.db import session_scope
from indexer.query_cache import TextVectorCache

from . import http_client
from .http_client import percentiles
from .search import clustered

CONCURRENCY = (1, 8, 32, 128)
# Concurrent clients are spread over this many processes. One process's asyncio loop serving 32 connections was
# itself the bottleneck once the server answered in ~10 ms: its p99 was 450-750 ms where the same 32 connections
# from two processes saw 72 ms (bench/RESULTS.md, "Searching a micro-batch").
CLIENT_PROCESSES = 2
IMAGE_CONCURRENCY = (1, 8, 32)


def make_engine(root: Path, args: argparse.Namespace) -> Engine:
    url = f"sqlite:///{root / 'catalog.db'}"
    migrate.upgrade(url)
    config = EngineConfig(
        data_dir=root / "data", database_url=url, encoder="internvl-c", encoder_checkpoint=args.checkpoint,
        device=args.device, job_workers=1,
        query_cache_entries=0,  # every figure but next_pages' encodes each query, as before the cache existed
    )  # fmt: skip
    engine = Engine(config).open()
    engine.create_collection("bench", index_kind=args.index_kind)
    rng = np.random.default_rng(0)
    items = []
    for i in range(args.images):
        out = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out, "PNG")
        items.append(IngestItem.upload(out.getvalue(), f"img{i}.png"))
    engine.run_job(engine.submit("bench", items, start=False))
    if args.vectors:
        add_synthetic(engine, "bench", args.vectors, rng)
    return engine


def add_synthetic(engine: Engine, collection: str, n: int, rng: np.random.Generator, chunk: int = 10_000) -> float:
    """Add n synthetic vectors (with catalog rows) to `collection` as a job's batch writer would, without encoding;
    returns the seconds it took. The rows are "indexed" images with made-up content hashes and no stored original."""
    start = time.perf_counter()
    live = engine._live_by_name(collection)
    middle = rng.standard_normal((max(64, n // 250), live.dim), dtype=np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    with live.lock:
        engine.ensure_reconciled(live)
        embeddings = live.embeddings()
        for first in range(0, n, chunk):
            count = min(chunk, n - first)
            rows = [
                repo.NewImage(sha256=f"{first + i:064x}", source=f"synthetic/{first + i}", width=64, height=48,
                              format="PNG", byte_size=0, meta={"synthetic": True})
                for i in range(count)
            ]  # fmt: skip
            vectors = clustered(count, live.dim, rng, middle)
            with session_scope(engine.sessions) as session:
                ids = np.asarray([ref.id for ref in repo.add_images(session, live.id, rows)], dtype=np.int64)
                embeddings.append(ids, vectors)
                live.store.add(ids, vectors)
                repo.set_image_status(session, ids.tolist(), "indexed")
                version = repo.bump_index_version(session, live.id)
            live.store.version = version
            live.changed()
        live.maintain(embeddings)  # switch to the kind the new size calls for, as after a job
        live.save()
    return time.perf_counter() - start


def in_process_times(engine: Engine, n: int, first: int = 0) -> list[float]:
    """Milliseconds of the same searches on the engine directly, one at a time, after a warm-up."""
    for i in range(3):
        engine.search("bench", text=f"warm-up {i}", k=10)
    times = []
    for i in range(first, first + n):
        start = time.perf_counter()
        engine.search("bench", text=f"query {i}", k=10)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def next_pages(engine: Engine, n: int) -> dict[str, float]:
    """p50 ms in-process of a new text query (its first page) against the next page of it (the same text, offset
    10: a repeated text, whose vector the engine's text-vector cache keeps), alternating, after a warm-up."""
    first, second = [], []
    uncached, engine.text_vectors = engine.text_vectors, TextVectorCache()  # the default cache, for this figure
    try:
        for i in range(-3, n):
            for times, offset in ((first, 0), (second, 10)):
                start = time.perf_counter()
                engine.search("bench", text=f"paged query {i}", k=10, offset=offset)
                if i >= 0:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        engine.text_vectors = uncached
    p50_first, p50_next = statistics.median(first), statistics.median(second)
    return {"first_page_p50_ms": round(p50_first, 2), "next_page_p50_ms": round(p50_next, 2),
            "speedup": round(p50_first / p50_next, 2)}  # fmt: skip


def indexed_image_queries(engine: Engine, n: int) -> dict[str, float]:
    """p50 ms in-process of "more like this" (a search by an indexed image's id, whose vector the index holds)
    against a search by the same image's bytes (decode + preprocess + forward pass: what a search by id cost before
    it read the index), alternating over the collection's first ingested images, after a warm-up."""
    hits = engine.search("bench", text="warm-up", k=min(n, 50))
    ids = [h.id for h in hits if h.source.startswith("upload:")] or [h.id for h in hits]
    by_id, by_bytes = [], []
    for i in range(-3, n):
        image_id = ids[i % len(ids)]
        data = engine.image_path("bench", image_id).read_bytes()  # read outside the clock: the bytes of a request
        for times, query in ((by_id, {"image_id": image_id}), (by_bytes, {"image": data})):
            start = time.perf_counter()
            engine.search("bench", k=10, **query)
            if i >= 0:
                times.append((time.perf_counter() - start) * 1e3)
    p50_id, p50_bytes = statistics.median(by_id), statistics.median(by_bytes)
    return {"by_id_p50_ms": round(p50_id, 2), "by_image_bytes_p50_ms": round(p50_bytes, 2),
            "speedup": round(p50_bytes / p50_id, 2)}  # fmt: skip


def summary(times: list[float]) -> dict[str, float]:
    p50, p99 = percentiles(times)
    return {
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "requests_per_s": round(len(times) / (sum(times) / 1e3), 1),
    }


class Server:
    """uvicorn in a background thread on 127.0.0.1; stops when the block ends."""

    def __init__(self, app) -> None:  # noqa: ANN001 - FastAPI
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def trivial_app():  # noqa: ANN201 - FastAPI
    """The baseline route: FastAPI, one GET answering a constant JSON object (no validation, no work). `/ping` is a
    plain `def`, which FastAPI runs on a pool thread as /v1/search runs its search; `/ping-async`, an `async def`
    on the event loop, is the cheaper of the two trivial routes, reported beside it."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/ping-async")
    async def ping_async() -> dict[str, bool]:
        return {"ok": True}

    return app


def asgi_layer(settings, engine: Engine, calls: int) -> dict[str, float]:  # noqa: ANN001 - Settings
    """Microseconds per request of the app's own HTTP layer, called as ASGI in this thread (no socket, no client):
    POST /v1/search (middlewares, routing, body validation, API-key and other dependencies, the response's 10 hits
    serialised) with the search itself answered by a constant, against the trivial app's `async def` GET. The
    part of the overhead this project's code decides, free of loopback and scheduling noise."""
    hits = [
        schemas.Hit(id=i, score=0.5, source=f"upload:{i}.png", metadata={"n": i}, width=64, height=48, format="PNG",
                    image_url=f"/v1/images/{i}/content?collection=bench",
                    thumbnail_url=f"/v1/images/{i}/thumbnail?collection=bench")
        for i in range(10)
    ]  # fmt: skip

    async def constant(req, upload=None):  # noqa: ANN001, ANN202 - Searcher.search's signature
        return schemas.SearchResponse(collection=req.collection, results=hits, took_ms=1.0)

    body = json.dumps({"collection": "bench", "text": "a red circle", "k": 10}).encode()

    async def per_call_us(app, method: str, path: str, payload: bytes) -> float:  # noqa: ANN001 - ASGI app
        headers = [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(payload)),
        ]
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}  # fmt: skip
        statuses: list[int] = []

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def call() -> None:
            messages = [{"type": "http.request", "body": payload, "more_body": False}]
            await app(scope, lambda: _next(messages), send)

        for _ in range(max(10, calls // 10)):  # warm-up
            await call()
        start = time.perf_counter()
        for _ in range(calls):
            await call()
        elapsed = time.perf_counter() - start
        if set(statuses) != {200}:
            raise RuntimeError(f"{path} answered {sorted(set(statuses))}")
        return elapsed / calls * 1e6

    async def measure() -> tuple[float, float]:
        app = create_app(settings, engine=engine, batching=False)
        async with app.router.lifespan_context(app):
            app.state.searcher.search = constant
            search_us = await per_call_us(app, "POST", "/v1/search", body)
        return search_us, await per_call_us(trivial_app(), "GET", "/ping-async", b"")

    search_us, trivial_us = asyncio.run(measure())
    return {"search_us": round(search_us, 1), "trivial_async_route_us": round(trivial_us, 1),
            "ratio": round(search_us / trivial_us, 2)}  # fmt: skip


async def _next(messages: list[dict]) -> dict:
    return messages.pop() if messages else {"type": "http.disconnect"}


def overhead(
    engine: Engine, client: ProcessPoolExecutor, search_base: str, trivial_base: str, requests: int, turns: int = 6
) -> dict:
    """The one-caller figures the overhead is made of (engine.search in-process on the main thread, on a pool
    thread, /v1/search without batching, the trivial route), measured in turns of requests/turns calls each and
    pooled: a shared machine's load drifts during a run, and with each figure measured in one block of its own the
    drift decided the ratio (four runs of one build gave 1.5x to 3.2x).

    The overhead is stated two ways. Against the in-process search run back to back (`overhead_vs_trivial_route`)
    it also holds how much slower the same search runs at a request's cadence (after idle time, the caches cold) than
    in a tight loop. Against the engine time each response reports in its Server-Timing header
    (`..._outside_engine`: per request, the client's latency minus the engine work the server timed where it ran)
    it is only what the server and the transport add around that work: routing, validation, the trips to and from
    the pool thread, serialisation, loopback."""
    per = max(1, requests // turns)
    times: dict[str, list[float]] = {
        key: [] for key in ("main", "worker", "http", "trivial", "async", "engine", "outside")
    }
    with ThreadPoolExecutor(1) as pool:
        for turn in range(turns):
            times["main"] += in_process_times(engine, per, turn * per)
            # Where a server runs them: torch's threads behave differently on a thread other than the main one.
            times["worker"] += pool.submit(in_process_times, engine, per, turn * per).result()
            for total, engine_ms in client.submit(
                http_client.one_client, search_base, per, "search", turn * per
            ).result():
                times["http"].append(total)
                times["engine"].append(engine_ms)
                times["outside"].append(total - engine_ms)
            for key, kind in (("trivial", "ping"), ("async", "ping-async")):
                times[key] += [ms for ms, _ in client.submit(http_client.one_client, trivial_base, per, kind).result()]
    figures = {key: summary(samples) for key, samples in times.items()}

    def added_ms(baseline: str) -> float:  # what HTTP adds to the in-process search measured on `baseline`
        return figures["http"]["p50_ms"] - figures[baseline]["p50_ms"]

    trivial_ms = max(figures["trivial"]["p50_ms"], 1e-9)
    return {
        "in_process_engine_search": figures["main"],
        "in_process_on_a_worker_thread": figures["worker"],
        "http_batching_off_1_client": figures["http"],
        "trivial_route": figures["trivial"],
        "http_overhead_p50_ms_one_client": round(added_ms("main"), 2),
        "overhead_vs_trivial_route": round(added_ms("main") / trivial_ms, 2),
        "overhead_vs_trivial_route_from_a_worker_thread": round(added_ms("worker") / trivial_ms, 2),
        "engine_time_in_the_server": figures["engine"],
        "http_minus_engine_time": figures["outside"],
        "overhead_vs_trivial_route_outside_engine": round(figures["outside"]["p50_ms"] / trivial_ms, 2),
        "trivial_async_route": figures["async"],
        "overhead_vs_trivial_async_route": {
            "from_in_process": round(added_ms("main") / max(figures["async"]["p50_ms"], 1e-9), 2),
            "outside_engine": round(figures["outside"]["p50_ms"] / max(figures["async"]["p50_ms"], 1e-9), 2),
        },
    }


def lone_query(client: ProcessPoolExecutor, batched: str, unbatched: str, requests: int, turns: int = 6) -> dict:
    """p50 of one client's text and image queries against the batching server and the unbatched one, in interleaved
    turns (measured one after the other, the machine's drift decided which was faster): what batching costs a
    query that has nothing to share a pass with."""
    per = max(1, requests // turns)
    times: dict[str, list[float]] = {}
    for turn in range(turns):
        for kind in ("search", "image-search"):
            for label, base in (("batching_on", batched), ("batching_off", unbatched)):
                samples = client.submit(http_client.one_client, base, per, kind, 10_000 + turn * per).result()
                times.setdefault(f"{kind}_{label}", []).extend(ms for ms, _ in samples)
    return {key: round(statistics.median(samples), 2) for key, samples in times.items()}


def spread(pool: ProcessPoolExecutor, base: str, clients: int, requests: int, kind: str = "search") -> dict:
    """`requests` of `kind` from `clients` connections split over the pool's processes, started together."""
    parts = min(CLIENT_PROCESSES, clients)
    futures = [
        pool.submit(http_client.clients, base, clients // parts + (p < clients % parts),
                    requests // parts + (p < requests % parts), kind, p * requests)
        for p in range(parts)
    ]  # fmt: skip
    return http_client.summary([future.result() for future in futures])


def under_load(client: ProcessPoolExecutor, settings, engine: Engine, requests: int) -> tuple[dict, dict]:  # noqa: ANN001
    """Text queries at CONCURRENCY and image queries (base64 PNGs) at IMAGE_CONCURRENCY clients, batching on and
    off: {"batching_on"|"batching_off": {"clients_N": figures}} for each."""
    http: dict[str, dict[str, dict[str, float]]] = {}
    images: dict[str, dict[str, dict[str, float]]] = {}
    for batching in (True, False):
        with Server(create_app(settings, engine=engine, batching=batching)) as base:
            label = "batching_on" if batching else "batching_off"
            http[label] = {f"clients_{c}": spread(client, base, c, requests) for c in CONCURRENCY}
            images[label] = {
                f"clients_{c}": spread(client, base, c, requests, "image-search") for c in IMAGE_CONCURRENCY
            }
    # The same clients against the trivial route: the latency tail that uvicorn and the load generator on this
    # machine give any route that answers quickly (the slowest searches at 32 clients spend most of their time
    # outside the search path, their Server-Timing shows).
    with Server(trivial_app()) as base:
        http["trivial_route"] = {f"clients_{c}": spread(client, base, c, requests, "ping") for c in CONCURRENCY}
    return http, images


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        build_start = time.perf_counter()
        engine = make_engine(root, args)
        build_s = time.perf_counter() - build_start
        try:
            info = engine.get_collection("bench")
            settings = load_settings(data_dir=root / "data", device=args.device, encoder_checkpoint=args.checkpoint)
            # The HTTP clients run in processes of their own (bench/http_client.py says why; CLIENT_PROCESSES).
            with ProcessPoolExecutor(CLIENT_PROCESSES, mp_context=multiprocessing.get_context("spawn")) as client:
                # Against the unbatched server: at one client a batcher has nothing to batch.
                with (
                    Server(create_app(settings, engine=engine, batching=False)) as search_base,
                    Server(create_app(settings, engine=engine, batching=True)) as batched_base,
                    Server(trivial_app()) as trivial_base,
                ):
                    one_caller = overhead(engine, client, search_base, trivial_base, args.requests)
                    pages = next_pages(engine, args.requests)
                    more_like_this = indexed_image_queries(engine, args.requests)
                    lone = lone_query(client, batched_base, search_base, args.requests)
                http, images = under_load(client, settings, engine, args.requests)
                asgi = asgi_layer(settings, engine, 10 * args.requests)
        finally:
            engine.close()
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
        "checkpoint": args.checkpoint or "tiny random (tests/factories.py)",
        "images": args.images,
        "synthetic_vectors": args.vectors,
        "collection_vectors": info.vectors,
        "index_kind": info.store_kind,
        "setup_s": round(build_s, 1),
        "requests_per_configuration": args.requests,
        **one_caller,
        "lone_query_p50_ms": lone,
        "repeated_text_next_page": pages,
        "more_like_this": more_like_this,
        "asgi_layer": asgi,
        "http": http,
        "http_image_queries": images,
        "image_batching_gain_rps": {
            k: round(
                images["batching_on"][k]["requests_per_s"] / max(images["batching_off"][k]["requests_per_s"], 1e-9), 2
            )
            for k in images["batching_on"]
        },
        "median_batching_gain_rps": round(
            statistics.median(
                http["batching_on"][k]["requests_per_s"] / max(http["batching_off"][k]["requests_per_s"], 1e-9)
                for k in http["batching_on"]
            ),
            2,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="InternVL-C checkpoint; default: a tiny random one")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200, help="searches per configuration (bounded)")
    parser.add_argument(
        "--vectors", type=int, default=0, help="synthetic vectors added to the collection (e.g. 100000)"
    )
    parser.add_argument("--index-kind", default="auto", help="the collection's index kind (flat, hnsw, ...)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.requests < 1 or args.requests > 100_000:
        parser.error("--requests must be from 1 to 100000")
    if args.vectors < 0 or args.vectors > 10_000_000:
        parser.error("--vectors must be from 0 to 10000000")
    if args.checkpoint is None:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from factories import make_tiny_internvl_checkpoint

        args.checkpoint = str(make_tiny_internvl_checkpoint(Path(tempfile.mkdtemp(prefix="bench-ckpt-")) / "tiny"))
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
