"""Every background loop of the storage stack runs in the periodic-thread registry with a level,
and a dead one turns /periodic-threads-health and /status unhealthy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

LOOPS = ("l1-eviction", "l2-store", "l2-prefetch", "l2-eviction", "quota-state")


class _Killed(BaseException):
    """Escapes a periodic thread's `except Exception`: the thread dies."""



@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Services]:
    config = ServerConfig(
        l2_adapters=('{"type": "mock", "eviction": {"policy": "LRU"}}',),
        state_dir=str(tmp_path / "state"),
        eviction_interval_seconds=0.05,
    )
    services = in_memory_stack(config)
    yield services
    services.close()


def test_every_loop_is_registered_with_a_level_that_health_judges(stack: Services) -> None:
    body = create_app(stack).test_client().get("/periodic-threads").get_json()
    levels = {t["name"]: t["level"] for t in body["threads"]}
    assert set(LOOPS) <= set(levels)
    assert levels["l1-eviction"] == "critical"
    assert all(levels[name] in ("critical", "high") for name in LOOPS)
    assert all(t["is_running"] and t["is_alive"] for t in body["threads"] if t["name"] in LOOPS)


def test_without_l2_or_state_dir_only_l1_eviction_runs() -> None:
    services = in_memory_stack(ServerConfig())
    try:
        names = [t["name"] for t in create_app(services).test_client().get("/periodic-threads").get_json()["threads"]]
        assert names == ["l1-eviction"]
    finally:
        services.close()


@pytest.mark.parametrize("name", LOOPS)
def test_a_dead_loop_turns_health_and_status_unhealthy(stack: Services, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = create_app(stack).test_client()
    assert client.get("/periodic-threads-health").get_json()["healthy"] is True
    assert client.get("/status").get_json()["is_healthy"] is True
    thread = stack.periodic_threads.get(name)

    def die() -> None:
        raise _Killed(f"simulated crash of {name}")

    monkeypatch.setattr(thread, "_target", die)
    thread.wake()
    assert poll_until(lambda: not thread.is_alive(), timeout=10.0)
    health = client.get("/periodic-threads-health").get_json()
    assert health["healthy"] is False
    assert [(t["name"], t["reason"]) for t in health["unhealthy_threads"]] == [(name, "dead")]
    status = client.get("/status").get_json()
    assert status["is_healthy"] is False
    assert status["periodic_threads"]["unhealthy_threads"][0]["name"] == name
    assert f"simulated crash of {name}" in client.get(f"/periodic-threads/{name}").get_json()["died_with"]


def test_the_quota_loop_rewrites_a_deleted_state_file_and_reports_an_unwritable_one(stack: Services, tmp_path: Path) -> None:
    quotas = stack.storage.quotas
    quotas.set("alice", 1 << 30)
    state = tmp_path / "state" / "quotas.json"
    assert state.exists()
    thread = stack.periodic_threads.get("quota-state")
    state.unlink()
    assert thread.run_once() is True
    assert json.loads(state.read_text())["quotas"] == {"alice": 1 << 30}
    assert "rewrote" in str(thread.last_summary)

    # The state directory turns into a file: nothing can be written there any more.
    for p in (tmp_path / "state").iterdir():
        p.unlink()
    (tmp_path / "state").rmdir()
    (tmp_path / "state").write_text("not a directory")
    assert thread.run_once() is False
    client = create_app(stack).test_client()
    status = client.get("/status").get_json()
    assert status["is_healthy"] is False
    assert status["storage_manager"]["quotas"]["state_error"]
    assert client.get("/periodic-threads-health").get_json()["unhealthy"] == ["quota-state"]


def test_a_frontend_runs_its_loop_through_the_registry(stack: Services) -> None:
    runs: list[int] = []
    thread = stack.run_periodic("data-path-reaper", lambda: runs.append(1) or f"{len(runs)} runs", interval_seconds=60)
    thread.wake()
    assert poll_until(lambda: len(runs) >= 1, timeout=10.0)
    listed = create_app(stack).test_client().get("/periodic-threads/data-path-reaper").get_json()
    assert listed["level"] == "high" and listed["is_alive"] and listed["total_runs"] >= 1
    with pytest.raises(Exception, match="already registered"):
        stack.run_periodic("data-path-reaper", lambda: None, interval_seconds=1)
    stack.close()
    assert not thread.is_alive() and not thread.running
