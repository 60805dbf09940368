"""Approximate back ends: HNSW, IVF-Flat and IVF-PQ, with their sizing rules and the `auto` choice.

Sizing (n = number of vectors the index is built for):
- IVF lists: nlist = 4·sqrt(n) rounded to a power of two, lowered until every list has >= 39 training points
  (faiss's own minimum), at most 65,536. nprobe = nlist/16 for IVF-Flat, nlist/4 for IVF-PQ, at least 8 (or
  nlist when smaller).
- IVF-PQ codes: 4 bits per sub-quantizer, one sub-quantizer per 2 dimensions (m = d/2, rounded down to a divisor
  of d): d/4 bytes per vector, scanned by faiss's fast-scan kernels (`IndexIVFPQFastScan`, look-up tables in SIMD
  registers), which need 624 training vectors (16 centroids x 39 points). An explicit `nbits` of 5-8 builds a plain
  `IndexIVFPQ` (m = 2·d/nbits by default: the same d/4 bytes; fewer bits below 39·2^nbits training vectors);
  `on_disk` stores default to 8 bits, whose lists faiss can memory-map, and to the 8-bit copy.
  The top refine_factor·k candidates (64·k at d = 64, fewer as d grows: 8·k from d = 384) are re-scored with a
  float16 copy of each vector (`refine`: "fp16", 2·d bytes; "sq8" halves it): the re-rank, not the lists, capped
  recall at d = 64. The fast-scan codes are of each vector's residual to its list's centroid. At 1M x 64
  (bench/search.py data) the fast-scan store reaches recall@10 0.96 (isotropic) / 0.99 (power-law; 0.98 before the
  residual codes) at its defaults in 1.3-1.6 ms a query; the 8-bit codes and copy it replaced reached 0.91
  (isotropic) at the same nprobe in 2.8 ms and never 0.95: the 8-bit copy's score error alone cost ~3 points, and
  fast scan makes a 4x wider probe cheaper than the old narrow one (bench/RESULTS.md, "IVF-PQ fast scan"). At
  1M x 768 (power-law data) it reaches 0.97 at nprobe 192 with 11x exact search's batch QPS ("IVF-PQ at d = 768").
  A removal takes its ids out of the lists at once (and zeroes the code slots faiss's fast-scan removal leaves
  behind, which spoiled the codes of vectors added after it: fast_scan.py), and out of the re-rank copy in bulk, once
  they are an eighth of it (`COPY_STALE_SHARE`).
- HNSW: M = 32 links per node; efConstruction and efSearch grow with the number of vectors indexed (`hnsw_ef_search`,
  `hnsw_ef_construction`), because a graph over more vectors needs a wider search for the same recall: on the
  clustered d=64 data of bench/search.py, efSearch 128 gives recall@10 0.96 at 100k but 0.76 at 1M. Measured at 1M:
  efSearch 512 reaches 0.948 on a graph built at efConstruction 80 and 0.976 at 200, so both grow: 128 / 80 up to
  100k vectors, 576 / 200 at 1M. efSearch is sized for the worse graph, since a collection grown batch by batch
  inserted its first vectors at the lower efConstruction of its smaller size. The values in force are kept in
  `params` (raised before each add and after loading); explicit ones are never changed.
- Training uses a seeded random sample of up to 64 points per centroid, so builds are reproducible.

A filtered search at selectivity s (allowed / indexed vectors) starts at efSearch/s (HNSW) or nprobe/s (IVF, at
most nlist): with only a share s of the vectors eligible, the index has to look 1/s times further for the same
k neighbours, and stopping at the first k allowed ones found is what gave filtered recall@10 of 0.57 (IVF at 1%)
and 0.31 (HNSW at 1M, 1%). When that search would cost more than scoring the allowed vectors directly, they are
scored directly instead (exact: base.py `_brute_force_pays`); IVF-Flat keeps a direct map (id -> list slot) for
that, IVF-PQ scores its re-rank copy. A search that still comes back short climbs the ladder (x4 per rung)
and, last, scores the allowed vectors of the unlucky queries directly.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from indexer.errors import InvalidInput
from indexer.vector_store.base import SELECTOR_COST, FaissStore, merge_disjoint, sorted_contains, top_k
from indexer.vector_store.fast_scan import is_fast_scan, remove_ids

# `auto`: exact search while a full scan is cheap; a graph up to the size where IVF-PQ's codes serve better; IVF-PQ
# beyond.
AUTO_FLAT_MAX = 50_000
# Narrow vectors (the shapes encoder's 128, bench/search.py's 64) leave the graph at 1M: at 1M x 64, at every matched
# recall from 0.95 to 0.99, IVF-PQ answered batches as fast as HNSW or faster on power-law data (3,577 vs 3,450 QPS
# at 0.97; 2,473 vs 1,991 at 0.99) and 2.3-3.2x as fast on isotropic data, with single-query p50 as low or lower
# except below 0.99 on power-law data (0.57-0.83 vs 1.4 ms); it built in 19-22 s against HNSW's 455-536 s, added
# 32 vectors in ~1 ms against 37-49 ms, and holds 282 B a vector against 630. At their defaults HNSW keeps more
# recall (0.983 vs 0.963 isotropic, 0.9987 vs 0.991 power-law) at about a third of IVF-PQ's QPS and 1.6-1.9x its
# p50. At 500k (power-law) the two tie on batch QPS at 0.97 while HNSW answers one query in half the time, so the
# graph stays below 1M (bench/RESULTS.md, "HNSW or IVF-PQ at d = 64").
AUTO_HNSW_MAX = 1_000_000
# Wide vectors (every encoder here: 512 or 768) leave the graph at 300k: on power-law data at d = 768, at 1M HNSW took
# 19 min to build and needed efSearch 1024 for recall@10 0.95, no faster than exact search, while IVF-PQ built in
# 90 s and reached 0.97 at 3.6 ms a query; at 500k IVF-PQ had 3x HNSW's batch QPS at 0.95; at 300k 1.9x at 0.95 and
# 5.8x at 0.99, and at their defaults 0.997 where HNSW had 0.987 at the same 2.8 ms p50; it built in 33 s (126 s on
# SSE3 BLAS kernels) against HNSW's 173 s. At 200k IVF-PQ still leads at a given recall, but at the defaults HNSW
# answers in half the time (0.994 at 1.5 ms vs 0.9996 at 2.9 ms) (bench/RESULTS.md, "IVF-PQ at d = 768" and "Between
# 200k and 500k").
AUTO_WIDE_DIM = 512
AUTO_HNSW_MAX_WIDE = 300_000

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80  # at and below HNSW_SIZING_FROM vectors
HNSW_EF_SEARCH = 128
# Beyond this many vectors efSearch grows as (n / HNSW_SIZING_FROM) ** HNSW_EF_SEARCH_GROWTH, efConstruction as
# ** HNSW_EF_CONSTRUCTION_GROWTH, each capped (bench/RESULTS.md, "HNSW at 1M", has the measurements behind them).
HNSW_SIZING_FROM = 100_000
HNSW_EF_SEARCH_GROWTH = 0.65
HNSW_EF_SEARCH_MAX = 1024
HNSW_EF_CONSTRUCTION_GROWTH = 0.4
HNSW_EF_CONSTRUCTION_MAX = 200
# What HNSW stores saved before the size rules recorded in their params; such a store gets the rules on loading.
_HNSW_LEGACY_PARAMS = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
TRAIN_POINTS_PER_CENTROID = 64
MIN_POINTS_PER_LIST = 39
MAX_NLIST = 65_536
PQ_MAX_NBITS = 8
PQ_MIN_NBITS = 4
# 4-bit codes are scanned by faiss's SIMD fast-scan kernels (look-up tables held in registers).
FASTSCAN_NBITS = 4
MAPPABLE_PQ_NBITS = 8  # faiss memory-maps plain IVF lists only, so on_disk stores default to 8-bit codes
PQ_CODE_BITS_PER_DIM = 2  # m x nbits = 2·d bits: d/4 bytes per vector, at any nbits
# IVF-Flat probes 1/16 of its lists by default. Fast-scan IVF-PQ scans its codes so much faster that it probes
# 1/4 (and re-ranks 64·k candidates at d = 64): recall@10 0.96-0.98 at 1M x 64 (isotropic / power-law data) for
# 1.3-1.6 ms, where 1/16 gave 0.82-0.91 (bench/RESULTS.md, "IVF-PQ fast scan").
IVF_PROBE_SHARE = 16
PQ_PROBE_SHARE = 4
# Candidates re-ranked per result wanted: 8192 / code bits (m x nbits), rounded to a power of two, within [8, 64]
# (`choose_refine_factor`); the default codes have 2·d bits, so 4096/d: 64·k at d = 64, 8·k from d = 384. A PQ
# score sums m sub-quantizer errors, which average out against the gaps between neighbours as the code grows: on
# power-law data at 1M, re-ranking fewer than 64·k lost this much recall@10: d = 64, 32·k: 0.008; d = 256, 16·k:
# 0.002; d = 512, 8·k: 0.0004; d = 768, 8·k: 0.0001, where the re-rank of 64·k was 60% of a batch's time
# (bench/RESULTS.md, "IVF-PQ at d = 768"). Shorter explicit codes (e.g. m = 64 at d = 768) re-rank more.
PQ_REFINE_BUDGET_BITS = 8192
PQ_REFINE_FACTOR_MIN = 8
PQ_REFINE_FACTOR_MAX = 64
# The copy IVF-PQ re-ranks its candidates with: float16 (2·d bytes a vector) by default; an 8-bit one (d bytes)
# halves that but its ~1e-3 score error cost 3 points of recall@10 on bench/search.py's isotropic data.
REFINE_TYPES = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}
REFINE_DEFAULT = "fp16"
# Marks an IVF-PQ store whose fast-scan lists had the slots of every removal cleared (fast_scan.py): in one saved
# before, a vector added after a removal may carry a spoiled code, so such a store is rebuilt from the embeddings.
CLEAN_REMOVALS = "clean_removals"
# A removal takes its ids out of the IVF-PQ lists at once but leaves their rows in the re-rank copy, out of reach (no
# list names them, the row table forgets them): taking rows out of the copy moves every later row and rebuilds
# IndexIDMap2's id -> row hash, 191 ms for 32 ids at 1M x 768 (57 ms at d = 64) with searches held, against 4 ms for
# the lists. The copy drops such rows together once they are 1/COPY_STALE_SHARE of it, or before one of their ids is
# added again (bench/RESULTS.md, "Removals from IVF-PQ").
COPY_STALE_SHARE = 8
# A store keeps an id -> row table for its re-rank copy while its largest id is within this many times its count.
ROW_TABLE_SLACK = 8
ROW_TABLE_FLOOR = 1 << 20
SCRATCH_MAX_BYTES = 16 << 20  # the re-rank's reused buffers, at most (64·k = 640 candidates x 768 floats: 2 MB)
# The queries of a batch are re-ranked this many candidate values (candidates x d) at a time: each step's gather,
# conversion and product cost a fixed ~0.1 ms of calls besides their work, and a block of 2^18 floats (1 MB: 6
# queries of 640 candidates at d = 64, 4 of 80 at d = 768) stays in cache. 1,000 queries at 1M x 64: 0.19 -> 0.10 ms
# a query re-ranked (2^16 values: 0.19; 2^20: 0.12).
RERANK_BLOCK_VALUES = 1 << 18
_SEED = 1234


def resolve_kind(kind: str, n: int, dim: int) -> str:
    """The concrete kind for `kind` ("auto" picks by collection size n and vector width `dim`; anything else is
    returned as is)."""
    if kind != "auto":
        return kind
    if n < AUTO_FLAT_MAX:
        return "flat"
    if n < (AUTO_HNSW_MAX_WIDE if dim >= AUTO_WIDE_DIM else AUTO_HNSW_MAX):
        return "hnsw"
    return "ivf_pq"


def choose_nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    nlist = min(nlist, MAX_NLIST)
    while nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def choose_nprobe(nlist: int, share: int = IVF_PROBE_SHARE) -> int:
    """Lists probed per query: one in `share`, at least 8 (or every list when there are fewer)."""
    return min(nlist, max(8, nlist // share))


def choose_pq_nbits(n: int) -> int:
    """The most bits per code that n training vectors support (39 per codebook centroid), at most 8."""
    fits = int(math.floor(math.log2(max(n, 1) / MIN_POINTS_PER_LIST))) if n >= MIN_POINTS_PER_LIST else 0
    return min(PQ_MAX_NBITS, fits)


def choose_pq_m(dim: int, nbits: int = 4) -> int:
    """Sub-quantizers for `nbits`-bit codes of d/4 bytes: one per 2 dimensions at 4 bits, per 4 at 8 bits (rounded
    down to a divisor of d)."""
    target = max(1, PQ_CODE_BITS_PER_DIM * dim // nbits)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def choose_refine_factor(code_bits: int) -> int:
    """IVF-PQ candidates re-ranked per result wanted, for codes of `code_bits` (m x nbits; see
    PQ_REFINE_BUDGET_BITS)."""
    factor = 2 ** round(math.log2(PQ_REFINE_BUDGET_BITS / max(code_bits, 1)))
    return min(PQ_REFINE_FACTOR_MAX, max(PQ_REFINE_FACTOR_MIN, factor))


def _grown(base: int, n: int, growth: float, cap: int) -> int:
    """base x (n / HNSW_SIZING_FROM) ** growth, rounded up to a multiple of 16, within [base, cap]."""
    if n <= HNSW_SIZING_FROM or growth <= 0:
        return base
    value = math.ceil(base * (n / HNSW_SIZING_FROM) ** growth / 16) * 16
    return max(base, min(cap, value))


def hnsw_ef_search(n: int) -> int:
    """efSearch for an HNSW graph over n vectors."""
    return _grown(HNSW_EF_SEARCH, n, HNSW_EF_SEARCH_GROWTH, HNSW_EF_SEARCH_MAX)


def hnsw_ef_construction(n: int) -> int:
    """efConstruction for vectors added to a graph that will then hold n vectors."""
    return _grown(HNSW_EF_CONSTRUCTION, n, HNSW_EF_CONSTRUCTION_GROWTH, HNSW_EF_CONSTRUCTION_MAX)


_HNSW_SIZE_RULES = {"ef_search": hnsw_ef_search, "ef_construction": hnsw_ef_construction}


def ladder(start: int, cap: int, rungs: int) -> list[int]:
    """start, 4·start, 16·start, ... (`rungs` values at most), each at most `cap`, without repeats."""
    values = [min(cap, start * 4**rung) for rung in range(rungs)]
    return sorted(set(values))


def float16_into(values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`values` (float16) converted into `out` (float32, same shape) by torch, whose conversion is vectorised: 640 x
    768 values took 0.06 ms, against 1.3 ms in numpy and 1.0 ms in faiss's `sa_decode`. On one torch thread: torch's
    OpenMP runtime is not faiss's, and the two teams spinning against each other on 2 cores made a batch of IVF-PQ
    searches 16x slower (2.5 s vs 0.16 s for 300 queries at d = 768). torch is imported here only: the other kinds
    never need it."""
    import torch

    from internvl_models.threads import intra_op_threads

    with intra_op_threads(1):
        torch.from_numpy(out).copy_(torch.from_numpy(values))
    return out


