"""Batch sizes from free accelerator memory, and a batch size that backs off when memory runs out anyway.

Two mechanisms, because neither is enough alone:

* planning: on CUDA, the memory one more item adds to a forward pass is measured once (the peak-allocation counter
  at two small batch sizes), and the batch is the largest that fits in a share of the free memory, capped by the
  configured size (`choose_batch_size`, a pure function);
* back-off: memory also goes to other requests, another model or fragmentation, so a forward pass that still runs
  out of memory is retried on halves of its batch, and the smaller size is kept for later calls (`AdaptiveBatch`).
  A request then gets slower under memory pressure instead of failing.

On a CPU there is no free-memory figure to plan with: the configured size is used as is (back-off still applies).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

# Share of the free memory a planned batch may use: the rest absorbs allocator fragmentation, kernel workspaces and
# the other kind of forward pass (text while images encode) running between two plans.
HEADROOM = 0.8
# Batch sizes are rounded down to a multiple of this (once at least this large): GEMM shapes that tile evenly.
MULTIPLE = 8
PROBE_SIZES = (2, 6)
_OOM_MESSAGES = ("out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means the device ran out of memory (torch's own error, or one a library raised as text)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MESSAGES)


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation on `device` can use: the driver's free memory plus what torch caches unused; None
    on a device without such a figure (CPU)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def choose_batch_size(
    free_bytes: int | None, per_item_bytes: float | None, limit: int, *, headroom: float = HEADROOM
) -> int:
    """The largest batch of at most `limit` items whose activations (`per_item_bytes` each) fit in
    `headroom` x `free_bytes`, rounded down to a multiple of MULTIPLE when at least that large; at least 1.

    Without a memory figure (`free_bytes` or `per_item_bytes` None) the answer is `limit`.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if free_bytes is None or per_item_bytes is None or per_item_bytes <= 0:
        return limit
    size = min(limit, int(headroom * max(0, free_bytes) // per_item_bytes))
    if size >= MULTIPLE:
        size -= size % MULTIPLE
    return max(1, size)


def measure_per_item_bytes(forward: Callable[[int], object], device: torch.device) -> float | None:
    """Peak memory each further item adds to `forward(n)` (run at the two PROBE_SIZES); None off CUDA.

    The difference of two peaks, so what does not grow with the batch (weights, workspaces) cancels out.
    """
    if device.type != "cuda":
        return None
    peaks = []
    for n in PROBE_SIZES:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        forward(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    marginal = (peaks[1] - peaks[0]) / (PROBE_SIZES[1] - PROBE_SIZES[0])
    # Never below the average of the larger probe's peak over its items: a noisy difference must not plan huge batches.
    return max(marginal, peaks[1] / PROBE_SIZES[1] / 2, 1.0)


class AdaptiveBatch:
    """A batch size that starts at `size` and halves whenever a forward pass runs out of memory.

    `map(n, run)` covers items 0..n-1 with `run(start, stop)` calls of at most the current size, in order, and
    retries a chunk that ran out of memory as two halves. The reduced size is kept: a later call starts there,
    not at an out-of-memory error again. Out of memory at a batch of one is re-raised.
    """

    def __init__(self, size: int, what: str = "batch") -> None:
        if size < 1:
            raise ValueError(f"batch size must be >= 1, got {size}")
        self.size = size
        self.what = what
        self._lock = threading.Lock()

    def map(self, n: int, run: Callable[[int, int], T]) -> list[T]:
        out: list[T] = []
        start = 0
        while start < n:
            stop = min(n, start + self.size)
            try:
                out.append(run(start, stop))
                start = stop
                continue
            except Exception as exc:  # only out-of-memory is handled; anything else goes up as it is
                if not is_out_of_memory(exc) or stop - start == 1:
                    raise
            # Retried outside the except block, so the failed attempt's traceback (and the tensors its frames
            # hold) is released first.
            self._shrink(stop - start)
        return out

    def _shrink(self, failed: int) -> None:
        with self._lock:
            self.size = min(self.size, max(1, failed // 2))
            size = self.size
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the failed attempt's cached blocks back before the retry
        log.warning("%s batch of %d ran out of memory; retrying with batches of %d", self.what, failed, size)
