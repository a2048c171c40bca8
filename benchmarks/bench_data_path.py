"""Data-path benchmark: STORE/RETRIEVE GB/s vs a plain torch memcpy of the same bytes (same run),
and the LOOKUP round trip of a 32k-token prompt (128 chunks, all hits) with blake3 and xxh3.

Runs an in-process server on loopback (ZeroMQ over TCP) and our client:

    python benchmarks/bench_data_path.py [--chunks 4] [--reps 5] [--lookup-reps 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import torch

from lmcache_adapters.memory.shm_pool import SharedMemoryPool
from lmcache_frontends.bootstrap import bootstrap
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.zmq.server import ZmqDataPathServer

CHUNK = 256
BS, NH, HS, LAYERS = 16, 8, 128, 32  # fp16: 2 x 32 x 256 x 1024 x 2 B = 32 MiB per chunk


def start(hash_algorithm: str, pool_bytes: int, transfer_threads: int = 1) -> tuple[object, ZmqDataPathServer]:
    pool = SharedMemoryPool(pool_bytes, shm_suffix=f"bench_{uuid.uuid4().hex[:8]}", prefault="sync", pin_memory=False)
    services = bootstrap(ServerConfig(port=0, http_port=0, hash_algorithm=hash_algorithm), memory_pool=pool)
    server = ZmqDataPathServer(services.engine, pool, clock=services.clock, port=0, max_workers=2,
                               transfer_threads=transfer_threads)
    server.start()
    return services, server


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_transfer(chunks: int, reps: int, transfer_threads: int) -> None:
    default_threads = torch.get_num_threads()
    services, server = start("blake3", (chunks * 32 + 64) << 20, transfer_threads)
    nb = chunks * CHUNK // BS
    names = [f"lmcache_bench_{uuid.uuid4().hex[:8]}_{i}" for i in range(LAYERS)]
    try:
        shared = [share_cpu_tensor((2, nb, BS, NH, HS), torch.float16, n) for n in names]
        for t, _ in shared:
            t.copy_(torch.randn(t.shape).half())
        nbytes = sum(t.numel() * 2 for t, _ in shared)
        src = torch.empty(nbytes, dtype=torch.uint8).random_()
        dst = torch.empty(nbytes, dtype=torch.uint8)
        dst.copy_(src)
        with LMCacheClient(server.url, timeout=60) as client:
            client.register_kv_cache(0, [w for _, w in shared], model_name="bench",
                                     layout_hints={"kv_layout": "NHD"})
            blocks = [list(range(nb))]
            store_t, retr_t, copy_t, copy1_t = [], [], [], []
            for rep in range(reps):
                tokens = [rep] + [9906] * (chunks * CHUNK)
                client.clear()
                t0 = time.perf_counter()
                assert client.store(make_key("bench", tokens, f"s{rep}", end=chunks * CHUNK, worker_id=0), 0, blocks)
                store_t.append(time.perf_counter() - t0)
                client.lookup(make_key("bench", tokens, f"r{rep}", end=chunks * CHUNK))
                assert client.wait_for_lookup(f"r{rep}") == chunks
                t0 = time.perf_counter()
                assert client.retrieve(make_key("bench", tokens, f"r{rep}", end=chunks * CHUNK, worker_id=0), 0, blocks)
                retr_t.append(time.perf_counter() - t0)
                # Both thread counts set explicitly: the default, and what the server's transfer
                # workers use (`transfer_threads`), so each ratio compares like with like.
                for threads, samples in ((default_threads, copy_t), (server.transfer_threads, copy1_t)):
                    torch.set_num_threads(threads)
                    t0 = time.perf_counter()
                    dst.copy_(src)
                    samples.append(time.perf_counter() - t0)
                torch.set_num_threads(default_threads)
            client.unregister_kv_cache(0)
        gb = nbytes / 1e9
        memcpy = gb / statistics.median(copy_t)
        memcpy1 = gb / statistics.median(copy1_t)
        store = gb / statistics.median(store_t)
        retrieve = gb / statistics.median(retr_t)
        print(f"transfer: {chunks} x 32 MiB chunks per call, {reps} reps (medians, STORE/RETRIEVE include the ZeroMQ round trip)")
        print(f"  torch memcpy   {memcpy:6.2f} GB/s   ({default_threads} threads, torch's default here)")
        print(f"  torch memcpy   {memcpy1:6.2f} GB/s   ({server.transfer_threads} thread(s), as the transfer workers copy)")
        for name, rate in (("STORE", store), ("RETRIEVE", retrieve)):
            print(f"  {name:14s} {rate:6.2f} GB/s   ratio {rate / memcpy:.2f} x memcpy, {rate / memcpy1:.2f} x same-threads memcpy")
    finally:
        import os

        for n in names:
            if os.path.exists(f"/dev/shm/{n}"):
                os.unlink(f"/dev/shm/{n}")
        server.stop()
        services.close()  # type: ignore[attr-defined]


def bench_lookup(hash_algorithm: str, reps: int) -> None:
    services, server = start(hash_algorithm, 64 << 20)
    try:
        with LMCacheClient(server.url, timeout=30) as client:
            ctx = client.register_engine_driven(0, model_name="bench", num_layers=1, hidden_dim_size=8)
            tokens = list(range(1, 32 * 1024 + 1))
            chunks = [torch.zeros(ctx.object_shape, dtype=torch.float16)] * 128
            assert client.store_engine_driven(ctx, make_key("bench", tokens, "w", worker_id=0), chunks)
            results = {}
            for label, same_request in (("same request id (session hashes reused)", True),
                                        ("new request id, same tokens (hashes adopted)", False)):
                samples = []
                for i in range(reps):
                    rid = "req" if same_request else f"req-{i}"
                    key = make_key("bench", tokens, rid)
                    t0 = time.perf_counter()
                    client.lookup(key)
                    hits = client.query_prefetch_status(rid)
                    samples.append(time.perf_counter() - t0)
                    assert hits == 128, hits
                    client.free_lookup_locks(key)
                    if not same_request:
                        client.end_session(rid)
                results[label] = samples
            client.unregister_engine_driven(0)
        print(f"lookup round trip, 32k tokens / 128 chunks all hits, hash {hash_algorithm} ({reps} reps, LOOKUP + QUERY):")
        for label, s in results.items():
            print(f"  {label:48s} p50 {pct(s, 0.5) * 1e3:6.3f} ms   p99 {pct(s, 0.99) * 1e3:6.3f} ms")
    finally:
        server.stop()
        services.close()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="32 MiB chunks per STORE/RETRIEVE call")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--lookup-reps", type=int, default=300)
    parser.add_argument("--transfer-threads", type=int, default=1, help="intra-op threads of each transfer worker")
    parser.add_argument("--skip-lookup", action="store_true")
    args = parser.parse_args()
    bench_transfer(args.chunks, args.reps, args.transfer_threads)
    if args.skip_lookup:
        return
    for algo in ("blake3", "xxh3"):
        bench_lookup(algo, args.lookup_reps)


if __name__ == "__main__":
    main()
