"""The fleet with real parts only: one redis-server, two `lmcache-coordinator`s on it behind one
URL, one moto S3 server over HTTP with one bucket, three real `lmcache-server`s with
`--coordinator-url` sharing that bucket as their L2 (`"shared": true`), stores driven through our
ZeroMQ client. Then: the directory and the usage match what the servers hold (asked over their
own admin APIs); a coordinator killed mid-run (the other carries on, nothing double-counted); a
fleet quota enforced through the servers' `DELETE /cache/objects`, the coldest keys first;
Redis restarted (the coordinators reconnect, the servers re-register, the store is resynced
from the servers' listings); a server killed with SIGKILL (its lease lapses, its L1 placements
leave the directory). And our server registered to LMCache's own coordinators (0.5.0, 0.5.6)."""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fleetproc import (
    NOT_YET,
    REFERENCE_VENVS,
    RoundRobinProxy,
    get_json,
    reference_coordinator,
    start_coordinator,
)
from serverproc import READY_RE, START_TIMEOUT_S, ServerProcess, launch

from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key
from redis_server import RedisProcess, free_port, redis_server
from s3_server import MotoServer, moto_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GIB = 1024**3
SALT = "tenant-a"
MODEL = "fleet-model"
CHUNK = 256
PROMPTS_PER_SERVER = 2
CHUNKS_PER_PROMPT = 4
FAST_COORD = ("--health-check-interval", "0.3", "--instance-timeout", "2", "--eviction-check-interval", "0.3",
              "--resync-delay", "1", "--eviction-retry-seconds", "3")
FAST_MEMBER = ("--coordinator-heartbeat-interval", "0.3", "--coordinator-event-flush-interval", "0.1")
ZMQ_RE = re.compile(r"zmq (tcp://\S+)")


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with moto_server() as server:
        server.client().create_bucket(Bucket="fleet-kv")
        yield server


