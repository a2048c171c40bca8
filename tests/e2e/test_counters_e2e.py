"""Counters that agree with what happened: a real server, a known sequence of engine requests
(store, L1 hit, retrieve, CLEAR, L2 prefetch, retrieve, a miss), then every lmcache_mp_* family
and every LMCache 0.5.0 name checked against what that sequence did."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

from lmcache_adapters.metrics import LMCACHE_050_FAMILIES
from lmcache_core import metric_names as mn
from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key

pytestmark = pytest.mark.e2e

CHUNK = 64
MODEL = "counted"
N = 4  # chunks per request
TOKENS = [7] + list(range(1000, 1000 + N * CHUNK))
OTHER = [8] + list(range(5000, 5000 + N * CHUNK))
OBJECT = 2 * 2 * CHUNK * 32 * 2  # K and V, 2 layers, 64 tokens, hidden 32, fp16
ZMQ_RE = re.compile(r"zmq (tcp://\S+)")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


def status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/status", timeout=10) as resp:
        return json.loads(resp.read())



def drive(server: ServerProcess) -> None:
    """The known sequence. Comments say what each step must count."""
    url = ZMQ_RE.search(server.stderr)
    assert url is not None, server.stderr
    gen = torch.Generator().manual_seed(3)
    data = [torch.randn(2, 2, CHUNK, 32, generator=gen).half() for _ in range(N)]
    with LMCacheClient(url.group(1)) as client:
        ctx = client.register_engine_driven(1, model_name=MODEL, num_layers=2, hidden_dim_size=32)
        # 1. STORE 4 chunks: 4 written to L1, then written back to the mock L2 (4 read, 4 stored).
        assert client.store_engine_driven(ctx, make_key(MODEL, TOKENS, "a", end=N * CHUNK, worker_id=0), data)
        client.end_session("a")
        poll_until(lambda: status(server.url)["storage_manager"]["store_controller"]["adapters"]["0:mock"]["completed"] == N
                   and status(server.url)["storage_manager"]["store_controller"]["in_flight_batches"] == 0,
                   what="write-back of request a", timeout=20.0, interval=0.05)
        # 2. LOOKUP: all 4 in L1 (256 L1 hit tokens, no L2 lookup); RETRIEVE them: 4 read.
        client.lookup(make_key(MODEL, TOKENS, "b"))
        assert client.wait_for_lookup("b", timeout=10) == N
        got = client.retrieve_engine_driven(ctx, make_key(MODEL, TOKENS, "b", end=N * CHUNK, worker_id=0))
        assert got is not None and all(torch.equal(a, b) for a, b in zip(data, got, strict=True))
        client.end_session("b")
        # 3. CLEAR: L1 empty (removed, not evicted).
        client.clear()
        # 4. LOOKUP: an L2 prefetch (1 lookup of 4 keys, 4 hits, 1 load batch of 4, 4 written to
        #    L1 without a write-back), 256 L2 hit tokens; RETRIEVE them: 4 read, then freed.
        client.lookup(make_key(MODEL, TOKENS, "c"))
        assert client.wait_for_lookup("c", timeout=10) == N
        got = client.retrieve_engine_driven(ctx, make_key(MODEL, TOKENS, "c", end=N * CHUNK, worker_id=0))
        assert got is not None and all(torch.equal(a, b) for a, b in zip(data, got, strict=True))
        client.end_session("c")
        # 5. LOOKUP of a prompt nobody stored: 1 more L2 lookup of 4 keys, no hit.
        client.lookup(make_key(MODEL, OTHER, "d"))
        assert client.wait_for_lookup("d", timeout=10) == 0
        client.end_session("d")
        client.unregister_engine_driven(1)


# What the sequence did, by family (our names, without the prefix), and labels to sum over.
TENANT = {"model_name": MODEL, "cache_salt": ""}
EXPECTED: dict[str, list[tuple[dict[str, str], float]]] = {
    mn.LOOKUP_REQUESTS.name: [(TENANT, 3)],
    mn.LOOKUP_TOKENS.name: [(TENANT, 3 * N * CHUNK)],
    mn.LOOKUP_HIT_TOKENS.name: [({**TENANT, "tier": "l1"}, N * CHUNK), ({**TENANT, "tier": "l2"}, N * CHUNK)],
    mn.STORE_REQUESTS.name: [(TENANT, 1)],
    mn.STORED_TOKENS.name: [(TENANT, N * CHUNK)],
    mn.RETRIEVE_REQUESTS.name: [(TENANT, 2)],
    mn.RETRIEVED_TOKENS.name: [(TENANT, 2 * N * CHUNK)],
    mn.L1_CHUNKS_WRITTEN.name: [(TENANT, 2 * N)],  # the store and the prefetch
    mn.L1_CHUNKS_EVICTED.name: [(TENANT, 0)],
    # Read when the read ends, once per read: 4 write-back reads, 4 retrieved from L1, 4 retrieved
    # after the prefetch (a LOOKUP lock and the retrieve that uses it are one read; 0.5.0 says 12).
    mn.L1_CHUNKS_READ.name: [(TENANT, 3 * N)],
    mn.L2_STORES_SUBMITTED.name: [({"adapter": "mock"}, N)],
    mn.L2_STORES_COMPLETED.name: [({"adapter": "mock"}, N)],
    mn.L2_STORES_FAILED.name: [({"adapter": "mock"}, 0)],
    mn.L2_STORE_BATCHES_SUBMITTED.name: [({"adapter": "mock"}, 1)],
    mn.L2_STORE_BATCHES_COMPLETED.name: [({"adapter": "mock"}, 1)],
    mn.L2_STORES_UNWRITTEN_AT_SHUTDOWN.name: [({}, 0)],
    mn.PREFETCH_LOOKUPS.name: [({}, 2)],
    mn.PREFETCH_LOOKUP_KEYS.name: [({}, 2 * N)],
    mn.PREFETCH_HITS.name: [({}, N)],
    mn.PREFETCH_LOAD_BATCHES.name: [({"adapter": "mock"}, 1)],
    mn.PREFETCH_LOAD_KEYS.name: [({"adapter": "mock"}, N)],
    mn.PREFETCH_LOAD_BATCHES_COMPLETED.name: [({"adapter": "mock"}, 1)],
    mn.PREFETCH_LOADS.name: [({"adapter": "mock"}, N)],
    mn.PREFETCH_FAILURES.name: [({}, 0)],
    mn.L2_EVICTED_OBJECTS.name: [({}, 0)],
    mn.L2_CHECKSUM_FAILURES.name: [({}, 0)],
    mn.L2_CIRCUIT_OPENED.name: [({}, 0)],
    mn.L1_ALLOCATION_FAILURES.name: [({}, 0)],
    mn.L1_EVICTION_PRESSURE_CYCLES.name: [({}, 0)],
    mn.UNKNOWN_METRIC.name: [({}, 0)],
    # Gauges after the sequence: L1 empty (cleared, prefetched objects freed after their read).
    mn.L1_OBJECTS.name: [({}, 0)],
    mn.L1_USAGE_BYTES.name: [({}, 0)],
    mn.L2_USAGE_BYTES.name: [({"adapter": "mock", "l2_name": "mock"}, N * OBJECT)],
    mn.L2_ADAPTERS.name: [({"state": "active"}, 1), ({"state": "draining"}, 0)],
    mn.L2_STORE_QUEUE.name: [({}, 0)],
    mn.L2_STORES_IN_FLIGHT.name: [({}, 0)],
    mn.L2_LOADS_IN_FLIGHT.name: [({}, 0)],
    mn.PREFETCH_JOBS.name: [({}, 0)],
    mn.PERIODIC_THREADS_UNHEALTHY.name: [({}, 0)],
    # Histograms: one observation per request / batch.
    mn.STORE_THROUGHPUT_GBPS.name + "_count": [({}, 1)],
    mn.RETRIEVE_THROUGHPUT_GBPS.name + "_count": [({}, 2)],
    mn.L2_STORE_THROUGHPUT_GBPS.name + "_count": [({}, 1)],
    mn.L2_LOAD_THROUGHPUT_GBPS.name + "_count": [({}, 1)],
}
# Families the sequence does not pin down (time, configuration, HTTP traffic of the test itself).
NOT_PINNED = {
    mn.L1_CAPACITY_BYTES.name, mn.L1_USAGE_RATIO.name, mn.L2_CAPACITY_BYTES.name, mn.L1_EVICTION_CYCLES.name,
    mn.ACTIVE_SESSIONS.name, mn.REGISTERED_INSTANCES.name, mn.HTTP_REQUESTS.name, mn.HTTP_REQUEST_DURATION_SECONDS.name,
    mn.STORE_THROUGHPUT_GBPS.name, mn.RETRIEVE_THROUGHPUT_GBPS.name, mn.L2_STORE_THROUGHPUT_GBPS.name,
    mn.L2_LOAD_THROUGHPUT_GBPS.name,
    # A fleet member's own (this server has no --coordinator-url); tests/unit/frontends/test_fleet_wiring.py
    # and tests/e2e/test_fleet_servers_e2e.py check them against a real coordinator.
    mn.COORDINATOR_REGISTERED.name, mn.COORDINATOR_BUFFERED_EVENTS.name, mn.COORDINATOR_DROPPED_EVENTS.name,
    mn.COORDINATOR_SENT_BATCHES.name, mn.COORDINATOR_FAILED_CALLS.name, mn.COORDINATOR_UNREPORTED_EVENTS.name,
}


def exported(family: str) -> str:
    spec = mn.FAMILIES_BY_NAME.get(family.removesuffix("_count"))
    assert spec is not None, family
    suffix = "_total" if spec.kind == mn.COUNTER else ("_count" if family.endswith("_count") else "")
    return spec.exported_name + suffix


@pytest.fixture(scope="module")
def counted(request: pytest.FixtureRequest) -> Samples:
    from serverproc import launch

    server = launch(["--chunk-size", str(CHUNK), "--l2-adapter", '{"type": "mock"}'], shm_prefix="e2e_counters")
    try:
        drive(server)
        poll_until(lambda: status(server.url)["storage_manager"]["store_controller"]["in_flight_batches"] == 0, what="idle", timeout=20.0, interval=0.05)
        return scrape(server.url)
    finally:
        assert server.stop() == 0


def test_every_family_is_pinned_by_the_sequence_or_named_as_not() -> None:
    assert {f.name for f in mn.ALL_FAMILIES} == {k.removesuffix("_count") for k in EXPECTED} | NOT_PINNED


@pytest.mark.timeout(120)
def test_every_counter_agrees_with_the_sequence(counted: Samples) -> None:
    wrong = []
    for family, series in EXPECTED.items():
        for labels, value in series:
            got = total(counted, exported(family), **labels)
            if got != value:
                wrong.append(f"{exported(family)}{labels}: {got} (expected {value})")
    assert wrong == []


@pytest.mark.timeout(120)
def test_lmcache_050_names_carry_the_same_numbers(counted: Samples) -> None:
    theirs = {
        "lmcache_mp_lookup_requested_tokens_total": 3 * N * CHUNK,
        "lmcache_mp_lookup_hit_tokens_total": 2 * N * CHUNK,  # L1 + L2, no tier label
        "lmcache_mp_num_chunks_loaded_total": 2 * N,
        "lmcache_mp_l1_write_chunks_total": 2 * N,
        "lmcache_mp_l2_store_submitted_requests_total": 1,
        "lmcache_mp_l2_store_submitted_objects_chunks_total": N,
        "lmcache_mp_l2_store_completed_requests_total": 1,
        "lmcache_mp_l2_store_completed_objects_chunks_total": N,
        "lmcache_mp_l2_prefetch_lookup_requests_total": 2,
        "lmcache_mp_l2_prefetch_lookup_objects_chunks_total": 2 * N,
        "lmcache_mp_l2_prefetch_hit_chunks_total": N,
        "lmcache_mp_l2_prefetch_load_submitted_requests_total": 1,
        "lmcache_mp_l2_prefetch_load_submitted_objects_chunks_total": N,
        "lmcache_mp_l2_load_completed_requests_total": 1,
        "lmcache_mp_l2_prefetch_load_completed_chunks_total": N,
        "lmcache_mp_l1_memory_usage_bytes": 0,
        "lmcache_mp_active_prefetch_jobs": 0,
        "lmcache_mp_l0_l1_store_throughput_GB_per_second_count": 1,
        "lmcache_mp_l0_l1_load_throughput_GB_per_second_count": 2,
        "lmcache_mp_l2_store_throughput_GB_per_second_count": 1,
        "lmcache_mp_l2_load_throughput_GB_per_second_count": 1,
    }
    wrong = [f"{n}: {total(counted, n)} (expected {v})" for n, v in theirs.items() if total(counted, n) != v]
    assert wrong == []
    # Their labels: tenant labels on lookups (cache_salt even when empty), l2_name for adapters.
    assert ("lmcache_mp_lookup_hit_tokens_total", frozenset(TENANT.items())) in counted
    assert ("lmcache_mp_l2_store_completed_requests_total", frozenset({("l2_name", "mock")})) in counted
    assert ("lmcache_mp_l1_write_chunks_total", frozenset()) in counted  # empty salt: no label
    # Every 0.5.0 family whose data is non-zero here is exported (like 0.5.0, a counter that
    # never moved has no series yet).
    names = {n for n, _ in counted}
    suffix = {"counter": "_total", "gauge": "", "histogram": "_count"}
    moved = [f for f in LMCACHE_050_FAMILIES if total(counted, exported(f.source + ("_count" if f.kind == "histogram" else "")))]
    assert len(moved) >= 20
    assert [f.name for f in moved if f.name + suffix[f.kind] not in names] == []
    # And the 0.5.0 read counter is ours.
    assert total(counted, "lmcache_mp_l1_read_chunks_total") == total(counted, "lmcache_mp_l1_chunks_read_total") == 3 * N
