"""The Application's one lifecycle: start in order, stop in reverse, a failed start stops what started."""

from __future__ import annotations

import pytest

from lmcache_frontends.bootstrap import Application, Lifecycle
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack


def recording(events: list[str], name: str, *, fail_start: bool = False) -> dict[str, object]:
    def start() -> None:
        if fail_start:
            raise RuntimeError(f"{name} cannot start")
        events.append(f"start {name}")

    return {"start": start, "stop": lambda: events.append(f"stop {name}")}


def test_starts_in_order_and_stops_in_reverse_including_built_components() -> None:
    events: list[str] = []
    life = Lifecycle()
    life.add("pool", stop=lambda: events.append("stop pool"))  # built: holds its memory already
    life.add("engine", **recording(events, "engine"))  # type: ignore[arg-type]
    life.add("frontend", **recording(events, "frontend"))  # type: ignore[arg-type]
    life.start()
    life.add("late", **recording(events, "late"))  # type: ignore[arg-type]  # added after start: starts at once
    life.stop()
    life.stop()  # idempotent
    assert events == [
        "start engine", "start frontend", "start late", "stop late", "stop frontend", "stop engine", "stop pool",
    ]
    assert life.stopped and life.closing_step is None
    with pytest.raises(RuntimeError, match="already stopped"):
        life.add("after", stop=lambda: None)


def test_a_failure_half_way_stops_what_started_and_raises() -> None:
    events: list[str] = []
    life = Lifecycle()
    life.add("pool", stop=lambda: events.append("stop pool"))
    life.add("engine", **recording(events, "engine"))  # type: ignore[arg-type]
    life.add("broken", **recording(events, "broken", fail_start=True))  # type: ignore[arg-type]
    life.add("never", **recording(events, "never"))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="broken cannot start"):
        life.start()
    assert events == ["start engine", "stop engine", "stop pool"]


def test_a_failing_stop_is_logged_and_the_rest_still_stop(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    life = Lifecycle()
    life.add("first", stop=lambda: events.append("stop first"))

    def boom() -> None:
        raise OSError("stuck")

    life.add("second", stop=boom)
    life.stop()
    assert events == ["stop first"] and "closing second failed" in caplog.text


def test_a_late_component_whose_start_fails_is_not_registered() -> None:
    events: list[str] = []
    life = Lifecycle()
    life.start()
    with pytest.raises(RuntimeError):
        life.add("broken", **recording(events, "broken", fail_start=True))  # type: ignore[arg-type]
    life.stop()
    assert events == []


def test_bootstrap_returns_an_application_with_every_member_and_one_data_path() -> None:
    app = in_memory_stack(ServerConfig(session_ttl_seconds=42.0, max_sessions=7, l2_adapters=('{"type": "mock"}',)))
    try:
        assert isinstance(app, Application)
        assert app.data_path.sessions is app.sessions
        assert app.sessions.ttl_seconds == 42.0 and app.limits.max_sessions == 7
        assert app.data_path.l1 is app.storage.l1 and app.engine.storage is app.storage
        assert app.storage.store.report_status()["thread_alive"] is True  # started
    finally:
        app.close()
    assert app.closed


def test_the_application_is_the_typed_context_a_server_frontend_receives() -> None:
    from lmcache_core.plugin.server_context import ServerContext

    app = in_memory_stack()
    try:
        assert isinstance(app, ServerContext)
    finally:
        app.close()
