"""Benchmark: L1 report_status() latency empty vs 100k objects, and reserve+finish write throughput."""

from __future__ import annotations

import argparse
import time

from timing import median_us

from lmcache_core.clock import SystemClock
from lmcache_core.keys import ObjectKey
from lmcache_core.l1 import L1Manager, OpResult
from lmcache_core.testing import BytearrayMemoryPool

OBJECT_BYTES = 256




def make_keys(n: int, start: int = 0) -> list[ObjectKey]:
    return [
        ObjectKey(chunk_hash=i.to_bytes(8, "big"), model_name="bench", kv_rank=0)
        for i in range(start, start + n)
    ]


def new_l1(objects: int) -> L1Manager:
    pool = BytearrayMemoryPool(
        max(objects, 1) * OBJECT_BYTES + 1024 * OBJECT_BYTES, alignment=OBJECT_BYTES
    )
    return L1Manager(pool, clock=SystemClock())


def fill(l1: L1Manager, keys: list[ObjectKey], batch: int) -> float:
    """Reserve and finish `keys` in batches; returns the seconds it took."""
    t0 = time.perf_counter()
    for i in range(0, len(keys), batch):
        part = keys[i : i + batch]
        results = l1.reserve_write(part, [OBJECT_BYTES] * len(part))
        if any(r is not OpResult.SUCCESS for r, _ in results):
            raise SystemExit(f"reserve_write failed: {results[0]}")
        l1.finish_write(part)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument(
        "--locked", type=int, default=100, help="objects read-locked during the status runs"
    )
    args = parser.parse_args()

    empty = new_l1(0)
    empty_us = median_us(empty.report_status, args.runs)

    full = new_l1(args.objects)
    keys = make_keys(args.objects)
    fill_s = fill(full, keys, args.batch)
    full.reserve_read(keys[: args.locked])  # a realistic handful of in-flight reads
    full_us = median_us(full.report_status, args.runs)
    status = full.report_status()
    assert (
        status["total_object_count"] == args.objects and status["read_locked_count"] == args.locked
    )

    print(f"report_status, 0 objects:         {empty_us:8.1f} us (median of {args.runs})")
    print(
        f"report_status, {args.objects:,} objects:  {full_us:8.1f} us ({args.locked} read-locked)"
    )
    print(f"ratio:                            {full_us / empty_us:8.2f}x")
    ops = args.objects / fill_s
    print(
        f"reserve_write+finish_write, batches of {args.batch}: {ops:,.0f} objects/s "
        f"({ops / args.batch:,.0f} batches/s) while filling to {args.objects:,}"
    )

    # Steady state: write a batch and delete it again in a table of `objects` entries.
    extra = make_keys(args.batch, start=args.objects)
    rounds = 200
    t0 = time.perf_counter()
    for _ in range(rounds):
        full.reserve_write(extra, [OBJECT_BYTES] * args.batch)
        full.finish_write(extra)
        full.delete(extra)
    dt = time.perf_counter() - t0
    print(
        f"steady state (reserve+finish+delete) at {args.objects:,} objects: "
        f"{rounds * args.batch / dt:,.0f} objects/s"
    )


if __name__ == "__main__":
    main()