class Member:
    """One real lmcache-server in the fleet and what it stored."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.url = proc.url
        match = ZMQ_RE.search(proc.stderr)
        assert match is not None, proc.stderr
        self.zmq_url = match.group(1)
        self.prompts: list[list[int]] = []

    def store(self, seed: int) -> list[int]:
        """One prompt of CHUNKS_PER_PROMPT chunks of salt SALT, through our ZeroMQ client."""
        tokens = [seed] + list(range(seed * 10_000, seed * 10_000 + CHUNK * CHUNKS_PER_PROMPT - 1))
        with LMCacheClient(self.zmq_url) as client:
            ctx = client.register_engine_driven(1, model_name=MODEL, num_layers=2, hidden_dim_size=32)
            chunks = [torch.randn(ctx.object_shape).half() for _ in range(CHUNKS_PER_PROMPT)]
            key = make_key(MODEL, tokens, f"s{seed}", end=len(tokens), worker_id=0, cache_salt=SALT)
            assert client.store_engine_driven(ctx, key, chunks)
            client.end_session(f"s{seed}")
            client.unregister_engine_driven(1)
        self.prompts.append(tokens)
        return tokens

    def status(self) -> dict[str, Any]:
        return get_json(f"{self.url}/status")[1]

    def l1_objects(self) -> int:
        return int(self.status()["storage_manager"]["l1_manager"]["total_object_count"])

    def instance_id(self) -> str:
        return str(self.status()["coordinator"]["instance_id"])

    def write_back_idle(self) -> bool:
        store = self.status()["storage_manager"]["store_controller"]
        return store["queue_size"] == 0 and store["in_flight_keys"] == 0


def start_members(n: int, *flags: str) -> list[Member]:
    procs = [launch(flags, shm_prefix="e2e_fleet", wait_ready=False) for _ in range(n)]
    try:
        for proc in procs:
            proc.url = proc.wait_for_line(READY_RE, START_TIMEOUT_S).group(1)
    except BaseException:
        for proc in procs:
            proc.terminate()
        raise
    return [Member(p) for p in procs]


def bucket_keys(member: Member) -> dict[str, int]:
    """What the shared bucket holds, as a server lists it: chunk hash -> stored bytes."""
    out: dict[str, int] = {}
    token = None
    while True:
        query = "?page_size=1000" + (f"&page_token={token}" if token else "")
        status, page = get_json(f"{member.url}/cache/objects{query}")
        assert status == 200 and page["adapter"] == "s3" and page["shared"] is True, page
        out.update({e["key"]["chunk_hash_hex"]: e["size_bytes"] for e in page["entries"]})
        token = page["next_page_token"]
        if not token:
            return out


def directory_l2(url: str) -> dict[str, int]:
    status, body = get_json(f"{url}/directory/keys?tier=l2&limit=10000")
    assert status == 200, body
    return {k["key"]["chunk_hash_hex"]: sum(p["size_bytes"] for p in k["placements"] if p["tier"] == "l2") for k in body["keys"]}


def l2_usage(url: str) -> int:
    status, body = get_json(f"{url}/quota/{SALT}")
    assert status == 200, body
    return round(body["usage_gb"] * GIB)


def matches_the_bucket(url: str, member: Member, *, sizes_reported: bool = True) -> bool:
    """The directory's L2 keys are the bucket's, each with its size where either side knows it
    (an S3 adapter knows the sizes of the objects it stored or read itself), and the salt's
    usage is their bytes. After a resync, objects whose size the listing server did not know
    count 0 bytes until they are stored again (`sizes_reported=False`)."""
    truth = bucket_keys(member)
    seen = directory_l2(url)
    assert set(seen) == set(truth), f"directory has {len(seen)} keys, the bucket {len(truth)}: {set(seen) ^ set(truth)}"
    known = {h: n for h, n in truth.items() if n is not None}
    object_bytes = next(iter(known.values()))
    if sizes_reported:
        assert set(seen.values()) == {object_bytes}, f"sizes {set(seen.values())}, objects of {object_bytes} bytes"
        assert l2_usage(url) == object_bytes * len(truth), f"usage {l2_usage(url)} for {len(truth)} objects"
    else:  # the resync's listing server knew some sizes, later stores report theirs
        assert set(seen.values()) <= {0, object_bytes}, f"sizes {set(seen.values())}"
        assert l2_usage(url) == sum(seen.values()), f"usage {l2_usage(url)} != {sum(seen.values())}"
    return True


def l1_matches(url: str, members: list[Member]) -> bool:
    by_instance = get_json(f"{url}/directory/stats")[1]["l1_keys_by_instance"]
    return all(by_instance.get(m.instance_id(), 0) == m.l1_objects() for m in members)


def score(url: str, tokens: list[int]) -> dict[str, dict[str, Any]]:
    body = {"model_name": MODEL, "token_ids": tokens, "cache_salt": SALT, "world_size": 1}
    status, reply = get_json(f"{url}/directory/score", "POST", body)
    assert status == 200, reply
    return {i["instance_id"]: i for i in reply["instances"]}


def test_three_servers_two_coordinators_one_redis_one_bucket(redis_proc: RedisProcess, moto: MotoServer) -> None:
    a = start_coordinator("--redis-url", redis_proc.url, *FAST_COORD)
    b = start_coordinator("--redis-url", redis_proc.url, *FAST_COORD)
    proxy = RoundRobinProxy([a.url, b.url])
    s3 = json.dumps({"type": "s3", "bucket": "fleet-kv", "endpoint_url": moto.url, "region": "us-east-1", "shared": True})
    members: list[Member] = []
    try:
        members = start_members(3, "--l2-adapter", s3, "--coordinator-url", proxy.url, *FAST_MEMBER)
        ids = {m.instance_id() for m in members}
        poll_until(
            lambda: {i["instance_id"] for i in get_json(f"{proxy.url}/instances")[1]["instances"]} == ids,
            timeout=15, what="three registrations", interval=0.1, ignore=NOT_YET,
        )
        # Stores, one server after the other (the first server's keys are the coldest).
        for n, member in enumerate(members[:2]):
            for p in range(PROMPTS_PER_SERVER):
                member.store(100 * n + p + 1)
            poll_until(
                member.write_back_idle,
                timeout=20, what="the write-back to the bucket", interval=0.1, ignore=NOT_YET,
            )
            poll_until(
                lambda m=member: matches_the_bucket(proxy.url, m),
                timeout=15, what="the directory's L2 equals the bucket", interval=0.1, ignore=NOT_YET,
            )
        # A coordinator dies without a goodbye; the other carries on behind the same URL.
        a.stop(signal.SIGKILL)
        for p in range(PROMPTS_PER_SERVER):
            members[2].store(200 + p + 1)
        poll_until(
            members[2].write_back_idle,
            timeout=20, what="the third server's write-back", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: matches_the_bucket(b.url, members[0]),
            timeout=15, what="nothing double-counted after the kill", interval=0.1, ignore=NOT_YET,
        )
        stored_chunks = 3 * PROMPTS_PER_SERVER * CHUNKS_PER_PROMPT
        assert len(bucket_keys(members[1])) == stored_chunks
        poll_until(
            lambda: l1_matches(b.url, members),
            timeout=15, what="each server's L1 placements equal its L1 objects", interval=0.1, ignore=NOT_YET,
        )
        # Routing scores agree with what each server holds: its own prompts in L1, everyone's in the shared L2.
        for member in members:
            for tokens in member.prompts:
                got = score(b.url, tokens)
                full = len(tokens) // CHUNK * CHUNK
                for other in members:
                    entry = got[other.instance_id()]
                    assert entry["l2_tokens"] == full and entry["prefix_tokens"] == full, entry
                    assert entry["l1_tokens"] == (full if other is member else 0), entry
        # A fleet quota: trimmed to 0.8 x limit through the servers' own deletes, coldest first.
        object_bytes = next(n for n in bucket_keys(members[0]).values() if n)
        limit_chunks = stored_chunks - 4
        assert get_json(f"{b.url}/quota/{SALT}", "PUT", {"limit_gb": limit_chunks * object_bytes / GIB})[0] == 200
        left_before = bucket_keys(members[0])
        poll_until(
            lambda: len(bucket_keys(members[0])) <= int(0.8 * limit_chunks),
            timeout=30, what="the bucket trimmed under the quota", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: matches_the_bucket(b.url, members[2]),
            timeout=15, what="usage and directory follow the delete events", interval=0.1, ignore=NOT_YET,
        )
        # The excess was exactly the first server's chunks, the least recently used.
        first_server = {h for tokens in members[0].prompts for h in directory_hashes(b.url, tokens)}
        assert len(first_server) == PROMPTS_PER_SERVER * CHUNKS_PER_PROMPT
        assert set(bucket_keys(members[0])) == set(left_before) - first_server
        assert get_json(f"{b.url}/fleet/status")[1]["eviction"]["leader"] is True
        # Redis restarts empty: the survivor reconnects, the servers register again on their next
        # heartbeat, and the store is resynced from their listings of the bucket (listed once).
        redis_proc.restart()
        poll_until(
            lambda: len(get_json(f"{b.url}/instances")[1]["instances"]) == 3,
            timeout=20, what="registrations after the restart", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: matches_the_bucket(b.url, members[2], sizes_reported=False),
            timeout=30, what="the bucket resynced after the Redis restart", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: get_json(f"{b.url}/fleet/status")[1]["resync"] == "done",
            timeout=15, what="the resync marked done", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: matches_the_bucket(b.url, members[2], sizes_reported=False),
            timeout=15, what="the directory after the resync", interval=0.1, ignore=NOT_YET,
        )
        # A server killed with SIGKILL: its lease lapses and its L1 placements leave the directory.
        # (L1 placements lost with Redis come back with each server's next stores.)
        victim = members[1].instance_id()
        members[1].store(150)
        poll_until(
            lambda: get_json(f"{b.url}/directory/stats")[1]["l1_keys_by_instance"].get(victim) == CHUNKS_PER_PROMPT,
            timeout=15, what="the new L1 placements after the restart", interval=0.1, ignore=NOT_YET,
        )
        poll_until(members[1].write_back_idle, timeout=20, what="its write-back", interval=0.1, ignore=NOT_YET)
        poll_until(
            lambda: matches_the_bucket(b.url, members[2], sizes_reported=False),
            timeout=15, what="its L2 stores reported", interval=0.1, ignore=NOT_YET,
        )
        members[1].proc.stop(signal.SIGKILL)
        poll_until(
            lambda: victim not in get_json(f"{b.url}/directory/stats")[1]["l1_keys_by_instance"],
            timeout=15, what="the dead server's L1 placements gone", interval=0.1, ignore=NOT_YET,
        )
        assert victim not in {i["instance_id"] for i in get_json(f"{b.url}/instances")[1]["instances"]}
        poll_until(
            lambda: matches_the_bucket(b.url, members[2], sizes_reported=False),
            timeout=15, what="the shared L2 outlives the dead server", interval=0.1, ignore=NOT_YET,
        )
        # A clean stop deregisters at once.
        survivor = members[2].instance_id()
        assert members[2].proc.stop(signal.SIGTERM) == 0
        assert survivor not in {i["instance_id"] for i in get_json(f"{b.url}/instances")[1]["instances"]}
    finally:
        for member in members:
            member.proc.terminate()
        proxy.close()
        b.stop()
        a.stop()


def directory_hashes(url: str, tokens: list[int]) -> list[str]:
    body = {"model_name": MODEL, "token_ids": tokens, "cache_salt": SALT, "world_size": 1}
    status, reply = get_json(f"{url}/directory/lookup", "POST", body)
    assert status == 200, reply
    return [r["key"]["chunk_hash_hex"] for r in reply["results"]]


def test_a_server_with_its_coordinator_down_serves_on_and_joins_when_it_comes_up(start_server: Any) -> None:
    port = free_port()
    server = start_server("--coordinator-url", f"http://127.0.0.1:{port}", "--coordinator-max-buffered-events", "2", *FAST_MEMBER)
    member = Member(server)
    member.store(7)  # 4 L1 stores into a buffer of 2: two dropped, the store itself unharmed
    node = poll_until(
        lambda: (n := member.status()["coordinator"])["failed_calls"] and n,
        timeout=10, what="failed calls counted", interval=0.1, ignore=NOT_YET,
    )
    assert node["registered"] is False and node["dropped_events"] == 2 and node["buffered_events"] == 2
    assert node["is_healthy"] and member.status()["is_healthy"] and member.l1_objects() == CHUNKS_PER_PROMPT
    metrics = poll_until(
        lambda: (t := get_json_text(f"{member.url}/metrics")) and "lmcache_mp_coordinator_failed_calls_total" in t and t,
        timeout=5, what="metrics", interval=0.1, ignore=NOT_YET,
    )
    assert "lmcache_mp_coordinator_registered 0.0" in metrics
    coordinator = start_coordinator("--port", str(port), *FAST_COORD)
    try:
        poll_until(
            lambda: [i["instance_id"] for i in get_json(f"{coordinator.url}/instances")[1]["instances"]] == [member.instance_id()],
            timeout=15, what="the late registration", interval=0.1, ignore=NOT_YET,
        )
        poll_until(
            lambda: member.status()["coordinator"]["buffered_events"] == 0,
            timeout=10, what="the buffer flushed", interval=0.1, ignore=NOT_YET,
        )
        assert member.status()["coordinator"]["registered"] is True
    finally:
        server.terminate()
        coordinator.stop()


def get_json_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


@pytest.mark.parametrize("version", ["0.5.0", "0.5.6"])
def test_our_server_joins_the_reference_coordinator(version: str, start_server: Any) -> None:
    venv = REFERENCE_VENVS[version]
    if not (venv / "bin" / "lmcache").exists():
        pytest.skip(f"the reference LMCache {version} is not installed in {venv}")
    with reference_coordinator(version, free_port()) as url:
        server = start_server("--l2-adapter", '{"type": "mock"}', "--coordinator-url", url, *FAST_MEMBER)
        member = Member(server)
        poll_until(
            lambda: [i["instance_id"] for i in get_json(f"{url}/instances")[1]["instances"]] == [member.instance_id()],
            timeout=15, what="registration", interval=0.1, ignore=NOT_YET,
        )
        member.store(11)
        if version == "0.5.6":
            stats = poll_until(
                lambda: (s := get_json(f"{url}/directory/stats")[1])["l2_count"] == CHUNKS_PER_PROMPT and s,
                timeout=15, what="L1 and L2 placements", interval=0.1, ignore=NOT_YET,
            )
            assert stats["l1_count"] == CHUNKS_PER_PROMPT
        else:
            poll_until(
                lambda: get_json(f"{url}/l2/status")[1]["total_gb"] > 0,
                timeout=15, what="L2 usage", interval=0.1, ignore=NOT_YET,
            )
            assert member.status()["coordinator"]["legacy_coordinator"] is True
        assert member.status()["coordinator"]["failed_calls"] == 0
        assert server.stop(signal.SIGTERM) == 0
        assert get_json(f"{url}/instances")[1]["instances"] == []
