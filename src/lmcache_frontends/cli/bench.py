"""`lmcache bench server`: an engine simulator that checks round trips and measures the data path."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import urllib.error
import urllib.request
import uuid
import zlib
from typing import Any

import torch

from lmcache_adapters.transfer.layout import KVCacheLayout
from lmcache_core.hashing import TokenBytes
from lmcache_frontends.cli.http import open_url
from lmcache_frontends.client import LMCacheClient, make_key, share_cpu_tensor

_SPEC_RE = re.compile(r"^\((\d+),(\d+),(\d+),(\d+),(\d+)\):(\w+):(\d+)$")
MODEL = "bench-model"
"""Model name prefix; the KV shape spec is appended, so runs with different shapes never share chunks."""
FILL_TOKEN = 9906


def model_name_for(shape_spec: str) -> str:
    """The model name the simulator registers for a --kvcache-shape-spec."""
    return f"{MODEL}-{zlib.crc32(shape_spec.replace(' ', '').encode()):08x}"


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `bench` (with its `server` subcommand) to an argparse subparsers object."""
    bench = subparsers.add_parser("bench", help="Benchmarks against a running server.")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True, parser_class=type(bench))
    p = sub.add_parser(
        "server",
        help="Engine simulator: cold/warm passes with checksums, latencies, GB/s.",
        description="Engine simulator: registers a KV cache, then per sequence looks up, stores the "
        "misses, retrieves the hits and compares checksums. Sequences an earlier run already stored "
        "are checked by retrieving them (counted as 'reused').",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rpc-url", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint of the server.")
    p.add_argument("--url", default="http://127.0.0.1:8080",
                   help="HTTP admin URL (GET /kvcache/check, for --transfer-mode lmcache_driven).")
    p.add_argument("--token", default=None,
                   help="Bearer token for --url when the server has tokens (default: env LMCACHE_TOKEN).")
    p.add_argument("--mode", choices=("cpu", "gpu"), default="cpu",
                   help="Where the KV cache lives. This simulator runs CPU engines (shared-memory tensors); "
                        "for gpu use LMCache's own `lmcache bench server --mode gpu`, which works against "
                        "this server too.")
    p.add_argument("--transfer-mode", choices=("auto", "engine_driven", "lmcache_driven"), default="auto",
                   help="auto = engine_driven for --mode cpu (the engine copies into L1 slots); lmcache_driven "
                        "= the server gathers/scatters the engine's shared tensors.")
    p.add_argument("--num-tokens", type=int, default=1024, help="Tokens per request (plus one leading id).")
    p.add_argument("--kvcache-shape-spec", default="(2,256,16,8,64):float16:4",
                   help="'(2,NUM_BLOCKS,BLOCK_SIZE,NUM_HEADS,HEAD_SIZE):dtype:num_layers'.")
    p.add_argument("--start", type=int, default=0, help="First sequence number.")
    p.add_argument("--end", type=int, default=10, help="Last sequence number (exclusive).")
    p.add_argument("--interval", type=float, default=0.0, help="Seconds between requests.")
    p.add_argument("--instance-id", type=int, default=0, help="Engine instance id to register.")
    p.add_argument("--timeout", type=float, default=10.0, help="Seconds per call.")
    p.add_argument("--format", choices=("terminal", "json"), default="terminal", help="Output format.")
    p.set_defaults(func=run_bench)
    return p


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"count": 0}
    s = sorted(samples)

    def pct(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]

    return {"count": len(s), "mean": sum(s) / len(s), "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": s[-1]}


