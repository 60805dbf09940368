"""Exact search on a GPU with torch (no faiss GPU build needed): latency against the memory-bandwidth bound, batch
QPS, and the recall@10 float16 storage keeps against float32.

    python -m bench.gpu_search --sizes 1000000 --dim 768        # on a CUDA machine

A single query reads every stored vector once, so its latency cannot drop below n x d x bytes / bandwidth. The
bandwidth is measured in the same process (a device-to-device copy of 4 GiB: read + written bytes / time) and also
given as the datasheet figure for an H100 SXM (3.35 TB/s). Vectors are random unit vectors around many centres
(bench/search.py's mixture); queries are fresh draws from it.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench.search import clustered

K = 10
H100_HBM_BYTES_PER_S = 3.35e12


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s moved by a large device-to-device copy (each byte read once and written once)."""
    src = torch.empty(2**30, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best


def search(base: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    return torch.topk(queries @ base.T, K, dim=1).indices


def timed_ms(fn, device: torch.device, repeats: int) -> list[float]:  # noqa: ANN001
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def measure(n: int, dim: int, device: torch.device, bandwidth: float) -> dict[str, object]:
    rng = np.random.default_rng(0)
    middle = rng.standard_normal((max(64, n // 250), dim), dtype=np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    base32 = torch.from_numpy(clustered(n, dim, rng, middle)).to(device)
    queries32 = torch.from_numpy(clustered(1024, dim, rng, middle)).to(device)
    truth = search(base32, queries32)
    out: dict[str, object] = {}
    for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
        base, queries = base32.to(dtype), queries32.to(dtype)
        one = queries[:1]
        single = timed_ms(lambda b=base, q=one: search(b, q), device, 200)
        batch = timed_ms(lambda b=base, q=queries: search(b, q), device, 5)
        found = search(base, queries)
        hits = (found[:, :, None] == truth[:, None, :]).any(dim=2).float().mean().item()
        bound_ms = base.numel() * base.element_size() / bandwidth * 1e3
        p50 = float(np.percentile(single, 50))
        out[name] = {
            "single_query_p50_ms": round(p50, 4),
            "single_query_p99_ms": round(float(np.percentile(single, 99)), 4),
            "bandwidth_bound_ms": round(bound_ms, 4),
            "latency_vs_bound": round(p50 / bound_ms, 2),
            "datasheet_bound_ms": round(base.numel() * base.element_size() / H100_HBM_BYTES_PER_S * 1e3, 4),
            "batch_1024_qps": round(1024 / (min(batch) / 1e3), 1),
            "recall_at_10_vs_float32": round(hits, 4),
        }
        del base
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", action="store_true", help="accepted for `python -m bench`; the output is JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda":
        raise SystemExit("bench.gpu_search needs a CUDA device (--device cuda)")
    bandwidth = copy_bandwidth(device)
    report = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "dim": args.dim,
        "copy_bandwidth_tb_per_s": round(bandwidth / 1e12, 3),
        "results": {n: measure(int(n), args.dim, device, bandwidth) for n in args.sizes.split(",")},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
