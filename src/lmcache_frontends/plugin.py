"""The built-in frontends' plugin: the admin route groups, registered through the `lmcache`
entry point exactly as a third-party package would register its own."""

from __future__ import annotations

from lmcache_adapters.plugin import hookimpl
from lmcache_core.plugin import FrontendRegistry
from lmcache_frontends.admin.audit import create_audit_blueprint
from lmcache_frontends.admin.auth import create_auth_blueprint
from lmcache_frontends.admin.cache import create_cache_blueprint
from lmcache_frontends.admin.config import create_config_blueprint
from lmcache_frontends.admin.diagnostics import create_diagnostics_blueprint
from lmcache_frontends.admin.health import create_health_blueprint
from lmcache_frontends.admin.l2 import create_l2_blueprint
from lmcache_frontends.admin.objects import create_objects_blueprint
from lmcache_frontends.admin.observability import create_observability_blueprint
from lmcache_frontends.admin.openapi import create_openapi_blueprint
from lmcache_frontends.admin.prefetches import create_prefetches_blueprint
from lmcache_frontends.admin.quota import create_quota_blueprint
from lmcache_frontends.admin.readyz import create_readyz_blueprint
from lmcache_frontends.admin.reconfigure import create_reconfigure_blueprint
from lmcache_frontends.admin.requests import create_requests_blueprint
from lmcache_frontends.admin.status import create_status_blueprint
from lmcache_frontends.console.routes import create_console_blueprint

BUILTIN_ROUTE_GROUPS = {
    "health": create_health_blueprint,
    "status": create_status_blueprint,
    "cache": create_cache_blueprint,
    "objects": create_objects_blueprint,
    "prefetches": create_prefetches_blueprint,
    "config": create_config_blueprint,
    "l2": create_l2_blueprint,
    "quota": create_quota_blueprint,
    "reconfigure": create_reconfigure_blueprint,
    "diagnostics": create_diagnostics_blueprint,
    "observability": create_observability_blueprint,
    "openapi": create_openapi_blueprint,
    "requests": create_requests_blueprint,
    "readyz": create_readyz_blueprint,
    "audit": create_audit_blueprint,
    "console": create_console_blueprint,
    "auth": create_auth_blueprint,  # its hook puts itself before every other one
}


@hookimpl
def lmcache_register_frontends(registry: FrontendRegistry) -> None:
    for name, factory in BUILTIN_ROUTE_GROUPS.items():
        registry.add_http_routes(name, factory)
