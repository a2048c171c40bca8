"""PeriodicThread and its registry: runs, failures, activity, death, restart, health."""

from __future__ import annotations

import pytest

from lmcache_core.clock import ManualClock
from lmcache_core.errors import ConfigError, ConflictError, NotFoundError
from lmcache_core.periodic import PeriodicThread, PeriodicThreadRegistry, Summary
from lmcache_core.testing import poll_until


class Die(BaseException):
    """Escapes `except Exception` and ends the thread."""


class Target:
    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.calls = 0

    def __call__(self) -> Summary:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return f"run {self.calls}"


def test_run_once_records_success_and_failure() -> None:
    clock = ManualClock()
    target = Target()
    thread = PeriodicThread("job", target, interval_seconds=5, level="high", clock=clock)
    assert thread.success_rate == 100.0
    assert thread.run_once() is True
    target.error = ValueError("bad input")
    assert thread.run_once() is False
    assert thread.run_once() is False
    info = thread.to_dict()
    assert (
        info["total_runs"] == 3 and info["failed_runs"] == 2 and info["consecutive_failures"] == 2
    )
    assert info["success_rate"] == pytest.approx(100 / 3)
    assert info["last_summary"] == "run 1"
    assert info["last_error"] == "ValueError: bad input"
    assert info["last_run_at"] == clock.time()
    target.error = None
    assert thread.run_once()
    assert thread.consecutive_failures == 0 and thread.last_summary == "run 4"


def test_dict_summaries_are_copied() -> None:
    summary = {"evicted": 3}
    thread = PeriodicThread("job", lambda: summary, interval_seconds=1)
    thread.run_once()
    summary["evicted"] = 99
    assert thread.to_dict()["last_summary"] == {"evicted": 3}


def test_activity_follows_the_clock() -> None:
    clock = ManualClock()
    thread = PeriodicThread("job", Target(), interval_seconds=10, clock=clock)
    assert thread.active is False  # never started
    thread.start()
    try:
        assert thread.active is True
        clock.advance(30)
        assert thread.active is True
        clock.advance(0.1)
        assert thread.active is False
        assert thread.unhealthy_reason() == "stalled"
        thread.run_once()
        assert thread.active is True and thread.unhealthy_reason() is None
        assert thread.to_dict()["last_run_ago"] == 0.0
        clock.advance(4)
        assert thread.to_dict()["last_run_ago"] == 4.0
    finally:
        assert thread.stop()
    assert thread.active is False


def test_thread_runs_every_interval_and_survives_exceptions() -> None:
    target = Target()
    target.error = RuntimeError("flaky")
    thread = PeriodicThread("job", target, interval_seconds=0.01)
    thread.start()
    try:
        assert poll_until(lambda: thread.failed_runs >= 3)
        assert thread.is_alive()
        target.error = None
        assert poll_until(
            lambda: thread.consecutive_failures == 0 and thread.total_runs > thread.failed_runs
        )
    finally:
        assert thread.stop()
    assert not thread.is_alive() and not thread.running


def test_a_dead_thread_is_flagged_and_restarted() -> None:
    target = Target()
    target.error = Die("boom")
    thread = PeriodicThread("job", target, interval_seconds=0.01, level="critical")
    registry = PeriodicThreadRegistry()
    registry.register(thread)
    thread.start()
    try:
        assert poll_until(lambda: not thread.is_alive())
        assert thread.running is True
        health = registry.health()
        assert health["healthy"] is False and health["unhealthy"] == ["job"]
        assert health["unhealthy_threads"][0]["reason"] == "dead"
        assert "Die: boom" in thread.to_dict()["died_with"]
        target.error = None
        assert registry.ensure_all_running() == ["job"]
        assert poll_until(lambda: thread.total_runs >= 1 and registry.health()["healthy"])
    finally:
        registry.stop_all()


