"""/metrics end to end: a real server subprocess, and a counted store/read/evict run whose counters
must agree with what the test did."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from email.message import Message

from prometheus_client.parser import text_string_to_metric_families
from serverproc import ServerProcess

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.results import OpResult
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.server import AdminServer
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


def total(samples: Samples, name: str) -> float:
    """Sum of a family over all its label sets."""
    return sum(v for (n, _), v in samples.items() if n == name)


def test_real_server_exposes_parsable_metrics_and_thread_registry(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--l2-adapter", '{"type": "mock"}', "--metrics-labels", "off")
    status, headers, body = fetch(server.url + "/metrics", headers={"X-Request-ID": "e2e-1"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["X-Request-ID"] == "e2e-1"
    samples = parse(body)
    assert samples[("lmcache_mp_l1_capacity_bytes", ())] == 0.03125 * (1 << 30)
    assert ("lmcache_mp_l2_usage_bytes", (("adapter", "mock"),)) in samples
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
        l1 = stack.storage.l1  # type: ignore[union-attr]
        written = hits = misses = 0
        all_keys: list[ObjectKey] = []
        for batch in range(20):  # 160 objects of 64 KiB through a 2 MiB L1: evictions must happen
            keys = [ObjectKey(f"{batch}-{i}".encode(), "bench-model", 0) for i in range(8)]
            reserved = l1.reserve_write(keys, [object_bytes] * len(keys))
            ok = [k for k, (result, _) in zip(keys, reserved, strict=True) if result is OpResult.SUCCESS]
            l1.finish_write(ok)
            written += len(ok)
            all_keys.extend(ok)
            assert stack.storage.store.drain(10)  # type: ignore[union-attr]
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
