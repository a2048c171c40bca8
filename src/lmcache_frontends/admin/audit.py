"""Audit records for state-changing admin calls: who, what, when, outcome, as one JSON line each;
the newest kept in a bounded ring that `GET /audit/events` reads."""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, current_app, g, has_request_context, jsonify, request
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_core.errors import ConfigError
from lmcache_core.plugin import RouteGroup
from lmcache_frontends.admin.openapi import error_responses, json_response, obj, query_param
from lmcache_frontends.admin.params import bounded_int, single

audit_log = logging.getLogger("lmcache.audit")

REDACTED = "***"
ANONYMOUS = "anonymous"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Parameter names whose values never reach an audit record (a token pasted into a query string).
_SECRET_PARAM_RE = re.compile(r"secret|token|password|passwd|credential|authorization|api[_-]?key|access_key", re.I)
# Bodies larger than this are summarised by size only: the audit line stays one short line.
_MAX_BODY_BYTES = 16 << 10
_MAX_VALUE_CHARS = 512

RECENT_EVENTS = 256
"""Audit records an app keeps in memory for `GET /audit/events` (the newest; the log and the
`--audit-log` file keep them all)."""
DEFAULT_EVENTS_LIMIT = 50
TRAIL_KEY = "lmcache.audit"
"""`app.extensions` key of the app's AuditTrail (set by the app factory with the auth hook)."""

_PENDING = "lmcache_audit_notes"
_STARTED = "lmcache_audit_started"
PRINCIPAL = "lmcache_principal"
"""`flask.g` attribute holding the authenticated token's name (set by the auth hook)."""


