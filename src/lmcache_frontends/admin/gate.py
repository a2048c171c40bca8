"""The 503 gate of a route group that needs a started engine: declared once on the blueprint
instead of a "started?" check (and its audit line) in every handler."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from flask import Blueprint, Response, request

from lmcache_core.plugin import RouteContext, RunningContext
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import engine_not_initialized


def require_engine(
    bp: Blueprint, context: RouteContext, *, audited: Mapping[str, str] | None = None
) -> Callable[[], RunningContext]:
    """Every route of `bp` answers 503 "engine not initialized" until `context` has started.
    `audited` maps a view function's name to its audit action: a refused operator change is
    recorded as "refused: engine not initialized" with the route's path parameters.

    Returns how the group's handlers reach the running server: behind the gate, `app()` always
    answers (typed, never None)."""
    actions = dict(audited or {})

    @bp.before_request
    def gate() -> Response | None:
        if context.started:
            return None
        action = actions.get((request.endpoint or "").rpartition(".")[2])
        if action is not None:
            audit(action, "refused: engine not initialized", **(request.view_args or {}))
        return engine_not_initialized()

    return context.app
