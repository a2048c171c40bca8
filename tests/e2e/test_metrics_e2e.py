"""/metrics end to end: a real server subprocess, and a counted store/read/evict run whose counters
must agree with what the test did; a bench run over the ZeroMQ data path whose data-path counters
agree with the bench's own counts."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.results import OpResult
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.server import AdminServer
from lmcache_frontends.cli.bench import FILL_TOKEN, model_name_for
from lmcache_frontends.cli.main import main as lmcache_main
from lmcache_frontends.client import LMCacheClient, make_key
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def fetch(url: str, *, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - 127.0.0.1 only
        return response.status, response.headers, response.read()


def parse(body: bytes) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    """Sum of a family over all its label sets (those carrying every `match` label)."""
    return sum(
        v for (n, labels), v in samples.items()
        if n == name and all((k, want) in labels for k, want in match.items())
    )


ZMQ_RE = re.compile(r"zmq (tcp://\S+)")


def test_real_server_exposes_parsable_metrics_and_thread_registry(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--l2-adapter", '{"type": "mock"}', "--metrics-labels", "off")
    status, headers, body = fetch(server.url + "/metrics", headers={"X-Request-ID": "e2e-1"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["X-Request-ID"] == "e2e-1"
    samples = parse(body)
    assert samples[("lmcache_mp_l1_capacity_bytes", ())] == 0.03125 * (1 << 30)
    assert ("lmcache_mp_l2_usage_bytes", (("adapter", "mock"), ("l2_name", "mock"))) in samples
    assert samples[("lmcache_mp_periodic_threads_unhealthy", ())] == 0
    _, _, raw = fetch(server.url + "/periodic-threads")
    assert "l1-eviction" in [t["name"] for t in json.loads(raw)["threads"]]
    _, _, raw = fetch(server.url + "/periodic-threads-health")
    assert json.loads(raw)["healthy"] is True
    assert fetch(server.url + "/metrics/reset", method="POST")[2] == b"ok"
    after = parse(fetch(server.url + "/metrics")[2])
    assert total(after, "lmcache_mp_http_requests_total") == 1  # only the reset itself
    assert server.stop() == 0


def test_counters_agree_with_a_counted_store_read_evict_run() -> None:
    object_bytes = 64 << 10
    stack = in_memory_stack(
        ServerConfig(l2_adapters=('{"type": "mock"}',), eviction_interval_seconds=60.0), pool_bytes=2 << 20
    )
    admin = AdminServer(create_app(stack), "127.0.0.1", 0)
    admin.start()
    try:
        l1 = stack.storage.l1
        written = hits = misses = 0
        all_keys: list[ObjectKey] = []
        for batch in range(20):  # 160 objects of 64 KiB through a 2 MiB L1: evictions must happen
            keys = [ObjectKey(f"{batch}-{i}".encode(), "bench-model", 0) for i in range(8)]
            reserved = l1.reserve_write(keys, [object_bytes] * len(keys))
            ok = [k for k, (result, _) in zip(keys, reserved, strict=True) if result is OpResult.SUCCESS]
            l1.finish_write(ok)
            written += len(ok)
            all_keys.extend(ok)
            assert stack.storage.store.drain(10)
            # Read back the previous batch: some of it may have been evicted already.
            probe = all_keys[-16:-8]
            results = l1.reserve_read(probe)
            got = [k for k, (r, _) in zip(probe, results, strict=True) if r is OpResult.SUCCESS]
            hits += len(got)
            misses += len(probe) - len(got)
            l1.finish_read(got)
        evicted = written - l1.object_count()  # nothing was deleted: every missing object was evicted

        samples = parse(fetch(admin.url + "/metrics")[2])
        labels = (("cache_salt", ""), ("model_name", "bench-model"))
        assert written > 100 and evicted > 0 and hits > 0
        assert samples[("lmcache_mp_l1_chunks_written_total", labels)] == written
        assert samples[("lmcache_mp_l1_chunks_evicted_total", labels)] == evicted
        # Every object is read once by the write-back to the one mock adapter, plus our hits.
        stored = samples[("lmcache_mp_l2_stores_completed_total", (("adapter", "mock"),))]
        assert stored == written
        assert samples[("lmcache_mp_l1_chunks_read_total", labels)] == hits + stored
        assert samples[("lmcache_mp_l1_objects", ())] == l1.object_count()
        assert samples[("lmcache_mp_l2_stores_in_flight", ())] == 0
    finally:
        admin.stop()
        stack.close()


@pytest.mark.timeout(60)
def test_data_path_counters_agree_with_a_bench_run_and_an_l2_replay(
    start_server: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    # 2 MiB chunks (256 tokens x 4 layers x 2 x 512 x fp16) through a 32 MiB L1: 12 sequences of
    # 4 chunks overflow it three times, so the early sequences are only in the mock L2 afterwards.
    server = start_server("--l2-adapter", '{"type": "mock"}')
    rpc = next(m.group(1) for line in server.stderr_lines if (m := ZMQ_RE.search(line)))
    sequences, num_tokens, layers, hidden = 12, 1024, 4, 8 * 64
    spec = f"(2,256,16,8,64):float16:{layers}"
    model = model_name_for(spec)
    rc = lmcache_main(["bench", "server", "--rpc-url", rpc, "--url", server.url, "--num-tokens", str(num_tokens),
                       "--kvcache-shape-spec", spec, "--end", str(sequences),
                       "--format", "json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0, report
    assert report["checksum_pass"] == sequences and report["reused"] == 0 and report["errors"] == 0

    with LMCacheClient(rpc, timeout=10.0) as client:
        chunk = client.get_chunk_size()
        nchunks = (1 + num_tokens) // chunk
        seq_tokens = nchunks * chunk
        lat = report["latency_ms"]
        # Every sequence: a cold lookup (miss, not retrieved: retrieves == sequences), a store of all
        # its chunks, a warm lookup hitting all of them (its checksum passed) and one retrieve.
        assert lat["lookup"]["count"] == 2 * sequences
        assert lat["store"]["count"] == lat["retrieve"]["count"] == sequences
        bench = parse(fetch(server.url + "/metrics")[2])
        assert total(bench, "lmcache_mp_lookup_requests_total", model_name=model) == 2 * sequences
        assert total(bench, "lmcache_mp_lookup_tokens_total") == 2 * sequences * seq_tokens
        assert total(bench, "lmcache_mp_lookup_hit_tokens_total") == sequences * seq_tokens
        assert total(bench, "lmcache_mp_store_requests_total") == sequences
        assert total(bench, "lmcache_mp_stored_tokens_total", model_name=model) == sequences * seq_tokens
        assert total(bench, "lmcache_mp_retrieve_requests_total") == sequences
        assert total(bench, "lmcache_mp_retrieved_tokens_total") == sequences * seq_tokens
        assert total(bench, "lmcache_mp_store_throughput_gbps_count") == sequences
        assert total(bench, "lmcache_mp_retrieve_throughput_gbps_count") == sequences
        assert total(bench, "lmcache_mp_store_throughput_gbps_sum") > 0

        # Replay every sequence: the evicted ones come back through the L2 prefetch.
        client.register_engine_driven(7, model_name=model, num_layers=layers, hidden_dim_size=hidden)
        try:
            observed = 0
            for n in range(sequences):
                tokens = [n] + [FILL_TOKEN] * num_tokens
                key = make_key(model, tokens, f"replay-{n}", end=seq_tokens)
                client.lookup(key)
                hits = client.wait_for_lookup(key.request_id, timeout=10.0)
                observed += hits
                client.free_lookup_locks(key)
                client.end_session(key.request_id)
        finally:
            client.unregister_engine_driven(7)
    after = parse(fetch(server.url + "/metrics")[2])
    hit = "lmcache_mp_lookup_tier_hit_tokens_total"
    assert total(after, "lmcache_mp_lookup_requests_total") == 3 * sequences
    assert total(after, hit) - total(bench, hit) == observed * chunk
    assert total(after, hit, tier="l2") - total(bench, hit, tier="l2") > 0  # sequence 0 was evicted
    assert total(after, hit, tier="l1") - total(bench, hit, tier="l1") > 0  # the last one was not

    # Evictions: the L1 counter and the eviction controller's own total agree (read between two
    # equal /status snapshots, as the eviction thread may run meanwhile).
    def steady() -> tuple[float, dict[str, Any]] | None:
        before = json.loads(fetch(server.url + "/status")[2])["storage_manager"]["eviction_controller"]
        evicted = total(parse(fetch(server.url + "/metrics")[2]), "lmcache_mp_l1_chunks_evicted_total")
        again = json.loads(fetch(server.url + "/status")[2])["storage_manager"]["eviction_controller"]
        return (evicted, again) if before["evicted_objects_total"] == again["evicted_objects_total"] else None

    evicted, again = poll_until(steady, timeout=10.0, what="two equal eviction totals around a /metrics read")
    assert evicted == again["evicted_objects_total"] > 0
    assert server.stop() == 0