def redact(value: Any, *, depth: int = 0) -> Any:
    """`value` with the values of secret-looking keys replaced and long strings cut."""
    if depth > 8:
        return "..."
    if isinstance(value, Mapping):
        return {
            str(k): (REDACTED if _SECRET_PARAM_RE.search(str(k)) else redact(v, depth=depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth=depth + 1) for v in value[:64]]
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return value[:_MAX_VALUE_CHARS] + "..."
    return value


class AuditTrail:
    """Where audit records go: the `lmcache.audit` logger, and a JSON-lines file when configured.

    The file is opened, appended and closed per record (admin calls are rare), so every line
    is on disk when the call returns and logrotate needs no reopen signal. The newest `keep`
    records also stay in memory (a bounded ring) for `GET /audit/events`."""

    def __init__(self, path: str | None = None, *, keep: int = RECENT_EVENTS) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._ring_lock = threading.Lock()
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep)
        self._recorded = 0
        if path is not None:
            try:
                with open(path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise ConfigError(f"--audit-log cannot open {path!r} for appending: {exc.strerror or exc}") from None

    def emit(self, record: Mapping[str, Any]) -> None:
        """Write one record to the log and the file; a failing file write is logged, not raised."""
        line = json.dumps(record, default=str, separators=(",", ":"))
        with self._ring_lock:
            # The JSON form, not the live dict: a reader never sees a record a caller mutates.
            self._recent.append(json.loads(line))
            self._recorded += 1
        # The log gets key=value text for people (and greps); the record rides along as
        # `extra` for structured handlers, and the file gets the JSON line.
        audit_log.info("%s", format_record(record), extra={"audit": dict(record)})
        if self.path is None:
            return
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
                f.flush()
        except OSError:
            audit_log.exception("cannot append to the audit log %s", self.path)


    @property
    def capacity(self) -> int:
        """How many records the in-memory ring holds at most."""
        return self._recent.maxlen or 0

    def recent(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """(the newest `limit` records, newest first; how many were recorded since start)."""
        with self._ring_lock:
            newest = list(self._recent)[-limit:] if limit > 0 else []
            recorded = self._recorded
        newest.reverse()
        return newest, recorded


def format_record(record: Mapping[str, Any]) -> str:
    """`audit action=... outcome=... who=... route=METHOD /rule status=... duration_ms=... k=v...`."""
    head = ["audit", f"action={record.get('action')}", f"outcome={record.get('outcome')}", f"who={record.get('who')}"]
    head.append(f"route={record.get('method')} {record.get('route') or record.get('path')}")
    for key in ("status", "duration_ms", "remote"):
        if record.get(key) is not None:
            head.append(f"{key}={record[key]}")
    details = record.get("details") or {}
    head.extend(f"{k}={v!r}" for k, v in details.items())
    if record.get("params"):
        head.append("params=" + json.dumps(record["params"], default=str, separators=(",", ":")))
    return " ".join(head)


_LOG_ONLY = AuditTrail()


def audit(action: str, outcome: str, **details: Any) -> None:
    """Note what a state-changing route did. Under the app-wide audit hook (installed by the
    app factory) the note joins the request's one record; otherwise a record is written at once."""
    note = {"action": action, "outcome": outcome, **{k: v for k, v in details.items() if v is not None}}
    pending = getattr(g, _PENDING, None) if has_request_context() else None
    if pending is not None:
        pending.append(note)
        return
    record = _base_record()
    note = redact(note)
    record["action"] = note.pop("action")
    record["outcome"] = note.pop("outcome")
    if note:
        record["details"] = note
    _LOG_ONLY.emit(record)


def begin_request() -> None:
    """Start collecting notes for this request (called first thing by the app-wide hook)."""
    setattr(g, _PENDING, [])
    setattr(g, _STARTED, time.perf_counter())


def finish_request(trail: AuditTrail, response: WerkzeugResponse, *, required_scope: str | None) -> None:
    """Write the request's record when it changed (or tried to change) state, used an
    admin-scope route, or was refused by authentication."""
    notes: list[dict[str, Any]] = getattr(g, _PENDING, None) or []
    status = response.status_code
    denied = status in (401, 403) and getattr(g, "lmcache_auth_denied", False)
    # A POST that only reads (its scope is `read`) changes nothing and is not audited.
    changes_state = request.method not in SAFE_METHODS and required_scope != "read"
    if not (changes_state or required_scope == "admin" or notes or denied):
        return
    record = _base_record()
    started = getattr(g, _STARTED, None)
    record["status"] = status
    record["duration_ms"] = round((time.perf_counter() - started) * 1000.0, 3) if started is not None else None
    if denied:
        record["action"] = "auth"
        record["outcome"] = "denied: unauthenticated" if status == 401 else "denied: insufficient scope"
    elif notes:
        last = redact(notes[-1])
        record["action"] = last.pop("action")
        record["outcome"] = last.pop("outcome")
        if last:
            record["details"] = last
    else:
        record["action"] = request.endpoint or "unmatched"
        record["outcome"] = "ok" if status < 400 else f"error {status}"
    trail.emit(record)


def _base_record() -> dict[str, Any]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "who": getattr(g, PRINCIPAL, None) or ANONYMOUS,
        "remote": request.remote_addr or "-",
        "method": request.method,
        "route": request.url_rule.rule if request.url_rule is not None else None,
        "path": request.path,
        "params": _params(),
        "request_id": getattr(g, "lmcache_request_id", None),
    }


def _params() -> dict[str, Any]:
    params: dict[str, Any] = {}
    if request.view_args:
        params.update(request.view_args)
    for key in request.args:
        values = request.args.getlist(key)
        params[key] = values[0] if len(values) == 1 else values
    length = request.content_length or 0
    # Only bodies the route already parsed, or small JSON ones: the record must not re-read
    # (or trip the size limit on) an upload.
    if "files" in request.__dict__ and request.files:
        params["files"] = {name: f.filename for name, f in request.files.items()}
    elif request.is_json and 0 < length <= _MAX_BODY_BYTES:
        try:
            body = request.get_json(silent=True)
        except Exception:  # a body the route never read and the server cut short
            body = None
        if body is not None:
            params["body"] = body
        else:
            params["body_bytes"] = length
    elif length > 0:
        params["body_bytes"] = length
    return redact(params)  # type: ignore[no-any-return]


def app_trail() -> AuditTrail:
    """The current app's trail (installed by the app factory with the auth hook), else the
    log-only one `audit()` uses outside an admin app."""
    trail = current_app.extensions.get(TRAIL_KEY)
    return trail if isinstance(trail, AuditTrail) else _LOG_ONLY


def create_audit_blueprint(context: object) -> RouteGroup:
    """`GET /audit/events`: the newest audit records, from the bounded in-memory ring.
    Mounted by the admin and the coordinator apps alike: it reads nothing of `context`."""
    bp = Blueprint("audit", __name__)

    @bp.get("/audit/events")
    def audit_events() -> Response:
        trail = app_trail()
        limit = bounded_int("limit", single(request.args, "limit"), DEFAULT_EVENTS_LIMIT, lo=1, hi=trail.capacity)
        events, recorded = trail.recent(limit)
        return jsonify(events=events, capacity=trail.capacity, recorded_total=recorded)

    return RouteGroup(bp, openapi=AUDIT_OPENAPI)


_EVENT = obj(
    {
        "ts": {"type": "string", "description": "UTC, ISO 8601 with milliseconds"},
        "who": {"type": "string", "description": "The token's name, or `anonymous`"},
        "remote": {"type": "string"},
        "method": {"type": "string"},
        "route": {"type": "string", "nullable": True},
        "path": {"type": "string"},
        "params": {"type": "object", "description": "Query, path and small JSON body parameters, secrets redacted"},
        "request_id": {"type": "string", "nullable": True},
        "status": {"type": "integer"},
        "duration_ms": {"type": "number", "nullable": True},
        "action": {"type": "string"},
        "outcome": {"type": "string"},
        "details": {"type": "object"},
    },
    required=["ts", "who", "method", "path", "action", "outcome"],
)

AUDIT_OPENAPI: dict[str, Any] = {
    "/audit/events": {
        "get": {
            "summary": "The newest audit records (state-changing calls, admin-scope reads, refused "
            "authentications), newest first, from a bounded in-memory ring",
            "tags": ["observability"],
            "parameters": [
                query_param(
                    "limit",
                    f"How many records (1..{RECENT_EVENTS}, default {DEFAULT_EVENTS_LIMIT})",
                    {"type": "integer", "minimum": 1, "maximum": RECENT_EVENTS},
                )
            ],
            "responses": {
                "200": json_response(
                    "The records; `recorded_total` counts every record since start",
                    obj(
                        {
                            "events": {"type": "array", "items": _EVENT},
                            "capacity": {"type": "integer"},
                            "recorded_total": {"type": "integer"},
                        }
                    ),
                ),
                **error_responses(400, 422),
            },
        }
    }
}
