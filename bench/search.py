"""Vector search: build time, QPS, latency and recall@10 against exact search, for every index kind, on clustered
data (unit vectors around many centres, not uniform noise, on which every ANN index looks bad and no real
collection looks like).

    python -m bench.search                              # 100k x 64, every kind
    python -m bench.search --sizes 100000,1000000 --dim 64 --queries 1000
    python -m bench.search --data powerlaw              # clusters spread along a power-law spectrum

Two data models (`--data`), told apart by their local intrinsic dimension (LID, printed: the maximum-likelihood
estimate from each query's 100 nearest neighbours, averaged over the queries):
* isotropic (default): each cluster spreads equally in every direction, so a query's neighbourhood fills every
  dimension (LID 38.1 at 1M x 64; the estimator reads low in high dimensions). The hardest case for any index, kept
  as the default so that figures stay comparable over time.
* powerlaw: the spread along the i-th of d random orthogonal directions has variance proportional to 1/i, the
  power-law spectrum measured on learned representations (the same total spread as isotropic), so the neighbourhood
  has a few dominant directions and a lower LID (29.8 at 1M x 64).

Operating points: after the defaults' figures, every ANN kind is searched again at a ladder of efforts (efSearch for
HNSW, nprobe for IVF) until recall@10 reaches 0.99; "at_recall_0_95" is the cheapest effort reaching 0.95, with its
batch QPS and single-query p50 as multiples of exact (flat) search in the same run. This is how ANN figures are
published (QPS at a recall), while the engine's defaults stay sized for the isotropic worst case.

Per kind and size: build seconds; batch QPS (all queries in one call, all cores); single-query latency p50/p99
(one thread, as the engine serves a query); recall@10
against exact inner-product search; and the same for filtered searches where 1% and 10% of the ids are allowed (the
engine's metadata filters), whose recall is measured against exact search over the allowed ids.

Live updates (what a collection being indexed while it serves pays): batches of `UPDATE_BATCH` new vectors (new
draws from the same mixture) are added one at a time, each followed by one query (its latency is the first search
after a change, which pays for anything the store rebuilds lazily), then the same batches are removed. Reported as
p50 ms per batch added / removed and the p50 of the search after an add, beside the steady single-query p50 above.
The removed vectors are then added back under new ids, a batch at a time, into the room the removals left, and
`found_after_removals` is the share of them that a search for each finds first (1.0 unless an add after a removal
spoils codes, as faiss's fast-scan lists did).
Then one save of the store (to a temporary file), timed, while another thread searches every 5 ms: the longest of
those searches shows how long a save holds searches up.

Parallel single queries: the same 200 single-query searches from one thread, then split over one thread per core,
QPS each way (`parallel_single_queries`): whether one store answers concurrent requests side by side.

Batched queries (flat): ms per query when 1, 2, 4, 8, 32 or 128 queries come in one call, as a micro-batch of searches
does, with this project's BLAS threshold against faiss's default (`batched_queries`).

Exact (flat) single-query latency is also set against its memory-bandwidth bound: one query reads every vector
once (n x d x 4 bytes), so it cannot take less than those bytes / the read bandwidth of one core, measured in the
same process (`read_bandwidth`, the best of a few passes over a 512 MiB array) just before the latencies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from indexer.search import one_omp_thread
from indexer.vector_store import create_vector_store, list_vector_store_kinds
from indexer.vector_store.flat import BLAS_MIN_FLOATS

K = 10
# Noise norm relative to the unit centre: 1.5 puts a point at cosine ~0.55 to its centre (clusters overlap).
SPREAD = 1.5
DATA_MODELS = ("isotropic", "powerlaw")
LID_NEIGHBOURS = 100
TARGET_RECALL = 0.95
UPDATE_BATCH = 32
UPDATE_ROUNDS = 20
# Efforts tried for the operating points (clipped to what the index has: every node, every list): powers of two and
# the points half-way between them (x1.5), so that the cheapest effort reaching a recall is found within 1.5x (with
# powers of two alone, recall 0.9486 at nprobe 128 sent the 1M x 768 operating point to 256).
EFFORTS = {
    "hnsw": [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024],
    "ivf": [4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048],
}
FAISS_BLAS_THRESHOLD = 128_000  # faiss 1.15's own, which flat.py lowers


def spread_basis(dim: int, model: str, rng: np.random.Generator) -> np.ndarray | None:
    """(dim, dim) map from standard normal noise to a cluster's spread: None for isotropic; for powerlaw, a random
    rotation with the i-th direction scaled by sqrt(1/i), normalised to the isotropic total variance."""
    if model == "isotropic":
        return None
    if model != "powerlaw":
        raise ValueError(f"unknown data model {model!r}; choose from {DATA_MODELS}")
    variances = 1.0 / np.arange(1, dim + 1)
    variances *= dim / variances.sum()
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (np.sqrt(variances)[:, None] * rotation.T).astype(np.float32)


def clustered(
    n: int, dim: int, rng: np.random.Generator, middle: np.ndarray, basis: np.ndarray | None = None
) -> np.ndarray:
    """Unit vectors around the unit `middle` centres (see SPREAD): clusters overlap as the classes of an image
    collection do, so a query's nearest neighbours are not simply its own cluster. `basis` shapes the spread
    (`spread_basis`; None: the same in every direction)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, len(middle), stop - start)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if basis is not None:
            noise = noise @ basis
        block = middle[which] + noise * (SPREAD / np.sqrt(dim))
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def local_intrinsic_dimension(data: np.ndarray, queries: np.ndarray, k: int = LID_NEIGHBOURS) -> float:
    """Mean maximum-likelihood LID of the queries' neighbourhoods: -1 / mean(log(r_i / r_k)) over each query's k
    nearest data points (Euclidean distances; for unit vectors r^2 = 2 - 2 cos)."""
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    cosines, _ = index.search(queries, k)
    radii = np.sqrt(np.clip(2.0 - 2.0 * cosines.astype(np.float64), 1e-12, None))
    logs = np.log(radii[:, :-1] / radii[:, -1:])
    return float(np.mean(-1.0 / logs.mean(axis=1)))


