"""Benchmark: cost of hashing a 32k-token prompt per algorithm, against blake3's raw cost."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from blake3 import blake3
from timing import median_us

from lmcache_core.hashing import ACCEPTED_ALGORITHMS, TokenHasher, token_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    arr = rng.integers(0, 152_000, size=args.tokens, dtype=np.int64)
    lst = [int(t) for t in arr]
    data = token_bytes(arr)
    chunk_bytes = args.chunk_size * 4
    n_chunks = args.tokens // args.chunk_size

    def raw_blake3() -> None:
        # The floor: blake3 over the same bytes, one call per chunk, no chaining or conversion.
        for start in range(0, n_chunks * chunk_bytes, chunk_bytes):
            blake3(data[start : start + chunk_bytes]).digest()

    baseline = median_us(raw_blake3, args.runs)
    print(f"{args.tokens} tokens, chunk {args.chunk_size} ({n_chunks} chunks), median of {args.runs} runs")
    print(f"{'baseline: raw blake3 of the chunk bytes':44s} {baseline:9.1f} us")

    algorithms = list(ACCEPTED_ALGORITHMS)
    if "PYTHONHASHSEED" not in os.environ:
        algorithms.remove("builtin")
        print("(builtin skipped: set PYTHONHASHSEED to include it)")
    print(f"{'algorithm':10s} {'input':8s} {'median us':>12s} {'x baseline':>11s}")
    for name in algorithms:
        hasher = TokenHasher(name, args.chunk_size)
        for label, tokens in (("list", lst), ("numpy", arr)):
            us = median_us(lambda h=hasher, t=tokens: h.chunk_hashes(t), args.runs)
            print(f"{name:10s} {label:8s} {us:12.1f} {us / baseline:11.2f}")
    inc_hasher = TokenHasher("blake3", args.chunk_size)

    def incremental_tail() -> None:
        # A session that already holds all but the last chunk: the engine resends everything.
        inc = inc_hasher.incremental()
        inc.extend(arr[: -args.chunk_size])
        t0 = time.perf_counter()
        inc.update_to(lst)
        timings.append(time.perf_counter() - t0)

    timings: list[float] = []
    for _ in range(min(args.runs, 50)):
        incremental_tail()
    print(f"{'blake3 update_to(list), 1 new chunk':44s} {statistics.median(timings) * 1e6:9.1f} us")


if __name__ == "__main__":
    main()
