"""Bounded load test: mixed search / index / classify at a fixed rate against a real `internvl-search serve`.

    python -m bench.load                          # 5 minutes at 20 requests/s (loopback only, stops by itself)
    python -m bench.load --duration 30 --rate 10  # a short run
    python -m bench.load --json results.json

The server is a subprocess (`internvl-search serve`) on a free 127.0.0.1 port with a temporary data directory and the
default encoder (the shipped shapes-world model unless --checkpoint says otherwise). A collection is seeded with
shapes-world scenes, then requests are *scheduled* at a fixed rate (open loop: a slow server does not slow the
offered load down) in the proportions of --mix: text searches in six languages and image-by-id searches, uploads of
new scenes for indexing (not waited for), and zero-shot classification of indexed images. At most --max-in-flight
requests are outstanding; a request that would exceed it is counted as shed, not sent, so the test stays bounded.

Reported: per kind and overall, requests sent, error rate (5xx, timeouts, refused connections; 4xx counted apart,
as they mean the load generator sent something wrong), p50/p99 latency; the server's resident memory (VmRSS from
/proc) sampled every few seconds, its growth over the run and its slope over the second half, which is what
"memory does not grow without bound" is judged on; the ingestion backlog at the end; and how long the server took
to shut down on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

QUERIES = [
    "a red circle", "a blue square on the left", "ein roter Kreis", "ein grünes Dreieck oben", "un cercle rouge",
    "un carré bleu à droite", "un círculo rojo", "una estrella amarilla", "红色的圆形", "蓝色的正方形",
    "赤い円", "青い四角",
]  # fmt: skip
LABELS = ["red", "green", "blue", "yellow", "purple", "orange"]
COLLECTION = "load"


@dataclass
class Outcome:
    kind: str
    status: int  # HTTP status; 0 for a timeout or a connection failure
    latency_ms: float


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    shed: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(data_dir: Path, port: int, args: argparse.Namespace) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERNVL_SEARCH_")}
    env |= {"INTERNVL_SEARCH_DATA_DIR": str(data_dir), "INTERNVL_SEARCH_PORT": str(port),
            "INTERNVL_SEARCH_DEVICE": args.device, "INTERNVL_SEARCH_LOG_LEVEL": "warning"}  # fmt: skip
    if args.checkpoint:
        env["INTERNVL_SEARCH_ENCODER_CHECKPOINT"] = args.checkpoint
    binary = Path(sys.executable).parent / "internvl-search"
    return subprocess.Popen([str(binary), "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(base: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited early:\n{process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server was not ready within {timeout_s:.0f} s")


def scene_files(directory: Path, n: int, seed: int) -> list[Path]:
    from internvl_models.shapes_world import write_demo_corpus

    manifest = write_demo_corpus(directory, n, size=64, seed=seed)
    return [manifest.parent / json.loads(line)["path"] for line in manifest.read_text().splitlines()]


def seed_collection(base: str, files: list[Path]) -> list[int]:
    """Create the collection, index the seed scenes (waiting), and return their image ids."""
    with httpx.Client(base_url=base, timeout=300) as http:
        http.post("/v1/collections", json={"name": COLLECTION}).raise_for_status()
        upload = [("files", (p.name, p.read_bytes(), "image/png")) for p in files]
        response = http.post("/v1/index", params={"wait": True}, data={"collection": COLLECTION}, files=upload)
        response.raise_for_status()
        hits = http.post("/v1/search", json={"collection": COLLECTION, "text": "a", "k": len(files)}).json()
    return [hit["id"] for hit in hits["results"]]


def make_request(kind: str, rng: random.Random, ids: list[int], uploads: list[bytes]) -> dict:
    """httpx.request keyword arguments for one request of `kind`."""
    if kind == "search":
        if rng.random() < 0.8:
            body = {"collection": COLLECTION, "text": rng.choice(QUERIES), "k": 10}
        else:
            body = {"collection": COLLECTION, "image_id": rng.choice(ids), "k": 10}
        return {"method": "POST", "url": "/v1/search", "json": body}
    if kind == "classify":
        body = {"collection": COLLECTION, "image_id": rng.choice(ids), "labels": rng.sample(LABELS, 4)}
        return {"method": "POST", "url": "/v1/classify", "json": body}
    # An upload (multipart, as the web page sends it) of a scene not seen before, queued and not waited for.
    data = uploads[rng.randrange(len(uploads))]
    name = f"load-{rng.randrange(10**9)}.png"
    return {"method": "POST", "url": "/v1/index", "data": {"collection": COLLECTION},
            "files": [("files", (name, data, "image/png"))]}  # fmt: skip


async def one(http: httpx.AsyncClient, kind: str, request: dict, run: Run) -> None:
    start = time.perf_counter()
    try:
        response = await http.request(**request)
        status = response.status_code
    except httpx.HTTPError:
        status = 0
    run.outcomes.append(Outcome(kind, status, (time.perf_counter() - start) * 1e3))


async def drive(base: str, args: argparse.Namespace, ids: list[int], uploads: list[bytes], pid: int) -> Run:
    """Send requests at args.rate per second for args.duration seconds; sample the server's memory meanwhile."""
    run, rng = Run(), random.Random(args.seed)
    kinds, weights = zip(*args.mix.items())
    limits = httpx.Limits(max_connections=args.max_in_flight)
    in_flight: set[asyncio.Task] = set()
    start = time.monotonic()
    next_sample = 0.0
    async with httpx.AsyncClient(base_url=base, timeout=args.timeout, limits=limits) as http:
        for n in range(int(args.duration * args.rate)):
            due = start + n / args.rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            elapsed = time.monotonic() - start
            if elapsed >= next_sample:
                run.rss_mb.append((elapsed, rss_mb(pid)))
                next_sample += args.sample_every
            if len(in_flight) >= args.max_in_flight:
                run.shed += 1
                continue
            kind = rng.choices(kinds, weights)[0]
            task = asyncio.create_task(one(http, kind, make_request(kind, rng, ids, uploads), run))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    run.rss_mb.append((time.monotonic() - start, rss_mb(pid)))
    return run


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def summarise(run: Run, args: argparse.Namespace) -> dict:
    groups: dict[str, list[Outcome]] = {"all": run.outcomes}
    for outcome in run.outcomes:
        groups.setdefault(outcome.kind, []).append(outcome)
    table = {}
    for kind, outcomes in groups.items():
        errors = sum(o.status == 0 or o.status >= 500 for o in outcomes)
        client_errors = sum(400 <= o.status < 500 for o in outcomes)
        latencies = [o.latency_ms for o in outcomes]
        table[kind] = {"sent": len(outcomes), "error_rate": round(errors / max(1, len(outcomes)), 4),
                       "4xx": client_errors, "p50_ms": round(percentile(latencies, 0.5), 1),
                       "p99_ms": round(percentile(latencies, 0.99), 1)}  # fmt: skip
    return {"offered_rate_per_s": args.rate, "duration_s": args.duration, "mix": args.mix, "shed": run.shed,
            "requests": table, "memory": memory_report(run.rss_mb)}  # fmt: skip


