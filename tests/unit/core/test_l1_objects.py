"""L1Object's lock rules: counting, expiry, late releases after expiry, promises vs copies.

(These were TTLLock's tests; the rules now live on the object, with the same assertions.)"""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.objects import L1Object, lock_reads
from lmcache_core.ports import MemoryHandle

TTL = 10.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def new_object(clock: ManualClock, *, ready: bool = True) -> L1Object:
    obj = L1Object(ObjectKey(b"\x01" * 8, "m", 0), MemoryHandle(offset=0, nbytes=10, slot_bytes=4096), 10, False, clock.monotonic())
    obj.ready = ready
    return obj


def lock(obj: L1Object, clock: ManualClock, holders: int = 1, *, copy: bool = False, ttl: float = TTL) -> None:
    now = clock.monotonic()
    lock_reads([obj], holders, now, now + ttl, copy)


def test_counts_holders_and_unlocks_in_steps(clock: ManualClock) -> None:
    obj = new_object(clock)
    now = clock.monotonic()
    assert not obj.read_locked(now)
    lock(obj, clock)
    lock(obj, clock, 2)
    assert obj.read_count(now) == 3
    assert obj.unlock_read(2, now, promise=True) == 1
    assert obj.read_locked(now)
    assert obj.unlock_read(1, now, promise=True) == 0
    assert not obj.read_locked(now)


def test_unlock_more_than_held_changes_nothing(clock: ManualClock) -> None:
    obj = new_object(clock)
    now = clock.monotonic()
    lock(obj, clock)
    assert obj.unlock_read(2, now, promise=True) == -1
    assert obj.read_count(now) == 1
    assert obj.unlock_read(1, now, promise=True) == 0 and obj.unlock_read(1, now, promise=True) == -1


def test_expires_at_deadline_and_resets_count(clock: ManualClock) -> None:
    obj = new_object(clock)
    lock(obj, clock, 3)
    clock.advance(9.999)
    assert obj.read_locked(clock.monotonic())
    assert obj.expire(clock.monotonic()) == 0 and obj.read_count(clock.monotonic()) == 3
    clock.advance(0.001)
    now = clock.monotonic()
    assert not obj.read_locked(now)
    assert obj.read_count(now) == 0
    # A holder that was presumed dead comes back late: its release is refused.
    assert obj.unlock_read(1, now, promise=True) == -1
    assert obj.expire(now) == 0


def test_expire_counts_each_expired_lock_once(clock: ManualClock) -> None:
    obj = new_object(clock, ready=False)
    now = clock.monotonic()
    obj.lock_write(now, now + TTL)
    lock(obj, clock, copy=True)
    clock.advance(TTL)
    assert obj.expire(clock.monotonic()) == 3
    assert obj.expire(clock.monotonic()) == 0
    assert not obj.locked(clock.monotonic())


def test_lock_refreshes_the_deadline_for_everyone(clock: ManualClock) -> None:
    obj = new_object(clock)
    lock(obj, clock)
    clock.advance(8)
    lock(obj, clock)
    clock.advance(8)  # 16 s after the first lock, 8 s after the second
    assert obj.read_count(clock.monotonic()) == 2
    assert obj.read_until == pytest.approx(clock.monotonic() + 2)


def test_relock_after_expiry_starts_from_zero(clock: ManualClock) -> None:
    obj = new_object(clock)
    lock(obj, clock, 5, ttl=1.0)
    clock.advance(2)
    lock(obj, clock, ttl=1.0)
    assert obj.read_count(clock.monotonic()) == 1


def test_explicit_now_overrides_the_clock(clock: ManualClock) -> None:
    obj = new_object(clock)
    lock_reads([obj], 1, 100.0, 105.0, False)
    assert obj.read_locked(104.9)
    assert not obj.read_locked(105.0)


def test_write_lock_makes_it_unreadable_until_released(clock: ManualClock) -> None:
    obj = new_object(clock, ready=False)
    now = clock.monotonic()
    assert obj.abandoned(now)
    obj.lock_write(now, now + TTL)
    assert obj.write_locked(now) and not obj.readable(now) and not obj.writable(now) and not obj.abandoned(now)
    assert obj.unlock_write(now) and obj.unlock_write(now) is False
    obj.ready = True
    assert obj.readable(now) and obj.writable(now)


def test_an_expired_writer_is_refused_and_leaves_the_object_abandoned(clock: ManualClock) -> None:
    obj = new_object(clock, ready=False)
    now = clock.monotonic()
    obj.lock_write(now, now + TTL)
    clock.advance(TTL)
    assert obj.unlock_write(clock.monotonic()) is False
    assert obj.abandoned(clock.monotonic())


def test_copies_and_promises_are_released_by_kind(clock: ManualClock) -> None:
    obj = new_object(clock)
    now = clock.monotonic()
    lock(obj, clock, 2)  # two promises
    lock(obj, clock, 1, copy=True)  # one copy in flight
    assert obj.promises(now) == 2 and obj.copy_count(now) == 1 and obj.in_flight(now)
    assert obj.unlock_read(2, now, promise=False) == -1  # only one copy is held
    assert obj.unlock_read(1, now, promise=False) == 2
    assert not obj.in_flight(now) and obj.locked(now)
    assert obj.unlock_read(3, now, promise=True) == -1
    assert obj.unlock_read(2, now, promise=True) == 0


def test_a_promise_converts_into_a_copy_that_keeps_the_read_lock_alive(clock: ManualClock) -> None:
    obj = new_object(clock)
    lock(obj, clock)
    clock.advance(8)
    now = clock.monotonic()
    assert obj.convert_promise(now, now + TTL)
    assert obj.promises(now) == 0 and obj.copy_count(now) == 1
    assert obj.convert_promise(now, now + TTL) is False  # no promise left
    clock.advance(8)  # past the promise's own deadline, within the copy's
    assert obj.read_locked(clock.monotonic()) and obj.in_flight(clock.monotonic())


def test_void_promises_keeps_only_the_copies(clock: ManualClock) -> None:
    obj = new_object(clock)
    now = clock.monotonic()
    lock(obj, clock, 3)
    lock(obj, clock, 1, copy=True)
    obj.void_promises(now)
    assert obj.read_count(now) == 1 and obj.promises(now) == 0 and obj.copy_count(now) == 1
