"""L1Manager: every batch operation and result, TTLs, temporaries, force clear, listeners, counters."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.eviction import EvictionController, LRUPolicy
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Listener, L1Manager, OpResult, WriteMode
from lmcache_core.ports import MemoryHandle
from lmcache_core.testing import BytearrayMemoryPool

SLOT = 4096
WRITE_TTL = 60.0
READ_TTL = 30.0
OK = OpResult.SUCCESS


def key(i: int, salt: str = "", model: str = "m") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name=model, kv_rank=0, cache_salt=salt)


class Recorder(L1Listener):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_l1_keys_reserved_write(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self.events.append(("reserved_write", list(keys), list(sizes)))

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self.events.append(("write_finished", list(keys), list(sizes)))

    def on_l1_keys_read_reserved(self, keys: Sequence[ObjectKey]) -> None:
        self.events.append(("read_reserved", list(keys)))

    def on_l1_keys_read_finished(self, keys: Sequence[ObjectKey]) -> None:
        self.events.append(("read_finished", list(keys)))

    def on_l1_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        self.events.append(("touched", list(keys)))

    def on_l1_keys_removed(
        self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str
    ) -> None:
        self.events.append(("removed", list(keys), list(sizes), reason))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def pool() -> BytearrayMemoryPool:
    return BytearrayMemoryPool(16 * SLOT)


@pytest.fixture
def l1(pool: BytearrayMemoryPool, clock: ManualClock) -> L1Manager:
    return L1Manager(pool, clock=clock, write_ttl_seconds=WRITE_TTL, read_ttl_seconds=READ_TTL)


@pytest.fixture
def events(l1: L1Manager) -> Recorder:
    rec = Recorder()
    l1.add_listener(rec)
    return rec


def store(l1: L1Manager, keys: list[ObjectKey], size: int = SLOT, **kw: Any) -> list[MemoryHandle]:
    """Write `keys` completely (readable afterwards); returns their handles."""
    reserved = l1.reserve_write(keys, [size] * len(keys), **kw)
    assert [r for r, _ in reserved] == [OK] * len(keys)
    assert l1.finish_write(keys) == [OK] * len(keys)
    return [h for _, h in reserved if h is not None]


def overlaps(a: MemoryHandle, b: MemoryHandle) -> bool:
    return a.offset < b.offset + b.slot_bytes and b.offset < a.offset + a.slot_bytes


# --------------------------------------------------------------------------- write / read


def test_write_then_read_round_trip(l1: L1Manager, pool: BytearrayMemoryPool) -> None:
    k = key(1)
    [(res, handle)] = l1.reserve_write([k], [100])
    assert res is OK and handle is not None and handle.nbytes == 100
    assert l1.contains(k) and not l1.is_readable(k)
    assert l1.reserve_read([k]) == [(OpResult.KEY_NOT_READABLE, None)]
    view = l1.view(k)
    assert view is not None
    view[:] = bytes(range(100))
    assert l1.finish_write([k]) == [OK]
    assert l1.is_readable(k)
    [(res, rhandle)] = l1.reserve_read([k])
    assert res is OK and rhandle == handle == l1.get_handle(k)
    assert pool.view(rhandle).tobytes() == bytes(range(100))
    assert l1.finish_read([k]) == [OK]
    assert l1.delete([k]) == [OK]
    assert not l1.contains(k) and l1.get_handle(k) is None and l1.view(k) is None
    assert pool.used_bytes == 0


def test_reserve_write_new_on_existing_key_is_wrong_state(l1: L1Manager) -> None:
    store(l1, [key(1)])
    assert l1.reserve_write([key(1), key(2)], [10, 10])[0] == (OpResult.KEY_IN_WRONG_STATE, None)
    assert l1.contains(key(2))


def test_reserve_write_update_rules(
    l1: L1Manager, pool: BytearrayMemoryPool, clock: ManualClock
) -> None:
    [h1] = store(l1, [key(1)], size=SLOT)
    store(l1, [key(2)], size=SLOT)
    assert l1.reserve_write([key(9)], [10], WriteMode.UPDATE) == [(OpResult.KEY_NOT_EXIST, None)]

    # Same size: the memory is reused, and the object is not readable until rewritten.
    [(res, h)] = l1.reserve_write([key(1)], [SLOT], WriteMode.UPDATE)
    assert res is OK and h == h1
    assert not l1.is_readable(key(1))
    assert l1.reserve_write([key(1)], [SLOT], WriteMode.UPDATE) == [
        (OpResult.KEY_NOT_WRITABLE, None)
    ]
    assert l1.finish_write([key(1)]) == [OK]

    # Another size: new memory, the old slot returns to the pool.
    used = pool.used_bytes
    [(res, h)] = l1.reserve_write([key(1)], [3 * SLOT], WriteMode.UPDATE)
    assert res is OK and h is not None and h.slot_bytes == 3 * SLOT
    assert pool.used_bytes == used + 2 * SLOT
    assert l1.bytes_by_salt() == {"": 4 * SLOT}
    l1.finish_write([key(1)])

    # Read-locked objects are not writable.
    l1.reserve_read([key(2)])
    assert l1.reserve_write([key(2)], [SLOT], WriteMode.UPDATE) == [
        (OpResult.KEY_NOT_WRITABLE, None)
    ]
    # ...until the read lock expires.
    clock.advance(READ_TTL)
    assert l1.reserve_write([key(2)], [SLOT], WriteMode.UPDATE)[0][0] is OK


def test_reserve_write_all_mode_creates_and_updates(l1: L1Manager) -> None:
    store(l1, [key(1)])
    results = l1.reserve_write([key(1), key(2)], [SLOT, SLOT], WriteMode.ALL)
    assert [r for r, _ in results] == [OK, OK]
    assert l1.finish_write([key(1), key(2)]) == [OK, OK]
    assert l1.object_count() == 2


def test_temporary_objects_are_not_writable(l1: L1Manager) -> None:
    store(l1, [key(1)], temporary=True)
    assert l1.reserve_write([key(1)], [SLOT], WriteMode.UPDATE) == [
        (OpResult.KEY_NOT_WRITABLE, None)
    ]
    assert l1.reserve_write([key(1)], [SLOT], WriteMode.ALL) == [(OpResult.KEY_NOT_WRITABLE, None)]


@pytest.mark.parametrize("sizes", [[0], [-5], [True], [1.5], ["10"]])
def test_reserve_write_rejects_bad_sizes(l1: L1Manager, sizes: list[Any]) -> None:
    with pytest.raises(ValueError):
        l1.reserve_write([key(1)], sizes)
    assert l1.object_count() == 0


def test_reserve_write_rejects_length_mismatch(l1: L1Manager) -> None:
    with pytest.raises(ValueError, match="2 keys but 1 sizes"):
        l1.reserve_write([key(1), key(2)], [10])


def test_duplicate_keys_in_a_batch_answer_wrong_state(
    l1: L1Manager, pool: BytearrayMemoryPool
) -> None:
    results = l1.reserve_write([key(1), key(1), key(2)], [10, 10, 10])
    assert [r for r, _ in results] == [OK, OpResult.KEY_IN_WRONG_STATE, OK]
    assert pool.used_bytes == 2 * SLOT
    assert l1.finish_write([key(1), key(1)]) == [OK, OpResult.KEY_IN_WRONG_STATE]
    assert [r for r, _ in l1.reserve_read([key(1), key(1)])] == [OK, OpResult.KEY_IN_WRONG_STATE]
    assert l1.finish_read([key(1), key(1)]) == [OK, OpResult.KEY_IN_WRONG_STATE]
    assert l1.touch([key(1), key(1)]) == [OK, OpResult.KEY_IN_WRONG_STATE]
    assert l1.delete([key(1), key(1)]) == [OK, OpResult.KEY_IN_WRONG_STATE]


def test_allocation_is_all_or_nothing(pool: BytearrayMemoryPool, clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(4 * SLOT), clock=clock)
    store(l1, [key(0)])
    rec = Recorder()
    l1.add_listener(rec)
    # key(0) fails its state check; the other four do not all fit in the 3 free slots.
    keys = [key(0)] + [key(i) for i in range(1, 5)]
    results = l1.reserve_write(keys, [SLOT] * 5)
    assert [r for r, _ in results] == [OpResult.KEY_IN_WRONG_STATE] + [OpResult.OUT_OF_MEMORY] * 4
    assert all(h is None for _, h in results)
    assert l1.pool.used_bytes == SLOT
    assert l1.object_count() == 1
    assert rec.events == []
    assert l1.report_status()["out_of_memory_total"] == 1
    # Three fit.
    assert [r for r, _ in l1.reserve_write(keys[1:4], [SLOT] * 3)] == [OK] * 3


def test_finish_write_results(l1: L1Manager) -> None:
    store(l1, [key(1)])
    assert l1.finish_write([key(1), key(2)]) == [
        OpResult.KEY_IN_WRONG_STATE,
        OpResult.KEY_NOT_EXIST,
    ]


def test_abort_write(l1: L1Manager, pool: BytearrayMemoryPool, events: Recorder) -> None:
    store(l1, [key(1)])
    l1.reserve_write([key(2)], [SLOT])
    events.events.clear()
    assert l1.abort_write([key(2), key(1), key(3)]) == [
        OK,
        OpResult.KEY_IN_WRONG_STATE,
        OpResult.KEY_NOT_EXIST,
    ]
    assert not l1.contains(key(2))
    assert pool.used_bytes == SLOT
    assert events.events == [("removed", [key(2)], [SLOT], "aborted")]


def test_finish_write_and_reserve_read_with_extra_readers(l1: L1Manager, events: Recorder) -> None:
    l1.reserve_write([key(1), key(2)], [SLOT, SLOT])
    l1.finish_write([key(2)])
    results = l1.finish_write_and_reserve_read([key(1), key(2), key(3)], extra_count=1)
    assert results[0][0] is OK and results[0][1] == l1.get_handle(key(1))
    assert results[1:] == [(OpResult.KEY_IN_WRONG_STATE, None), (OpResult.KEY_NOT_EXIST, None)]
    assert events.events[-2:] == [("write_finished", [key(1)], [SLOT]), ("read_reserved", [key(1)])]
    # Two readers hold it: one finish is not enough to delete.
    assert l1.finish_read([key(1)]) == [OK]
    assert l1.delete([key(1)]) == [OpResult.KEY_IS_LOCKED]
    assert l1.finish_read([key(1)]) == [OK]
    assert l1.delete([key(1)]) == [OK]


def test_reserve_read_and_finish_read_counts(l1: L1Manager) -> None:
    store(l1, [key(1)])
    assert [r for r, _ in l1.reserve_read([key(1), key(2)], extra_count=2)] == [
        OK,
        OpResult.KEY_NOT_EXIST,
    ]
    assert l1.finish_read([key(1)], count=4) == [OpResult.KEY_IN_WRONG_STATE]
    assert l1.finish_read([key(1)], count=2) == [OK]
    assert l1.report_status()["read_locked_count"] == 1
    assert l1.finish_read([key(1), key(2)]) == [OK, OpResult.KEY_NOT_EXIST]
    assert l1.report_status()["read_locked_count"] == 0
    assert l1.finish_read([key(1)]) == [OpResult.KEY_IN_WRONG_STATE]
    with pytest.raises(ValueError):
        l1.finish_read([key(1)], count=0)
    with pytest.raises(ValueError):
        l1.reserve_read([key(1)], extra_count=-1)


def read_locks(l1: L1Manager, keys: list[ObjectKey]) -> list[int]:
    return [info.read_lock_count if info is not None else -1 for info in l1.inspect(keys)]


def prefix(l1: L1Manager, *args: Any, **kwargs: Any) -> int:
    """How many keys `lock_read_prefix` locked."""
    return len(l1.lock_read_prefix(*args, **kwargs))


def test_lock_read_prefix_locks_only_the_leading_readable_run(l1: L1Manager, events: Recorder) -> None:
    store(l1, [key(1), key(2), key(4)])
    events.events.clear()
    # key(3) is missing: key(4) after the hole is never locked.
    assert prefix(l1, [key(1), key(2), key(3), key(4)], extra_count=1) == 2
    assert read_locks(l1, [key(1), key(2), key(3), key(4)]) == [2, 2, -1, 0]
    assert events.events == [("read_reserved", [key(1), key(2)])]
    assert l1.finish_read([key(1), key(2)], count=2) == [OK, OK]
    assert l1.report_status()["read_locked_count"] == 0


def test_lock_read_prefix_stops_at_an_object_being_written_or_of_another_size(l1: L1Manager) -> None:
    store(l1, [key(1)])
    store(l1, [key(2)], size=SLOT // 2)
    l1.reserve_write([key(5)], [SLOT])  # being written: not readable
    assert prefix(l1, [key(1), key(5)]) == 1
    assert prefix(l1, [key(1), key(2)], nbytes=SLOT) == 1
    assert prefix(l1, [key(2), key(1)], nbytes=SLOT // 2) == 1
    assert read_locks(l1, [key(1), key(2), key(5)]) == [2, 1, 0]


def test_lock_read_prefix_cuts_the_run_to_whole_groups_without_touching_the_rest(
    l1: L1Manager, events: Recorder
) -> None:
    # Two ranks per chunk: chunk 1 has only its first rank, so the run is chunk 0 alone.
    store(l1, [key(10), key(11), key(20)])
    events.events.clear()
    assert prefix(l1, [key(10), key(11), key(20), key(21)], group=2) == 2
    assert read_locks(l1, [key(10), key(11), key(20)]) == [1, 1, 0]
    assert events.events == [("read_reserved", [key(10), key(11)])]
    assert prefix(l1, [key(20), key(21)], group=2) == 0


def test_lock_read_prefix_treats_a_repeated_key_as_the_end_and_checks_arguments(l1: L1Manager) -> None:
    store(l1, [key(1), key(2)])
    assert prefix(l1, [key(1), key(1), key(2)]) == 1
    assert read_locks(l1, [key(1), key(2)]) == [1, 0]
    assert prefix(l1, []) == 0
    with pytest.raises(ValueError):
        prefix(l1, [key(1)], extra_count=-1)
    with pytest.raises(ValueError):
        prefix(l1, [key(1)], group=0)


def test_lock_read_prefix_replaces_an_expired_lock(l1: L1Manager, clock: ManualClock) -> None:
    store(l1, [key(1)])
    assert prefix(l1, [key(1)], extra_count=3) == 1
    clock.advance(READ_TTL)  # its holders are presumed dead
    assert prefix(l1, [key(1)]) == 1
    assert read_locks(l1, [key(1)]) == [1]
    clock.advance(READ_TTL - 1)
    assert l1.delete([key(1)]) == [OpResult.KEY_IS_LOCKED]  # the new lock got a fresh TTL


def test_delete_results(l1: L1Manager, pool: BytearrayMemoryPool) -> None:
    store(l1, [key(1), key(2)])
    l1.reserve_write([key(3)], [SLOT])
    l1.reserve_read([key(2)])
    assert l1.delete([key(1), key(2), key(3), key(4)]) == [
        OK,
        OpResult.KEY_IS_LOCKED,
        OpResult.KEY_IS_LOCKED,
        OpResult.KEY_NOT_EXIST,
    ]
    assert pool.used_bytes == 2 * SLOT


def test_forced_delete_removes_locked_objects_and_frees_their_memory_when_the_locks_go(
    l1: L1Manager, pool: BytearrayMemoryPool, events: Recorder
) -> None:
    store(l1, [key(1), key(2)])
    writer = l1.reserve_write([key(3)], [SLOT])[0][1]
    l1.reserve_read([key(2)])
    assert l1.delete([key(1), key(2), key(3), key(4)], force=True) == [OK, OK, OK, OpResult.KEY_NOT_EXIST]
    assert l1.object_count() == 0
    assert events.events[-1] == ("removed", [key(2), key(3)], [SLOT, SLOT], "delete")
    # Memory of the locked ones is not handed out again while their holders use it.
    assert pool.used_bytes == 2 * SLOT
    fresh = l1.reserve_write([key(5)], [SLOT])[0][1]
    assert fresh is not None and writer is not None and not overlaps(fresh, writer)
    assert l1.finish_read([key(2)]) == [OpResult.KEY_NOT_EXIST]
    assert l1.finish_write([key(3)]) == [OpResult.KEY_NOT_EXIST]
    assert pool.used_bytes == SLOT  # only key(5)
    # A key whose old memory is still being read can be written again at once, into other
    # memory (issue 19: a forced removal never leaves a key unstorable).
    assert l1.finish_write([key(5)]) == [OK]
    [(_, reading)] = l1.reserve_read([key(5)])
    l1.delete([key(5)], force=True)
    [(status, newer)] = l1.reserve_write([key(5)], [SLOT])
    assert status is OK and newer is not None and reading is not None and not overlaps(newer, reading)
    assert l1.finish_read([key(5)], handles=[reading]) == [OpResult.KEY_NOT_EXIST]
    assert l1.finish_write([key(5)], handles=[newer]) == [OK]


def test_touch(l1: L1Manager, events: Recorder) -> None:
    store(l1, [key(1)])
    assert l1.touch([key(1), key(2)]) == [OK, OpResult.KEY_NOT_EXIST]
    assert events.events[-1] == ("touched", [key(1)])


def test_evict_skips_locked_and_temporary_and_stops_at_max_bytes(
    l1: L1Manager, pool: BytearrayMemoryPool
) -> None:
    store(l1, [key(i) for i in range(6)])
    store(l1, [key(10)], temporary=True)
    l1.reserve_read([key(0)])
    l1.reserve_write([key(20)], [SLOT])  # write-locked
    evicted, freed = l1.evict(
        [key(0), key(10), key(20), key(99), key(1), key(2), key(3)], max_bytes=2 * SLOT
    )
    assert evicted == [key(1), key(2)] and freed == 2 * SLOT
    assert l1.contains(key(3))
    evicted, freed = l1.evict(iter([key(3), key(3), key(4)]))
    assert evicted == [key(3), key(4)] and freed == 2 * SLOT
    assert l1.evict([key(5)], max_bytes=0) == ([], 0)
    assert pool.used_bytes == 4 * SLOT  # keys 0, 5, 10 and 20 remain


def test_evict_reports_what_it_removed_even_if_the_iterator_raises(
    l1: L1Manager, events: Recorder
) -> None:
    store(l1, [key(1), key(2)])
    events.events.clear()

    def victims() -> Any:
        yield key(1)
        raise RuntimeError("policy bug")

    with pytest.raises(RuntimeError):
        l1.evict(victims())
    assert events.events == [("removed", [key(1)], [SLOT], "evict")]
    assert not l1.contains(key(1))


# --------------------------------------------------------------------------- on-the-spot eviction


def test_a_write_that_does_not_fit_evicts_unlocked_objects(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(4 * SLOT), clock=clock)
    controller = EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(i) for i in range(4)])
    l1.touch([key(0)])  # key(0) becomes the most recent
    l1.reserve_read([key(1)])  # key(1) is locked
    results = l1.reserve_write([key(10), key(11)], [SLOT, SLOT])
    assert [r for r, _ in results] == [OK, OK]
    assert l1.contains(key(0)) and l1.contains(key(1))
    assert not l1.contains(key(2)) and not l1.contains(key(3))
    status = controller.report_status()
    assert status["reclaimed_bytes_total"] == 2 * SLOT and status["evicted_objects_total"] == 2


def test_out_of_memory_when_everything_is_locked(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(2 * SLOT), clock=clock)
    EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(1), key(2)])
    l1.reserve_read([key(1), key(2)])
    assert l1.reserve_write([key(3)], [SLOT]) == [(OpResult.OUT_OF_MEMORY, None)]
    assert l1.contains(key(1)) and l1.contains(key(2))
    # Nothing evictable could make room: the reclaimer is not even asked.
    status = l1.report_status()
    assert status["reclaim_refused_total"] >= 1 and status["reclaim_calls_total"] == 0


def test_reclaim_never_evicts_an_object_being_updated(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(3 * SLOT), clock=clock)
    EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(1), key(2), key(3)])
    # key(1) is the LRU victim, but it is the object being rewritten: the others must go.
    [(res, handle)] = l1.reserve_write([key(1)], [2 * SLOT], WriteMode.UPDATE)
    assert res is OK and handle is not None
    assert l1.contains(key(1))
    assert not l1.contains(key(2)) and not l1.contains(key(3))
    assert l1.pool.used_bytes == 2 * SLOT  # the new slots; the old one went back to the pool


def test_a_failing_reclaimer_means_out_of_memory(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(SLOT), clock=clock)

    def broken(_: int) -> int:
        raise RuntimeError("boom")

    l1.set_reclaimer(broken)
    store(l1, [key(1)])
    assert l1.reserve_write([key(2)], [SLOT]) == [(OpResult.OUT_OF_MEMORY, None)]
    assert l1.report_status()["reclaim_failures_total"] == 1


# --------------------------------------------------------------------------- TTLs


def test_a_crashed_writer_lock_expires(
    l1: L1Manager, pool: BytearrayMemoryPool, clock: ManualClock, events: Recorder
) -> None:
    l1.reserve_write([key(1)], [SLOT])
    assert l1.delete([key(1)]) == [OpResult.KEY_IS_LOCKED]
    assert l1.evict([key(1)]) == ([], 0)
    clock.advance(WRITE_TTL)
    # Never finished: never readable, but evictable and deletable.
    assert l1.reserve_read([key(1)]) == [(OpResult.KEY_NOT_READABLE, None)]
    assert l1.finish_write([key(1)]) == [OpResult.KEY_IN_WRONG_STATE]
    assert l1.evict([key(1)]) == ([key(1)], SLOT)
    assert pool.used_bytes == 0

    l1.reserve_write([key(2)], [SLOT])
    clock.advance(WRITE_TTL)
    assert l1.delete([key(2)]) == [OK]

    l1.reserve_write([key(3)], [SLOT])
    clock.advance(WRITE_TTL + 1)
    assert l1.expire_locks() == 1
    assert not l1.contains(key(3))
    assert events.events[-1] == ("removed", [key(3)], [SLOT], "aborted")
    assert pool.used_bytes == 0
    assert l1.report_status()["aborted_writes_total"] == 1


def test_an_abandoned_key_can_be_written_again(l1: L1Manager, clock: ManualClock) -> None:
    l1.reserve_write([key(1)], [SLOT])
    clock.advance(WRITE_TTL)
    assert l1.reserve_write([key(1)], [SLOT])[0][0] is OK
    assert l1.finish_write([key(1)]) == [OK]
    assert l1.is_readable(key(1))


def test_a_crashed_reader_lock_expires(l1: L1Manager, clock: ManualClock) -> None:
    store(l1, [key(1)])
    l1.reserve_read([key(1)], extra_count=3)
    assert l1.delete([key(1)]) == [OpResult.KEY_IS_LOCKED]
    clock.advance(READ_TTL - 0.5)
    assert l1.report_status()["read_locked_count"] == 1
    clock.advance(0.5)
    assert l1.report_status()["read_locked_count"] == 0
    assert l1.finish_read([key(1)]) == [OpResult.KEY_IN_WRONG_STATE]  # the late reader
    assert l1.delete([key(1)]) == [OK]


def test_expire_locks_counts_expired_locks(l1: L1Manager, clock: ManualClock) -> None:
    store(l1, [key(1), key(2)])
    l1.reserve_read([key(1), key(2)])
    l1.reserve_write([key(3)], [SLOT])
    assert l1.expire_locks() == 0
    clock.advance(WRITE_TTL)
    assert l1.expire_locks() == 3
    assert l1.expire_locks() == 0
    assert l1.report_status()["expired_locks_total"] == 3


# --------------------------------------------------------------------------- temporary objects


def test_temporary_object_is_freed_after_its_last_read(
    l1: L1Manager, pool: BytearrayMemoryPool, events: Recorder
) -> None:
    l1.reserve_write([key(1)], [SLOT], temporary=True)
    assert l1.report_status()["temporary_count"] == 1
    l1.finish_write_and_reserve_read([key(1)], extra_count=1)
    assert l1.finish_read([key(1)]) == [OK]
    assert l1.contains(key(1))
    assert l1.finish_read([key(1)]) == [OK]
    assert not l1.contains(key(1))
    assert pool.used_bytes == 0
    assert events.events[-2:] == [
        ("read_finished", [key(1)]),
        ("removed", [key(1)], [SLOT], "temporary"),
    ]
    assert l1.report_status()["temporary_count"] == 0


def test_temporary_objects_nobody_reads_are_freed_after_the_read_ttl(
    l1: L1Manager, clock: ManualClock
) -> None:
    store(l1, [key(1)], temporary=True)  # finished, never read
    l1.reserve_write([key(2)], [SLOT], temporary=True)
    l1.finish_write_and_reserve_read([key(2)])  # read, the reader crashed
    clock.advance(READ_TTL - 1)
    l1.expire_locks()
    assert l1.contains(key(1)) and l1.contains(key(2))
    clock.advance(1)
    l1.expire_locks()
    assert not l1.contains(key(1)) and not l1.contains(key(2))
    assert l1.pool.used_bytes == 0


# --------------------------------------------------------------------------- clear


def test_clear_without_force_keeps_locked_objects(l1: L1Manager, events: Recorder) -> None:
    store(l1, [key(1), key(2)])
    l1.reserve_read([key(1)])
    events.events.clear()
    assert l1.clear() == 1
    assert l1.keys() == [key(1)]
    assert events.events == [("removed", [key(2)], [SLOT], "clear")]


def test_force_clear_defers_the_free_until_the_copy_finishes(
    l1: L1Manager, pool: BytearrayMemoryPool
) -> None:
    [locked] = store(l1, [key(1)])
    store(l1, [key(2)])
    [(_, reading)] = l1.reserve_read([key(1)])  # a copy in flight
    assert l1.clear(force=True) == 2
    assert not l1.contains(key(1)) and l1.object_count() == 0
    status = l1.report_status()
    assert status["total_object_count"] == 0 and status["pending_free_count"] == 1
    # The still-read memory is not handed out again.
    assert pool.used_bytes == SLOT
    fresh = [h for _, h in l1.reserve_write([key(i) for i in range(10, 24)], [SLOT] * 14)]
    assert all(h is not None and not overlaps(h, locked) for h in fresh)
    # The key itself can be stored again at once (CLEAR never leaves a key unstorable).
    [(status_new, newer)] = l1.reserve_write([key(1)], [SLOT])
    assert status_new is OK and newer is not None and not overlaps(newer, locked)
    assert l1.finish_write([key(1)], handles=[newer]) == [OK]
    # The old reader finishes on its own object: it learns the object is gone, the memory is
    # returned, and the newer object of the same key is untouched.
    assert l1.finish_read([key(1)], handles=[reading]) == [OpResult.KEY_NOT_EXIST]
    assert pool.used_bytes == 15 * SLOT
    assert l1.report_status()["pending_free_count"] == 0
    [info] = l1.inspect([key(1)])
    assert info is not None and info.readable and info.read_lock_count == 0


def test_force_clear_voids_promises_and_frees_their_memory_at_once(
    l1: L1Manager, pool: BytearrayMemoryPool
) -> None:
    [first] = store(l1, [key(1)])
    handles = l1.lock_read_prefix([key(1)], 1, promise=True)  # a LOOKUP's promises (2 locks)
    assert handles == [first]
    assert l1.clear(force=True) == 1
    assert pool.used_bytes == 0 and l1.report_status()["pending_free_count"] == 0
    [second] = store(l1, [key(1)])
    # The late release of the voided promises never reaches the newer object.
    assert l1.finish_read([key(1)], 2, handles=[first], promise=True) == [OpResult.KEY_NOT_EXIST]
    assert l1.convert_promises([key(1)], [first]) == [OpResult.KEY_NOT_EXIST]
    [info] = l1.inspect([key(1)])
    assert info is not None and info.read_lock_count == 0
    assert l1.delete([key(1)]) == [OK] and second is not None


def test_promises_convert_to_copies_only_as_many_as_were_taken(l1: L1Manager) -> None:
    [h] = store(l1, [key(1)])
    assert l1.convert_promises([key(1)], [h]) == [OpResult.KEY_IN_WRONG_STATE]  # no promise
    l1.reserve_read([key(1)], promise=True)
    assert l1.finish_read([key(1)]) == [OpResult.KEY_IN_WRONG_STATE]  # a promise is no copy
    assert l1.convert_promises([key(1)], [h]) == [OK]
    assert l1.convert_promises([key(1)], [h]) == [OpResult.KEY_IN_WRONG_STATE]
    assert l1.finish_read([key(1)], promise=True) == [OpResult.KEY_IN_WRONG_STATE]  # it is a copy now
    assert l1.clear(force=True) == 1  # the copy keeps the memory
    assert l1.finish_read([key(1)], handles=[h]) == [OpResult.KEY_NOT_EXIST]
    assert l1.report_status()["pending_free_count"] == 0


def test_force_clear_of_a_write_locked_object(
    l1: L1Manager, pool: BytearrayMemoryPool, clock: ManualClock
) -> None:
    l1.reserve_write([key(1), key(2), key(3)], [SLOT] * 3)
    assert l1.clear(force=True) == 3
    assert pool.used_bytes == 3 * SLOT
    assert l1.finish_write([key(1)]) == [OpResult.KEY_NOT_EXIST]
    assert l1.abort_write([key(2)]) == [OpResult.KEY_NOT_EXIST]
    assert [r for r, _ in l1.finish_write_and_reserve_read([key(4)])] == [OpResult.KEY_NOT_EXIST]
    assert pool.used_bytes == SLOT
    # The third writer crashed: its memory comes back when the lock expires.
    clock.advance(WRITE_TTL)
    assert l1.expire_locks() == 1
    assert pool.used_bytes == 0


def test_scoped_clear_by_salt_and_model(l1: L1Manager) -> None:
    store(l1, [key(1, "a"), key(2, "a", "other"), key(3, "b"), key(4, "")])
    assert l1.clear(cache_salt="a", model_name="m") == 1
    assert sorted(l1.keys(), key=lambda k: k.chunk_hash) == [
        key(2, "a", "other"),
        key(3, "b"),
        key(4, ""),
    ]
    assert l1.clear(model_name="other") == 1
    assert l1.keys(cache_salt="b") == [key(3, "b")]
    assert l1.clear(cache_salt="") == 1
    assert l1.bytes_by_salt() == {"b": SLOT}


# --------------------------------------------------------------------------- listeners


def test_listeners_get_events_in_order(l1: L1Manager, events: Recorder) -> None:
    k = key(1)
    l1.reserve_write([k], [100])
    l1.finish_write([k])
    l1.reserve_read([k])
    l1.finish_read([k])
    l1.touch([k])
    l1.delete([k])
    assert events.events == [
        ("reserved_write", [k], [100]),
        ("write_finished", [k], [100]),
        ("read_reserved", [k]),
        ("read_finished", [k]),
        ("touched", [k]),
        ("removed", [k], [100], "delete"),
    ]


def test_a_raising_listener_does_not_break_the_operation(
    l1: L1Manager, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(L1Listener):
        def on_l1_keys_write_finished(
            self, keys: Sequence[ObjectKey], sizes: Sequence[int]
        ) -> None:
            raise RuntimeError("listener bug")

    l1.add_listener(Broken())
    after = Recorder()
    l1.add_listener(after)
    l1.reserve_write([key(1)], [10])
    assert l1.finish_write([key(1)]) == [OK]
    assert l1.is_readable(key(1))
    assert ("write_finished", [key(1)], [10]) in after.events
    assert "listener bug" in caplog.text


# --------------------------------------------------------------------------- status


def test_report_status_fields(l1: L1Manager, clock: ManualClock) -> None:
    store(l1, [key(1, "a"), key(2, "b")])
    l1.reserve_read([key(1, "a")])
    l1.reserve_write([key(3)], [10], temporary=True)
    status = l1.report_status()
    assert status["is_healthy"] is True
    assert status["total_object_count"] == 3
    assert status["write_locked_count"] == 1
    assert status["read_locked_count"] == 1
    assert status["temporary_count"] == 1
    assert status["memory_used_bytes"] == 3 * SLOT
    assert status["memory_total_bytes"] == 16 * SLOT
    assert status["memory_usage_ratio"] == pytest.approx(3 / 16)
    assert status["write_ttl_seconds"] == WRITE_TTL and status["read_ttl_seconds"] == READ_TTL
    assert status["pending_free_count"] == 0
    assert status["pool"]["is_healthy"] is True
    assert l1.bytes_by_salt() == {"a": SLOT, "b": SLOT, "": 10}


def _recount(l1: L1Manager, pool: BytearrayMemoryPool, now: float) -> dict[str, Any]:
    objects = l1._objects  # brute force over the internals, independent of the counters
    pending = l1._pending
    by_salt: dict[str, int] = {}
    for k, obj in objects.items():
        by_salt[k.cache_salt] = by_salt.get(k.cache_salt, 0) + obj.size
    handles = [o.handle for o in objects.values()] + [o.handle for o in pending.objects()]
    spans = sorted((h.offset, h.offset + h.slot_bytes) for h in handles)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (
        "memory handed out twice"
    )
    return {
        "total_object_count": len(objects),
        "write_locked_count": sum(o.write_locked(now) for o in objects.values()),
        "read_locked_count": sum(o.read_locked(now) for o in objects.values()),
        "temporary_count": sum(o.temporary for o in objects.values()),
        "pending_free_count": len(pending),
        "memory_used_bytes": sum(h.slot_bytes for h in handles),
        "object_bytes": sum(o.size for o in objects.values()),
        "bytes_by_salt": by_salt,
    }


@pytest.mark.parametrize("seed", range(6))
def test_status_counters_stay_exact_under_random_operations(seed: int, clock: ManualClock) -> None:
    rng = random.Random(seed)
    pool = BytearrayMemoryPool(10 * SLOT)  # small enough that writes often do not fit
    l1 = L1Manager(pool, clock=clock, write_ttl_seconds=WRITE_TTL, read_ttl_seconds=READ_TTL)
    if seed % 2:
        EvictionController(l1, LRUPolicy(), clock=clock)  # exercise on-the-spot eviction too
    universe = [
        key(i, salt=rng.choice(["", "a", "b"]), model=rng.choice(["m", "n"])) for i in range(40)
    ]
    for _ in range(600):
        batch = rng.choices(universe, k=rng.randint(1, 4))  # repeats exercise the duplicate rule
        op = rng.randrange(13)
        if op == 0:
            l1.reserve_write(
                batch,
                [rng.choice([100, SLOT, 2 * SLOT])] * len(batch),
                rng.choice(list(WriteMode)),
                temporary=rng.random() < 0.2,
            )
        elif op == 1:
            l1.finish_write(batch)
        elif op == 2:
            l1.abort_write(batch)
        elif op == 3:
            l1.finish_write_and_reserve_read(batch, extra_count=rng.randint(0, 2))
        elif op == 4:
            l1.reserve_read(batch, extra_count=rng.randint(0, 2))
        elif op == 5:
            l1.finish_read(batch, count=rng.randint(1, 2))
        elif op == 6:
            l1.delete(batch)
        elif op == 7:
            l1.evict(batch, max_bytes=rng.choice([None, SLOT]))
        elif op == 8:
            l1.touch(batch)
        elif op == 9 and rng.random() < 0.2:
            l1.clear(
                force=rng.random() < 0.5,
                cache_salt=rng.choice([None, "", "a"]),
                model_name=rng.choice([None, "m"]),
            )
        elif op == 10:
            clock.advance(rng.choice([1.0, READ_TTL / 2, WRITE_TTL / 2, WRITE_TTL]))
        elif op == 11:
            l1.expire_locks()
        status = l1.report_status()
        expected = _recount(l1, pool, clock.monotonic())
        got = {k: status[k] for k in expected if k != "bytes_by_salt"}
        got["bytes_by_salt"] = l1.bytes_by_salt()
        assert got == expected
        assert status["memory_used_bytes"] == pool.used_bytes



def test_a_write_that_cannot_fit_never_asks_the_reclaimer(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(8 * SLOT), clock=clock)
    EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(i) for i in range(8)])
    # One absurd object, or a batch bigger than the whole pool: refused, nothing evicted.
    assert l1.reserve_write([key(100)], [2**60]) == [(OpResult.OUT_OF_MEMORY, None)]
    assert l1.reserve_write([key(i) for i in range(100, 109)], [SLOT] * 9)[0][0] is OpResult.OUT_OF_MEMORY
    assert l1.object_count() == 8 and l1.report_status()["reclaim_calls_total"] == 0


def test_a_write_evicts_only_what_it_needs(clock: ManualClock) -> None:
    l1 = L1Manager(BytearrayMemoryPool(8 * SLOT), clock=clock)
    EvictionController(l1, LRUPolicy(), clock=clock)
    store(l1, [key(i) for i in range(8)])
    assert all(s is OK for s, _ in l1.reserve_write([key(100), key(101)], [SLOT] * 2))
    assert l1.object_count() == 8  # two evicted for two written, the six others stay
    assert [l1.contains(key(i)) for i in range(8)] == [False, False] + [True] * 6