def exact(data: np.ndarray, queries: np.ndarray, ids: np.ndarray | None = None) -> np.ndarray:
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data if ids is None else data[ids])
    _, rows = index.search(queries, K)
    return rows if ids is None else ids[rows]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def latencies(store, queries: np.ndarray, allowed: np.ndarray | None = None) -> tuple[float, float]:  # noqa: ANN001
    """p50/p99 ms of one query at a time, single-threaded as the engine runs them (`one_omp_thread`)."""
    times = []
    with one_omp_thread():
        for query in queries:
            start = time.perf_counter()
            store.search(query[None], K, allowed_ids=allowed)
            times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def live_updates(store, fresh: np.ndarray, first_id: int, query: np.ndarray) -> dict:  # noqa: ANN001
    """p50 ms to add a batch of `fresh` vectors, of the search right after it, and to remove a batch; then one
    save to a temporary file, with the longest a search had to wait while it ran (see above)."""
    adds, searches, removes = [], [], []
    batches = [
        (np.arange(first_id + at, first_id + at + UPDATE_BATCH, dtype=np.int64), fresh[at : at + UPDATE_BATCH])
        for at in range(0, len(fresh) - UPDATE_BATCH + 1, UPDATE_BATCH)
    ]
    with one_omp_thread():
        for ids, vectors in batches:
            start = time.perf_counter()
            store.add(ids, vectors)
            adds.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.search(query[None], K)
            searches.append(time.perf_counter() - start)
        for ids, _ in batches:
            start = time.perf_counter()
            store.remove(ids)
            removes.append(time.perf_counter() - start)
        back = first_id + len(fresh)
        for ids, vectors in batches:
            store.add(ids + back, vectors)
        found = store.search(fresh[: len(batches) * UPDATE_BATCH], 1).ids[:, 0] - back
    p50 = lambda times: round(float(np.percentile(times, 50) * 1e3), 3)  # noqa: E731
    report = {"add_p50_ms": p50(adds), "search_after_add_p50_ms": p50(searches), "remove_p50_ms": p50(removes)}
    report["found_after_removals"] = round(float(np.mean(found == np.arange(first_id, first_id + len(found)))), 4)
    return report | save_beside_searches(store, query)


def save_beside_searches(store, query: np.ndarray) -> dict:  # noqa: ANN001
    """Seconds of one save, and the longest search (ms) of a thread searching every 5 ms meanwhile: a search that
    must wait for the save's lock shows the wait."""
    waits: list[float] = []
    saving = threading.Event()

    def search_meanwhile() -> None:
        while not saving.is_set():  # until the save starts
            time.sleep(0.001)
        while saving.is_set():
            start = time.perf_counter()
            store.search(query[None], K)
            waits.append(time.perf_counter() - start)
            time.sleep(0.005)

    searcher = threading.Thread(target=search_meanwhile)
    searcher.start()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as directory, one_omp_thread():
        saving.set()
        start = time.perf_counter()
        store.save(Path(directory) / "store.ivs")
        seconds = time.perf_counter() - start
        saving.clear()
        searcher.join()
    return {"save_s": round(seconds, 3), "search_during_save_max_ms": round(max(waits, default=0.0) * 1e3, 1)}


