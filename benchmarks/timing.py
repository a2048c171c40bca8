"""Timing helpers the benchmark scripts share (run them as `python benchmarks/<name>.py`, which puts
this directory on the import path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_us(fn: Callable[[], object], runs: int, warmups: int = 5) -> float:
    """Median wall time of `fn` in microseconds over `runs` calls, after up to `warmups` calls."""
    for _ in range(min(warmups, runs)):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def percentile(samples: list[float], q: float) -> float:
    """The `q`-quantile of `samples` (0 <= q <= 1) by the nearest-rank rule, no interpolation."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
