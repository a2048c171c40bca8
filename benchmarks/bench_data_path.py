"""Data-path benchmark: STORE/RETRIEVE GB/s and latency vs a plain torch memcpy of the same bytes
(same run), and the LOOKUP round trip of a 32k-token prompt (128 chunks, all hits) with blake3
and xxh3; optionally the same workload against the reference server (LMCache 0.5.0).

Every server is a real process (`lmcache-server` on loopback; with `--reference`, also
`lmcache server` of LMCache 0.5.0 from the virtualenv in LMCACHE_REFERENCE_VENV, default
~/.cache/lmcache-reference/venv, made with `pip install lmcache==0.5.0`); this process is the
engine, using our client library. Figures are medians (p50) and p99 over the repetitions:

    python benchmarks/bench_data_path.py [--chunks 4] [--reps 9] [--lookup-reps 400] [--reference]

Also printed, as the floor of any round trip on the machine: NOOP (an empty request) against
the same server.
"""

from __future__ import annotations

import os

# This process is the engine and the memcpy baseline. OpenMP's default is to keep its threads
# spinning for a while after each parallel region (torch's memcpy, zero_, equal): on a small
# host they would take a CPU from the server's copy threads during the next STORE/RETRIEVE
# (measured: the first copy after a memcpy ran 20 % slower). Sleeping threads do not. Set
# before torch starts OpenMP; an explicit setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from lmcache_frontends.client import LMCacheClient, RequestKey, make_key, share_cpu_tensor
from lmcache_frontends.testing import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import serverproc  # noqa: E402  (the tests' launchers: one way to start the reference server)
from timing import percentile  # noqa: E402

CHUNK = 256
BS, NH, HS, LAYERS = 16, 8, 128, 32  # fp16: 2 x 32 x 256 x 1024 x 2 B = 32 MiB per chunk
LOOKUP_TOKENS, LOOKUP_CHUNKS = 32 * 1024, 128
REFERENCE_VENV = serverproc.REFERENCE_VENV
READY = re.compile(r"ready: admin (http://\S+) ")


@dataclass
class Server:
    name: str
    url: str
    ipc_url: str | None = None


