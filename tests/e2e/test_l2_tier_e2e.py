"""The L2 tier end to end: a real server, the engine client, fs restart safety, corruption, s3 outage."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from serverproc import ServerProcess

from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key
from s3_server import MotoServer, moto_server

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
CHUNK = 64
MODEL = "e2e-l2"
TOKENS = [3] + list(range(500, 500 + 4 * CHUNK))  # 4 full chunks after the first token


def status(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/status", timeout=10) as resp:
        return json.loads(resp.read())


def adapter_report(server: ServerProcess) -> dict[str, Any]:
    (report,) = status(server)["storage_manager"]["l2_adapters"]
    return report



def written_back(server: ServerProcess, n: int) -> bool:
    store = status(server)["storage_manager"]["store_controller"]
    (counters,) = store["adapters"].values()
    return store["queue_size"] == 0 and store["in_flight_batches"] == 0 and counters["completed"] >= n


def zmq_url(server: ServerProcess) -> str:
    match = next((ZMQ_RE.search(line) for line in server.stderr_lines if ZMQ_RE.search(line)), None)
    assert match is not None, server.stderr
    return match.group(1)


def chunks(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 2, CHUNK, 32, generator=gen).half() for _ in range(4)]


def store(server: ServerProcess, data: list[torch.Tensor], request: str = "store") -> None:
    with LMCacheClient(zmq_url(server)) as client:
        ctx = client.register_engine_driven(1, model_name=MODEL, num_layers=2, hidden_dim_size=32)
        assert client.store_engine_driven(ctx, make_key(MODEL, TOKENS, request, end=4 * CHUNK, worker_id=0), data)
        client.end_session(request)


def lookup_and_retrieve(server: ServerProcess, request: str) -> tuple[int, list[torch.Tensor] | None]:
    with LMCacheClient(zmq_url(server)) as client:
        ctx = client.register_engine_driven(1, model_name=MODEL, num_layers=2, hidden_dim_size=32)
        client.lookup(make_key(MODEL, TOKENS, request))
        # None, not 0, when the lookup job had not finished: a hang is a failure, never a miss.
        hits = client.wait_prefetch_status(request, timeout=10)
        assert hits is not None, f"lookup {request!r} did not finish within 10 s"
        got = None
        if hits:
            got = client.retrieve_engine_driven(ctx, make_key(MODEL, TOKENS, request, end=hits * CHUNK, worker_id=0))
        client.end_session(request)
        return hits, got


@pytest.fixture
def fs_server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> Callable[[], ServerProcess]:
    base = tmp_path / "l2"

    def start() -> ServerProcess:
        adapter = json.dumps({"type": "fs", "base_path": str(base)})
        return start_server("--chunk-size", str(CHUNK), "--l2-adapter", adapter)

    return start


def stored_files(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*") if p.is_file() and "@" in p.name)


@pytest.mark.timeout(120)
def test_fs_chunks_survive_sigkill_and_come_back_as_l2_hits(fs_server: Callable[[], ServerProcess], tmp_path: Path) -> None:
    data = chunks(1)
    first = fs_server()
    store(first, data)
    poll_until(lambda: written_back(first, 4), what="write-back of 4 chunks", timeout=20.0, interval=0.1)
    first.stop(signal.SIGKILL)

    second = fs_server()
    assert adapter_report(second)["stored_object_count"] == 4  # rebuilt from disk
    hits, got = lookup_and_retrieve(second, "after-restart")
    assert hits == 4
    assert got is not None and all(torch.equal(a, b) for a, b in zip(data, got, strict=True))
    prefetch = status(second)["storage_manager"]["prefetch_controller"]
    assert prefetch["keys_loaded"] == 4
    assert second.stop() == 0


@pytest.mark.timeout(120)
def test_a_flipped_byte_on_disk_is_a_miss_never_a_wrong_hit(fs_server: Callable[[], ServerProcess], tmp_path: Path) -> None:
    data = chunks(2)
    first = fs_server()
    store(first, data)
    poll_until(lambda: written_back(first, 4), what="write-back of 4 chunks", timeout=20.0, interval=0.1)
    assert first.stop() == 0

    files = stored_files(tmp_path / "l2")
    assert len(files) == 4
    # flip one byte in the object of the *second* chunk
    keys = {ObjectKey.from_storage_name(p.name): p for p in files}
    from lmcache_core.hashing import TokenHasher

    hashes = TokenHasher("blake3", CHUNK).chunk_hashes(TOKENS)
    victim = next(p for k, p in keys.items() if k.chunk_hash == hashes[1])
    raw = bytearray(victim.read_bytes())
    raw[-100] ^= 0x01
    victim.write_bytes(bytes(raw))

    second = fs_server()
    hits, got = lookup_and_retrieve(second, "after-corruption")
    assert hits == 1, "the prefix must stop at the corrupt chunk"
    assert got is not None and torch.equal(got[0], data[0])
    report = adapter_report(second)
    assert report["checksum_failures"] == 1
    assert not victim.exists(), "a corrupt object is deleted"
    assert second.stop() == 0


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.mark.timeout(150)
def test_s3_outage_degrades_to_misses_and_recovers_without_restart(
    start_server: Callable[..., ServerProcess], moto: MotoServer
) -> None:
    moto.client().create_bucket(Bucket="kv-cache")
    adapter = {
        "type": "s3",
        "bucket": "kv-cache",
        "endpoint_url": moto.url,
        "connect_timeout": 1,
        "read_timeout": 2,
        "max_attempts": 1,
        "circuit_breaker_threshold": 2,
        "circuit_breaker_backoff_seconds": 1,
        "circuit_breaker_max_backoff_seconds": 2,
    }
    server = start_server("--chunk-size", str(CHUNK), "--l2-adapter", json.dumps(adapter))
    store(server, chunks(3), "before")
    poll_until(lambda: written_back(server, 4), what="write-back before the outage", timeout=20.0, interval=0.1)
    assert adapter_report(server)["is_healthy"] is True

    moto.stop()
    # Traffic during the outage: the write-back fails, the breaker opens, lookups are misses.
    with LMCacheClient(zmq_url(server)) as client:
        client.clear()  # L1 empty: a lookup must go to L2
    # A miss, and a finished one (lookup_and_retrieve fails a lookup that hangs): checked on the
    # job's state rather than a wall-clock bound above the wait's own 10 s timeout.
    hits, _ = lookup_and_retrieve(server, "during")
    assert hits == 0
    poll_until(lambda: adapter_report(server)["is_healthy"] is False, what="s3 reported unhealthy", timeout=20.0, interval=0.1)
    assert adapter_report(server)["circuit"] in ("open", "half_open")
    assert status(server)["is_healthy"] is False

    moto.restart()
    moto.client().create_bucket(Bucket="kv-cache")  # moto keeps no state across a restart
    poll_until(lambda: adapter_report(server)["is_healthy"] is True, timeout=30, what="s3 recovered", interval=0.1)
    data = chunks(4)
    with LMCacheClient(zmq_url(server)) as client:
        client.clear()
    store(server, data, "after")
    poll_until(lambda: written_back(server, 8), what="write-back after recovery", timeout=20.0, interval=0.1)
    with LMCacheClient(zmq_url(server)) as client:
        client.clear()
    hits, got = lookup_and_retrieve(server, "after-lookup")
    assert hits == 4 and got is not None and all(torch.equal(a, b) for a, b in zip(data, got, strict=True))
    assert server.stop() == 0


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(90)
def test_quotas_survive_a_restart_with_a_state_dir(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = start_server("--state-dir", str(state), "--eviction-policy", "IsolatedLRU")
    assert _request("PUT", f"{first.url}/quota/alice", {"limit_gb": 2.5})["status"] == "ok"
    assert _request("PUT", f"{first.url}/quota/_default", {"limit_gb": 1})["status"] == "ok"
    first.stop(signal.SIGKILL)  # persisted on every change, not only at a clean shutdown

    second = start_server("--state-dir", str(state), "--eviction-policy", "IsolatedLRU")
    alice = _request("GET", f"{second.url}/quota/alice")
    assert alice["exists"] is True and alice["limit_gb"] == 2.5
    assert _request("GET", f"{second.url}/quota/_default")["limit_gb"] == 1.0
    assert second.stop() == 0