def _training_sample(vectors: np.ndarray, centroids: int) -> np.ndarray:
    limit = TRAIN_POINTS_PER_CENTROID * centroids
    if len(vectors) <= limit:
        return vectors
    rows = np.random.default_rng(_SEED).choice(len(vectors), limit, replace=False)
    return vectors[np.sort(rows)]


class HNSWStore(FaissStore):
    """`IndexIDMap2(IndexHNSWFlat)` by inner product. Removal leaves tombstones (a graph cannot drop nodes)."""

    kind = "hnsw"
    exact = False
    removes_in_place = False

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(dim, params)
        if "sized" not in self.params:
            legacy = all(self.params.get(k) == v for k, v in _HNSW_LEGACY_PARAMS.items())
            # The efforts the size rules maintain: those not given explicitly (all of them for a legacy store).
            self.params["sized"] = sorted(k for k in _HNSW_SIZE_RULES if legacy or k not in self.params)
        self.params.setdefault("M", HNSW_M)
        self._size_efforts(0)

    def _size_efforts(self, n: int) -> None:
        for key in self.params["sized"]:
            self.params[key] = _HNSW_SIZE_RULES[key](n)

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(self.dim, int(self.params["M"]), faiss.METRIC_INNER_PRODUCT)
        return faiss.IndexIDMap2(graph)

    def _add_to_index(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        # Sized for the graph as it will be after this add, so a collection grown one batch at a time gets the
        # same efConstruction for its later vectors as one built at once.
        self._size_efforts(self._indexed_count() + len(ids))
        faiss.downcast_index(self._index.index).hnsw.efConstruction = int(self.params["ef_construction"])
        self._index.add_with_ids(vectors, ids)

    def restore(self, header: Mapping[str, Any], sections: Mapping[str, memoryview]) -> None:
        super().restore(header, sections)
        self._size_efforts(self._indexed_count())

    def _efforts(self, k: int, selectivity: float) -> list[int]:
        """efSearch values: the configured one scaled by 1/selectivity, then x4 three times (at most every node)."""
        base = max(int(self.params["ef_search"]), k)
        cap = max(base, self._indexed_count())
        return ladder(min(cap, math.ceil(base / selectivity)), cap, rungs=4)

    def _search_params(self, selector, effort: int) -> faiss.SearchParameters:
        if selector is None:
            return faiss.SearchParametersHNSW(efSearch=effort)
        return faiss.SearchParametersHNSW(efSearch=effort, sel=selector)

    def _filtered_cost(self, k: int, selectivity: float) -> float:
        # Each node expanded on the bottom layer compares the query with up to 2·M neighbours (random accesses:
        # about as costly per vector as scoring one directly).
        compared = self._efforts(k, selectivity)[0] * 2 * int(self.params["M"])
        return compared + selectivity * self._indexed_count() * SELECTOR_COST


class IVFFlatStore(FaissStore):
    """`IndexIVFFlat` by inner product: k-means lists of exact vectors; ids are stored in the lists natively."""

    kind = "ivf_flat"
    exact = False
    probe_share = IVF_PROBE_SHARE  # the default nprobe is nlist / probe_share

    def _sizing(self, vectors: np.ndarray) -> dict[str, Any]:
        """Parameters for a build on `vectors`: explicit ones win, the sizing rules fill in the rest.

        The first batch is the training set, so it sizes the lists (every list needs training points). A store
        that has grown far past `trained_on` vectors should be rebuilt; the engine decides when.
        """
        sizing = {"nlist": choose_nlist(len(vectors)), **self.params, "trained_on": len(vectors)}
        sizing.setdefault("nprobe", choose_nprobe(int(sizing["nlist"]), self.probe_share))
        if len(vectors) < int(sizing["nlist"]):
            raise InvalidInput(
                f"{self.kind}: {sizing['nlist']} lists need at least as many training vectors, got {len(vectors)}"
            )
        return sizing

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        sizing = self._sizing(vectors)
        nlist = int(sizing["nlist"])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(vectors, nlist))
        # id -> (list, slot), so that allowed vectors can be reconstructed and scored directly.
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        self.params = sizing
        return index

    def _efforts(self, k: int, selectivity: float) -> list[int]:
        """nprobe values: the configured one scaled by 1/selectivity, then x4 until every list is probed."""
        nlist = int(self.params["nlist"])
        start = min(nlist, math.ceil(int(self.params["nprobe"]) / selectivity))
        return ladder(start, nlist, rungs=1 + max(0, math.ceil(math.log(nlist / start, 4))))

    def _search_params(self, selector, effort: int) -> faiss.SearchParameters:
        if selector is None:
            return faiss.SearchParametersIVF(nprobe=effort)
        return faiss.SearchParametersIVF(nprobe=effort, sel=selector)

    def _filtered_cost(self, k: int, selectivity: float) -> float:
        # The probed lists are scanned, disallowed vectors skipped by the selector.
        return self._scan_cost(self._efforts(k, selectivity)[0] / int(self.params["nlist"]), selectivity)

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        if self._index.direct_map.type != faiss.DirectMap.Hashtable:  # a store saved before the direct map
            self._index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return self._index.reconstruct_batch(ids)

    def _remove_from_index(self, ids: np.ndarray) -> None:
        # A hash-table direct map only accepts removal by an explicit id array (which it looks up id by id); without
        # one, every list is scanned and the hashed selector keeps that linear.
        if self._index.direct_map.type == faiss.DirectMap.Hashtable:
            self._index.remove_ids(faiss.IDSelectorArray(ids))
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))


