"""Benchmark: does joining a fleet slow the data path? Two real `lmcache-server`s run side by side,
one plain and one with `--coordinator-url` (an `lmcache-coordinator` on its embedded store, event
reporting on, a shared mock L2 so each store also reports its write-back), and one engine client
alternates between them: STORE a prompt (engine-driven), then LOOKUP it, one round trip pair per
iteration. The medians and p90s of the two servers are compared; the member's events must not
move them. A third pass points the member at a coordinator that is down (every call fails).

    python benchmarks/bench_fleet_member.py --iterations 300 --chunks 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

from lmcache_frontends.client import LMCacheClient, make_key
from lmcache_frontends.testing import free_port

BIN = Path(sys.executable).parent


def wait_file(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.1)  # polling another process's ready file
    raise RuntimeError(f"{path} did not appear")


def start_server(workdir: Path, name: str, *flags: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = workdir / f"{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    proc = subprocess.Popen(
        [str(BIN / "lmcache-server"), "--port", "0", "--http-port", "0", "--l1-size-gb", "0.25",
         "--shm-name", f"bench_member_{name}_{os.getpid()}", "--ready-file", str(ready),
         "--l2-adapter", '{"type": "mock", "shared": true}', "--log-level", "WARNING", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    return proc, wait_file(ready)


def start_coordinator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "lmcache-coordinator"), "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the coordinator did not start")


class Engine:
    """One engine-driven client of one server."""

    def __init__(self, zmq_url: str, chunks: int) -> None:
        self.client = LMCacheClient(zmq_url)
        self.ctx = self.client.register_engine_driven(1, model_name="bench", num_layers=4, hidden_dim_size=128)
        self.data = [torch.randn(self.ctx.object_shape).half() for _ in range(chunks)]
        self.tokens_per_prompt = 256 * chunks

    def round_trip(self, i: int) -> float:
        tokens = [i] + list(range(i * 1000, i * 1000 + self.tokens_per_prompt - 1))
        started = time.perf_counter()
        assert self.client.store_engine_driven(self.ctx, make_key("bench", tokens, f"s{i}", worker_id=0), self.data)
        self.client.lookup(make_key("bench", tokens, f"l{i}"))
        hits = self.client.wait_for_lookup(f"l{i}")
        elapsed = time.perf_counter() - started
        self.client.free_lookup_locks(make_key("bench", tokens, f"l{i}"))
        self.client.end_session(f"s{i}")
        self.client.end_session(f"l{i}")
        assert hits == len(self.data), hits
        return elapsed

    def close(self) -> None:
        self.client.unregister_engine_driven(1)
        self.client.close()


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=8, help="256-token chunks per prompt")
    args = parser.parse_args()
    coord_port, dead_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = [start_coordinator(coord_port)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        member_flags = ("--coordinator-heartbeat-interval", "1", "--coordinator-event-flush-interval", "0.2")
        servers = {
            "plain": start_server(workdir, "plain"),
            "member": start_server(workdir, "member", "--coordinator-url", f"http://127.0.0.1:{coord_port}", *member_flags),
            "member, coordinator down": start_server(workdir, "down", "--coordinator-url", f"http://127.0.0.1:{dead_port}", *member_flags),
        }
        procs.extend(p for p, _ in servers.values())
        try:
            engines = {name: Engine(info["zmq_url"], args.chunks) for name, (_, info) in servers.items()}
            for engine in engines.values():  # warm-up
                for i in range(10):
                    engine.round_trip(1_000_000 + i)
            samples: dict[str, list[float]] = {name: [] for name in engines}
            for i in range(args.iterations):
                for name, engine in engines.items():  # alternated: the machine's noise hits all alike
                    samples[name].append(engine.round_trip(i + 1))
            print(f"STORE + LOOKUP of {args.chunks} chunks ({args.chunks * 256} tokens), {args.iterations} alternated round trips each:")
            for name, values in samples.items():
                print(f"  {name:26s} {summary(values)}")
            for name, (_, info) in servers.items():
                with urllib.request.urlopen(info["admin_url"] + "/status", timeout=5) as resp:
                    node = json.loads(resp.read()).get("coordinator")
                if node:
                    print(f"  {name}: accepted {node['accepted_events']}, sent batches {node['sent_batches']}, "
                          f"dropped {node['dropped_events']}, failed calls {node['failed_calls']}")
            for engine in engines.values():
                engine.close()
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