def memory_report(samples: list[tuple[float, float]]) -> dict:
    """RSS at the first sample after warm-up, at the end, its peak, and the least-squares slope over the second half
    of the run (MB per minute): near zero when memory has levelled off."""
    if len(samples) < 4:
        return {"samples": len(samples)}
    times, values = zip(*samples)
    half = [(t, v) for t, v in samples if t >= times[-1] / 2]
    mean_t = sum(t for t, _ in half) / len(half)
    mean_v = sum(v for _, v in half) / len(half)
    spread = sum((t - mean_t) ** 2 for t, _ in half) or 1.0
    slope = sum((t - mean_t) * (v - mean_v) for t, v in half) / spread * 60
    # The first sample of each minute (and the very first one), to show whether memory levels off.
    previous = [(-1.0, 0.0), *samples[:-1]]
    per_minute = [round(v, 1) for (t, v), (p, _) in zip(samples, previous) if t // 60 != p // 60]
    return {"samples": len(samples), "start_mb": round(values[1], 1), "end_mb": round(values[-1], 1),
            "peak_mb": round(max(values), 1), "growth_mb": round(values[-1] - values[1], 1),
            "second_half_slope_mb_per_min": round(slope, 2), "per_minute_mb": per_minute}  # fmt: skip


def finish(base: str, process: subprocess.Popen) -> dict:
    """The ingestion backlog, then SIGTERM and the time the server took to exit."""
    try:
        jobs = httpx.get(f"{base}/v1/jobs", params={"limit": 1000}, timeout=30).json()["jobs"]
        backlog = sum(job["state"] in ("queued", "running") for job in jobs)
        failed = sum(job["state"] == "failed" for job in jobs)
    except (httpx.HTTPError, ValueError, KeyError):
        backlog = failed = -1
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        code = None
    return {"jobs_queued_or_running_at_end": backlog, "jobs_failed": failed,
            "shutdown_s": round(time.monotonic() - start, 2), "exit_code": code}  # fmt: skip


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        seeds = scene_files(root / "seed", args.images, seed=1)
        uploads = [p.read_bytes() for p in scene_files(root / "uploads", 200, seed=2)]
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = start_server(root / "data", port, args)
        try:
            wait_ready(base, process)
            ids = seed_collection(base, seeds)
            result = summarise(asyncio.run(drive(base, args, ids, uploads, process.pid)), args)
            result["server"] = finish(base, process)
        finally:
            if process.poll() is None:
                process.kill()
    return result


def parse_mix(text: str) -> dict[str, float]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind not in ("search", "index", "classify"):
            raise argparse.ArgumentTypeError(f"unknown request kind {kind!r} (search, index, classify)")
        mix[kind] = float(weight)
    return mix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second offered (default 20)")
    parser.add_argument("--mix", type=parse_mix, default=parse_mix("search=0.7,index=0.1,classify=0.2"))
    parser.add_argument("--images", type=int, default=60, help="scenes indexed before the load starts")
    parser.add_argument("--max-in-flight", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=30.0, help="client time limit per request (s)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--checkpoint", default=None, help="encoder weights (default: the shipped model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
