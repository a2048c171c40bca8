"""The fleet end to end: real `lmcache-coordinator` processes on a real redis-server, servers
(FakeFleetServer: real HTTP, the real CoordinatorClient) reporting through one URL in front of two
coordinators; a coordinator killed mid-run, Redis restarted, a server crashed."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetproc import NOT_YET, FakeFleetServer, RoundRobinProxy, get_json, start_coordinator

from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from redis_server import RedisProcess, redis_cluster, redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GIB = 1024**3
SIZE = 1 << 20
FAST = ("--health-check-interval", "0.3", "--instance-timeout", "2", "--eviction-check-interval", "0.3", "--resync-delay", "1")


def keys(prefix: int, n: int, salt: str = "t") -> list[ObjectKey]:
    # The first byte varies like a real hash's (it picks the shard bucket).
    return [ObjectKey(bytes([i % 256]) + prefix.to_bytes(2, "big") + i.to_bytes(4, "big") * 7 + b"\0", "org/model", 0x01000100, 0, salt) for i in range(n)]


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_server(tmp_path) as server:
        yield server


def usage_bytes(url: str, salt: str = "t") -> int:
    status, body = get_json(f"{url}/quota/{salt}")
    assert status == 200, body
    return round(body["usage_gb"] * GIB)


def test_two_coordinators_one_killed_quota_enforced_nothing_double_counted(redis_proc: RedisProcess) -> None:
    a = start_coordinator("--redis-url", redis_proc.url, *FAST)
    b = start_coordinator("--redis-url", redis_proc.url, *FAST)
    proxy = RoundRobinProxy([a.url, b.url])
    pool: dict[ObjectKey, int] = {}
    pool_lock = threading.Lock()
    servers = [FakeFleetServer(f"srv-{i}", proxy.url, pool=pool, pool_lock=pool_lock) for i in range(3)]
    try:
        poll_until(
            lambda: len(get_json(f"{proxy.url}/instances")[1]["instances"]) == 3,
            timeout=10, what="three registrations", interval=0.1, ignore=NOT_YET,
        )
        for i, server in enumerate(servers):
            server.store(keys(i, 10), SIZE)
        poll_until(
            lambda: usage_bytes(proxy.url) == 30 * SIZE,
            timeout=10, what="30 MiB of shared L2 counted once", interval=0.1, ignore=NOT_YET,
        )
        # Kill one coordinator without a goodbye; the servers keep reporting through the proxy.
        a.stop(signal.SIGKILL)
        for i, server in enumerate(servers):
            server.store(keys(10 + i, 10), SIZE)
        poll_until(
            lambda: usage_bytes(proxy.url) == 60 * SIZE,
            timeout=10, what="60 MiB after the kill", interval=0.1, ignore=NOT_YET,
        )
        # A fleet quota of 40 MiB: the survivor takes the loop over and trims to 32 MiB.
        assert get_json(f"{proxy.url}/quota/t", "PUT", {"limit_gb": 40 * SIZE / GIB})[0] == 200
        poll_until(
            lambda: usage_bytes(proxy.url) <= 32 * SIZE,
            timeout=20, what="usage under the quota", interval=0.1, ignore=NOT_YET,
        )
        with pool_lock:
            truth = sum(pool.values())
        poll_until(
            lambda: usage_bytes(proxy.url) == truth,
            timeout=10, what="the coordinator's usage equals what the pool holds", interval=0.1, ignore=NOT_YET,
        )
        assert truth == 32 * SIZE
        status = get_json(f"{b.url}/fleet/status")[1]
        assert status["eviction"]["leader"] is True
        # Nothing double-counted: 20 stores per server, each batch applied exactly once.
        assert sum(i["events_applied"] for i in status["instances"].values()) >= 3 * 40
        stats = get_json(f"{b.url}/directory/stats")[1]
        assert stats["l2_count"] == 32 and stats["l1_count"] == 60
        # A server dies: its lease lapses and its L1 placements leave the directory.
        servers[0].crash()
        poll_until(
            lambda: "srv-0" not in get_json(f"{b.url}/directory/stats")[1]["l1_keys_by_instance"],
            timeout=15, what="srv-0's L1 placements gone", interval=0.1, ignore=NOT_YET,
        )
        assert [i["instance_id"] for i in get_json(f"{b.url}/instances")[1]["instances"]] == ["srv-1", "srv-2"]
        assert get_json(f"{b.url}/directory/stats")[1]["l2_count"] == 32  # L2 outlives its reporter
    finally:
        for server in servers:
            server.close()
        proxy.close()
        b.stop()
        a.stop()


def test_redis_restart_coordinators_reconnect_and_resync(redis_proc: RedisProcess) -> None:
    coord = start_coordinator("--redis-url", redis_proc.url, *FAST)
    server = FakeFleetServer("srv-r", coord.url, backend="fs", shared=False)
    try:
        poll_until(
            lambda: get_json(f"{coord.url}/instances")[1]["instances"],
            timeout=10, what="registration", interval=0.1, ignore=NOT_YET,
        )
        server.store(keys(1, 8), SIZE, l1=False)
        poll_until(
            lambda: usage_bytes(coord.url) == 8 * SIZE,
            timeout=10, what="8 MiB recorded", interval=0.1, ignore=NOT_YET,
        )
        redis_proc.restart()  # empty again: no persistence
        # The server re-registers after a 404 heartbeat; the empty store is resynced from its listing.
        poll_until(
            lambda: usage_bytes(coord.url) == 8 * SIZE,
            timeout=20, what="usage restored by the resync", interval=0.1, ignore=NOT_YET,
        )
        assert get_json(f"{coord.url}/fleet/status")[1]["resync"] == "done"
        server.store(keys(2, 2), SIZE, l1=False)
        poll_until(
            lambda: usage_bytes(coord.url) == 10 * SIZE,
            timeout=10, what="new events after the restart", interval=0.1, ignore=NOT_YET,
        )
        assert server.client.registrations >= 2
    finally:
        server.close()
        coord.stop()


def test_a_replayed_stream_is_ignored_and_a_restart_fences_l1(redis_proc: RedisProcess) -> None:
    coord = start_coordinator("--redis-url", redis_proc.url, *FAST)
    try:
        key = keys(7, 1)[0].to_json()
        batch = {"instance_id": "s", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
                 "entries": [{"key": key, "size_bytes": 100}]}
        assert get_json(f"{coord.url}/events", "POST", {"batches": [batch]})[1] == {"applied": 1, "duplicates": 0, "stale": 0}
        assert get_json(f"{coord.url}/events", "POST", {"batches": [batch, batch]})[1] == {"applied": 0, "duplicates": 2, "stale": 0}
        assert get_json(f"{coord.url}/directory/stats")[1]["l1_count"] == 1
        restarted = {**batch, "incarnation": 2, "entries": []}
        assert get_json(f"{coord.url}/events", "POST", {"batches": [restarted]})[1]["applied"] == 1
        assert get_json(f"{coord.url}/directory/stats")[1]["l1_count"] == 0
        assert get_json(f"{coord.url}/events", "POST", {"batches": [batch]})[1]["stale"] == 1
    finally:
        coord.stop()


def test_a_coordinator_on_a_redis_cluster(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as cluster:
        coord = start_coordinator("--redis-cluster", "--redis-url", cluster.url, "--shard-buckets", "4", *FAST)
        server = FakeFleetServer("srv-c", coord.url, backend="fs", shared=False)
        try:
            server.store(keys(3, 40), SIZE)
            poll_until(
                lambda: usage_bytes(coord.url) == 40 * SIZE,
                timeout=10, what="40 MiB over the cluster's shards", interval=0.1, ignore=NOT_YET,
            )
            assert get_json(f"{coord.url}/directory/stats")[1]["l1_keys_by_instance"] == {"srv-c": 40}
            status = get_json(f"{coord.url}/fleet/status")[1]
            assert status["store"]["address"].startswith("cluster via") and status["store"]["shards"] == 4
        finally:
            server.close()
            coord.stop()


def test_the_cli_refuses_bad_flags() -> None:
    import subprocess

    from serverproc import server_command

    result = subprocess.run([*server_command("lmcache-coordinator"), "--eviction-ratio", "3"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--eviction-ratio must be in [0, 1]" in result.stderr
    result = subprocess.run([*server_command("lmcache-coordinator"), "--store", "redis"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "--redis-url" in result.stderr
    result = subprocess.run([*server_command("lmcache"), "coordinator", "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "refusing to serve the coordinator API on non-loopback --host 0.0.0.0" in result.stderr
    result = subprocess.run([*server_command("lmcache"), "coordinator", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--redis-url" in result.stdout and "LMCACHE_MP_COORDINATOR_" in result.stdout
