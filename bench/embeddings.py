"""Embedding shards: what reading them back costs when a job leaves one shard per batch, against the same rows
after `EmbeddingStore.settle` merged them, and what the merging itself costs over a stream of jobs.

    python -m bench.embeddings                              # 200k rows x 768, batches of 32 (6,250 shards)
    python -m bench.embeddings --rows 1000000 --dim 768

* `load_all`: every shard read, checksummed, parsed and resolved (what a rebuild, a kind switch or a repair of the
  index does), with one shard per batch (the baseline: what a job left before `settle`) and after one `settle`.
* a stream of small jobs after that (`--jobs` jobs of `--job-batches` batches, settled after each, as the engine
  does): bytes the merges rewrote per byte appended (write amplification), and the most shards seen.

Runs in a temporary directory on the disk that holds $TMPDIR; the page cache is warm for both reads (both read
files just written), so the difference is per-file work, not disk speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.vector_store import EmbeddingStore


def shard_sizes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in directory.glob("*.npy")}


def timed_load(store: EmbeddingStore) -> tuple[float, int]:
    start = time.perf_counter()
    ids, _ = store.load_all()
    return time.perf_counter() - start, len(ids)


def job_stream(store: EmbeddingStore, directory: Path, args: argparse.Namespace, first_id: int) -> dict:
    """`args.jobs` jobs of `args.job_batches` batches each, settled after each job: the bytes the merges wrote per
    byte the jobs appended, the most shards seen, and the p50 / max seconds of a settle."""
    rng = np.random.default_rng(1)
    appended = rewritten = most = 0
    times = []
    for _ in range(args.jobs):
        before = shard_sizes(directory)
        for _ in range(args.job_batches):
            vectors = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
            store.append(np.arange(first_id, first_id + args.batch), vectors)
            first_id += args.batch
        written = shard_sizes(directory)
        appended += sum(size for name, size in written.items() if name not in before)
        most = max(most, len(written))
        start = time.perf_counter()
        store.settle()
        times.append(time.perf_counter() - start)
        rewritten += sum(size for name, size in shard_sizes(directory).items() if name not in written)
    return {
        "jobs": args.jobs,
        "batches_per_job": args.job_batches,
        "most_shards": most,
        "bytes_rewritten_per_byte_appended": round(rewritten / max(appended, 1), 2),
        "settle_p50_s": round(float(np.median(times)), 4) if times else None,
        "settle_max_s": round(max(times), 3) if times else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=32, help="rows per shard, as a job's batch writes them")
    parser.add_argument("--jobs", type=int, default=200, help="small jobs after the big one")
    parser.add_argument("--job-batches", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if min(args.rows, args.dim, args.batch, args.job_batches) < 1 or args.jobs < 0:
        parser.error("--rows, --dim, --batch and --job-batches must be positive, --jobs not negative")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-embeddings-") as tmp:
        directory = Path(tmp)
        store = EmbeddingStore(directory, args.dim)
        start = time.perf_counter()
        for first in range(0, args.rows, args.batch):
            count = min(args.batch, args.rows - first)
            store.append(np.arange(first, first + count), rng.standard_normal((count, args.dim), dtype=np.float32))
        append_s = time.perf_counter() - start
        sizes = shard_sizes(directory)
        shards, size = len(sizes), sum(sizes.values())
        per_batch_s, rows = timed_load(store)
        start = time.perf_counter()
        store.settle()
        settle_s = time.perf_counter() - start
        settled_shards = len(shard_sizes(directory))
        settled_s, rows_after = timed_load(store)
        assert rows_after == rows == args.rows
        stream = job_stream(store, directory, args, args.rows)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": args.rows,
        "dim": args.dim,
        "bytes": size,
        "append_ms_per_batch": round(append_s / shards * 1e3, 3),
        "shards_one_per_batch": shards,
        "load_all_one_per_batch_s": round(per_batch_s, 3),
        "settle_s": round(settle_s, 3),
        "shards_settled": settled_shards,
        "load_all_settled_s": round(settled_s, 3),
        "load_all_speedup": round(per_batch_s / settled_s, 2),
        "job_stream": stream,
    }
    print(json.dumps(report, indent=None if not args.json else 2))


if __name__ == "__main__":
    main()
