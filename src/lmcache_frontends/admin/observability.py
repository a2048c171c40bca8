"""Observability routes: `/metrics`, `/metrics/reset`, `/loglevel`, `/threads`, `/periodic-threads*`;
plus request ids, a structured access line and HTTP request metrics on every admin call."""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import traceback
import uuid
from typing import Any

from flask import Blueprint, Response, g, jsonify, request
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_core import metric_names as mn
from lmcache_core.errors import ConfigError, InvalidKeyError
from lmcache_core.periodic import LEVELS, PeriodicThreadRegistry
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.plugin.routes import ADMIN
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import engine_not_initialized, json_error
from lmcache_frontends.admin.openapi import (
    error_responses,
    json_response,
    obj,
    path_param,
    query_param,
    text_response,
)
from lmcache_frontends.admin.params import single

access_log = logging.getLogger("lmcache.access")

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
UNMATCHED_ROUTE = "<unmatched>"
"""Route label of requests no rule matched (404s): one series, whatever the path."""

LOG_LEVEL_NAMES = ("NOTSET", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _flag(name: str) -> bool:
    raw = single(request.args, name)
    if raw is None or raw == "":
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidKeyError(f"invalid query parameter {name}: expected true or false, got {raw!r}")


def _request_id() -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    # A caller's id is echoed only when it is short and plain: it ends up in logs and headers.
    return given if _REQUEST_ID_RE.match(given) else uuid.uuid4().hex


def thread_dump(name: str | None = None, thread_id: int | None = None) -> str:
    """Live threads (optionally filtered) with their stacks, then a total count."""
    frames = sys._current_frames()
    selected = [
        t
        for t in threading.enumerate()
        if (not name or name.lower() in t.name.lower()) and (thread_id is None or t.ident == thread_id)
    ]
    parts = []
    for thread in selected:
        info = f"Thread: {thread!r} (ident={thread.ident}, daemon={thread.daemon})\n"
        frame = frames.get(thread.ident) if thread.ident is not None else None
        if frame is not None:
            info += "Stack trace:\n" + "".join(traceback.format_stack(frame))
        else:
            info += "No stack trace available\n"
        parts.append(info)
    return "\n\n".join(parts) + f"\n\n=== Thread Summary ===\nTotal threads: {len(selected)}\n"


def create_observability_blueprint(context: RouteContext) -> RouteGroup:
    """Metrics, log levels, thread dumps and the periodic-thread registry."""
    bp = Blueprint("observability", __name__)

    @bp.before_app_request
    def _start_request() -> None:
        g.lmcache_request_id = _request_id()
        g.lmcache_request_started = time.perf_counter()

    @bp.after_app_request
    def _finish_request(response: WerkzeugResponse) -> WerkzeugResponse:
        rid = getattr(g, "lmcache_request_id", None) or _request_id()
        started = getattr(g, "lmcache_request_started", None)
        elapsed = time.perf_counter() - started if started is not None else 0.0
        response.headers[REQUEST_ID_HEADER] = rid
        route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
        if context.started:  # requests answered while the server starts are not counted
            metrics = context.app().metrics
            metrics.inc(mn.HTTP_REQUESTS.name, route=route, method=request.method, status=str(response.status_code))
            metrics.observe(mn.HTTP_REQUEST_DURATION_SECONDS.name, elapsed, route=route)
        access_log.info(
            "request id=%s method=%s route=%s path=%s status=%d duration_ms=%.2f remote=%s",
            rid,
            request.method,
            route,
            request.path,
            response.status_code,
            elapsed * 1000.0,
            request.remote_addr or "-",
        )
        return response

    @bp.get("/metrics")
    def metrics() -> Response:
        if not context.started:
            return engine_not_initialized()
        sink = context.app().metrics
        render = getattr(sink, "render", None)
        if render is None:  # metrics disabled (a NullMetricsSink): an empty, valid exposition
            return _text("")
        body, content_type = render()
        return Response(body, status=200, content_type=content_type)

    @bp.post("/metrics/reset")
    def metrics_reset() -> Response:
        if not context.started:
            audit("metrics-reset", "refused: engine not initialized")
            return engine_not_initialized()
        sink = context.app().metrics
        reset = getattr(sink, "reset", None)
        if reset is not None:
            reset()
        audit("metrics-reset", "ok")
        return _text("ok")

    @bp.get("/loglevel")
    def loglevel() -> Response:
        logger_name = single(request.args, "logger_name")
        level = single(request.args, "level")
        if not logger_name and not level:
            manager = logging.Logger.manager
            lines = ["=== Loggers and Levels ==="]
            for name, logger in sorted(manager.loggerDict.items()):
                if isinstance(logger, logging.Logger):
                    lines.append(f"{name}: {logging.getLevelName(logger.level)}")
            return _text("\n".join(lines) + "\n")
        if logger_name and not level:
            logger = logging.getLogger(logger_name)
            return _text(
                f"{logger_name}: {logging.getLevelName(logger.level)} "
                f"(effective: {logging.getLevelName(logger.getEffectiveLevel())})"
            )
        if not logger_name:
            # The reference answers a level without a logger with 200 and a null body.
            return jsonify(None)
        name = (level or "").strip().upper()
        if name not in LOG_LEVEL_NAMES:
            audit("set-loglevel", "rejected: invalid level", logger=logger_name, level=level)
            return json_error(400, f"Invalid log level: {level}", valid=list(LOG_LEVEL_NAMES))
        value = logging.getLevelName(name)
        target = logging.getLogger(logger_name)
        target.setLevel(value)
        for handler in target.handlers:
            handler.setLevel(value)
        audit("set-loglevel", "ok", logger=logger_name, level=logging.getLevelName(value))
        return _text(f"Set {logger_name} level to {logging.getLevelName(value)} (including all handlers)")

    @bp.get("/threads")
    def threads() -> Response:
        name = single(request.args, "name")
        raw_id = single(request.args, "thread_id")
        thread_id = None
        if raw_id not in (None, ""):
            try:
                thread_id = int(raw_id)  # type: ignore[arg-type]
            except ValueError:
                return json_error(400, f"invalid query parameter thread_id: expected an integer, got {raw_id!r}")
        return _text(thread_dump(name, thread_id))

    def _registry() -> PeriodicThreadRegistry | None:
        return context.app().periodic_threads if context.started else None

    @bp.get("/periodic-threads")
    def periodic_threads() -> Response:
        registry = _registry()
        if registry is None:
            return engine_not_initialized()
        level = single(request.args, "level")
        if level is not None and level.strip().lower() not in LEVELS:
            raise ConfigError(f"invalid query parameter level: must be one of {', '.join(LEVELS)}, got {level!r}")
        return jsonify(
            registry.snapshot(
                level=level.strip().lower() if level is not None else None,
                running_only=_flag("running_only"),
                active_only=_flag("active_only"),
            )
        )

    @bp.get("/periodic-threads/<thread_name>")
    def periodic_thread(thread_name: str) -> Response:
        registry = _registry()
        if registry is None:
            return engine_not_initialized()
        return jsonify(registry.get(thread_name).to_dict())  # NotFoundError -> 404 JSON

    @bp.get("/periodic-threads-health")
    def periodic_threads_health() -> Response:
        registry = _registry()
        if registry is None:
            return engine_not_initialized()
        return jsonify(registry.health())

    return RouteGroup(bp, openapi=_OPENAPI, scopes={"/threads": ADMIN})


# ---------------------------------------------------------------------------- OpenAPI

_NUM_OR_NULL = {"type": "number", "nullable": True}
_THREAD_SCHEMA = obj(
    {
        "name": {"type": "string"},
        "level": {"type": "string", "enum": list(LEVELS)},
        "interval": {"type": "number"},
        "is_running": {"type": "boolean"},
        "is_alive": {"type": "boolean"},
        "is_active": {"type": "boolean"},
        "is_healthy": {"type": "boolean"},
        "unhealthy_reason": {"type": "string", "nullable": True},
        "last_run_at": _NUM_OR_NULL,
        "last_run_ago": _NUM_OR_NULL,
        "last_duration_seconds": _NUM_OR_NULL,
        "total_runs": {"type": "integer"},
        "failed_runs": {"type": "integer"},
        "consecutive_failures": {"type": "integer"},
        "success_rate": {"type": "number"},
        "last_summary": {"nullable": True},
        "last_error": {"type": "string", "nullable": True},
        "restarts": {"type": "integer"},
        "died_with": {"type": "string", "nullable": True},
    },
    required=["name", "level", "interval", "is_running", "is_active", "last_run_ago", "total_runs",
              "failed_runs", "success_rate", "last_summary"],
)
_COUNTS = obj({"total": {"type": "integer"}, "running": {"type": "integer"}, "active": {"type": "integer"}})
_SNAPSHOT_SCHEMA = obj(
    {
        "summary": obj(
            {
                "total_count": {"type": "integer"},
                "running_count": {"type": "integer"},
                "active_count": {"type": "integer"},
                "by_level": obj({lvl: _COUNTS for lvl in LEVELS}),
            }
        ),
        "threads": {"type": "array", "items": _THREAD_SCHEMA},
    }
)
_HEALTH_SCHEMA = obj(
    {
        "healthy": {"type": "boolean"},
        "unhealthy": {"type": "array", "items": {"type": "string"}},
        "unhealthy_count": {"type": "integer"},
        "unhealthy_threads": {
            "type": "array",
            "items": obj(
                {
                    "name": {"type": "string"},
                    "level": {"type": "string"},
                    "reason": {"type": "string"},
                    "last_run_ago": _NUM_OR_NULL,
                    "interval": {"type": "number"},
                    "last_error": {"type": "string", "nullable": True},
                },
                required=["name", "level", "last_run_ago", "interval"],
            ),
        },
    },
    required=["healthy", "unhealthy_count", "unhealthy_threads"],
)
_BOOL_PARAM = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}
_TAGS = ["observability"]