class IVFPQStore(IVFFlatStore):
    """IVF-PQ candidates (4-bit fast-scan codes by default) re-ranked with a float16 copy of the vectors."""

    kind = "ivf_pq"
    probe_share = PQ_PROBE_SHARE

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(dim, params)
        if "nbits" in self.params and int(self.params["nbits"]) not in range(PQ_MIN_NBITS, PQ_MAX_NBITS + 1):
            raise InvalidInput(f"ivf_pq: nbits={self.params['nbits']} must be {PQ_MIN_NBITS} to {PQ_MAX_NBITS}")
        nbits = int(self.params.get("nbits", FASTSCAN_NBITS))
        self.params.setdefault("m", choose_pq_m(dim, nbits))
        self.params.setdefault("refine_factor", choose_refine_factor(int(self.params["m"]) * nbits))
        self.params.setdefault("refine", REFINE_DEFAULT)
        if dim % int(self.params["m"]):
            raise InvalidInput(f"ivf_pq: m={self.params['m']} must divide the dimension {dim}")
        if self.params["refine"] not in REFINE_TYPES:
            raise InvalidInput(f"ivf_pq: refine={self.params['refine']!r} must be one of {sorted(REFINE_TYPES)}")
        self._refine: faiss.Index | None = None
        self._buffers = threading.local()  # name -> scratch array, per searching thread
        self._rows_lock = threading.Lock()

    @property
    def _refine(self) -> faiss.Index | None:
        """The re-rank copy: `IndexIDMap2` over an `IndexScalarQuantizer` (rows in insertion order, catalog ids)."""
        return self._refine_copy

    @_refine.setter
    def _refine(self, copy: faiss.Index | None) -> None:
        # Set on build and load, and by ShardedStore when it copies, maps or re-reads a shard's copy.
        self._refine_copy = copy
        # The copy's IndexScalarQuantizer, and its codes as a numpy view (None: not made yet): SWIG calls that
        # cost 20 us a search when made every time. The view is dropped by every change of the copy, which
        # happens only under the store's write lock, with no search reading it.
        self._copy_index = None if copy is None else faiss.downcast_index(copy.index)
        self._copy_codes: np.ndarray | None = None
        self._rows: np.ndarray | None = None
        self._stale_ids: np.ndarray | None = None  # None: not known yet (see `_stale`)

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        sizing = {"nbits": FASTSCAN_NBITS, "refine": REFINE_DEFAULT, **self._sizing(vectors)}
        requested = int(sizing["nbits"])
        # Fewer bits than asked when the first batch cannot give every codebook centroid 39 training points.
        sizing["nbits"] = nbits = min(requested, choose_pq_nbits(len(vectors)))
        nlist, m = int(sizing["nlist"]), int(sizing["m"])
        if nbits < PQ_MIN_NBITS:
            raise InvalidInput(
                f"ivf_pq needs at least {MIN_POINTS_PER_LIST * 2**PQ_MIN_NBITS} vectors to train its codebooks, "
                f"got {len(vectors)}; use 'flat' or 'auto' for a collection this small"
            )
        quantizer = faiss.IndexFlatIP(self.dim)
        if requested == FASTSCAN_NBITS:
            index = faiss.IndexIVFPQFastScan(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            # Codes of the residual to the list's centroid, as plain IndexIVFPQ's are (faiss leaves them off for
            # fast scan because by L2 they need a table per list; by inner product one table serves every list):
            # same scan cost, recall@10 0.943 -> 0.952 at nprobe 384, 1M x 64 power-law data (bench/RESULTS.md).
            index.by_residual = True
        else:
            index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(vectors, max(nlist, 2**nbits)))
        refine = faiss.IndexScalarQuantizer(self.dim, REFINE_TYPES[sizing["refine"]], faiss.METRIC_INNER_PRODUCT)
        refine.train(_training_sample(vectors, 2**nbits))
        self._refine = faiss.IndexIDMap2(refine)
        sizing[CLEAN_REMOVALS] = True
        self.params = sizing
        return index

    @property
    def needs_rebuild(self) -> bool:
        """Fast-scan lists saved before removals cleared the slots they free (`CLEAN_REMOVALS`)."""
        return is_fast_scan(self._index) and not self.params.get(CLEAN_REMOVALS)

    def _add_to_index(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        stale = self._stale()
        if len(stale) and sorted_contains(stale, ids).any():
            self._drop_stale_rows(stale)  # an id comes back: its old row goes before its new one is added
        first_row = self._refine.ntotal
        self._index.add_with_ids(vectors, ids)
        self._refine.add_with_ids(vectors, ids)
        self._copy_codes = None  # the codes may have moved
        self._rows = self._extended_rows(ids, first_row)

    def _remove_from_index(self, ids: np.ndarray) -> None:
        # Fast-scan lists: clearing the slots faiss leaves behind, in the lists the copy's rows point to (fast_scan.py).
        remove_ids(self._index, ids, lambda: self._reconstruct(ids))
        stale = merge_disjoint(self._stale(), ids)
        if len(stale) * COPY_STALE_SHARE >= self._refine.ntotal:
            self._drop_stale_rows(stale)
            return
        self._stale_ids = stale  # their rows stay in the copy, out of reach (see COPY_STALE_SHARE)
        if self._rows is not None and len(self._rows):
            self._rows[ids] = -1

    def _stale(self) -> np.ndarray:
        """Sorted ids whose rows the re-rank copy still holds after their removal. Worked out from the copy's ids
        and the live ones when not known (a copy read from a file or handed over by ShardedStore)."""
        if self._stale_ids is None:
            if self._refine.ntotal == len(self._ids):
                self._stale_ids = np.empty(0, dtype=np.int64)
            else:
                held = faiss.vector_to_array(self._refine.id_map)
                self._stale_ids = np.sort(held[~sorted_contains(self._ids, held)])
        return self._stale_ids

    def _drop_stale_rows(self, stale: np.ndarray) -> None:
        self._refine.remove_ids(faiss.IDSelectorBatch(stale))
        self._copy_codes = None
        self._stale_ids = stale[:0]
        self._rows = None  # the copy closed the gaps: every later row moved

    def _row_table(self) -> np.ndarray | None:
        """id -> row of the re-rank copy (-1: absent), indexed by id; None when the ids are too sparse for one.

        Built from the copy's id list at the first search after a load or a removal, and extended in place by adds.
        Finding 640 random candidates through it and gathering their rows takes a fraction of the copy's own per-id
        hash lookups (bench/RESULTS.md, "IVF-PQ fast scan")."""
        rows = self._rows
        if rows is None:
            with self._rows_lock:  # searches run side by side: one builds it, complete before the others see it
                rows = self._rows
                if rows is None:
                    self._rows = rows = self._built_rows()
        return rows if len(rows) else None

    def _built_rows(self) -> np.ndarray:
        ids = faiss.vector_to_array(self._refine.id_map)
        top = int(ids.max()) + 1 if len(ids) else 0
        if not len(ids) or int(ids.min()) < 0 or not self._dense_enough(top, len(ids)):
            return np.empty(0, dtype=np.int64)  # marks "too sparse": the copy's hash map is used
        rows = np.full(top, -1, dtype=np.int32 if len(ids) < 2**31 else np.int64)
        rows[ids] = np.arange(len(ids))
        return rows

    @staticmethod
    def _dense_enough(top: int, count: int) -> bool:
        return top <= ROW_TABLE_SLACK * count + ROW_TABLE_FLOOR and count < 2**31

    def _extended_rows(self, ids: np.ndarray, first_row: int) -> np.ndarray | None:
        """The row table after an add put `ids` at rows first_row... of the copy: the built table with them set
        (grown by half when they pass its end, so a stream of new ids copies it O(log n) times), or None (rebuild
        at the next search) when there is none or the ids no longer are dense. Rebuilding after every batch cost
        ~10 ms at 1M vectors, more than the search that paid for it."""
        table = self._rows
        top = int(ids.max()) + 1
        if table is None or not len(table) or not self._dense_enough(top, self._refine.ntotal):
            return None
        if top > len(table):
            grown = np.full(max(top, len(table) + len(table) // 2), -1, dtype=table.dtype)
            grown[: len(table)] = table
            table = grown
        table[ids] = np.arange(first_row, first_row + len(ids))
        return table

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of `ids` (all held) as the re-rank copy has them (float16: cosine error ~1e-4)."""
        return self._copy_rows(ids, np.empty((len(ids), self.dim), dtype=np.float32), reuse=False)

    def _copy_rows(self, ids: np.ndarray, out: np.ndarray, *, reuse: bool = True) -> np.ndarray:
        """`_reconstruct` into `out` (float32, at least len(ids) rows); returns its first len(ids) rows. `reuse`:
        gather the codes into a buffer kept for the next call (a search's few hundred candidates), not a new array
        (a brute-force block of thousands, which would keep a large buffer alive)."""
        out = out[: len(ids)]
        table = self._row_table()
        if table is None:
            out[:] = self._refine.reconstruct_batch(ids)
            return out
        rows, codes = self._copy_index, self._codes()
        found = table[ids]
        if rows.sq.qtype != faiss.ScalarQuantizer.QT_fp16:
            out[:] = rows.sa_decode(codes[found])
            return out
        if reuse:
            picked = np.take(codes, found, axis=0, out=self._scratch("codes", len(ids), rows.code_size, np.uint8))
        else:
            picked = codes[found]
        return float16_into(picked.view(np.float16), out)

    def _codes(self) -> np.ndarray:
        """The re-rank copy's codes, (rows, code size) bytes, viewed in place."""
        codes = self._copy_codes
        if codes is None:
            rows = self._copy_index
            codes = faiss.rev_swig_ptr(rows.codes.data(), rows.ntotal * rows.code_size).reshape(-1, rows.code_size)
            self._copy_codes = codes
        return codes

    def _scratch(self, name: str, rows: int, width: int, dtype: type) -> np.ndarray:
        """A reused (rows, width) buffer. A search's candidates can be MBs (640 x 768 floats: 2 MB), and a
        fresh array that size is a fresh mapping whose page faults cost more than the re-rank itself on this VM."""
        buffers = self._buffers.__dict__  # this thread's: searches run side by side
        buffer = buffers.get(name)
        if buffer is None or len(buffer) < rows or buffer.shape[1] != width:
            buffer = np.empty((max(rows, 1), width), dtype=dtype)
            if buffer.nbytes <= SCRATCH_MAX_BYTES:  # a search for thousands of results does not pin its buffer
                buffers[name] = buffer
        return buffer[:rows]

    def _index_search(self, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        fetch = k * int(self.params["refine_factor"])
        _, candidates = self._index.search(queries, fetch, params=params)
        scores = np.full(candidates.shape, -np.inf, dtype=np.float32)
        step = max(1, RERANK_BLOCK_VALUES // (fetch * self.dim))
        # A few queries at a time (RERANK_BLOCK_VALUES), through buffers reused across searches (see `_scratch`).
        for start in range(0, len(queries), step):
            block, block_queries = candidates[start : start + step], queries[start : start + step]
            valid = block >= 0
            if valid.all():
                vectors = self._copy_rows(block.ravel(), self._scratch("vectors", block.size, self.dim, np.float32))
                product = vectors.reshape(len(block), fetch, self.dim) @ block_queries[:, :, None]
                scores[start : start + step] = product[:, :, 0]
            elif valid.any():  # lists shorter than the candidates asked for: the padding (-1) stays unscored
                row, column = np.nonzero(valid)
                vectors = self._copy_rows(block[valid], self._scratch("vectors", len(row), self.dim, np.float32))
                scores[start + row, column] = np.einsum("nd,nd->n", vectors, block_queries[row])
        result = top_k(scores, candidates, k)
        return result.scores, result.ids

    def _extra_sections(self) -> dict[str, np.ndarray]:
        return {"refine": faiss.serialize_index(self._refine)} if self._refine is not None else {}

    def _load_extra_sections(self, sections) -> None:
        if "refine" in sections:
            self._refine = faiss.deserialize_index(np.frombuffer(sections["refine"], dtype=np.uint8))
            # Stores saved before the float16 copy re-rank with their 8-bit one: say so in the params.
            qtype = self._copy_index.sq.qtype
            self.params["refine"] = next(name for name, value in REFINE_TYPES.items() if value == qtype)