class _Engine:
    """The simulated engine: per-layer paged KV tensors and their chunk layout."""

    def __init__(self, args: argparse.Namespace, client: LMCacheClient) -> None:
        m = _SPEC_RE.match(args.kvcache_shape_spec.replace(" ", ""))
        if m is None or int(m.group(1)) != 2:
            raise ValueError(f"bad --kvcache-shape-spec {args.kvcache_shape_spec!r}")
        _, nb, bs, nh, hs = (int(m.group(i)) for i in range(1, 6))
        dtype = getattr(torch, m.group(6), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {m.group(6)!r}")
        self.num_layers = int(m.group(7))
        self.model = model_name_for(args.kvcache_shape_spec)
        self.nb, self.bs, self.nh, self.hs, self.dtype = nb, bs, nh, hs, dtype
        self.client = client
        self.args = args
        self.chunk = client.get_chunk_size()
        self.shm_names: list[str] = []
        shape = (2, nb, bs, nh, hs)
        self.mode = args.transfer_mode
        if self.mode == "lmcache_driven":
            tag = uuid.uuid4().hex[:8]
            shared = [share_cpu_tensor(shape, dtype, f"lmcache_bench_{os.getpid()}_{tag}_{i}")
                      for i in range(self.num_layers)]
            self.shm_names = [f"lmcache_bench_{os.getpid()}_{tag}_{i}" for i in range(self.num_layers)]
            self.kv = [t for t, _ in shared]
            client.register_kv_cache(
                args.instance_id, [w for _, w in shared], model_name=self.model, layout_hints={"kv_layout": "NHD"},
                engine_group_infos=[{"engine_group_id": 0, "layer_indices": list(range(self.num_layers)),
                                     "tokens_per_block": bs, "sw_size_tokens": -1}],
            )
            self.ctx = None
        else:
            self.kv = [torch.empty(shape, dtype=dtype) for _ in range(self.num_layers)]
            self.ctx = client.register_engine_driven(
                args.instance_id, model_name=self.model, num_layers=self.num_layers, hidden_dim_size=nh * hs,
                dtype=dtype, block_size=bs,
            )
        self.layout = KVCacheLayout(self.kv, self.chunk, layout_hints={"kv_layout": "NHD"})
        self.chunk_bytes = self.layout.object_size

    def close(self) -> None:
        try:
            if self.mode == "lmcache_driven":
                self.client.unregister_kv_cache(self.args.instance_id)
            else:
                self.client.unregister_engine_driven(self.args.instance_id)
        finally:
            for name in self.shm_names:
                try:
                    os.unlink(f"/dev/shm/{name}")
                except FileNotFoundError:
                    pass

    def checksums(self, blocks: list[int]) -> list[str]:
        bpc = self.chunk // self.bs
        if self.mode == "engine_driven":
            return list(self.layout.checksums(blocks, bpc))
        ids = f"[{blocks[0]},{blocks[-1]}]"
        url = (f"{self.args.url.rstrip('/')}/kvcache/check?block_ids={ids}&block_size={self.bs}"
               f"&chunk_size={bpc}&instance_id={self.args.instance_id}")
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        if self.args.token:
            req.add_header("Authorization", f"Bearer {self.args.token}")
        try:
            with open_url(req, self.args.timeout) as resp:
                return list(json.loads(resp.read())["chunk_checksums"])
        except urllib.error.HTTPError as exc:
            hint = ""
            if exc.code == 401:
                hint = " (this server needs a read token: pass --token TOKEN or set LMCACHE_TOKEN)"
            raise RuntimeError(f"GET /kvcache/check answered HTTP {exc.code}{hint}") from None

    def store(self, key: Any, blocks: list[int], first_chunk: int, nchunks: int) -> None:
        bpc = self.chunk // self.bs
        if self.mode == "lmcache_driven":
            if not self.client.store(key, self.args.instance_id, [blocks]):
                raise RuntimeError("STORE answered false")
            return
        assert self.ctx is not None
        if self.ctx.pickle_mode:
            # The server offered no shared pool (L1 on Device-DAX, say): the chunks travel in
            # the COMMIT_STORE frame, gathered here first.
            objects = [torch.empty(self.chunk_bytes, dtype=torch.uint8) for _ in range(nchunks)]
            self.layout.gather([blocks], list(range(nchunks)), objects)
            chunks = [o.view(self.ctx.dtype).view(self.ctx.object_shape) for o in objects]
            ok = self.client.store_engine_driven(self.ctx, key, chunks)
        else:
            # Engine-driven: gather this engine's blocks straight into the slots the server hands out.
            ok = self.client.store_engine_driven_with(
                self.ctx, key, lambda index, slot: self.layout.gather([blocks], [index], [slot]))
        if not ok:
            raise RuntimeError("COMMIT_STORE answered false")
        del bpc, first_chunk

    def retrieve(self, key: Any, blocks: list[int]) -> None:
        if self.mode == "lmcache_driven":
            if not self.client.retrieve(key, self.args.instance_id, [blocks]):
                raise RuntimeError("RETRIEVE answered false")
            return
        assert self.ctx is not None
        if self.ctx.pickle_mode:
            got = self.client.retrieve_engine_driven(self.ctx, key)
            if got is not None:
                objects = [t.contiguous().view(torch.uint8).flatten() for t in got]
                self.layout.scatter([blocks], list(range(len(objects))), objects)
            ok = got is not None
        else:
            ok = self.client.retrieve_engine_driven_with(
                self.ctx, key, lambda index, slot: self.layout.scatter([blocks], [index], [slot]))
        if not ok:
            raise RuntimeError("PREPARE_RETRIEVE failed")


def run_bench(args: argparse.Namespace) -> int:
    """Run the simulator; prints a report and returns 0 when every checksum matched."""
    out = sys.stdout
    lat: dict[str, list[float]] = {"lookup": [], "store": [], "retrieve": []}
    moved = {"store": 0, "retrieve": 0}
    passed = failed = reused = errors = 0
    if args.mode == "gpu":
        print("error: --mode gpu: this simulator runs CPU engines; use --mode cpu, or LMCache's own "
              "`lmcache bench server --mode gpu` against this server", file=sys.stderr)
        return 1
    if args.transfer_mode == "auto":
        args.transfer_mode = "engine_driven"
    args.token = args.token or os.environ.get("LMCACHE_TOKEN")
    try:
        client = LMCacheClient(args.rpc_url, timeout=args.timeout)
        engine = _Engine(args, client)
    except (TimeoutError, ValueError, OSError, KeyError) as exc:
        print(f"error: cannot start the engine simulator: {exc}", file=sys.stderr)
        return 1
    total = max(0, args.end - args.start)
    try:
        for n_done, n in enumerate(range(args.start, args.end), 1):
            try:
                result = _one_sequence(engine, n, lat, moved)
            except (RuntimeError, TimeoutError, urllib.error.URLError, KeyError) as exc:
                errors += 1
                print(f"\n[seq {n}] error: {exc}", file=sys.stderr)
                result = None
            if result in (True, "reused"):
                passed += 1
                reused += result == "reused"
            elif result is False:
                failed += 1
            if args.format == "terminal":
                print(f"\r[{n_done}/{total}] pass {passed} fail {failed} reused {reused} errors {errors}",
                      end="", file=sys.stderr, flush=True)
            if args.interval > 0:
                time.sleep(args.interval)  # pacing requests, as an engine would
    finally:
        engine.close()
        client.close()
    compared = passed + failed
    report = {
        "sequences": total,
        "checksum_pass": passed,
        "checksum_fail": failed,
        "reused": reused,
        "errors": errors,
        "pass_rate_percent": 100.0 * passed / compared if compared else 0.0,
        "chunk_bytes": engine.chunk_bytes,
        "latency_ms": {k: _percentiles([v * 1000 for v in s]) for k, s in lat.items()},
        "store_gbps": moved["store"] / sum(lat["store"]) / 1e9 if lat["store"] else 0.0,
        "retrieve_gbps": moved["retrieve"] / sum(lat["retrieve"]) / 1e9 if lat["retrieve"] else 0.0,
    }
    if args.format == "json":
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        print(file=sys.stderr)
        print(f"Transfer mode: {args.transfer_mode}   chunk bytes: {engine.chunk_bytes}", file=out)
        print(f"Checksum PASS: {passed}  FAIL: {failed}  reused: {reused}  errors: {errors}", file=out)
        print(f"Pass rate (%): {report['pass_rate_percent']:.2f}", file=out)
        if reused:
            print(f"Note: {reused} sequence(s) were already cached by an earlier run: checked by retrieving "
                  f"them, no store measured. For cold stores use other --start/--end numbers or a fresh "
                  f"server.", file=out)
        for name, stats in report["latency_ms"].items():
            if stats["count"]:
                print(f"{name:>9} ms: p50 {stats['p50']:.3f}  p90 {stats['p90']:.3f}  p99 {stats['p99']:.3f}  "
                      f"max {stats['max']:.3f}  (n={stats['count']})", file=out)
        print(f"store GB/s: {report['store_gbps']:.2f}   retrieve GB/s: {report['retrieve_gbps']:.2f}", file=out)
    return 0 if failed == 0 and errors == 0 else 1


def _one_sequence(engine: _Engine, n: int, lat: dict[str, list[float]], moved: dict[str, int]) -> Any:
    """Cold pass (store misses) then warm pass (retrieve all); True when checksums matched."""
    c, bs = engine.chunk, engine.bs
    token_list = [n] + [FILL_TOKEN] * engine.args.num_tokens
    full = len(token_list) // c * c
    # Validated and encoded once: every key of the request below reuses the bytes.
    tokens = TokenBytes.from_tokens(token_list)
    nchunks, nblk = full // c, full // bs
    if nchunks == 0 or nblk > engine.nb:
        raise RuntimeError(f"{full} tokens do not fit the {engine.nb} blocks of the KV cache")
    off = (n * nblk) % max(engine.nb - nblk, 1)
    blocks = list(range(off, off + nblk))
    idx = torch.tensor(blocks)
    # Block-major, one generator per layer: block j of sequence n holds the same bytes whatever
    # --num-tokens says, so a later run can check what an earlier one stored.
    for layer, t in enumerate(engine.kv):
        g = torch.Generator().manual_seed(n * 1_000_003 + layer)
        data = torch.randn((nblk, 2, *t.shape[2:]), generator=g).to(t.dtype)
        t.index_copy_(1, idx, data.transpose(0, 1))
    sums: dict[str, list[str]] = {}
    for phase in ("cold", "warm"):
        rid = f"req-{n}-{phase}"
        t0 = time.perf_counter()
        engine.client.lookup(make_key(engine.model, tokens, rid, end=full))
        hits = engine.client.wait_for_lookup(rid, timeout=engine.args.timeout)
        lat["lookup"].append(time.perf_counter() - t0)
        reused = phase == "cold" and hits == nchunks
        if reused:
            # An earlier run stored this sequence: its data is seeded by the sequence number, so
            # what we just filled is what it stored. Check the retrieve against it.
            sums["cold"] = engine.checksums(blocks)
        if phase == "warm" or reused:
            if hits != nchunks:
                engine.client.end_session(rid)
                return False
            for t in engine.kv:
                t.index_fill_(1, idx, 0)
        if hits:
            t0 = time.perf_counter()
            engine.retrieve(make_key(engine.model, tokens, rid, end=hits * c, worker_id=0), blocks[: hits * c // bs])
            lat["retrieve"].append(time.perf_counter() - t0)
            moved["retrieve"] += hits * engine.chunk_bytes
        if phase == "cold" and hits < nchunks:
            t0 = time.perf_counter()
            engine.store(make_key(engine.model, tokens, rid, start=hits * c, end=full, worker_id=0),
                         blocks[hits * c // bs:], hits, nchunks - hits)
            lat["store"].append(time.perf_counter() - t0)
            moved["store"] += (nchunks - hits) * engine.chunk_bytes
        if reused:
            ok = engine.checksums(blocks) == sums["cold"]
            engine.client.end_session(rid)
            return "reused" if ok else False
        sums[phase] = engine.checksums(blocks)
        engine.client.end_session(rid)
    return sums["cold"] == sums["warm"]
