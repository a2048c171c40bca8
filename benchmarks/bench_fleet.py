"""Benchmark: the fleet coordinator on Redis: ingest of the cache events of many simulated servers,
Redis memory per key, and routing-score latency for a long prompt over 100 instances.

Every simulated server registers, then reports its prompts' chunks as 0.5.6 `POST /events`
bodies (parsed exactly as the route parses them) in flushes of `--batch-entries` entries: L1
stores, stores into a fleet-shared L2 pool, some accesses. The scoring phase asks
`POST /directory/score` (hashing included) for a 32k-token prompt that several instances hold,
over `--score-instances` live instances: in process (FleetService) and over HTTP (the real app
on Waitress). The default run is small (the machine is shared); the 1,000-server, 10^6-key run:

    python benchmarks/bench_fleet.py --servers 1000 --keys 1000000

A real redis-server is started on a free loopback port unless --redis-url names one (its data is
flushed first: never point it at a store in use)."""

from __future__ import annotations

import argparse
import base64
import gc
import http.client
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import redis

from lmcache_adapters.fleet.redis_store import RedisFleetStore
from lmcache_core.fleet.model import EventBatch, InstanceInfo, Op, Tier
from lmcache_core.fleet.service import FleetService, FleetSettings
from lmcache_core.fleet.wire import TokenQuery, parse_events
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_frontends.coordinator.config import CoordinatorConfig
from lmcache_frontends.coordinator.runtime import CoordinatorRuntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from timing import percentile  # noqa: E402

from fleet_helpers import RecordedServers  # noqa: E402
from redis_server import redis_server  # noqa: E402

CHUNK = 256
MODEL = "bench/llama-70b"
SIZE = 2 * 80 * 8 * 128 * 2 * CHUNK  # bytes of one chunk's KV (80 layers, 8 KV heads, fp16)


def wire(inst: str, seq: int, op: str, tier: str, backend: str, shared: bool, keys: list[ObjectKey]) -> dict[str, Any]:
    entries = [{"key": k.to_json(), **({"size_bytes": SIZE} if op == "store" else {})} for k in keys]
    return {"instance_id": inst, "incarnation": 1, "seq": seq, "event_type": op, "tier": tier, "backend": backend, "shared": shared, "entries": entries}


