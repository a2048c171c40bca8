"""L1Manager pins: eviction and non-forced clears skip pinned objects until unpin or TTL expiry."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.eviction import EvictionController, LRUPolicy
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Manager, OpResult
from lmcache_core.testing import BytearrayMemoryPool

SLOT = 4096
OK = OpResult.SUCCESS


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="m", kv_rank=0, cache_salt=salt)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def l1(clock: ManualClock) -> L1Manager:
    return L1Manager(BytearrayMemoryPool(8 * SLOT), clock=clock, write_ttl_seconds=60, read_ttl_seconds=30)


def put(l1: L1Manager, *ids: int) -> list[ObjectKey]:
    keys = [key(i) for i in ids]
    assert [r for r, _ in l1.reserve_write(keys, [SLOT] * len(keys))] == [OK] * len(keys)
    assert l1.finish_write(keys) == [OK] * len(keys)
    return keys


def test_pinned_objects_survive_eviction_until_unpinned(l1: L1Manager) -> None:
    keys = put(l1, 1, 2, 3)
    assert l1.pin(keys[:2]) == [OK, OK]
    evicted, freed = l1.evict(keys)
    assert evicted == [keys[2]] and freed == SLOT
    assert l1.contains(keys[0]) and l1.contains(keys[1])
    assert l1.unpin([keys[0]]) == [OK]
    assert l1.evict(keys)[0] == [keys[0]]
    assert l1.contains(keys[1])


def test_pin_expires_with_its_ttl(l1: L1Manager, clock: ManualClock) -> None:
    (k,) = put(l1, 1)
    assert l1.pin([k], ttl_seconds=10) == [OK]
    clock.advance(9.9)
    assert l1.evict([k])[0] == []
    assert l1.pinned_count() == 1
    clock.advance(0.2)
    assert l1.pinned_count() == 0
    assert l1.pin_deadline(k) is None
    assert l1.evict([k])[0] == [k]


def test_pin_without_ttl_lasts_until_unpin(l1: L1Manager, clock: ManualClock) -> None:
    (k,) = put(l1, 1)
    assert l1.pin([k]) == [OK]
    clock.advance(10**6)
    assert l1.evict([k])[0] == []
    assert l1.pin_deadline(k) == float("inf")


def test_repin_refreshes_the_deadline(l1: L1Manager, clock: ManualClock) -> None:
    (k,) = put(l1, 1)
    l1.pin([k], ttl_seconds=10)
    clock.advance(8)
    l1.pin([k], ttl_seconds=10)
    clock.advance(8)
    assert l1.evict([k])[0] == []


def test_reclaimer_cannot_free_pinned_memory(l1: L1Manager, clock: ManualClock) -> None:
    EvictionController(l1, LRUPolicy(), clock=clock)  # installs itself as the reclaimer
    keys = put(l1, *range(8))
    assert l1.pin(keys[1:]) == [OK] * 7
    assert l1.reserve_write([key(98)], [SLOT])[0][0] is OK  # reclaims the one unpinned object
    assert not l1.contains(keys[0])
    l1.finish_write([key(98)])
    l1.pin([key(98)])
    assert l1.reserve_write([key(99)], [SLOT])[0][0] is OpResult.OUT_OF_MEMORY
    assert all(l1.contains(k) for k in keys[1:])


def test_clear_without_force_keeps_pins_and_force_drops_them(l1: L1Manager) -> None:
    keys = put(l1, 1, 2)
    l1.pin([keys[0]])
    assert l1.clear() == 1
    assert l1.contains(keys[0]) and not l1.contains(keys[1])
    assert l1.clear(force=True) == 1
    assert l1.pinned_count() == 0 and l1.object_count() == 0


def test_pin_answers_per_key_states(l1: L1Manager) -> None:
    (ready,) = put(l1, 1)
    writing = key(2)
    l1.reserve_write([writing], [SLOT])
    temp = key(3)
    l1.reserve_write([temp], [SLOT], temporary=True)
    l1.finish_write([temp])
    results = l1.pin([ready, writing, temp, key(4), ready])
    assert results == [
        OK,
        OpResult.KEY_NOT_READABLE,
        OpResult.KEY_IN_WRONG_STATE,
        OpResult.KEY_NOT_EXIST,
        OpResult.KEY_IN_WRONG_STATE,
    ]
    assert l1.pinned_count() == 1


def test_unpin_answers_per_key_states(l1: L1Manager) -> None:
    a, b = put(l1, 1, 2)
    l1.pin([a])
    assert l1.unpin([a, b, key(9)]) == [OK, OpResult.KEY_IN_WRONG_STATE, OpResult.KEY_NOT_EXIST]


def test_admission_is_all_or_nothing(l1: L1Manager) -> None:
    keys = put(l1, 1, 2, 3)
    assert l1.pin(keys[:1], max_pinned_bytes=2 * SLOT) == [OK]
    # Re-pinning an already pinned key costs nothing; two new ones would exceed the budget.
    assert l1.pin(keys, max_pinned_bytes=2 * SLOT) == [OpResult.OUT_OF_MEMORY] * 3
    assert l1.pinned_count() == 1
    assert l1.pin(keys[:2], max_pinned_bytes=2 * SLOT) == [OK, OK]
    assert l1.pinned_bytes() == 2 * SLOT


def test_delete_drops_the_pin_and_a_new_object_is_not_pinned(l1: L1Manager) -> None:
    (k,) = put(l1, 1)
    l1.pin([k])
    assert l1.delete([k]) == [OK]
    assert l1.pinned_count() == 0
    put(l1, 1)
    assert l1.evict([k])[0] == [k]


def test_status_reports_pins(l1: L1Manager, clock: ManualClock) -> None:
    keys = put(l1, 1, 2)
    l1.pin(keys, ttl_seconds=5)
    status = l1.report_status()
    assert status["pinned_count"] == 2 and status["pinned_bytes"] == 2 * SLOT
    clock.advance(5)
    status = l1.report_status()
    assert status["pinned_count"] == 0 and status["pinned_bytes"] == 0


def test_pin_rejects_a_non_positive_ttl(l1: L1Manager) -> None:
    (k,) = put(l1, 1)
    with pytest.raises(ValueError):
        l1.pin([k], ttl_seconds=0)
