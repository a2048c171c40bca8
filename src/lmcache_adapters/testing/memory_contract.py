"""The MemoryPool contract suite: behaviour every L1 `MemoryPool` must show, as a pytest base class.

A pool's test module subclasses `MemoryPoolContract` (no `Test` prefix, so pytest collects only
the subclasses) and provides the fixture `pool`: a fresh, empty pool of `CAPACITY` bytes (its
`capacity_bytes` may be less: whole slabs only, but at least `CAPACITY // 2`), closed afterwards.
Every test is bounded in objects and time (well under a second per pool)."""

from __future__ import annotations

import os
import random
import threading

import pytest

from lmcache_core.ports import MemoryHandle, MemoryPool

CAPACITY = 8 << 20
PAGE = 4096


def device_file(path: str | os.PathLike[str], size: int) -> str:
    """A sparse regular file of `size` bytes at `path`, standing in for a Device-DAX device."""
    with open(path, "wb") as f:
        f.truncate(size)
    return os.fspath(path)


class MemoryPoolContract:
    """Allocate, free, view, capacity, used bytes and fragmentation under churn."""

    def test_it_is_a_memory_pool(self, pool: MemoryPool) -> None:
        assert isinstance(pool, MemoryPool)
        assert CAPACITY // 2 <= pool.capacity_bytes <= CAPACITY
        assert pool.used_bytes == 0
        assert pool.report_status()["is_healthy"] is True

    def test_allocations_are_page_aligned_disjoint_and_counted_in_slots(self, pool: MemoryPool) -> None:
        sizes = [1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 7, 100_000]
        handles = [pool.allocate(n) for n in sizes]
        assert all(h is not None for h in handles)
        live = [h for h in handles if h is not None]
        for h, n in zip(live, sizes, strict=True):
            assert h.nbytes == n and h.slot_bytes >= n and h.slot_bytes % PAGE == 0 and h.offset % PAGE == 0
        spans = sorted((h.offset, h.offset + h.slot_bytes) for h in live)
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
        assert pool.used_bytes == sum(h.slot_bytes for h in live)
        for h in live:
            pool.free(h)
        assert pool.used_bytes == 0

    def test_views_are_writable_exact_and_isolated(self, pool: MemoryPool) -> None:
        a, b = pool.allocate(5000), pool.allocate(5000)
        assert a is not None and b is not None
        va, vb = pool.view(a), pool.view(b)
        assert va.nbytes == 5000 and not va.readonly
        va[:] = b"\xaa" * 5000
        vb[:] = b"\x55" * 5000
        assert bytes(pool.view(a)) == b"\xaa" * 5000 and bytes(pool.view(b)) == b"\x55" * 5000

    def test_bad_sizes_raise_and_oversized_ones_are_none(self, pool: MemoryPool) -> None:
        for bad in (0, -1, 1.5, True, "4096"):
            with pytest.raises((ValueError, TypeError)):
                pool.allocate(bad)  # type: ignore[arg-type]
        assert pool.allocate(pool.capacity_bytes + 1) is None
        assert pool.used_bytes == 0

    def test_a_full_pool_answers_none_and_refills_after_frees(self, pool: MemoryPool) -> None:
        size = 256 << 10
        handles = []
        while (h := pool.allocate(size)) is not None:
            handles.append(h)
        assert len(handles) == pool.capacity_bytes // size
        assert pool.allocate(size) is None and pool.allocate(1) is None
        for h in handles[::2]:
            pool.free(h)
        again = [pool.allocate(size) for _ in handles[::2]]
        assert all(h is not None for h in again)

    def test_double_foreign_and_altered_frees_raise_and_change_nothing(self, pool: MemoryPool) -> None:
        h = pool.allocate(PAGE)
        assert h is not None
        used = pool.used_bytes
        for wrong in (
            MemoryHandle(offset=h.offset, nbytes=h.nbytes + 1, slot_bytes=h.slot_bytes),
            MemoryHandle(offset=h.offset + PAGE, nbytes=h.nbytes, slot_bytes=h.slot_bytes),
            MemoryHandle(offset=1 << 50, nbytes=1, slot_bytes=PAGE),
        ):
            with pytest.raises(ValueError):
                pool.free(wrong)
            with pytest.raises(ValueError):
                pool.view(wrong)
        assert pool.used_bytes == used
        pool.free(h)
        with pytest.raises(ValueError):
            pool.free(h)
        with pytest.raises(ValueError):
            pool.view(h)

    def test_equal_sized_churn_never_fragments(self, pool: MemoryPool) -> None:
        size = 96 << 10
        handles = []
        while (h := pool.allocate(size)) is not None:
            handles.append(h)
        full = len(handles)
        rng = random.Random(7)
        for _ in range(2000):
            i = rng.randrange(len(handles))
            pool.free(handles[i])
            h = pool.allocate(size)
            assert h is not None, "a slot freed by an equal-sized object must serve the next one"
            handles[i] = h
        for h in handles:
            pool.free(h)
        assert pool.used_bytes == 0
        refill = []
        while (h := pool.allocate(size)) is not None:
            refill.append(h)
        assert len(refill) == full

    def test_freed_space_serves_another_size(self, pool: MemoryPool) -> None:
        small = []
        while (h := pool.allocate(64 << 10)) is not None:
            small.append(h)
        for h in small:
            pool.free(h)
        big = pool.allocate(pool.capacity_bytes // 2)
        assert big is not None

    def test_concurrent_allocate_free_keeps_the_books(self, pool: MemoryPool) -> None:
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            mine: list[MemoryHandle] = []
            try:
                for _ in range(300):
                    if mine and rng.random() < 0.5:
                        h = mine.pop(rng.randrange(len(mine)))
                        assert bytes(pool.view(h)[:8]) == seed.to_bytes(8, "big")
                        pool.free(h)
                    else:
                        h2 = pool.allocate(rng.choice((PAGE, 3 * PAGE, 20_000)))
                        if h2 is not None:
                            pool.view(h2)[:8] = seed.to_bytes(8, "big")
                            mine.append(h2)
                for h in mine:
                    pool.free(h)
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == [] and pool.used_bytes == 0

    def test_close_is_idempotent_and_frees_everything(self, pool: MemoryPool) -> None:
        assert pool.allocate(PAGE) is not None
        pool.close()
        pool.close()
        assert pool.allocate(PAGE) is None
