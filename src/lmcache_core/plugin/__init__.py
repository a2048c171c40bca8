"""The plugin interface: hook specifications and the typed registries hooks receive."""

from lmcache_core.plugin.context import AdapterContext
from lmcache_core.plugin.registry import (
    FrontendRegistry,
    HttpRoutesFactory,
    L2AdapterFactory,
    L2AdapterRegistry,
    L2AdapterSpec,
    ServerFrontendFactory,
)
from lmcache_core.plugin.route_context import RouteContext, RunningContext
from lmcache_core.plugin.routes import RouteGroup
from lmcache_core.plugin.server_context import Endpoint, ServerContext, ServerFrontend

__all__ = [
    "AdapterContext",
    "Endpoint",
    "FrontendRegistry",
    "HttpRoutesFactory",
    "L2AdapterFactory",
    "L2AdapterRegistry",
    "L2AdapterSpec",
    "RouteContext",
    "RouteGroup",
    "RunningContext",
    "ServerContext",
    "ServerFrontend",
    "ServerFrontendFactory",
]
