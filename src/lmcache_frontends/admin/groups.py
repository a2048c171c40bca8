"""The route groups an admin app mounts, as declared (blueprint, auth scopes, OpenAPI together)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Blueprint, Flask

from lmcache_core.errors import PluginError
from lmcache_core.plugin import RouteGroup

ROUTE_GROUPS_KEY = "lmcache.route_groups"
"""`app.extensions` key: blueprint name -> its RouteGroup, in mounting order."""


def as_route_group(name: str, built: object) -> RouteGroup:
    """What a route-group factory returned, as a RouteGroup. A bare Blueprint (plugins written
    before RouteGroup) is read the old way: its `openapi` and `scopes` attributes."""
    if isinstance(built, RouteGroup):
        if not isinstance(built.blueprint, Blueprint):
            raise PluginError(f"route group {name!r} declared {type(built.blueprint).__name__}, not a flask.Blueprint")
        return built
    if isinstance(built, Blueprint):
        openapi = getattr(built, "openapi", None) or {}
        scopes = getattr(built, "scopes", None) or {}
        if not isinstance(openapi, Mapping) or not isinstance(scopes, Mapping):
            raise PluginError(f"route group {name!r}: its blueprint's openapi and scopes must be mappings")
        return RouteGroup(built, openapi=openapi, scopes=scopes)
    raise PluginError(f"route group {name!r} returned {type(built).__name__}, not a RouteGroup or flask.Blueprint")


def route_groups(app: Flask) -> Mapping[str, RouteGroup]:
    """The groups `app` mounted, by blueprint name (empty for an app built elsewhere)."""
    groups = app.extensions.get(ROUTE_GROUPS_KEY)
    return groups if isinstance(groups, dict) else {}
