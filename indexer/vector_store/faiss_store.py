"""Approximate back ends: HNSW, IVF-Flat and IVF-PQ, with their sizing rules and the `auto` choice.

Sizing (n = number of vectors the index is built for):
- IVF lists: nlist = 4·sqrt(n) rounded to a power of two, lowered until every list has >= 39 training points
  (faiss's own minimum), at most 65,536. nprobe = nlist/16, at least 8 (or nlist when smaller).
- IVF-PQ codes: one sub-quantizer per 4 dimensions (m = d/4, rounded down to a divisor of d), 8 bits each
  (fewer below 9,984 training vectors, so every codebook centroid still gets 39 points; at least 4 bits, hence
  at least 624 vectors), plus an 8-bit scalar-quantised copy of each vector to re-rank PQ_REFINE_FACTOR·k
  candidates, at 1.25·d bytes per vector instead of 4·d. The re-rank, not the lists, caps recall: at 1M x 64
  (bench/search.py data, nprobe 1024 of 4096) re-ranking 8·k candidates gave recall@10 0.92 (power-law spread) /
  0.86 (isotropic) where IVF-Flat reaches 0.99 / 0.97; 16·k gave 0.96 / 0.91 and 32·k 0.97 / 0.94. 16 is the
  default: at the default nprobe it costs ~10% of a query's latency for +3-4 points, while the same gain from
  probing more lists (2x nprobe) costs 2.7x (bench/RESULTS.md, "IVF-PQ re-rank").
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
that, IVF-PQ scores its 8-bit re-rank copy. A search that still comes back short climbs the ladder (x4 per rung)
and, last, scores the allowed vectors of the unlucky queries directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from indexer.errors import InvalidInput
from indexer.vector_store.base import SELECTOR_COST, FaissStore, top_k

# `auto`: exact search while a full scan is cheap; a graph while vectors fit in memory; compressed codes beyond.
AUTO_FLAT_MAX = 50_000
AUTO_HNSW_MAX = 2_000_000

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
PQ_DIMS_PER_SUBQUANTIZER = 4
PQ_REFINE_FACTOR = 16
_SEED = 1234


def resolve_kind(kind: str, n: int) -> str:
    """The concrete kind for `kind` ("auto" picks by collection size n; anything else is returned as is)."""
    if kind != "auto":
        return kind
    if n < AUTO_FLAT_MAX:
        return "flat"
    if n < AUTO_HNSW_MAX:
        return "hnsw"
    return "ivf_pq"


def choose_nlist(n: int) -> int:
    nlist = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    nlist = min(nlist, MAX_NLIST)
    while nlist > 1 and n < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def choose_nprobe(nlist: int) -> int:
    return min(nlist, max(8, nlist // 16))


def choose_pq_m(dim: int) -> int:
    target = max(1, dim // PQ_DIMS_PER_SUBQUANTIZER)
    return max(m for m in range(1, target + 1) if dim % m == 0)


def choose_pq_nbits(n: int) -> int:
    fits = int(math.floor(math.log2(max(n, 1) / MIN_POINTS_PER_LIST))) if n >= MIN_POINTS_PER_LIST else 0
    return min(PQ_MAX_NBITS, fits)


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

    def _sizing(self, vectors: np.ndarray) -> dict[str, Any]:
        """Parameters for a build on `vectors`: explicit ones win, the sizing rules fill in the rest.

        The first batch is the training set, so it sizes the lists (every list needs training points). A store
        that has grown far past `trained_on` vectors should be rebuilt; the engine decides when.
        """
        sizing = {"nlist": choose_nlist(len(vectors)), **self.params, "trained_on": len(vectors)}
        sizing.setdefault("nprobe", choose_nprobe(int(sizing["nlist"])))
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
    """`IndexIVFPQ` candidates re-ranked with an 8-bit scalar-quantised copy of the vectors."""

    kind = "ivf_pq"

    def __init__(self, dim: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(dim, params)
        self.params.setdefault("m", choose_pq_m(dim))
        self.params.setdefault("refine_factor", PQ_REFINE_FACTOR)
        if dim % int(self.params["m"]):
            raise InvalidInput(f"ivf_pq: m={self.params['m']} must divide the dimension {dim}")
        self._refine: faiss.Index | None = None

    def _build_index(self, vectors: np.ndarray) -> faiss.Index:
        sizing = {"nbits": choose_pq_nbits(len(vectors)), **self._sizing(vectors)}
        nlist, m, nbits = int(sizing["nlist"]), int(sizing["m"]), int(sizing["nbits"])
        if nbits < PQ_MIN_NBITS or len(vectors) < 2**nbits:
            raise InvalidInput(
                f"ivf_pq needs at least {MIN_POINTS_PER_LIST * 2**PQ_MIN_NBITS} vectors to train its codebooks, "
                f"got {len(vectors)}; use 'flat' or 'auto' for a collection this small"
            )
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(vectors, max(nlist, 2**nbits)))
        refine = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        refine.train(_training_sample(vectors, 2**nbits))
        self._refine = faiss.IndexIDMap2(refine)
        self.params = sizing
        return index

    def _add_to_index(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(vectors, ids)
        self._refine.add_with_ids(vectors, ids)

    def _remove_from_index(self, ids: np.ndarray) -> None:
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        self._refine.remove_ids(faiss.IDSelectorBatch(ids))

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        # The 8-bit copy the candidates are re-ranked with anyway (cosine error ~1e-3, far below PQ's).
        return self._refine.reconstruct_batch(ids)

    def _index_search(self, queries: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
        fetch = k * int(self.params["refine_factor"])
        _, candidates = self._index.search(queries, fetch, params=params)
        flat_ids = candidates.reshape(-1)
        vectors = np.zeros((len(flat_ids), self.dim), dtype=np.float32)
        valid = flat_ids >= 0
        if valid.any():
            vectors[valid] = self._refine.reconstruct_batch(flat_ids[valid])
        scores = np.einsum("qd,qkd->qk", queries, vectors.reshape(len(queries), fetch, self.dim))
        result = top_k(np.where(candidates >= 0, scores, -np.inf).astype(np.float32), candidates, k)
        return result.scores, result.ids

    def _extra_sections(self) -> dict[str, bytes]:
        return {"refine": faiss.serialize_index(self._refine).tobytes()} if self._refine is not None else {}

    def _load_extra_sections(self, sections) -> None:
        if "refine" in sections:
            self._refine = faiss.deserialize_index(np.frombuffer(sections["refine"], dtype=np.uint8))