def parallel_searches(store, queries: np.ndarray) -> dict:  # noqa: ANN001
    """Single-query searches (one OpenMP thread each, as the engine runs them) from one thread, then from one thread
    per core, over the same queries: QPS each way. One store answering one query at a time caps the second."""
    threads = os.cpu_count() or 1

    def run(count: int) -> float:
        parts = np.array_split(queries, count)
        barrier = threading.Barrier(count + 1)

        def search_part(part: np.ndarray) -> None:
            with one_omp_thread():
                barrier.wait()
                for query in part:
                    store.search(query[None], K)

        workers = [threading.Thread(target=search_part, args=(part,)) for part in parts]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        return len(queries) / (time.perf_counter() - start)

    one, many = run(1), run(threads)
    return {"threads": threads, "qps_1_thread": round(one, 1), f"qps_{threads}_threads": round(many, 1),
            "speedup": round(many / one, 2)}  # fmt: skip


def batched_queries(store, queries: np.ndarray, sizes: tuple[int, ...] = (1, 2, 4, 8, 32, 128)) -> dict:  # noqa: ANN001
    """ms per query when n queries come in one call (a micro-batch of searches), on all cores, best of 3 calls:
    with this project's BLAS threshold (flat.BLAS_MIN_FLOATS) against faiss's default one (the baseline: one pass
    over the store per query for any batch of fewer than 128,000 floats), alternating."""

    def best_ms(batch: np.ndarray, threshold: int) -> float:
        times = []
        faiss.cvar.distance_compute_blas_threshold = threshold
        try:
            for _ in range(3):
                start = time.perf_counter()
                store.search(batch, K)
                times.append(time.perf_counter() - start)
        finally:
            faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_FLOATS
        return min(times) * 1e3 / len(batch)

    report = {}
    for n in (n for n in sizes if n <= len(queries)):
        ours, default = best_ms(queries[:n], BLAS_MIN_FLOATS), best_ms(queries[:n], FAISS_BLAS_THRESHOLD)
        report[str(n)] = {"ms_per_query": round(ours, 3), "faiss_default_ms_per_query": round(default, 3),
                          "speedup": round(default / ours, 2)}  # fmt: skip
    return report


