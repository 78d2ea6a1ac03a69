"""Per-tenant rate limiting: a token bucket (thread-safe).

``rate`` tokens per second refill a bucket of ``rate`` tokens (so a burst of one
second's worth passes at once); each request takes one.  A request that finds the
bucket empty is refused with 429 and told when to retry.
"""

from __future__ import annotations

import threading
import time

__all__ = ["TokenBucket", "RateLimits"]


class TokenBucket:
    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """Take a token: 0.0 when granted, else the seconds until one is there."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return 0.0
            return (1.0 - self.tokens) / self.rate


class RateLimits:
    """One bucket per tenant (none when ``rate`` is 0)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, tenant: str) -> float:
        if self.rate <= 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = TokenBucket(self.rate)
        return bucket.take()
