"""Token buckets: a steady rate with a burst allowance, per key, bounded in memory. Pure, no I/O.

Used for socket events (typing, mark_read, send) and, by the HTTP edge, for requests. `retry_after`
says how long until one more action is allowed, for a 429's Retry-After or an error ack.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, rate_per_s: float, burst: int, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate and burst must be positive")
        self.rate = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        # Least recently used first: the oldest idle buckets are forgotten past max_keys (a forgotten
        # bucket is a full one, which is what an idle key would have refilled to anyway).
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.burst), now)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        return bucket

    def allow(self, key: str) -> bool:
        bucket = self._bucket(key, self.clock())
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return False

    def retry_after(self, key: str) -> float:
        bucket = self._bucket(key, self.clock())
        return max(0.0, (1 - bucket.tokens) / self.rate)
