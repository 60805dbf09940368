"""Cross-request micro-batching: concurrent requests that need the same model share one forward pass.

Each `MicroBatcher` owns one worker thread. Requests wait in a queue; the worker takes the first, then keeps
collecting until the batch is full or `max_wait_s` has passed since the first arrived, and runs the batch function
once. One thread per batcher means a model behind it never runs concurrently with itself from this path (the
`Encoder` also serialises its own forward passes, so ingestion and search cannot overlap on one GPU either).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Histogram

T = TypeVar("T")
R = TypeVar("R")

BATCH_SIZE = Histogram(
    "internvl_search_batch_size",
    "Items per micro-batched forward pass",
    ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_SECONDS = Histogram("internvl_search_batch_seconds", "Duration of one micro-batched forward pass", ["batcher"])
QUEUE_WAIT_SECONDS = Histogram(
    "internvl_search_batch_wait_seconds", "Time an item waits before its batch runs", ["batcher"]
)


@dataclass
class _Request(Generic[T, R]):
    item: T
    future: Future[R]
    enqueued: float


class MicroBatcher(Generic[T, R]):
    """Collects items from many callers into batches for `batch_fn(list[T]) -> Sequence[R]` (same order).

    An exception `batch_fn` raises reaches every caller of the batch; one it returns in an item's place reaches
    that item's caller alone (a batch that searches several collections fails only the searches of a missing one).
    """

    def __init__(
        self, name: str, batch_fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 64, max_wait_s: float = 0.005
    ) -> None:
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.name = name
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._queue: queue.Queue[_Request[T, R] | None] = queue.Queue()
        self._closed = False
        self._state_lock = threading.Lock()  # makes "check closed, then enqueue" atomic against close()
        # Held while a pass runs: by the worker, or by a caller that found the batcher idle and runs its own item
        # (`claim_idle`); what arrives meanwhile waits and forms the next batch.
        self._pass = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for a batch (an approximate count, for metrics)."""
        return self._queue.qsize()

    def claim_idle(self) -> bool:
        """Take the batcher, when nothing is queued and no pass runs, for one item the caller encodes itself: a
        lone item then pays no hand-off to the worker thread and back. True: call `release` after the pass."""
        return not self._queue.qsize() and self._pass.acquire(blocking=False)

    def release(self) -> None:
        self._pass.release()

    def submit(self, item: T) -> Future[R]:
        future: Future[R] = Future()
        with self._state_lock:
            if self._closed:
                raise RuntimeError(f"batcher {self.name} is closed")
            self._queue.put(_Request(item, future, time.monotonic()))
        return future

    async def run(self, item: T) -> R:
        """Submit from async code and await the result without blocking the event loop."""
        return (await self.run_timed(item))[0]

    async def run_timed(self, item: T) -> tuple[R, float]:
        """`run`, with the seconds the forward pass that computed the item took (shared with its batch-mates)."""
        future = self.submit(item)
        result = await asyncio.wrap_future(future)
        return result, future.pass_seconds  # type: ignore[attr-defined] - set by _execute before the result

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join(timeout_s)

    def _collect(self, first: _Request[T, R]) -> tuple[list[_Request[T, R]], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self._max_wait_s
        while len(batch) < self._max_batch:
            try:
                request = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if request is None:
                stop = True
                break
            batch.append(request)
        return batch, stop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            with self._pass:
                batch, stop = self._collect(first)
                self._execute(batch)
            if stop:
                return

    def _execute(self, batch: list[_Request[T, R]]) -> None:
        start = time.monotonic()
        for request in batch:
            QUEUE_WAIT_SECONDS.labels(self.name).observe(start - request.enqueued)
        try:
            results = self._batch_fn([request.item for request in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        except BaseException as exc:  # noqa: BLE001 - every waiting caller must learn of the failure
            for request in batch:
                request.future.set_exception(exc)
            return
        finally:
            elapsed = time.monotonic() - start
            BATCH_SIZE.labels(self.name).observe(len(batch))
            BATCH_SECONDS.labels(self.name).observe(elapsed)
        for request, result in zip(batch, results, strict=True):
            request.future.pass_seconds = elapsed  # type: ignore[attr-defined] - read by run_timed
            if isinstance(result, BaseException):
                request.future.set_exception(result)
            else:
                request.future.set_result(result)
