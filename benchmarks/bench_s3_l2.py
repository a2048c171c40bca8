"""Benchmark: s3 adapter store/load GB/s against moto's S3 server, next to raw boto3 on the same bytes.

Both sides use the same number of concurrent requests, so the ratio is the adapter's own cost
(framing, xxh3 checksums, copies into the caller's buffers, bookkeeping), not moto's speed. moto is
a Python server: absolute numbers say little about a real object store, the ratio does.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import numpy as np
from botocore.config import Config

from lmcache_adapters.l2.s3 import S3L2Adapter
from lmcache_core.keys import ObjectKey, kv_rank_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_server import moto_server  # noqa: E402

TIME_BUDGET_S = 50.0


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=64)
    parser.add_argument("--object-mib", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    size = int(args.object_mib * 1024 * 1024)
    rng = np.random.default_rng(0)
    payloads = [memoryview(rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()) for _ in range(args.objects)]
    total = size * args.objects
    keys = [
        ObjectKey(chunk_hash=i.to_bytes(32, "big"), model_name="bench/model", kv_rank=kv_rank_for(1, 0))
        for i in range(args.objects)
    ]
    started = time.monotonic()

    with moto_server() as server:
        # the baseline client is configured like the adapter's (no botocore body checksums, same pool)
        client = boto3.client(
            "s3",
            endpoint_url=server.url,
            region_name="us-east-1",
            config=Config(
                max_pool_connections=args.workers + 2,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)

        # raw boto3 baseline: the same bytes, the same concurrency
        with ThreadPoolExecutor(args.workers) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda i: client.put_object(Bucket=bucket, Key=f"raw/{i}", Body=bytes(payloads[i])),
                          range(args.objects)))
            raw_put = time.perf_counter() - t0
            t0 = time.perf_counter()
            got = list(pool.map(lambda i: client.get_object(Bucket=bucket, Key=f"raw/{i}")["Body"].read(),
                                range(args.objects)))
            raw_get = time.perf_counter() - t0
        assert all(len(g) == size for g in got)
        if time.monotonic() - started > TIME_BUDGET_S:
            raise SystemExit("time budget exceeded during the baseline; use fewer --objects")

        adapter = S3L2Adapter(bucket=bucket, endpoint_url=server.url, prefix="adapter/", max_workers=args.workers)
        try:
            t0 = time.perf_counter()
            stored = adapter.submit_store(keys, payloads).result(timeout=TIME_BUDGET_S)
            store_s = time.perf_counter() - t0
            assert all(stored), "a store failed"
            buffers = [bytearray(size) for _ in range(args.objects)]
            t0 = time.perf_counter()
            loaded = adapter.submit_load(keys, [memoryview(b) for b in buffers]).result(timeout=TIME_BUDGET_S)
            load_s = time.perf_counter() - t0
            assert all(loaded), "a load failed"
            assert all(bytes(b) == bytes(p) for b, p in zip(buffers, payloads, strict=True))
        finally:
            adapter.close()

    print(f"s3 (moto over loopback), {args.objects} objects x {args.object_mib:g} MiB, {args.workers} concurrent")
    print(f"  raw boto3 put   {gbps(total, raw_put):7.3f} GB/s")
    print(f"  adapter store   {gbps(total, store_s):7.3f} GB/s   ratio {raw_put / store_s:5.2f} of raw")
    print(f"  raw boto3 get   {gbps(total, raw_get):7.3f} GB/s")
    print(f"  adapter load    {gbps(total, load_s):7.3f} GB/s   ratio {raw_get / load_s:5.2f} of raw")


if __name__ == "__main__":
    main()
