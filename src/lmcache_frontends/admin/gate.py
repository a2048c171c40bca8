"""The 503 gate of a route group that needs a started engine: declared once on the blueprint
instead of an `engine is None` check (and its audit line) in every handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request

from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import engine_not_initialized


def require_engine(bp: Blueprint, services: Any, *, audited: Mapping[str, str] | None = None) -> None:
    """Every route of `bp` answers 503 "engine not initialized" while `services` has no engine.
    `audited` maps a view function's name to its audit action: a refused operator change is
    recorded as "refused: engine not initialized" with the route's path parameters."""
    actions = dict(audited or {})

    @bp.before_request
    def gate() -> Response | None:
        if services.engine is not None:
            return None
        action = actions.get((request.endpoint or "").rpartition(".")[2])
        if action is not None:
            audit(action, "refused: engine not initialized", **(request.view_args or {}))
        return engine_not_initialized()
