"""Plumbing shared by the stages: the records passed between them, the clock that times them, and the ordered
thread-pool map that lets decoding run ahead of the encoder."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

R = TypeVar("R")


@dataclass(frozen=True)
class ItemSpec:
    """One ledger item: `kind` is upload | path | url | stored | manifest | invalid.

    `ref` is the path or URL (for upload and stored: a file the engine wrote itself); `reason` explains an invalid
    item; a manifest whose `name` is "upload" was uploaded and staged, so relative paths in it mean nothing.
    """

    kind: str
    ref: str
    name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def to_source(self) -> str:
        body = {"kind": self.kind, "ref": self.ref, "name": self.name, "meta": self.meta or None, "reason": self.reason}
        return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_source(cls, source: str) -> ItemSpec:
        try:
            body = json.loads(source)
            return cls(body["kind"], body["ref"], body.get("name"), body.get("meta") or {}, body.get("reason"))
        except (ValueError, KeyError, TypeError):
            return cls("invalid", source, reason="unreadable ledger entry")

    @property
    def display(self) -> str:
        """What a person recognises: the path, the URL, or the uploaded file's name."""
        if self.kind == "upload":
            return f"upload:{self.name or Path(self.ref).name}"
        if self.kind == "stored":
            return self.name or self.ref
        return self.ref


@dataclass
class Prepared:
    """An image ready to be embedded and written."""

    position: int
    sha256: str
    source: str
    byte_size: int
    width: int
    height: int
    format: str | None
    meta: dict[str, Any]
    pixels: torch.Tensor


@dataclass(frozen=True)
class Settled:
    """An item whose outcome is known without embedding it: "failed" or "skipped" (a duplicate)."""

    position: int
    state: str
    reason: str
    image_id: int | None = None


@dataclass
class StageClock:
    """Seconds spent per stage, summed over threads (so fetch + decode may exceed the wall time)."""

    fetch_s: float = 0.0
    decode_s: float = 0.0
    wait_s: float = 0.0  # the encoder's thread waiting for decoded input
    encode_s: float = 0.0
    write_s: float = 0.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {k: round(getattr(self, k), 4) for k in ("fetch_s", "decode_s", "wait_s", "encode_s", "write_s")}


def ordered_map(
    fn: Callable[..., R], items: Iterable[tuple], *, workers: int, window: int, clock: StageClock
) -> Iterator[R]:
    """`fn(*item)` for each item on a thread pool, yielded in input order, at most `window` in flight.

    The window keeps decoding ahead of the encoder (which runs in the caller's thread) while bounding memory;
    time spent blocked on the next result is the encoder waiting for input (`clock.wait_s`).
    """
    pending: deque[Future[R]] = deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        try:
            for item in source:
                pending.append(pool.submit(fn, *item))
                if len(pending) >= window:
                    yield _next_result(pending, clock)
            while pending:
                yield _next_result(pending, clock)
        finally:
            for future in pending:
                future.cancel()


def _next_result(pending: deque[Future[R]], clock: StageClock) -> R:
    future = pending.popleft()
    if not future.done():
        start = time.perf_counter()
        result = future.result()
        clock.add("wait_s", time.perf_counter() - start)
        return result
    return future.result()