def read_bandwidth(repeats: int = 5) -> float:
    """Bytes/s one thread reads: the best of `repeats` matrix-vector products over a 512 MiB float32 matrix (what
    a single-query flat scan does: stream every vector once, two FLOPs per 4 bytes), on one torch thread."""
    import torch  # only here: the rest of this benchmark needs no torch

    matrix = torch.ones((2**21, 64), dtype=torch.float32)
    vector = torch.ones(64, dtype=torch.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = float("inf")
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mv(matrix, vector)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return matrix.numel() * 4 / best


def bench_kind(  # noqa: ANN001
    kind: str,
    data: np.ndarray,
    queries: np.ndarray,
    truths: dict[str, np.ndarray],
    allowed,
    flat: dict | None,
    fresh: np.ndarray,
    params: dict | None = None,
) -> dict:
    ids = np.arange(len(data), dtype=np.int64)
    start = time.perf_counter()
    store = create_vector_store(kind, data.shape[1], expected_size=len(data), params=params)
    store.add(ids, data)
    build = time.perf_counter() - start
    start = time.perf_counter()
    found = store.search(queries, K).ids
    batch_s = time.perf_counter() - start
    single = queries[:200]
    bound_ms = len(data) * data.shape[1] * 4 / read_bandwidth() * 1e3 if kind == "flat" else None
    p50, p99 = latencies(store, single)
    parallel = parallel_searches(store, single)
    report = {
        "build_s": round(build, 2),
        "batch_qps": round(len(queries) / batch_s, 1),
        "latency_p50_ms": round(p50, 3),
        "latency_p99_ms": round(p99, 3),
        "recall_at_10": round(recall(found, truths["all"]), 4),
        "parallel_single_queries": parallel,
    }
    if bound_ms is not None:
        report["bandwidth_bound_ms"] = round(bound_ms, 3)
        report["latency_vs_bound"] = round(p50 / bound_ms, 2)
        report["batched_queries"] = batched_queries(store, queries)
    for pct, ids_allowed in allowed.items():
        start = time.perf_counter()
        filtered = store.search(queries[:200], K, allowed_ids=ids_allowed).ids
        report[f"filtered_{pct}pct_qps"] = round(200 / (time.perf_counter() - start), 1)
        report[f"filtered_{pct}pct_p50_ms"] = round(latencies(store, single[:50], ids_allowed)[0], 3)
        report[f"filtered_{pct}pct_recall_at_10"] = round(recall(filtered, truths[f"filtered_{pct}pct"]), 4)
    report["params"] = {k: v for k, v in store.params.items() if k != "trained_on"}
    if not store.exact:
        report["operating_points"] = operating_points(kind, store, queries, truths["all"], flat)
    # Last: the updates change the store the figures above describe.
    report[f"updates_of_{UPDATE_BATCH}"] = live_updates(store, fresh, len(data), queries[0])
    return report


def operating_points(kind: str, store, queries: np.ndarray, truth: np.ndarray, flat: dict | None) -> dict:  # noqa: ANN001
    """Recall, batch QPS and single-query p50 at a ladder of efforts, up to recall 0.99 (see the module doc)."""
    if kind == "hnsw":
        key, ladder, most = "ef_search", EFFORTS["hnsw"], len(store)
    else:
        key, ladder, most = "nprobe", EFFORTS["ivf"], int(store.params["nlist"])
    configured = store.params[key]
    points = []
    try:
        for effort in [e for e in ladder if e <= most]:
            store.params[key] = effort
            start = time.perf_counter()
            found = store.search(queries, K).ids
            qps = len(queries) / (time.perf_counter() - start)
            p50, _ = latencies(store, queries[:200])
            points.append({key: effort, "recall_at_10": round(recall(found, truth), 4), "batch_qps": round(qps, 1),
                           "latency_p50_ms": round(p50, 3)})  # fmt: skip
            if points[-1]["recall_at_10"] >= 0.99:
                break
    finally:
        store.params[key] = configured
    report: dict = {"points": points}
    good = [p for p in points if p["recall_at_10"] >= TARGET_RECALL]
    if good:
        best = dict(good[0])
        if flat is not None:
            best["qps_vs_exact"] = round(best["batch_qps"] / flat["batch_qps"], 2)
            best["latency_speedup_vs_exact"] = round(flat["latency_p50_ms"] / best["latency_p50_ms"], 2)
        report["at_recall_0_95"] = best
    return report


def parse_variant(parser: argparse.ArgumentParser, variant: str) -> tuple[str, str, dict]:
    """(name, kind, params) of a `--variant NAME=KIND:JSON`; a malformed one is a CLI error."""
    name, _, spec = variant.partition("=")
    kind, _, params = spec.partition(":")
    try:
        params = json.loads(params or "{}")
    except json.JSONDecodeError as exc:
        parser.error(f"--variant {variant!r}: the params are not JSON ({exc})")
    if not name or kind not in list_vector_store_kinds() or not isinstance(params, dict):
        parser.error(f"--variant {variant!r}: expected NAME=KIND:JSON-object, KIND one of {list_vector_store_kinds()}")
    return name, kind, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default=",".join(list_vector_store_kinds()))
    parser.add_argument("--data", choices=DATA_MODELS, default="isotropic", help="how clusters spread (see above)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=KIND:JSON",
        help="also a store of KIND with explicit params, reported as NAME, e.g. the IVF-PQ of before 2026-12-07: "
        'ivf_pq_8bit=ivf_pq:{"nbits": 8, "refine": "sq8", "refine_factor": 16, "nprobe": 256}',
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Exact first (the ANN ratios need it), then the kinds, then the variants.
    runs = [(kind, kind, None) for kind in sorted(args.kinds.split(","), key=lambda k: k != "flat")]
    runs += [parse_variant(parser, variant) for variant in args.variant]
    rng = np.random.default_rng(0)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
        f"omp threads {faiss.omp_get_max_threads()}",
        "dim": args.dim,
        "data": args.data,
        "queries": args.queries,
        "results": {},
    }
    for n in (int(s) for s in args.sizes.split(",")):
        middle = rng.standard_normal((max(64, n // 250), args.dim), dtype=np.float32)
        middle /= np.linalg.norm(middle, axis=1, keepdims=True)
        basis = spread_basis(args.dim, args.data, rng)
        data = clustered(n, args.dim, rng, middle, basis)
        # Queries are new draws from the same mixture (as a text query is not a copy of an indexed image).
        queries = clustered(args.queries, args.dim, rng, middle, basis)
        # From a generator of its own, so that the data, queries and filters stay those of earlier runs.
        fresh = clustered(UPDATE_BATCH * UPDATE_ROUNDS, args.dim, np.random.default_rng(n), middle, basis)
        report.setdefault("lid", {})[str(n)] = round(local_intrinsic_dimension(data, queries[:200]), 1)
        if not args.json:
            print(f"n={n:,} {args.data}: local intrinsic dimension {report['lid'][str(n)]} (d={args.dim})", flush=True)
        allowed = {
            pct: np.sort(rng.choice(n, max(K, n * pct // 100), replace=False)).astype(np.int64) for pct in (1, 10)
        }
        truths = {"all": exact(data, queries)}
        truths.update({f"filtered_{pct}pct": exact(data, queries[:200], ids) for pct, ids in allowed.items()})
        flat = None
        for name, kind, params in runs:
            result = bench_kind(kind, data, queries, truths, allowed, flat, fresh, params)
            if name == "flat":
                flat = result
            report["results"][f"{name}@{n}"] = result
            if not args.json:
                print(f"{name:>8} n={n:<9,} {json.dumps(result)}", flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["machine"])


if __name__ == "__main__":
    main()
