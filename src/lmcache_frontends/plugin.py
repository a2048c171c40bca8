"""The built-in frontends' plugin: the admin route groups, registered through the `lmcache`
entry point exactly as a third-party package would register its own."""

from __future__ import annotations

from lmcache_adapters.plugin import hookimpl
from lmcache_core.plugin import FrontendRegistry
from lmcache_frontends.admin.cache import create_cache_blueprint
from lmcache_frontends.admin.health import create_health_blueprint
from lmcache_frontends.admin.status import create_status_blueprint

BUILTIN_ROUTE_GROUPS = {
    "health": create_health_blueprint,
    "status": create_status_blueprint,
    "cache": create_cache_blueprint,
}


@hookimpl
def lmcache_register_frontends(registry: FrontendRegistry) -> None:
    for name, factory in BUILTIN_ROUTE_GROUPS.items():
        registry.add_http_routes(name, factory)
