"""GET /readyz: each deep check passes on a healthy stack and names itself when it fails."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from flask.testing import FlaskClient

from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.server import loop_readiness


@pytest.fixture
def stack() -> Iterator[Services]:
    services = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}',), readyz_timeout_seconds=0.2))
    yield services
    services.close()


@pytest.fixture
def rclient(stack: Services) -> FlaskClient:
    return create_app(stack).test_client()


def test_a_healthy_stack_is_ready(stack: Services, rclient: FlaskClient) -> None:
    used = stack.memory_pool.used_bytes
    response = rclient.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200 and body["ready"] is True
    assert set(body["checks"]) == {"engine", "l1", "l2:0:mock", "controllers"}
    assert all(check["ok"] for check in body["checks"].values())
    assert stack.memory_pool.used_bytes == used  # the probe object was freed


def test_a_starting_server_is_not_ready(stack: Services) -> None:
    from lmcache_frontends.bootstrap import AdminContext

    starting = AdminContext(stack.config, stack.plugins, stack.frontends)
    response = create_app(starting).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["failing"] == ["engine"]


def test_a_hung_adapter_fails_its_check_without_hanging_the_probe(
    stack: Services, rclient: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = stack.storage.l2_adapters[0].adapter
    release = threading.Event()

    def hang(keys: Any) -> Future[list[bool]]:
        release.wait(10.0)
        done: Future[list[bool]] = Future()
        done.set_result([])
        return done

    monkeypatch.setattr(adapter, "submit_lookup_and_lock", hang)
    try:
        for _ in range(2):  # the second probe must not wait on (or stack up behind) the first
            started = time.monotonic()
            response = rclient.get("/readyz")
            # The bound is the behaviour under test: the check gives up after its 0.2 s timeout,
            # while the hung call (or a probe queued behind it) would take 10 s; 5 s is a generous
            # margin for a loaded machine that still tells the two apart.
            assert time.monotonic() - started < 5.0
            body = response.get_json()
            assert response.status_code == 503 and body["failing"] == ["l2:0:mock"]
            assert "TimeoutError" in body["checks"]["l2:0:mock"]["error"] and "l2:0:mock" in body["error"]
    finally:
        release.set()
    poll_until(lambda: rclient.get("/readyz").status_code == 200, interval=0.01,
               what="/readyz to recover once the adapter answers again")


def test_an_unhealthy_adapter_and_a_full_l1_are_named(
    stack: Services, rclient: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = stack.storage.l2_adapters[0].adapter
    monkeypatch.setattr(adapter, "report_status", lambda: {"is_healthy": False})
    monkeypatch.setattr(stack.memory_pool, "allocate", lambda nbytes: None)
    body = rclient.get("/readyz").get_json()
    assert body["ready"] is False and body["failing"] == ["l1", "l2:0:mock"]
    assert "cannot allocate" in body["checks"]["l1"]["error"]


def test_a_dead_controller_thread_is_named(stack: Services, rclient: FlaskClient) -> None:
    stack.storage.store.stop(drain_timeout=1.0)
    body = rclient.get("/readyz").get_json()
    assert body["failing"] == ["controllers"]
    assert "store_controller: thread dead" in body["checks"]["controllers"]["error"]


class _FakeDataPath:
    def __init__(self, healthy: bool, heartbeat: float) -> None:
        self.healthy = healthy
        self.loop_heartbeat = heartbeat

    def report_status(self) -> dict[str, Any]:
        return {"is_healthy": self.healthy}


def test_a_stuck_zeromq_loop_is_named(stack: Services, rclient: FlaskClient) -> None:
    # The data path registers its loop check into the readiness registry when it starts.
    fake = _FakeDataPath(True, time.monotonic())
    stack.readiness.register("zmq", loop_readiness(fake))
    assert rclient.get("/readyz").status_code == 200
    fake.loop_heartbeat = time.monotonic() - 60.0
    body = rclient.get("/readyz").get_json()
    assert body["failing"] == ["zmq"] and "socket loop last turned" in body["checks"]["zmq"]["error"]
    fake.healthy, fake.loop_heartbeat = False, time.monotonic()
    assert rclient.get("/readyz").get_json()["failing"] == ["zmq"]
    stack.readiness.unregister("zmq")  # a stopped data path takes its check away
    assert rclient.get("/readyz").status_code == 200
