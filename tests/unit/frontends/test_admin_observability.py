"""Observability routes: /metrics, /metrics/reset, /loglevel, /threads, /periodic-threads*, request ids."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from lmcache_core.clock import ManualClock
from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import builtin_plugins, in_memory_stack


def scrape(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(i: int, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(8, "big"), "model-a", 0, cache_salt=salt)


# ---------------------------------------------------------------------------- /metrics


def test_metrics_counts_l1_chunks_and_reports_usage(services: Services, client: FlaskClient) -> None:
    l1 = services.storage.l1
    keys = [key(i, "t1") for i in range(6)]
    l1.reserve_write(keys, [4096] * 6)
    l1.finish_write(keys)
    assert services.storage.store.drain(10)
    l1.reserve_read(keys[:4])
    l1.finish_read(keys[:4])
    got = scrape(client)
    assert got[("lmcache_mp_l1_chunks_written_total", (("cache_salt", "t1"), ("model_name", "model-a")))] == 6
    # 4 reads of ours plus one write-back read of each object (one mock L2 adapter).
    assert got[("lmcache_mp_l1_chunks_read_total", (("cache_salt", "t1"), ("model_name", "model-a")))] == 4 + 6
    assert got[("lmcache_mp_l2_stores_completed_total", (("adapter", "mock"),))] == 6
    assert got[("lmcache_mp_l1_objects", ())] == 6
    assert got[("lmcache_mp_l1_usage_bytes", ())] >= 6 * 4096
    assert 0 < got[("lmcache_mp_l1_usage_ratio", ())] < 1
    assert ("lmcache_mp_l2_usage_bytes", (("adapter", "mock"), ("l2_name", "mock"))) in got


def test_metrics_labels_off_drops_tenant_labels() -> None:
    stack = in_memory_stack(ServerConfig(metrics_labels="off"))
    try:
        client = create_app(stack).test_client()
        l1 = stack.storage.l1
        keys = [key(1, "a"), key(2, "b")]
        l1.reserve_write(keys, [64, 64])
        l1.finish_write(keys)
        got = scrape(client)
        assert got[("lmcache_mp_l1_chunks_written_total", ())] == 2
        assert "cache_salt" not in client.get("/metrics").get_data(as_text=True)
    finally:
        stack.close()


def test_http_requests_are_counted_by_route_template_and_status(client: FlaskClient) -> None:
    client.get("/periodic-threads/l1-eviction")
    client.get("/periodic-threads/no-such-thread")
    client.get("/no/such/route")
    got = scrape(client)
    route = "/periodic-threads/<thread_name>"
    assert got[("lmcache_mp_http_requests_total", (("method", "GET"), ("route", route), ("status", "200")))] == 1
    assert got[("lmcache_mp_http_requests_total", (("method", "GET"), ("route", route), ("status", "404")))] == 1
    assert got[("lmcache_mp_http_requests_total", (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] == 1


def test_metrics_reset_zeroes_counters_and_is_audited(
    services: Services, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    l1 = services.storage.l1
    l1.reserve_write([key(1)], [64])
    l1.finish_write([key(1)])
    assert scrape(client)[("lmcache_mp_l1_chunks_written_total", (("cache_salt", ""), ("model_name", "model-a")))] == 1
    with caplog.at_level(logging.INFO, logger="lmcache.audit"):
        response = client.post("/metrics/reset")
    assert response.status_code == 200 and response.get_data(as_text=True) == "ok"
    assert any("action=metrics-reset" in r.getMessage() for r in caplog.records)
    got = scrape(client)
    assert ("lmcache_mp_l1_chunks_written_total", (("cache_salt", ""), ("model_name", "model-a"))) not in got
    assert got[("lmcache_mp_l1_objects", ())] == 1  # gauges describe state: not reset


def test_routes_answer_503_while_the_engine_starts() -> None:
    plugins = builtin_plugins()
    starting = AdminContext(ServerConfig(), plugins, plugins.frontend_registry())
    client = create_app(starting).test_client()
    for path in ("/metrics", "/periodic-threads", "/periodic-threads/l1-eviction", "/periodic-threads-health"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.get_json()["error"] == "engine not initialized"
    assert client.get("/threads").status_code == 200
    assert client.get("/loglevel").status_code == 200


# ---------------------------------------------------------------------------- request ids


def test_request_id_is_echoed_or_generated_and_logged(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lmcache.access"):
        echoed = client.get("/periodic-threads-health", headers={"X-Request-ID": "abc-123"})
        fresh = client.get("/periodic-threads-health")
        hostile = client.get("/periodic-threads-health", headers={"X-Request-ID": "bad id\twith spaces"})
    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert hostile.headers["X-Request-ID"] not in ("bad id\twith spaces", fresh.headers["X-Request-ID"])
    lines = [r.getMessage() for r in caplog.records if r.name == "lmcache.access"]
    assert any("id=abc-123" in line and "route=/periodic-threads-health" in line and "status=200" in line for line in lines)
    assert len(lines) == 3


def test_errors_also_carry_a_request_id(client: FlaskClient) -> None:
    response = client.get("/periodic-threads/nope", headers={"X-Request-ID": "r1"})
    assert response.status_code == 404
    assert response.headers["X-Request-ID"] == "r1"


# ---------------------------------------------------------------------------- /loglevel


def test_loglevel_lists_reads_and_sets(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("lmcache.test_observability")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        listing = client.get("/loglevel").get_data(as_text=True)
        assert listing.startswith("=== Loggers and Levels ===")
        assert "lmcache.test_observability: NOTSET" in listing
        with caplog.at_level(logging.INFO, logger="lmcache.audit"):
            response = client.get("/loglevel?logger_name=lmcache.test_observability&level=debug")
        assert response.status_code == 200
        assert "DEBUG" in response.get_data(as_text=True)
        assert logger.level == logging.DEBUG and handler.level == logging.DEBUG
        assert any("action=set-loglevel" in r.getMessage() for r in caplog.records)
        read = client.get("/loglevel?logger_name=lmcache.test_observability").get_data(as_text=True)
        assert read.startswith("lmcache.test_observability: DEBUG")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def test_loglevel_rejects_an_invalid_level_with_json_400(client: FlaskClient) -> None:
    logger = logging.getLogger("lmcache.test_observability_bad")
    response = client.get("/loglevel?logger_name=lmcache.test_observability_bad&level=LOUD")
    assert response.status_code == 400
    assert "Invalid log level: LOUD" in response.get_json()["error"]
    assert logger.level == logging.NOTSET


def test_loglevel_level_without_logger_is_null(client: FlaskClient) -> None:
    response = client.get("/loglevel?level=INFO")
    assert response.status_code == 200 and response.get_json() is None


# ---------------------------------------------------------------------------- /threads


def test_threads_dump_filters_by_name_and_id(client: FlaskClient) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="obs-test-waiter", daemon=True)
    worker.start()
    try:
        body = client.get("/threads?name=OBS-TEST").get_data(as_text=True)
        assert "obs-test-waiter" in body and "Stack trace:" in body and "Total threads: 1" in body
        by_id = client.get(f"/threads?thread_id={worker.ident}").get_data(as_text=True)
        assert "obs-test-waiter" in by_id and "Total threads: 1" in by_id
        everything = client.get("/threads").get_data(as_text=True)
        assert "periodic-l1-eviction" in everything
        assert client.get("/threads?thread_id=abc").status_code == 400
    finally:
        stop.set()
        worker.join(5)


# ---------------------------------------------------------------------------- /periodic-threads


def test_periodic_threads_snapshot_and_filters(client: FlaskClient) -> None:
    body = client.get("/periodic-threads").get_json()
    names = [t["name"] for t in body["threads"]]
    assert "l1-eviction" in names
    assert body["summary"]["by_level"]["critical"]["total"] >= 1
    assert set(body["summary"]["by_level"]) == {"critical", "high", "medium", "low"}
    assert client.get("/periodic-threads?level=low").get_json()["threads"] == []
    critical = client.get("/periodic-threads?level=critical&running_only=true&active_only=1").get_json()
    assert [t["name"] for t in critical["threads"]] == ["l1-eviction"]
    assert client.get("/periodic-threads?level=urgent").status_code == 400
    assert client.get("/periodic-threads?running_only=maybe").status_code == 400
    one = client.get("/periodic-threads/l1-eviction").get_json()
    assert one["level"] == "critical" and one["is_running"] is True
    missing = client.get("/periodic-threads/storage-flush")
    assert missing.status_code == 404
    assert missing.get_json() == {"error": "Thread not found: storage-flush"}


@pytest.fixture
def fast_stack() -> Iterator[Services]:
    stack = in_memory_stack(ServerConfig(eviction_interval_seconds=0.02))
    yield stack
    stack.close()


class _Killed(BaseException):
    """Escapes the periodic thread's `except Exception`: the thread dies."""