@contextlib.contextmanager
def our_server(hash_algorithm: str, l1_gb: float, transfer_threads: int, *extra: str) -> Iterator[Server]:
    port = free_port()
    sock_dir = tempfile.mkdtemp(prefix="lmc-bench-", dir="/tmp")
    ipc_path = os.path.join(sock_dir, "lmcache.sock")
    proc = subprocess.Popen(
        [*serverproc.server_command(), "--port", str(port), "--http-port", "0", "--hash-algorithm", hash_algorithm,
         "--l1-size-gb", str(l1_gb), "--transfer-threads", str(transfer_threads), "--ipc-path", ipc_path, *extra],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            ready = READY.search(line)
            if ready:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("lmcache-server did not start")
        else:
            raise RuntimeError(f"lmcache-server exited with {proc.wait()}")
        wait_prefaulted(ready.group(1))
        # Keep draining stderr so the server never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        yield Server(f"ours ({hash_algorithm})", f"tcp://127.0.0.1:{port}", f"ipc://{ipc_path}")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(sock_dir, ignore_errors=True)


def wait_prefaulted(admin_url: str, timeout: float = 120.0) -> None:
    """Wait until the L1 pool's pages are all faulted in (it pre-faults in the background): a
    first write into cold shared memory runs at a fraction of memcpy speed."""
    deadline = time.monotonic() + timeout

    def states(node: object) -> Iterator[object]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "prefault":
                    yield value
                yield from states(value)
        elif isinstance(node, list):
            for value in node:
                yield from states(value)

    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{admin_url}/status", timeout=10) as reply:
            found = list(states(json.load(reply)))
        if found and all(state in ("done", "none") for state in found):
            return
        time.sleep(0.2)
    raise RuntimeError("the L1 pool did not finish pre-faulting")


@contextlib.contextmanager
def reference_server(l1_gb: float) -> Iterator[Server]:
    """LMCache 0.5.0's `lmcache server` on loopback (the e2e tests' launcher)."""
    with serverproc.reference_server(l1_gb) as url:
        yield Server("reference 0.5.0", url)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- transfer ---------------------------------------------------------------------------------


@dataclass
class TransferResult:
    store: list[float]
    retrieve: list[float]
    memcpy: list[float]
    nbytes: int

    def gbps(self, samples: list[float]) -> float:
        return self.nbytes / percentile(samples, 0.5) / 1e9


def bench_transfer(server: Server, chunks: int, reps: int, kv_layout: str) -> TransferResult:
    nb = chunks * CHUNK // BS
    shape = (2, nb, BS, NH, HS) if kv_layout == "NHD" else (2, nb, NH, BS, HS)
    names = [f"lmcache_bench_{uuid.uuid4().hex[:8]}_{i}" for i in range(LAYERS)]
    try:
        shared = [share_cpu_tensor(shape, torch.float16, n) for n in names]
        for t, _ in shared:
            t.copy_(torch.randn(t.shape).half())
        originals = [t.clone() for t, _ in shared]
        nbytes = sum(t.numel() * 2 for t, _ in shared)
        src = torch.empty(nbytes, dtype=torch.uint8).random_()
        dst = torch.empty(nbytes, dtype=torch.uint8)
        dst.copy_(src)
        out = TransferResult([], [], [], nbytes)
        with LMCacheClient(server.url, timeout=120) as client:
            client.register_kv_cache(0, [w for _, w in shared], model_name="bench", layout_hints={"kv_layout": kv_layout})
            blocks = [list(range(nb))]
            for rep in range(reps):
                tokens = [rep + 1] + [9906] * (chunks * CHUNK)
                client.clear()
                store_key = make_key("bench", tokens, f"s{rep}", end=chunks * CHUNK, worker_id=0)
                out.store.append(timed(lambda k=store_key: client.store(k, 0, blocks)))
                for t, _ in shared:
                    t.zero_()
                lookup_key = make_key("bench", tokens, f"r{rep}", end=chunks * CHUNK)
                client.lookup(lookup_key)
                hits = client.wait_for_lookup(f"r{rep}", timeout=30)
                assert hits == chunks, f"{server.name}: {hits} of {chunks} chunks found after STORE"
                retrieve_key = make_key("bench", tokens, f"r{rep}", end=chunks * CHUNK, worker_id=0)
                t0 = time.perf_counter()
                ok = client.retrieve(retrieve_key, 0, blocks)
                out.retrieve.append(time.perf_counter() - t0)
                assert ok, f"{server.name}: RETRIEVE failed"
                assert all(torch.equal(t, o) for (t, _), o in zip(shared, originals, strict=True)), "data differs"
                client.end_session(f"s{rep}")
                client.end_session(f"r{rep}")
                out.memcpy.append(timed(lambda: dst.copy_(src)))
            client.unregister_kv_cache(0)
        return out
    finally:
        for n in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{n}")


def print_transfer(results: dict[str, TransferResult], chunks: int, kv_layout: str) -> None:
    print(f"transfer, server-driven (shared CPU KV tensors, {kv_layout}): {chunks} x 32 MiB chunks per call, "
          f"torch memcpy with {torch.get_num_threads()} threads (torch's default) in the same loop")
    for name, r in results.items():
        memcpy = r.gbps(r.memcpy)
        print(f"  {name}: memcpy {memcpy:5.2f} GB/s")
        for label, samples in (("STORE", r.store), ("RETRIEVE", r.retrieve)):
            rate = r.gbps(samples)
            print(f"    {label:9s} {rate:5.2f} GB/s = {rate / memcpy:.2f} x memcpy   "
                  f"latency p50 {percentile(samples, 0.5) * 1e3:7.1f} ms  p99 {percentile(samples, 0.99) * 1e3:7.1f} ms")
    if len(results) == 2:
        ours, ref = results.values()
        for label, a, b in (("STORE", ours.store, ref.store), ("RETRIEVE", ours.retrieve, ref.retrieve)):
            print(f"  {label} latency ours / reference: {percentile(a, 0.5) / percentile(b, 0.5):.2f}")


# -- lookup -----------------------------------------------------------------------------------


FIRST, REPEAT = "LOOKUP (first of a request)", "LOOKUP (repeat, same key)"


def bench_lookup(url: str, reps: int) -> dict[str, list[float]]:
    """Per repetition, like an engine: a new key (`make_key`, once per request), its first
    LOOKUP (the client encodes the tokens into the frame), QUERY, then the same key looked up
    again (a request still waiting is looked up once per scheduler step: the frame is cached),
    and a new request id over the same tokens (its session adopts the hashes)."""
    out: dict[str, list[float]] = {"make_key": [], FIRST: [], REPEAT: [], "LOOKUP+QUERY (first of a request)": [],
                                   "LOOKUP+QUERY (new request id)": [], "NOOP": []}
    with LMCacheClient(url, timeout=30) as client:
        client.clear()  # a run before this one over the other endpoint stored the same chunks
        ctx = client.register_engine_driven(7, model_name="lookup-bench", num_layers=1, hidden_dim_size=8)
        tokens = list(range(1, LOOKUP_TOKENS + 1))
        chunks = [torch.zeros(ctx.object_shape, dtype=torch.float16)] * LOOKUP_CHUNKS
        assert client.store_engine_driven(ctx, make_key("lookup-bench", tokens, "w", worker_id=0), chunks)

        def lookup_query(key: RequestKey) -> tuple[float, float]:
            t0 = time.perf_counter()
            client.lookup(key)
            t1 = time.perf_counter()
            hits = client.query_prefetch_status(key.request_id)
            t2 = time.perf_counter()
            assert hits == LOOKUP_CHUNKS, f"{url}: {hits} hits"
            client.free_lookup_locks(key)
            return t1 - t0, t2 - t0

        for i in range(reps + 20):  # the first 20 warm up
            t0 = time.perf_counter()
            key = make_key("lookup-bench", tokens, "req")
            made = time.perf_counter() - t0
            first, first_query = lookup_query(key)
            repeat, _ = lookup_query(key)
            _, other = lookup_query(make_key("lookup-bench", tokens, f"req-{i}"))
            client.end_session(f"req-{i}")
            noop = timed(client.noop)
            if i >= 20:
                for label, value in (("make_key", made), (FIRST, first), (REPEAT, repeat),
                                     ("LOOKUP+QUERY (first of a request)", first_query),
                                     ("LOOKUP+QUERY (new request id)", other), ("NOOP", noop)):
                    out[label].append(value)
        client.end_session("req")
        client.unregister_engine_driven(7)
    return out


def print_lookup(name: str, r: dict[str, list[float]]) -> None:
    print(f"  {name}:")
    for label, samples in r.items():
        note = {"make_key": " (client: list of 32k ints -> key, once per request, not in the round trips)",
                FIRST: " (includes the client encoding the 32k tokens)",
                "NOOP": " (an empty request: the round-trip floor)"}.get(label, "")
        print(f"    {label:34s} p50 {percentile(samples, 0.5) * 1e3:6.3f} ms   p99 {percentile(samples, 0.99) * 1e3:6.3f} ms{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=4, help="32 MiB chunks per STORE/RETRIEVE call")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--lookup-reps", type=int, default=400)
    parser.add_argument("--transfer-threads", type=int, default=0, help="our server's copy threads (0 = auto)")
    parser.add_argument("--skip-lookup", action="store_true")
    parser.add_argument("--skip-transfer", action="store_true")
    parser.add_argument("--reference", action="store_true", help="also run against the reference server")
    args = parser.parse_args()
    if args.reference and not (REFERENCE_VENV / "bin" / "lmcache").exists():
        sys.exit(f"--reference: no LMCache 0.5.0 at {REFERENCE_VENV} (python -m venv {REFERENCE_VENV} && "
                 f"{REFERENCE_VENV}/bin/pip install lmcache==0.5.0, or set LMCACHE_REFERENCE_VENV)")
    l1_gb = max(1.0, args.chunks * 32 * 2 / 1024 + 0.5)
    if not args.skip_transfer:
        results: dict[str, TransferResult] = {}
        with our_server("blake3", l1_gb, args.transfer_threads) as server:
            results["ours"] = bench_transfer(server, args.chunks, args.reps, "NHD")
        print_transfer(results, args.chunks, "NHD")
        if args.reference:
            # A CPU-only reference server reads every 5-D KV tensor as HND whatever the hint
            # says: the side-by-side run uses HND tensors on both servers, so both transpose.
            results = {}
            with our_server("blake3", l1_gb, args.transfer_threads) as server:
                results["ours"] = bench_transfer(server, args.chunks, args.reps, "HND")
            with reference_server(l1_gb) as server:
                results["reference"] = bench_transfer(server, args.chunks, args.reps, "HND")
            print_transfer(results, args.chunks, "HND")
    if args.skip_lookup:
        return
    print(f"lookup round trip, {LOOKUP_TOKENS} tokens / {LOOKUP_CHUNKS} chunks all hits ({args.lookup_reps} reps):")
    for algo in ("blake3", "xxh3"):
        with our_server(algo, 1.0, args.transfer_threads) as server:
            assert server.ipc_url is not None
            print_lookup(f"{server.name}, ipc (--ipc-path)", bench_lookup(server.ipc_url, args.lookup_reps))
            print_lookup(f"{server.name}, tcp loopback", bench_lookup(server.url, args.lookup_reps))
    if args.reference:
        with reference_server(1.0) as server:
            print_lookup(f"{server.name}, tcp loopback (it serves tcp only)", bench_lookup(server.url, args.lookup_reps))


if __name__ == "__main__":
    main()
