"""Per-user token buckets behind 429 M_LIMIT_EXCEEDED (CONTRACT §5)."""

from __future__ import annotations

import pytest

from receipt_streams.core.ratelimit import RateLimiter

U, V = "@u:hs1", "@v:hs1"


def test_burst_then_refusal() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=3)
    assert [limiter.check(U, 100.0) for _ in range(3)] == [None, None, None]
    wait = limiter.check(U, 100.0)
    assert wait is not None and 0 < wait <= 1000
    assert limiter.check(U, 100.0) == wait, "a refusal takes no token"


def test_refill_over_time() -> None:
    limiter = RateLimiter(rate_per_s=2, burst=2)
    assert limiter.check(U, 0.0) is None
    assert limiter.check(U, 0.0) is None
    assert limiter.check(U, 0.0) == 500
    assert limiter.check(U, 0.25) == 250, "the wait shrinks as time passes"
    assert limiter.check(U, 0.5) is None  # one token back after 1/rate seconds
    assert limiter.check(U, 0.5) is not None
    assert limiter.check(U, 1.5) is None
    assert limiter.check(U, 1.5) is None
    assert limiter.check(U, 1.5) is not None


@pytest.mark.parametrize("start", [10.0, 987654.321])  # monotonic clocks count from boot
@pytest.mark.parametrize("rate", [3.0, 7.0, 0.3, 1000.0])
def test_retrying_after_retry_after_ms_succeeds(rate: float, start: float) -> None:
    """A client that waits exactly `retry_after_ms` must not be refused again."""
    limiter = RateLimiter(rate_per_s=rate, burst=1)
    now = start
    assert limiter.check(U, now) is None
    for _ in range(5):
        wait = limiter.check(U, now)
        assert wait is not None and wait > 0
        now += wait / 1000
        assert limiter.check(U, now) is None, f"refused again after waiting {wait} ms"


def test_refill_is_capped_at_burst() -> None:
    limiter = RateLimiter(rate_per_s=10, burst=2)
    assert limiter.check(U, 0.0) is None
    allowed = 0
    while limiter.check(U, 3600.0) is None:
        allowed += 1
    assert allowed == 2


def test_users_are_isolated() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=1)
    assert limiter.check(U, 0.0) is None
    assert limiter.check(U, 0.0) is not None
    assert limiter.check(V, 0.0) is None, "V has a bucket of its own"
    assert limiter.check(V, 0.0) is not None
    assert limiter.check(U, 0.0) is not None


@pytest.mark.parametrize("rate", [0, 0.0, -1])
def test_rate_zero_disables(rate: float) -> None:
    limiter = RateLimiter(rate_per_s=rate, burst=1)
    assert all(limiter.check(U, 0.0) is None for _ in range(1000))


def test_idle_users_are_forgotten_without_changing_any_answer() -> None:
    from receipt_streams.core.ratelimit import RateLimiter

    limiter = RateLimiter(rate_per_s=10, burst=2, max_users=3)
    for n in range(3):
        assert limiter.check(f"@idle{n}:hs", 0.0) is None
    assert limiter.check("@busy:hs", 10.0) is None  # idle buckets are full again by now
    assert set(limiter._buckets) == {"@busy:hs"}
    assert limiter.check("@idle0:hs", 10.0) is None  # a forgotten user starts with a full burst


def test_wait_ms_peeks_without_taking() -> None:
    limiter = RateLimiter(rate_per_s=1, burst=2)
    assert limiter.wait_ms(U, 0.0) is None, "an unknown key has a full bucket"
    limiter.check(U, 0.0)
    assert limiter.wait_ms(U, 0.0) is None
    limiter.check(U, 0.0)
    assert limiter.wait_ms(U, 0.0) == 1000
    assert limiter.wait_ms(U, 0.0) == 1000, "peeking takes nothing"
    assert limiter.wait_ms(U, 0.5) == 500
    assert limiter.wait_ms(U, 1.0) is None
    assert limiter.wait_ms(V, 0.0) is None
    assert RateLimiter(rate_per_s=0, burst=1).wait_ms(U, 0.0) is None


def test_many_busy_keys_stay_bounded_and_the_busiest_keep_their_limit() -> None:
    """An address range cycling through keys, none idle long enough to be forgotten: the
    table stays within `max_users`, and a key in use keeps its (empty) bucket."""
    rl = RateLimiter(rate_per_s=0.01, burst=1, max_users=100)
    now = 0.0
    assert rl.check("guesser", now) is None
    for i in range(1_000):
        now += 0.001
        rl.check(f"2001:db8::{i}", now)
        assert rl.check("guesser", now) is not None  # still limited, never reset
        assert len(rl._buckets) <= 100