def test_a_killed_controller_thread_turns_health_and_status_unhealthy(
    fast_stack: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = create_app(fast_stack).test_client()
    assert client.get("/periodic-threads-health").get_json()["healthy"] is True
    assert client.get("/status").get_json()["is_healthy"] is True

    def die() -> list[ObjectKey]:
        raise _Killed("simulated crash of the eviction controller")

    monkeypatch.setattr(fast_stack.storage.policy, "mandatory_victims", die)
    assert poll_until(lambda: not client.get("/periodic-threads-health").get_json()["healthy"], timeout=10.0)
    health = client.get("/periodic-threads-health")
    assert health.status_code == 200
    body = health.get_json()
    assert body["unhealthy_count"] == 1
    assert body["unhealthy_threads"][0]["name"] == "l1-eviction"
    assert body["unhealthy_threads"][0]["reason"] == "dead"
    status = client.get("/status").get_json()
    assert status["is_healthy"] is False
    assert status["periodic_threads"]["unhealthy_count"] == 1
    metrics = scrape(client)
    assert metrics[("lmcache_mp_periodic_threads_unhealthy", ())] == 1


def test_a_stalled_thread_is_unhealthy_after_three_intervals() -> None:
    clock = ManualClock()
    stack = in_memory_stack(ServerConfig(eviction_interval_seconds=0.02), clock=clock)
    release = threading.Event()
    entered = threading.Event()
    try:
        client = create_app(stack).test_client()
        policy = stack.storage.policy
        original = policy.mandatory_victims

        def hang() -> list[ObjectKey]:
            entered.set()
            release.wait(10)
            return original()

        policy.mandatory_victims = hang  # type: ignore[method-assign]
        assert entered.wait(10)
        clock.advance(0.02 * 2)
        assert client.get("/periodic-threads-health").get_json()["healthy"] is True
        clock.advance(0.02 * 2)  # now 4 intervals without a finished run
        body = client.get("/periodic-threads-health").get_json()
        assert body["healthy"] is False and body["unhealthy_threads"][0]["reason"] == "stalled"
        assert client.get("/status").get_json()["is_healthy"] is False
    finally:
        release.set()
        stack.close()


def test_modules_can_register_their_own_periodic_threads(services: Services, client: FlaskClient) -> None:
    from lmcache_core.periodic import PeriodicThread

    thread = PeriodicThread("session-reaper", lambda: {"reaped": 0}, interval_seconds=60, level="high")
    services.register_periodic_thread(thread)
    thread.run_once()
    body = client.get("/periodic-threads/session-reaper").get_json()
    assert body["level"] == "high" and body["total_runs"] == 1 and body["last_summary"] == {"reaped": 0}
