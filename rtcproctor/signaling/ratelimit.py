"""Token buckets: per socket for message rates, per client address for failed code guesses."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.tokens < 0:
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, cost: float = 1.0) -> float:
        """Spend tokens; returns 0 when allowed, else seconds until it would be."""
        now = time.monotonic()
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def wait_time(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there, without spending them."""
        self._refill(time.monotonic())
        return 0.0 if self.tokens >= cost else (cost - self.tokens) / self.rate


class KeyedLimiter:
    """A bucket per key (a client address), bounded in memory by evicting the oldest keys."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst)
            self._buckets[key] = bucket
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def blocked_for(self, key: str) -> float:
        return self._bucket(key).wait_time()

    def spend(self, key: str, cost: float = 1.0) -> float:
        return self._bucket(key).take(cost)
