"""LogRateLimiter: one line per key and period, with the count of lines held back."""

from __future__ import annotations

from lmcache_core.clock import ManualClock
from lmcache_core.ratelimit import LogRateLimiter


def test_repeats_within_the_period_are_counted_and_reported_with_the_next_line() -> None:
    clock = ManualClock()
    limiter = LogRateLimiter(clock, period_seconds=10.0)
    assert limiter.allow(("c1", "bad key")) == (True, 0)
    assert [limiter.allow(("c1", "bad key"))[0] for _ in range(5)] == [False] * 5
    assert limiter.allow(("c2", "bad key")) == (True, 0)  # another client is its own key
    clock.advance(10.0)
    assert limiter.allow(("c1", "bad key")) == (True, 5)
    assert limiter.suppressed_total == 5


def test_the_table_of_keys_stays_bounded() -> None:
    limiter = LogRateLimiter(ManualClock(), max_keys=8)
    for i in range(1000):
        assert limiter.allow(i) == (True, 0)
    assert len(limiter._seen) == 8
