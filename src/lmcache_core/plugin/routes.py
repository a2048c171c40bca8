"""The declaration a route-group factory returns: its routes, their auth scopes, their OpenAPI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.errors import PluginError

READ = "read"
ADMIN = "admin"


@dataclass(frozen=True)
class RouteGroup:
    """One admin route group, declared whole: the app factory mounts `blueprint`, authenticates
    each request by `scopes`, audits state-changing calls and publishes `openapi` at
    `/openapi.json`. A factory registered with `FrontendRegistry.add_http_routes` returns one.

    `blueprint` is a `flask.Blueprint` (typed loosely: the core does not import flask).
    `scopes` maps a rule (Flask syntax, `/quota/<cache_salt>`) to the scope it needs beyond the
    app's defaults (reads `read`, writes `admin`): `admin` for a read of process internals,
    `read` for a POST that only reads, None to leave a GET open (static pages). A declaration
    never opens a state-changing method. `openapi` maps OpenAPI paths (`/quota/{cache_salt}`)
    to their operations."""

    blueprint: Any
    openapi: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scopes: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rule, scope in self.scopes.items():
            if scope not in (None, READ, ADMIN):
                raise PluginError(f"route group scope of {rule!r} must be None, {READ!r} or {ADMIN!r}, got {scope!r}")