def test_stop_does_not_wait_for_the_interval() -> None:
    thread = PeriodicThread("slow", Target(), interval_seconds=60)
    thread.start()
    thread.start()  # already alive: no second thread
    # Stopped well inside the 60 s interval without running once: the stop event woke the
    # thread's wait (an event check, where a wall-clock bound equal to the timeout flaked).
    assert thread.stop(timeout=5.0)
    assert not thread.is_alive() and thread.total_runs == 0
    assert thread.ensure_running() is False
    thread.start()  # can be started again
    try:
        assert thread.is_alive()
    finally:
        thread.stop()


@pytest.mark.parametrize(
    "kwargs",
    [{"interval_seconds": 0}, {"interval_seconds": -1}, {"interval_seconds": 1, "level": "urgent"}],
)
def test_rejects_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PeriodicThread("x", Target(), **kwargs)  # type: ignore[arg-type]


def test_registry_listing_filters_and_snapshot() -> None:
    clock = ManualClock()
    registry = PeriodicThreadRegistry()
    crit = PeriodicThread("eviction", Target(), interval_seconds=60, level="critical", clock=clock)
    low = PeriodicThread("reaper", Target(), interval_seconds=1, level="low", clock=clock)
    high = PeriodicThread("store", Target(), interval_seconds=1, level="high", clock=clock)
    for t in (crit, low, high):
        registry.register(t)
    registry.register(crit)  # the same object again is fine
    with pytest.raises(ConflictError):
        registry.register(PeriodicThread("eviction", Target(), interval_seconds=1))
    assert [t.name for t in registry.list()] == ["eviction", "reaper", "store"]
    assert registry.get("store") is high
    with pytest.raises(NotFoundError, match="Thread not found: nope"):
        registry.get("nope")

    crit.start()
    try:
        assert [s["name"] for s in registry.summaries(level="critical")] == ["eviction"]
        assert [s["name"] for s in registry.summaries(running_only=True)] == ["eviction"]
        with pytest.raises(ConfigError):
            registry.summaries(level="urgent")
        snap = registry.snapshot()
        assert snap["summary"]["total_count"] == 3
        assert snap["summary"]["running_count"] == 1
        assert snap["summary"]["by_level"]["critical"] == {"total": 1, "running": 1, "active": 1}
        assert snap["summary"]["by_level"]["low"] == {"total": 1, "running": 0, "active": 0}
        expected_fields = {
            "name",
            "level",
            "interval",
            "is_running",
            "is_active",
            "is_alive",
            "last_run_at",
            "last_run_ago",
            "total_runs",
            "failed_runs",
            "success_rate",
            "last_summary",
            "last_error",
        }
        assert expected_fields <= set(snap["threads"][0])
    finally:
        crit.stop()
    assert registry.unregister("reaper") is True and registry.unregister("reaper") is False


def test_health_judges_only_critical_and_high_threads() -> None:
    clock = ManualClock()
    registry = PeriodicThreadRegistry()
    failing_low = Target()
    failing_low.error = RuntimeError("x")
    low = PeriodicThread("low", failing_low, interval_seconds=1, level="low", clock=clock)
    failing_high = Target()
    failing_high.error = RuntimeError("disk full")
    high = PeriodicThread("high", failing_high, interval_seconds=60, level="high", clock=clock)
    registry.register(low)
    registry.register(high)
    assert registry.health() == {
        "healthy": True,
        "unhealthy": [],
        "unhealthy_count": 0,
        "unhealthy_threads": [],
    }
    low.start()
    high.start()
    try:
        low.run_once()
        assert registry.health()["healthy"] is True  # a low thread never fails the check
        high.run_once()
        health = registry.health()
        assert health["unhealthy"] == ["high"]
        assert health["unhealthy_threads"][0]["reason"] == "failing"
        assert health["unhealthy_threads"][0]["last_error"] == "RuntimeError: disk full"
    finally:
        registry.stop_all()
