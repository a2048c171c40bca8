"""TTLLock: counting, expiry, and late unlocks after expiry."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.l1.locks import TTLLock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_counts_holders_and_unlocks_in_steps(clock: ManualClock) -> None:
    lock = TTLLock(10.0, clock)
    assert not lock.is_locked()
    lock.lock()
    lock.lock(count=2)
    assert lock.count() == 3
    assert lock.unlock(2)
    assert lock.is_locked()
    assert lock.unlock()
    assert not lock.is_locked()


def test_unlock_more_than_held_changes_nothing(clock: ManualClock) -> None:
    lock = TTLLock(10.0, clock)
    lock.lock()
    assert lock.unlock(2) is False
    assert lock.count() == 1
    assert lock.unlock() and lock.unlock() is False


def test_expires_at_deadline_and_resets_count(clock: ManualClock) -> None:
    lock = TTLLock(10.0, clock)
    lock.lock(count=3)
    clock.advance(9.999)
    assert lock.is_locked()
    assert not lock.expired()
    clock.advance(0.001)
    assert lock.expired()
    assert not lock.is_locked()
    assert lock.count() == 0
    # A holder that was presumed dead comes back late: its unlock is refused.
    assert lock.unlock() is False
    assert not lock.expired()


def test_lock_refreshes_the_deadline_for_everyone(clock: ManualClock) -> None:
    lock = TTLLock(10.0, clock)
    lock.lock()
    clock.advance(8)
    lock.lock()
    clock.advance(8)  # 16 s after the first lock, 8 s after the second
    assert lock.count() == 2
    assert lock.deadline == pytest.approx(clock.monotonic() + 2)


def test_relock_after_expiry_starts_from_zero(clock: ManualClock) -> None:
    lock = TTLLock(1.0, clock)
    lock.lock(count=5)
    clock.advance(2)
    lock.lock()
    assert lock.count() == 1


def test_explicit_now_overrides_the_clock(clock: ManualClock) -> None:
    lock = TTLLock(5.0, clock)
    lock.lock(now=100.0)
    assert lock.is_locked(now=104.9)
    assert not lock.is_locked(now=105.0)


@pytest.mark.parametrize("ttl", [0, -1.0, float("nan")])
def test_rejects_non_positive_ttl(clock: ManualClock, ttl: float) -> None:
    with pytest.raises(ValueError):
        TTLLock(ttl, clock)


def test_rejects_non_positive_counts(clock: ManualClock) -> None:
    lock = TTLLock(1.0, clock)
    with pytest.raises(ValueError):
        lock.lock(0)
    with pytest.raises(ValueError):
        lock.unlock(0)
