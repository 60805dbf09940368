"""How many CPU threads one forward pass uses: one for small passes, torch's configured count for the rest.

Why: torch runs its CPU ops on OpenMP, and every thread that calls into torch gets a thread team of its own. In a
server several threads do (request workers, the micro-batcher, ingestion, image decoding), so the process holds more
OpenMP threads than there are cores; libgomp then stops spinning between parallel regions and every op pays a
thread wake-up. For a small pass (one search query on a small encoder) that wake-up is most of its cost: on 2
cores the shapes-world encoder took 4.0 ms for one text query with 2 threads on a request thread and 2.5 ms with
one (bench/RESULTS.md, "HTTP search service"). A large pass (an ingestion batch, or one query on a ViT-B) divides
real work between the threads and keeps them.

Which passes are small is measured rather than guessed from FLOPs: the last duration of a pass of the same kind
and batch-size bucket; under `SMALL_PASS_S` it runs on one thread. The first pass of each bucket uses the full count.

torch.set_num_threads sets the calling thread's OpenMP count and also a process-wide default that a thread reads
once, at its first parallel op. So a pass always sets both its own count and, afterwards, the full count back: a
thread that starts while a small pass runs elsewhere is put right at its own next pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

R = TypeVar("R")

SMALL_PASS_S = 0.010
# torch's intra-op thread count when this module was imported (OMP_NUM_THREADS, else the core count): the "full"
# count. Read once, here, because later a thread can start while a small pass runs elsewhere and read 1.
CONFIGURED_THREADS = torch.get_num_threads()


class CpuThreads:
    """Chooses and applies the intra-op thread count of each CPU forward pass of one model on `device` (off the CPU
    a pass just runs: the host threads only launch kernels there)."""

    def __init__(
        self, device: torch.device | str = "cpu", *, full: int | None = None, small_pass_s: float = SMALL_PASS_S
    ) -> None:
        self.on_cpu = torch.device(device).type == "cpu"
        self.full = full or CONFIGURED_THREADS
        self.small_pass_s = small_pass_s
        self._last_s: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def threads_for(self, kind: str, items: int) -> int:
        with self._lock:
            last = self._last_s.get((kind, _bucket(items)))
        return 1 if last is not None and last < self.small_pass_s else self.full

    def run(self, kind: str, items: int, forward: Callable[[], R]) -> R:
        """`forward()` on the thread count its kind and size call for; its duration decides the next choice."""
        if not self.on_cpu or self.full == 1:
            return forward()
        with intra_op_threads(self.threads_for(kind, items), full=self.full):
            return self._timed(kind, items, forward)

    def _timed(self, kind: str, items: int, forward: Callable[[], R]) -> R:
        start = time.perf_counter()
        result = forward()
        with self._lock:
            self._last_s[(kind, _bucket(items))] = time.perf_counter() - start
        return result


@contextmanager
def intra_op_threads(count: int, *, full: int = CONFIGURED_THREADS) -> Iterator[None]:
    """torch ops in the block on `count` intra-op threads in this thread; then the full count back (the call also
    sets the process-wide default that new threads read once: see the module doc)."""
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(full)


def _bucket(items: int) -> int:
    """Batch sizes grouped by powers of two (1, 2, 3-4, 5-8, ...): passes of one bucket cost about the same."""
    return max(items - 1, 0).bit_length()
