"""Per-caller rate limits: a token bucket per API key (or per client address when no keys are configured).

Each caller may make `rate_per_s` requests per second on average and `burst` at once. A refused request is a 429
with `Retry-After`. Buckets live in memory, one per caller: per process, which is what a single-node service needs;
replicas behind a load balancer each enforce their own share. The caller's name is the key's digest prefix, never
the key.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict


class RateLimiter:
    """Token buckets keyed by caller; `retry_after(caller)` takes one token or says how long to wait."""

    def __init__(self, rate_per_s: float, burst: int = 0, max_callers: int = 10_000) -> None:
        self.rate = float(rate_per_s)
        self.burst = float(burst or max(1, math.ceil(2 * self.rate)))
        self.max_callers = max_callers
        # caller -> (tokens, time of the last refill); ordered by last use, so the idlest caller is dropped first
        # when a flood of client addresses would otherwise grow the table without bound.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def retry_after(self, caller: str, now: float | None = None) -> float | None:
        """None when the request may go ahead (one token taken); else the seconds until a token is available."""
        if not self.enabled:
            return None
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(caller, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[caller] = (tokens, now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        return None if allowed else (1.0 - tokens) / self.rate
