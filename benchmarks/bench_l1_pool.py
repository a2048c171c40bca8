"""Benchmark of the L1 shared-memory pool: pre-fault cost, cold vs warm first stores, allocator ops/s.

Run: python benchmarks/bench_l1_pool.py [--size-gib 1] [--object-mib 2]
Bounded to about 2 x size-gib of memory (default 2 GiB) and well under a minute.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import time
import uuid
from collections.abc import Callable

import torch

from lmcache_adapters.memory import SharedMemoryPool
from lmcache_adapters.memory.shm_pool import _MADV_POPULATE_WRITE
from lmcache_core.ports import MemoryHandle

GiB = 1 << 30
MiB = 1 << 20
PAGE = 4096
BUDGET_S = 50.0  # every section after this much total time is skipped
_T0 = time.perf_counter()


def _out_of_time(section: str) -> bool:
    if time.perf_counter() - _T0 > BUDGET_S:
        print(f"  {section}: skipped (over the {BUDGET_S:.0f} s budget; the machine is busy)")
        return True
    return False


def _fresh_pool(size: int, prefault: str = "none") -> SharedMemoryPool:
    return SharedMemoryPool(
        size,
        shm_suffix=f"bench_{uuid.uuid4().hex[:8]}",
        prefault=prefault,  # type: ignore[arg-type]
        pin_memory=False,
    )


def bench_prefault(size: int) -> None:
    print(f"pre-fault cost ({size / GiB:.2f} GiB pool, ms per GiB):")

    def fallocate(p: SharedMemoryPool) -> None:
        os.posix_fallocate(p._fd, 0, size)

    def populate(p: SharedMemoryPool) -> None:
        assert p._mmap is not None
        p._mmap.madvise(_MADV_POPULATE_WRITE, 0, size)

    def both(p: SharedMemoryPool) -> None:
        fallocate(p)
        populate(p)

    def touch(p: SharedMemoryPool) -> None:
        p.tensor[::PAGE].zero_()

    methods: dict[str, Callable[[SharedMemoryPool], None]] = {
        "fallocate (tmpfs pages, no mapping)": fallocate,
        "MADV_POPULATE_WRITE": populate,
        "fallocate + MADV_POPULATE_WRITE (used)": both,
        "touch one byte per page (destructive)": touch,
    }
    for name, fn in methods.items():
        if _out_of_time(name):
            continue
        pool = _fresh_pool(size)
        try:
            start = time.perf_counter()
            try:
                fn(pool)
            except OSError as exc:
                print(f"  {name:42s} unavailable: {exc}")
                continue
            elapsed = time.perf_counter() - start
            print(f"  {name:42s} {elapsed * 1000 / (size / GiB):8.1f} ms/GiB")
        finally:
            pool.close()


def _store_all(pool: SharedMemoryPool, src: torch.Tensor, obj: int) -> float:
    """Copy `src` into the pool in `obj`-byte objects; GB/s."""
    handles = []
    start = time.perf_counter()
    for pos in range(0, src.numel(), obj):
        h = pool.allocate(obj)
        assert h is not None
        pool.tensor_view(h).copy_(src[pos : pos + obj])
        handles.append(h)
    elapsed = time.perf_counter() - start
    for h in handles:
        pool.free(h)
    return src.numel() / elapsed / 1e9


def bench_stores(size: int, obj: int) -> None:
    print(f"stores of a {size / GiB:.2f} GiB source in {obj / MiB:g} MiB objects (GB/s):")
    src = torch.empty(size, dtype=torch.uint8).fill_(0x5A)
    cases = [
        ("cold (prefault=none), first store", "none", None),
        ("engine's view: tmpfs pages reserved, unmapped", "none", "fallocate"),
        ("prefault=sync, first store", "sync", None),
    ]
    for name, mode, extra in cases:
        if _out_of_time(name):
            continue
        pool = _fresh_pool(size, mode)
        try:
            if extra == "fallocate":
                os.posix_fallocate(pool._fd, 0, size)
            first = _store_all(pool, src, obj)
            warm = _store_all(pool, src, obj)
            print(f"  {name:46s} first {first:6.2f}   warm {warm:6.2f}")
        finally:
            pool.close()
    # What a CPU engine sees: its own mapping of a segment the server pre-faulted.
    if _out_of_time("engine mapping"):
        return
    pool = _fresh_pool(size, "sync")
    try:
        fd = os.open(pool.shm_path, os.O_RDWR)
        engine_map = mmap.mmap(fd, size)
        os.close(fd)
        engine = torch.frombuffer(memoryview(engine_map), dtype=torch.uint8)
        start = time.perf_counter()
        for pos in range(0, size, obj):
            engine[pos : pos + obj].copy_(src[pos : pos + obj])
        first = size / (time.perf_counter() - start) / 1e9
        start = time.perf_counter()
        for pos in range(0, size, obj):
            engine[pos : pos + obj].copy_(src[pos : pos + obj])
        warm = size / (time.perf_counter() - start) / 1e9
        print(
            f"  {'engine mapping of a prefault=sync pool':46s} first {first:6.2f}   warm {warm:6.2f}"
        )
        del engine
        engine_map.close()
    finally:
        pool.close()


def bench_allocator(seconds: float = 2.0) -> None:
    if _out_of_time("allocator"):
        return
    pool = _fresh_pool(1 * GiB)
    try:
        rng = random.Random(0)
        sizes = [2 * MiB, 2 * MiB, 2 * MiB, 512 * 1024, 64 * 1024]
        live: list[MemoryHandle] = []
        ops = 0
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            for _ in range(1000):
                if live and (len(live) > 300 or rng.random() < 0.5):
                    pool.free(live.pop(rng.randrange(len(live))))
                else:
                    h = pool.allocate(rng.choice(sizes))
                    if h is not None:
                        live.append(h)
                ops += 1
        elapsed = time.perf_counter() - start
        print(f"allocate+free (mixed sizes, ~300 live): {ops / elapsed / 1e3:.0f} k ops/s")
    finally:
        pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--object-mib", type=float, default=2.0)
    args = parser.parse_args()
    size = int(args.size_gib * GiB) // (32 * MiB) * (32 * MiB)
    obj = int(args.object_mib * MiB)
    torch.set_num_threads(1)  # one engine worker's copy, not the machine's
    bench_prefault(size)
    bench_stores(size, obj)
    bench_allocator()


if __name__ == "__main__":
    main()
