"""A simulated collection of 10M-100M+ vectors on one machine: IVF-PQ trained on a sample, vectors generated on the
fly in seeded chunks (never all in memory), queried for latency and recall@10 against exact search.

    python -m bench.scale --n 10000000                    # ~2 min on one core
    python -m bench.scale --n 30000000 --queries 100 --mmap /tmp/scale.faiss
    python -m bench.scale --n 30000000 --queries 100 --time-saved /tmp/scale.faiss   # re-time it only
    for k in flat hnsw ivf_flat ivf_pq; do python -m bench.scale --store-bytes $k:64; done   # the engine's stores

The data are bench/search.py's `clustered` vectors (unit vectors around n/250 overlapping centres; queries are new
draws from the same mixture). Each chunk is generated once from its own seed (so any chunk can be regenerated
alone), added to the index, and scored exactly against the queries in the same pass: the exact top-10 of every
query over all n vectors is kept as a running merge, so ground truth costs one brute-force pass and no storage.

Reported: build seconds per phase; index bytes per vector (codes + ids, as faiss stores them, and the file size);
single-query latency p50/p99 (one thread, as the engine serves a query) and recall@10 per nprobe; recall 10@100
(the share of the true top-10 among the first 100 PQ candidates: the recall after re-ranking 100 candidates with
exact vectors, which the engine's IVFPQStore approximates with its float16 copy and 640 candidates); and with --mmap the same queries on the index written
to disk and loaded memory-mapped (faiss IO_FLAG_MMAP), with the process's resident memory before and after (warm page cache: each nprobe is run once before timing).

The coarse quantizer is a flat index, so adding costs n x nlist distance computations: nlist is kept small (1-2k)
to fit a CPU budget; the engine's sizing (4·sqrt(n) lists, 32k-64k at 100M) scans ~30x fewer codes per probe at
the same recall, and is what a GPU build or an HNSW coarse quantizer makes affordable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import faiss
import numpy as np

from bench.search import clustered
from indexer.search import one_omp_thread

K = 10
SEED = 20261206


def chunk_vectors(index: int, size: int, dim: int, middle: np.ndarray) -> np.ndarray:
    """Chunk `index` of the collection, reproducible on its own."""
    return clustered(size, dim, np.random.default_rng([SEED, index]), middle)


def rss_mib() -> float:
    """Resident memory of this process now (MiB), from /proc (ru_maxrss is the peak)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def merge_top(best_s: np.ndarray, best_i: np.ndarray, s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([best_s, s], axis=1)
    ids = np.concatenate([best_i, i], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def latencies(index: faiss.Index, queries: np.ndarray, nprobe: int) -> tuple[float, float, np.ndarray]:
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    times, found = [], []
    with one_omp_thread():
        for query in queries:
            start = time.perf_counter()
            _, ids = index.search(query[None], K, params=params)
            times.append(time.perf_counter() - start)
            found.append(ids[0])
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3), np.array(found)


def build(args: argparse.Namespace, middle: np.ndarray, queries: np.ndarray, report: dict) -> tuple:
    """Train on a sample, then add the collection chunk by chunk while keeping each query's exact top-10."""
    start = time.perf_counter()
    sample = clustered(args.train, args.dim, np.random.default_rng([SEED, 10**9]), middle)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(args.dim), args.dim, args.nlist, args.m, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(sample)
    report["train_s"] = round(time.perf_counter() - start, 1)
    print(f"trained on {args.train:,} in {report['train_s']} s", flush=True)
    best_s = np.full((args.queries, K), -np.inf, dtype=np.float32)
    best_i = np.full((args.queries, K), -1, dtype=np.int64)
    timing = {"generate": 0.0, "add": 0.0, "exact": 0.0}
    chunks = (args.n + args.chunk - 1) // args.chunk
    for c in range(chunks):
        size = min(args.chunk, args.n - c * args.chunk)
        t0 = time.perf_counter()
        x = chunk_vectors(c, size, args.dim, middle)
        t1 = time.perf_counter()
        index.add(x)  # ids are positions: chunk c holds c*chunk ... (faiss numbers them in order)
        t2 = time.perf_counter()
        s, i = faiss.knn(queries, x, K, metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = merge_top(best_s, best_i, s, i + c * args.chunk)
        t3 = time.perf_counter()
        timing["generate"] += t1 - t0
        timing["add"] += t2 - t1
        timing["exact"] += t3 - t2
        if c % 10 == 9 or c == chunks - 1:
            done = ", ".join(f"{k} {v:.0f} s" for k, v in timing.items())
            print(f"{index.ntotal:,} vectors; {done}; rss {rss_mib():,.0f} MiB", flush=True)
    report.update({f"{k}_s": round(v, 1) for k, v in timing.items()})
    assert sum(index.invlists.list_size(j) for j in range(args.nlist)) == args.n
    report["bytes_per_vector"] = {"codes": index.code_size, "ids": 8, "total_in_lists": index.code_size + 8}
    return index, best_i


def measure(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, nprobes: list[int]) -> dict:
    results = {}
    for nprobe in nprobes:
        p50, p99, found = latencies(index, queries, nprobe)
        _, wide = index.search(queries, 100, params=faiss.SearchParametersIVF(nprobe=nprobe))
        r100 = float(np.mean([len(set(w) & set(t)) / K for w, t in zip(wide, truth)]))
        results[nprobe] = {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "recall@10": round(recall_at(found, truth), 3),
            "recall_10@100": round(r100, 3),
        }
        print(f"nprobe {nprobe}: {json.dumps(results[nprobe])}", flush=True)
    return results


def measure_mmap(
    index: faiss.Index, path: str, queries: np.ndarray, truth: np.ndarray, nprobes: list[int], report: dict
):
    """Write the index, drop it, map it back (IO_FLAG_MMAP) and query it again (warm page cache)."""
    t0 = time.perf_counter()
    faiss.write_index(index, path)
    report["file_bytes_per_vector"] = round(os.path.getsize(path) / index.ntotal, 2)
    report["write_s"] = round(time.perf_counter() - t0, 1)
    before = rss_mib()
    del index
    after_free = rss_mib()
    t0 = time.perf_counter()
    mapped = faiss.read_index(path, faiss.IO_FLAG_MMAP)
    report["mmap_load_s"] = round(time.perf_counter() - t0, 2)
    loaded = rss_mib()
    search = {}
    for nprobe in nprobes:
        latencies(mapped, queries, nprobe)  # first touch: page faults map the probed lists in
        p50, p99, found = latencies(mapped, queries, nprobe)
        search[nprobe] = {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "recall@10": round(recall_at(found, truth), 3),
        }
    report["mmap"] = {
        "rss_mib_in_memory_index": round(before),
        "rss_mib_after_free": round(after_free),
        "rss_mib_mapped_loaded": round(loaded),
        "rss_mib_after_queries": round(rss_mib()),
        "search": search,
    }
    print(f"mmap: {json.dumps(report['mmap'])}", flush=True)


def time_saved(path: str, queries: np.ndarray, nprobes: list[int]) -> dict:
    """Re-time a written index, in memory and memory-mapped, side by side in one process (no recall)."""
    loaded = {"in_memory": faiss.read_index(path), "mmap": faiss.read_index(path, faiss.IO_FLAG_MMAP)}
    out: dict = {}
    for nprobe in nprobes:
        for index in loaded.values():
            latencies(index, queries, nprobe)  # warm: the page cache and the mapping
        for name, index in loaded.items():
            p50, p99, _ = latencies(index, queries, nprobe)
            out.setdefault(name, {})[nprobe] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
        print(f"nprobe {nprobe}: {json.dumps({name: out[name][nprobe] for name in loaded})}", flush=True)
    return out


def store_bytes(kind: str, dim: int, n: int = 100_000) -> dict:
    """Bytes per vector of the engine's store of `kind`: resident memory growth while adding n vectors (freed
    memory returned to the OS first: `malloc_trim`) and the saved file's size. Run in a fresh process per kind."""
    import ctypes
    import gc
    import tempfile

    from indexer.vector_store import create_vector_store

    trim = ctypes.CDLL("libc.so.6").malloc_trim

    def resident() -> float:
        gc.collect()
        trim(0)
        return rss_mib() * 2**20

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = create_vector_store(kind, dim, use_gpu=False)
    before = resident()
    store.add(np.arange(n, dtype=np.int64) * 2, x)
    grown = resident() - before
    with tempfile.TemporaryDirectory() as tmp:
        store.save(f"{tmp}/store.ivs")
        size = os.path.getsize(f"{tmp}/store.ivs")
    return {
        "kind": kind,
        "dim": dim,
        "n": n,
        "ram_B_per_vector": round(grown / n, 1),
        "file_B_per_vector": round(size / n, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--m", type=int, default=16, help="PQ sub-quantizers = code bytes per vector (8 bits each)")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--train", type=int, default=131_072, help="training sample size")
    parser.add_argument("--chunk", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", default="16,64,256")
    parser.add_argument("--mmap", default="", help="write the index to this file and query it memory-mapped")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads for training and adding")
    parser.add_argument("--time-saved", default="", help="only re-time the index written by an earlier --mmap run")
    parser.add_argument("--store-bytes", default="", help="only measure one store kind's bytes per vector: KIND:DIM")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    if args.store_bytes:
        kind, dim = args.store_bytes.split(":")
        print(json.dumps(store_bytes(kind, int(dim))))
        return
    report: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, threads {args.threads}",
        "n": args.n,
        "dim": args.dim,
        "index": f"IVF{args.nlist},PQ{args.m}x8 (inner product)",
        "queries": args.queries,
    }
    base_rss = rss_mib()  # the interpreter, numpy, faiss and the imports: subtracted from the figures below
    report["rss_mib_before_build"] = round(base_rss)
    rng = np.random.default_rng(SEED)
    middle = rng.standard_normal((max(64, args.n // 250), args.dim), dtype=np.float32)
    middle /= np.linalg.norm(middle, axis=1, keepdims=True)
    queries = clustered(args.queries, args.dim, rng, middle)
    nprobes = [int(p) for p in args.nprobe.split(",")]
    if args.time_saved:
        report["timed"] = time_saved(args.time_saved, queries, nprobes)
        print(json.dumps(report, indent=2))
        return
    index, truth = build(args, middle, queries, report)
    report["index_rss_mib"] = round(rss_mib() - base_rss)
    report["search"] = measure(index, queries, truth, nprobes)
    if args.mmap:
        measure_mmap(index, args.mmap, queries, truth, nprobes, report)
        del index
    report["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
