"""BytearrayMemoryPool: alignment, slab reuse, accounting, misuse, thread safety."""

from __future__ import annotations

import random
import threading

import pytest

from lmcache_core.ports import MemoryHandle, MemoryPool
from lmcache_core.testing import BytearrayMemoryPool

SLOT = 4096


def _disjoint(handles: list[MemoryHandle]) -> bool:
    spans = sorted((h.offset, h.offset + h.slot_bytes) for h in handles)
    return all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))


def test_implements_the_port() -> None:
    assert isinstance(BytearrayMemoryPool(SLOT), MemoryPool)


def test_offsets_aligned_and_used_counts_slots() -> None:
    pool = BytearrayMemoryPool(16 * SLOT)
    a = pool.allocate(1)
    b = pool.allocate(SLOT + 1)
    assert a is not None and b is not None
    assert a.offset % SLOT == 0 and b.offset % SLOT == 0
    assert (a.nbytes, a.slot_bytes) == (1, SLOT)
    assert (b.nbytes, b.slot_bytes) == (SLOT + 1, 2 * SLOT)
    assert pool.used_bytes == 3 * SLOT
    assert _disjoint([a, b])
    pool.free(a)
    pool.free(b)
    assert pool.used_bytes == 0


def test_returns_none_when_full_and_recovers_after_free() -> None:
    pool = BytearrayMemoryPool(4 * SLOT)
    handles = [pool.allocate(SLOT) for _ in range(4)]
    assert all(h is not None for h in handles)
    assert pool.allocate(1) is None
    assert pool.allocate(5 * SLOT) is None
    pool.free(handles[2])  # type: ignore[arg-type]
    again = pool.allocate(100)
    assert again is not None and again.offset == handles[2].offset  # type: ignore[union-attr]
    assert pool.report_status()["failed_allocations_total"] == 2


def test_equal_sized_churn_reuses_slots_exactly() -> None:
    pool = BytearrayMemoryPool(8 * SLOT)
    live = [pool.allocate(3000) for _ in range(8)]
    rng = random.Random(7)
    for _ in range(500):
        victim = live.pop(rng.randrange(len(live)))
        pool.free(victim)  # type: ignore[arg-type]
        fresh = pool.allocate(3000)
        assert fresh is not None, "equal-sized churn must never fragment"
        live.append(fresh)
    assert pool.used_bytes == 8 * SLOT
    assert _disjoint(live)  # type: ignore[arg-type]


def test_free_slots_of_another_size_are_coalesced_when_needed() -> None:
    pool = BytearrayMemoryPool(4 * SLOT)
    small = [pool.allocate(SLOT) for _ in range(4)]
    for h in small:
        pool.free(h)  # type: ignore[arg-type]
    big = pool.allocate(4 * SLOT)
    assert big is not None and big.offset == 0


def test_double_free_and_foreign_handles_raise() -> None:
    pool = BytearrayMemoryPool(4 * SLOT)
    h = pool.allocate(10)
    assert h is not None
    pool.free(h)
    with pytest.raises(ValueError):
        pool.free(h)
    with pytest.raises(ValueError):
        pool.free(MemoryHandle(offset=SLOT, nbytes=10, slot_bytes=SLOT))
    h2 = pool.allocate(10)
    assert h2 is not None
    with pytest.raises(ValueError):  # right offset, wrong shape: still foreign
        pool.free(MemoryHandle(offset=h2.offset, nbytes=11, slot_bytes=SLOT))
    assert pool.used_bytes == SLOT


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        BytearrayMemoryPool(4 * SLOT).allocate(bad)  # type: ignore[arg-type]


def test_views_are_writable_exact_and_isolated() -> None:
    pool = BytearrayMemoryPool(4 * SLOT)
    a = pool.allocate(100)
    b = pool.allocate(100)
    assert a is not None and b is not None
    va, vb = pool.view(a), pool.view(b)
    assert len(va) == 100 and not va.readonly
    va[:] = b"\xaa" * 100
    vb[:] = b"\x55" * 100
    assert pool.view(a).tobytes() == b"\xaa" * 100
    assert pool.view(b).tobytes() == b"\x55" * 100
    pool.free(a)
    with pytest.raises(ValueError):
        pool.view(a)


def test_smaller_alignment_packs_small_objects() -> None:
    pool = BytearrayMemoryPool(1024, alignment=64)
    handles = [pool.allocate(64) for _ in range(16)]
    assert all(h is not None and h.offset % 64 == 0 for h in handles)
    assert pool.allocate(1) is None
    with pytest.raises(ValueError):
        BytearrayMemoryPool(1024, alignment=48)


def test_concurrent_allocate_and_free_never_overlap() -> None:
    pool = BytearrayMemoryPool(256 * SLOT)
    held: list[MemoryHandle] = []
    held_lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[MemoryHandle] = []
        try:
            for _ in range(400):
                if mine and rng.random() < 0.5:
                    pool.free(mine.pop(rng.randrange(len(mine))))
                else:
                    h = pool.allocate(rng.choice([100, SLOT, 2 * SLOT + 1]))
                    if h is not None:
                        mine.append(h)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        with held_lock:
            held.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert _disjoint(held)
    assert pool.used_bytes == sum(h.slot_bytes for h in held)


def test_status_and_close() -> None:
    pool = BytearrayMemoryPool(4 * SLOT)
    h = pool.allocate(10)
    status = pool.report_status()
    assert status["is_healthy"] is True
    assert status["used_bytes"] == SLOT and status["capacity_bytes"] == 4 * SLOT
    assert status["usage_ratio"] == pytest.approx(0.25)
    pool.close()
    pool.close()  # idempotent
    assert pool.report_status()["is_healthy"] is False
    assert pool.allocate(10) is None  # the MemoryPool contract: no room, no exception
    pool.free(h)  # type: ignore[arg-type]  # after close, frees are no-ops
