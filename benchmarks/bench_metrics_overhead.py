"""Store-path overhead of metrics: L1 reserve/finish + write-back to a mock L2 adapter through the
StorageManager, with the Prometheus sink (and its L1 listener) on vs a NullMetricsSink. Target < 5 %.

    python benchmarks/bench_metrics_overhead.py [--batches 2000] [--batch-size 16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from lmcache_core.keys import ObjectKey
from lmcache_core.ports import MetricsSink, NullMetricsSink
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

OBJECT_BYTES = 16 << 10


def run_once(metrics: MetricsSink | None, batches: int, batch_size: int, labels: str) -> float:
    """Seconds to store `batches` batches and write each back to L2 (drained per 32 batches)."""
    config = ServerConfig(l2_adapters=('{"type": "mock"}',), eviction_interval_seconds=60.0, metrics_labels=labels)
    overrides = {} if metrics is None else {"metrics": metrics}
    stack = in_memory_stack(config, pool_bytes=64 << 20, **overrides)
    try:
        storage = stack.storage
        assert storage is not None
        l1 = storage.l1
        pending: list[ObjectKey] = []
        started = time.perf_counter()
        for b in range(batches):
            keys = [ObjectKey(b.to_bytes(4, "big") + i.to_bytes(2, "big"), "bench", 0, cache_salt=f"t{b % 4}") for i in range(batch_size)]
            l1.reserve_write(keys, [OBJECT_BYTES] * batch_size)
            l1.finish_write(keys)
            pending.extend(keys)
            if b % 32 == 31:
                storage.store.drain(30)
                l1.delete(pending)
                pending.clear()
        storage.store.drain(30)
        return time.perf_counter() - started
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--labels", choices=("on", "off"), default="on")
    args = parser.parse_args()
    on: list[float] = []
    off: list[float] = []
    run_once(None, 100, args.batch_size, args.labels)  # warm-up (imports, allocator)
    for _ in range(args.rounds):  # interleaved so drift hits both sides alike
        off.append(run_once(NullMetricsSink(), args.batches, args.batch_size, args.labels))
        on.append(run_once(None, args.batches, args.batch_size, args.labels))
    objects = args.batches * args.batch_size
    # The minimum is the run least disturbed by other load on the machine; the median is shown too.
    med_on, med_off = statistics.median(on), statistics.median(off)
    best_on, best_off = min(on), min(off)
    print(f"objects per run: {objects} ({args.batch_size} per batch, {OBJECT_BYTES >> 10} KiB each), rounds: {args.rounds}")
    print(f"metrics off: median {med_off * 1e3:.1f} ms ({objects / med_off:,.0f} objects/s)")
    print(f"metrics on (labels {args.labels}): median {med_on * 1e3:.1f} ms ({objects / med_on:,.0f} objects/s)")
    print(f"overhead: {(best_on / best_off - 1) * 100:+.2f} % best-of-{args.rounds} "
          f"({(med_on / med_off - 1) * 100:+.2f} % median) (target < 5 %)")


if __name__ == "__main__":
    main()
