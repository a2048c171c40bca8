"""Store-path overhead of metrics: L1 reserve/finish (+ the chunk copy with --fill) + write-back to
a mock L2 adapter through the StorageManager, with the Prometheus sink (and its L1 listener) on vs
a NullMetricsSink. Target < 5 %.

Two stacks are built once (metrics on, metrics off) and short segments alternate between them
many times, so set-up costs and drift on a shared machine hit both sides alike; the figure is the
ratio of the medians of the per-segment times.

    python benchmarks/bench_metrics_overhead.py [--segments 20] [--batches 100] [--object-kib 16] [--fill]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.ports import MetricsSink, NullMetricsSink
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

OBJECT_BYTES = 16 << 10


def build(metrics: MetricsSink | None, batch_size: int, object_bytes: int, labels: str) -> Any:
    config = ServerConfig(l2_adapters=('{"type": "mock"}',), eviction_interval_seconds=60.0, metrics_labels=labels)
    overrides = {} if metrics is None else {"metrics": metrics}
    return in_memory_stack(config, pool_bytes=max(64 << 20, 48 * batch_size * object_bytes), **overrides)


def segment(stack: Any, seg: int, batches: int, batch_size: int, object_bytes: int, fill: bool, source: bytes) -> float:
    """Seconds to store `batches` batches, write them back to L2 and delete them from both tiers."""
    storage = stack.storage
    l1 = storage.l1
    adapter = storage.l2_adapters[0].adapter
    done: list[ObjectKey] = []
    started = time.perf_counter()
    for b in range(batches):
        keys = [
            ObjectKey(seg.to_bytes(4, "big") + b.to_bytes(4, "big") + i.to_bytes(2, "big"), "bench", 0, cache_salt=f"t{b % 4}")
            for i in range(batch_size)
        ]
        l1.reserve_write(keys, [object_bytes] * batch_size)
        if fill:  # the store's own copy of the chunk into L1 (what an engine or a gather does)
            for key in keys:
                view = l1.view(key)
                assert view is not None
                view[:] = source[:object_bytes]
        l1.finish_write(keys)
        done.extend(keys)
        if b % 32 == 31:
            storage.store.drain(30)
            l1.delete(done)
            adapter.delete(done)
            done.clear()
    storage.store.drain(30)
    l1.delete(done)
    adapter.delete(done)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=20, help="alternating segments per side")
    parser.add_argument("--batches", type=int, default=100, help="batches per segment")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--labels", choices=("on", "off"), default="on")
    parser.add_argument("--object-kib", type=int, default=OBJECT_BYTES >> 10, help="object size (KiB)")
    parser.add_argument("--fill", action="store_true", help="copy each object's bytes into L1 as a real store does")
    args = parser.parse_args()
    size = args.object_kib << 10
    source = bytes(range(256)) * (size // 256 + 1)
    on_stack = build(None, args.batch_size, size, args.labels)
    off_stack = build(NullMetricsSink(), args.batch_size, size, args.labels)
    on: list[float] = []
    off: list[float] = []
    try:
        for stack in (on_stack, off_stack):  # warm-up: imports, allocator, first page faults
            segment(stack, 0, args.batches, args.batch_size, size, args.fill, source)
        for seg in range(1, args.segments + 1):
            first, second = (on_stack, off_stack) if seg % 2 else (off_stack, on_stack)
            for stack in (first, second):
                t = segment(stack, seg, args.batches, args.batch_size, size, args.fill, source)
                (on if stack is on_stack else off).append(t)
    finally:
        on_stack.close()
        off_stack.close()
    objects = args.batches * args.batch_size
    med_on, med_off = statistics.median(on), statistics.median(off)
    print(
        f"segments: {args.segments} per side, {objects} objects each ({args.batch_size} per batch, "
        f"{args.object_kib} KiB, {'with' if args.fill else 'without'} the data copy)"
    )
    print(f"metrics off: median {med_off * 1e3:.1f} ms per segment ({objects / med_off:,.0f} objects/s)")
    print(f"metrics on (labels {args.labels}): median {med_on * 1e3:.1f} ms per segment ({objects / med_on:,.0f} objects/s)")
    print(f"overhead: {(med_on / med_off - 1) * 100:+.2f} % (ratio of medians; target < 5 %)")


if __name__ == "__main__":
    main()
