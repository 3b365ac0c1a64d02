"""Per-user token buckets for 429 M_LIMIT_EXCEEDED (time is passed in: pure and testable)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Float rounding of time differences must not refuse a client that waited exactly as told.
_EPSILON = 1e-6


@dataclass
class RateLimiter:
    rate_per_s: float  # 0 disables the limit
    burst: float
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, at

    def check(self, user: str, now_s: float) -> int | None:
        """Take one token; None if allowed, else how many ms until the next token."""
        if self.rate_per_s <= 0:
            return None
        tokens, at = self._buckets.get(user, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - at) * self.rate_per_s)
        if tokens >= 1 - _EPSILON:
            self._buckets[user] = (tokens - 1, now_s)
            return None
        self._buckets[user] = (tokens, now_s)
        return max(1, math.ceil((1 - tokens) / self.rate_per_s * 1000))
