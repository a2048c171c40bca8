"""`GET /readyz`: deep readiness — L1 allocates and frees, every L2 adapter answers in time,
controller threads are alive, and every check a component registered in the readiness
registry (the ZeroMQ loop turns) passes; 503 naming what failed."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, Response, jsonify

from lmcache_core.plugin import RouteContext, RouteGroup, RunningContext
from lmcache_core.plugin.route_context import ENGINE_NOT_INITIALIZED
from lmcache_frontends.admin.openapi import json_response, obj

PROBE_BYTES = 4096
"""Size of the object the L1 check allocates and frees."""
CRITICAL_LEVELS = ("critical", "high")


class _Prober:
    """Runs blocking checks on daemon threads with a deadline, at most one in flight per name:
    a hung adapter makes its own check fail (and keeps failing while it hangs) but never
    hangs the probe or piles up threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Future[Any]] = {}

    def run(self, name: str, fn: Callable[[], Any], timeout: float) -> Any:
        with self._lock:
            previous = self._pending.get(name)
            if previous is not None and not previous.done():
                raise TimeoutError("the previous check has not answered yet")
            future: Future[Any] = Future()
            self._pending[name] = future

        def target() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # reported by the waiting probe
                future.set_exception(exc)

        threading.Thread(target=target, name=f"lmcache-readyz-{name}", daemon=True).start()
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise TimeoutError(f"no answer within {timeout:g} s") from None


def _check(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__}
    result["duration_ms"] = round((time.perf_counter() - started) * 1000.0, 3)
    return result


def check_l1(pool: Any) -> dict[str, Any]:
    """Allocate and free one small object through the L1 pool."""
    handle = pool.allocate(PROBE_BYTES)
    if handle is None:
        return {"ok": False, "error": f"L1 pool cannot allocate {PROBE_BYTES} bytes (full?)"}
    pool.free(handle)
    return {"ok": True}


def check_adapter(prober: _Prober, entry: Any, timeout: float, health: Any) -> dict[str, Any]:
    """Within `timeout`: the adapter's backend passes a real probe (ProbesBackend: the bucket
    exists, the path is writable, the endpoint answers; recorded for /status too), the adapter
    reports healthy, and it answers an empty lookup."""
    label = f"{entry.index}:{entry.name}"
    deadline = time.monotonic() + timeout

    def ask() -> dict[str, Any]:
        problem = health.probe(entry)
        report = entry.adapter.report_status()
        future = entry.adapter.submit_lookup_and_lock([])
        found = future.result(max(0.0, deadline - time.monotonic()))
        return {"problem": problem, "healthy": bool(report.get("is_healthy", False)), "lookup": list(found),
                "error": report.get("error") or report.get("last_error")}

    answer = prober.run(f"l2-{label}", ask, timeout)
    if answer["problem"]:
        return {"ok": False, "error": answer["problem"]}
    if not answer["healthy"]:
        detail = f": {answer['error']}" if answer["error"] else " (see /status)"
        return {"ok": False, "error": f"adapter reports unhealthy{detail}"}
    if answer["lookup"]:
        return {"ok": False, "error": "an empty lookup returned results"}
    return {"ok": True}


def check_controllers(storage: Any, registry: Any) -> dict[str, Any]:
    """Every controller's thread is alive (when it runs one) and no critical/high periodic
    thread is dead or stalled."""
    failing: dict[str, str] = {}
    controllers = {
        "eviction_controller": storage.eviction,
        "store_controller": storage.store,
        "l2_eviction_controller": storage.l2_eviction,
        "prefetch_controller": getattr(storage, "prefetch", None),
    }
    for name, controller in controllers.items():
        if controller is None:
            continue
        report = controller.report_status()
        if report.get("thread_alive") is False and report.get("is_healthy") is False:
            failing[name] = "thread dead"
    threads = list(registry.list()) if registry is not None else list(storage.periodic_threads())
    for thread in threads:
        if thread.level in CRITICAL_LEVELS:
            reason = thread.unhealthy_reason()
            if reason in ("dead", "stalled"):
                failing[f"periodic:{thread.name}"] = reason
    if failing:
        return {"ok": False, "error": "; ".join(f"{k}: {v}" for k, v in failing.items()), "failing": failing}
    return {"ok": True, "periodic_threads": len(threads)}


def readiness(app: RunningContext, prober: _Prober, timeout: float) -> tuple[bool, dict[str, Any]]:
    """(ready, checks by name) for the running server `app`."""
    checks: dict[str, Any] = {"engine": {"ok": True}}
    pool = app.memory_pool
    checks["l1"] = _check(lambda: check_l1(pool))
    storage = app.storage
    for entry in storage.l2_adapters:
        checks[f"l2:{entry.index}:{entry.name}"] = _check(
            functools.partial(check_adapter, prober, entry, timeout, storage.l2_health)
        )
    registry = app.periodic_threads
    checks["controllers"] = _check(lambda: check_controllers(storage, registry))
    # What running components registered (the data path's socket loop), each under its name.
    for name, check in app.readiness.checks().items():
        checks[name] = _check(check)
    return all(c["ok"] for c in checks.values()), checks


def create_readyz_blueprint(context: RouteContext) -> RouteGroup:
    """`GET /readyz` for readiness probes (open like `/healthcheck`)."""
    bp = Blueprint("readyz", __name__)
    prober = _Prober()

    @bp.get("/readyz")
    def readyz() -> Response:
        if context.started:
            timeout = float(context.config.readyz_timeout_seconds)
            ready, checks = readiness(context.app(), prober, timeout)
        else:  # still starting: not ready, and nothing to probe yet
            ready, checks = False, {"engine": {"ok": False, "error": ENGINE_NOT_INITIALIZED}}
        if ready:
            return jsonify(ready=True, checks=checks)
        failing = [name for name, c in checks.items() if not c["ok"]]
        response = jsonify(ready=False, failing=failing, checks=checks, error="not ready: " + ", ".join(failing))
        response.status_code = 503
        return response

    return RouteGroup(bp, openapi=READYZ_OPENAPI)


_CHECK = obj(
    {"ok": {"type": "boolean"}, "error": {"type": "string"}, "duration_ms": {"type": "number"}},
    required=["ok"],
)
_CHECKS = {"type": "object", "additionalProperties": _CHECK}

READYZ_OPENAPI: dict[str, Any] = {
    "/readyz": {
        "get": {
            "summary": "Deep readiness: L1 allocate+free, each L2 adapter answers in time, controller "
            "threads alive, ZeroMQ loop responsive",
            "tags": ["health"],
            "responses": {
                "200": json_response("Ready", obj({"ready": {"type": "boolean", "enum": [True]}, "checks": _CHECKS})),
                "503": json_response(
                    "Not ready; `failing` names the failed checks",
                    obj(
                        {
                            "ready": {"type": "boolean", "enum": [False]},
                            "failing": {"type": "array", "items": {"type": "string"}},
                            "checks": _CHECKS,
                            "error": {"type": "string"},
                        }
                    ),
                ),
            },
        }
    }
}