def server_stream(index: int, keys_per_server: int, batch_entries: int, rng: np.random.Generator) -> list[bytes]:
    """One server's flushes as JSON request bodies: its chunk keys in L1 and in the shared pool,
    plus accesses."""
    inst = f"srv-{index:05d}"
    keys = [ObjectKey.trusted(rng.bytes(32), MODEL, kv_rank_for(1, 0), f"tenant-{index % 10}") for _ in range(keys_per_server)]
    bodies = []
    seq = 0
    for start in range(0, len(keys), batch_entries):
        part = keys[start : start + batch_entries]
        batches = []
        for op, tier, backend, shared, ks in (
            ("store", "l1", "dram", False, part),
            ("store", "l2", "s3", True, part),
            ("access", "l1", "", False, part[: max(1, len(part) // 10)]),
        ):
            seq += 1
            batches.append(wire(inst, seq, op, tier, backend, shared, ks))
        bodies.append(json.dumps({"batches": batches}, separators=(",", ":")).encode())
    return bodies


def ingest(service: FleetService, streams: list[list[bytes]], workers: int, events: int) -> float:
    """Decode, parse and apply every body (what `POST /events` does), `workers` at a time."""
    lock = threading.Lock()
    queue = list(range(len(streams)))

    def work() -> None:
        while True:
            with lock:
                if not queue:
                    return
                i = queue.pop()
            for body in streams[i]:
                service.ingest(parse_events(json.loads(body)))

    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(work) for _ in range(workers)]:
            f.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--keys", type=int, default=20_000, help="keys reported in all (spread over the servers)")
    parser.add_argument("--batch-entries", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4, help="ingest threads (as a coordinator's HTTP threads)")
    parser.add_argument("--score-instances", type=int, default=100)
    parser.add_argument("--holders", type=int, default=8, help="instances holding the scored prompt in L1")
    parser.add_argument("--prompt-tokens", type=int, default=32_768)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--buckets", type=int, default=1)
    parser.add_argument("--redis-url")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args()

    def run(url: str) -> dict[str, Any]:
        client = redis.Redis.from_url(url)
        client.flushall()
        base_memory = int(client.info("memory")["used_memory"])
        store = RedisFleetStore(url, buckets=args.buckets)
        service = FleetService(store, RecordedServers(), FleetSettings(chunk_size=CHUNK))
        now = time.time()
        for i in range(args.servers):
            store.register(InstanceInfo(f"srv-{i:05d}", "127.0.0.1", 10_000 + i), now + 3600)
        rng = np.random.default_rng(0)
        per = max(1, args.keys // args.servers)
        streams = [server_stream(i, per, args.batch_entries, rng) for i in range(args.servers)]
        events = sum(per + per + sum(max(1, min(args.batch_entries, per - s) // 10) for s in range(0, per, args.batch_entries)) for _ in range(args.servers))
        seconds = ingest(service, streams, args.workers, events)
        del streams
        usage = store.usage()
        memory = int(client.info("memory")["used_memory"]) - base_memory

        # The scored prompt: holders have it in L1 (restarted ones at different depths), the
        # shared pool has all of it; every live instance mounts the pool.
        hasher = TokenHasher("blake3", CHUNK)
        tokens = np.random.default_rng(1).integers(0, 128_000, args.prompt_tokens, dtype=np.uint32)
        keys = [ObjectKey.trusted(h, MODEL, kv_rank_for(1, 0), "") for h in hasher.chunk_hashes(tokens)]
        live = [f"srv-{i:05d}" for i in range(min(args.score_instances, args.servers))]
        batches = [EventBatch(live[0], 1, 10**9, Tier.L2, "s3", True, tuple(_store(k) for k in keys))]
        for h in range(min(args.holders, len(live))):
            depth = len(keys) * (h + 1) // args.holders
            batches.append(EventBatch(live[h], 1, 10**9 + 1, Tier.L1, "dram", False, tuple(_store(k) for k in keys[:depth])))
        service.ingest(batches)
        query = TokenQuery(MODEL, 1, "", token_ids=tokens)
        gc.freeze()  # as `lmcache coordinator` does once started
        in_process = []
        for _ in range(args.queries):
            started = time.perf_counter()
            result = service.score(query, instance_ids=live)
            in_process.append((time.perf_counter() - started) * 1000)
        assert result.scores[0].l1_tokens == len(keys) * CHUNK, result.scores[0]

        runtime = CoordinatorRuntime(CoordinatorConfig(port=0, store="redis", redis_url=url, health_check_interval=0, eviction_check_interval=0, chunk_size=CHUNK), store=store)
        runtime.start()
        bodies = {
            "token_ids": json.dumps({"model_name": MODEL, "token_ids": tokens.tolist(), "instance_ids": live}).encode(),
            "tokens_b64": json.dumps(
                {"model_name": MODEL, "tokens_b64": base64.b64encode(tokens.astype("<u4").tobytes()).decode(), "instance_ids": live}
            ).encode(),
        }
        over_http: dict[str, list[float]] = {name: [] for name in bodies}
        conn = http.client.HTTPConnection("127.0.0.1", runtime.http.port, timeout=10)
        try:
            for _ in range(args.queries):
                for name, body in bodies.items():
                    started = time.perf_counter()
                    conn.request("POST", "/directory/score", body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    over_http[name].append((time.perf_counter() - started) * 1000)
                    assert resp.status == 200
        finally:
            conn.close()
            runtime.stop()
        return {
            "servers": args.servers,
            "keys": usage.num_keys,
            "placements": sum(usage.placements.values()),
            "events": events,
            "ingest_seconds": round(seconds, 3),
            "ingest_events_per_s": round(events / seconds),
            "redis_memory_bytes": memory,
            "redis_bytes_per_key": round(memory / max(1, usage.num_keys)),
            "score_instances": len(live),
            "prompt_tokens": args.prompt_tokens,
            "score_ms_in_process": {"p50": round(statistics.median(in_process), 3), "p99": round(percentile(in_process, 0.99), 3)},
            **{
                f"score_ms_http_{name}": {"p50": round(statistics.median(v), 3), "p99": round(percentile(v, 0.99), 3)}
                for name, v in over_http.items()
            },
        }

    if args.redis_url:
        results = run(args.redis_url)
    else:
        with redis_server() as server:
            results = run(server.url)
    if args.json:
        print(json.dumps(results))
        return
    for name, value in results.items():
        print(f"{name:24s} {value}")


def _store(key: ObjectKey) -> Any:
    from lmcache_core.fleet.model import Entry

    return Entry(Op.STORE, key, SIZE)


if __name__ == "__main__":
    main()
