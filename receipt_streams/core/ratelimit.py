"""Token buckets per user or client address for 429 M_LIMIT_EXCEEDED (time is passed in:
pure and testable)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

# Float rounding of time differences must not refuse a client that waited exactly as told.
_EPSILON = 1e-6


@dataclass
class RateLimiter:
    rate_per_s: float  # 0 disables the limit
    burst: float
    max_users: int = 100_000  # at this many, idle users' (full) buckets are forgotten
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # tokens, at

    def check(self, user: str, now_s: float) -> int | None:
        """Take one token; None if allowed, else how many ms until the next token."""
        if self.rate_per_s <= 0:
            return None
        if len(self._buckets) >= self.max_users and user not in self._buckets:
            self._make_room(now_s)
        # Taken out and put back: the dict's order is then the order of last use.
        tokens, at = self._buckets.pop(user, (self.burst, now_s))
        tokens = min(self.burst, tokens + (now_s - at) * self.rate_per_s)
        if tokens >= 1 - _EPSILON:
            self._buckets[user] = (tokens - 1, now_s)
            return None
        self._buckets[user] = (tokens, now_s)
        return max(1, math.ceil((1 - tokens) / self.rate_per_s * 1000))

    def wait_ms(self, user: str, now_s: float) -> int | None:
        """Like `check`, but takes no token: None if one is available, else the wait in ms."""
        if self.rate_per_s <= 0 or user not in self._buckets:
            return None
        tokens, at = self._buckets[user]
        tokens = min(self.burst, tokens + (now_s - at) * self.rate_per_s)
        if tokens >= 1 - _EPSILON:
            return None
        return max(1, math.ceil((1 - tokens) / self.rate_per_s * 1000))

    def _make_room(self, now_s: float) -> None:
        """Drop buckets that have refilled to `burst` (forgetting them changes nothing);
        if that leaves more than nine tenths of `max_users` (many addresses, all busy: an
        IPv6 range), the least recently used too. So the table stays bounded, and it is
        scanned once per tenth of `max_users` new keys, not at every one."""
        full_after = self.burst / self.rate_per_s
        self._buckets = {
            u: (t, at) for u, (t, at) in self._buckets.items() if now_s - at < full_after
        }
        excess = len(self._buckets) - self.max_users * 9 // 10
        if excess > 0:
            for user in list(itertools.islice(self._buckets, excess)):
                del self._buckets[user]
