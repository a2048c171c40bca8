"""Benchmark of L1's read-lock batch operations on the LOOKUP and retrieve paths (128-key batches).

Times, per batch, in microseconds (median of `--runs`):
- prefix:  `lock_read_prefix(promise=True)` then `finish_read(promise=True, handles=...)` (a LOOKUP
  that takes promises and a lease that releases them);
- copy:    `reserve_read` then `finish_read` (a store or retrieve copying the objects);
- convert: `lock_read_prefix(promise=True)`, `convert_promises`, `finish_read(handles=...)` (a
  retrieve redeeming a LOOKUP's promises).

Run: python benchmarks/bench_l1_lookup.py [--keys 128] [--runs 3000]
Pure Python over BytearrayMemoryPool; bounded to a few seconds.
"""

from __future__ import annotations

import argparse

from timing import median_us

from lmcache_core.clock import SystemClock
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Manager, OpResult
from lmcache_core.testing import BytearrayMemoryPool

OBJECT_BYTES = 4096



def filled_l1(n: int) -> tuple[L1Manager, list[ObjectKey]]:
    """An L1 holding `n` readable objects, and their keys (fresh key objects, as a request would
    build them: equal to the stored ones, not identical)."""
    l1 = L1Manager(BytearrayMemoryPool(n * OBJECT_BYTES), clock=SystemClock())
    stored = [ObjectKey(i.to_bytes(8, "big"), "bench", 0) for i in range(n)]
    if any(r is not OpResult.SUCCESS for r, _ in l1.reserve_write(stored, [OBJECT_BYTES] * n)):
        raise SystemExit("reserve_write failed")
    l1.finish_write(stored)
    return l1, [ObjectKey(i.to_bytes(8, "big"), "bench", 0) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3000)
    args = parser.parse_args()
    l1, keys = filled_l1(args.keys)

    def prefix() -> None:
        handles = l1.lock_read_prefix(keys, nbytes=OBJECT_BYTES, promise=True)
        assert len(handles) == len(keys)
        l1.finish_read(keys, handles=handles, promise=True)

    def copy() -> None:
        l1.reserve_read(keys)
        l1.finish_read(keys)

    def convert() -> None:
        handles = l1.lock_read_prefix(keys, nbytes=OBJECT_BYTES, promise=True)
        l1.convert_promises(keys, handles)
        l1.finish_read(keys, handles=handles)

    for name, fn in (("prefix", prefix), ("copy", copy), ("convert", convert)):
        print(f"{name:8s} {args.keys} keys: {median_us(fn, args.runs, warmups=50):8.1f} us per batch")
    assert l1.report_status()["read_locked_count"] == 0


if __name__ == "__main__":
    main()