_OPENAPI: dict[str, Any] = {
    "/metrics": {
        "get": {
            "summary": "Prometheus text exposition of every lmcache_mp_* metric of this server",
            "tags": _TAGS,
            "responses": {
                "200": {
                    "description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **error_responses(503),
            },
        }
    },
    "/metrics/reset": {
        "post": {
            "summary": "Reset every counter and histogram to zero (tests and benchmarks)",
            "tags": _TAGS,
            "responses": {"200": text_response("`ok`"), **error_responses(413, 503)},
        }
    },
    "/loglevel": {
        "get": {
            "summary": "List loggers, read one logger's level, or set it (with its handlers)",
            "tags": _TAGS,
            "parameters": [
                query_param("logger_name", "The logger to read or set (e.g. `lmcache`, `lmcache.access`)."),
                query_param("level", "New level: NOTSET, DEBUG, INFO, WARNING, ERROR or CRITICAL (any case)."),
            ],
            "responses": {
                "200": {
                    "description": "A text listing or confirmation; JSON `null` for `level` without `logger_name`",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"nullable": True}},
                    },
                },
                **error_responses(400, e400=obj({"error": {"type": "string"}, "valid": {"type": "array", "items": {"type": "string"}}}, required=["error"])),
            },
        }
    },
    "/threads": {
        "get": {
            "summary": "Stack dump of the server's live threads (text/plain); restrict access in production",
            "tags": _TAGS,
            "parameters": [
                query_param("name", "Only threads whose name contains this (case-insensitive)."),
                query_param("thread_id", "Only the thread with this ident.", {"type": "integer"}),
            ],
            "responses": {"200": text_response("One block per thread, then `=== Thread Summary ===`"), **error_responses(400)},
        }
    },
    "/periodic-threads": {
        "get": {
            "summary": "Snapshot of the periodic-thread registry: counts by level and every thread",
            "tags": _TAGS,
            "parameters": [
                query_param("level", "Only threads of this level.", {"type": "string", "enum": list(LEVELS)}),
                query_param("running_only", "Only threads that are running.", _BOOL_PARAM),
                query_param("active_only", "Only threads that ran within 3 intervals.", _BOOL_PARAM),
            ],
            "responses": {"200": json_response("The snapshot", _SNAPSHOT_SCHEMA), **error_responses(400, 503)},
        }
    },
    "/periodic-threads/{thread_name}": {
        "get": {
            "summary": "One periodic thread's status",
            "tags": _TAGS,
            "parameters": [path_param("thread_name", "The thread's registered name (e.g. `l1-eviction`).")],
            "responses": {"200": json_response("The thread", _THREAD_SCHEMA), **error_responses(404, 503)},
        }
    },
    "/periodic-threads-health": {
        "get": {
            "summary": "Health of the critical and high periodic threads (always 200; see `healthy`)",
            "tags": _TAGS,
            "responses": {"200": json_response("Health", _HEALTH_SCHEMA), **error_responses(503)},
        }
    },
}
