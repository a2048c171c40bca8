"""Hook specifications of the `lmcache` plugin project.

The core stays free of pluggy: these are plain typed functions. The plugin-manager facade in
`lmcache_adapters.plugin_manager` marks them as pluggy hookspecs when it loads them. A plugin
implements them with `pluggy.HookimplMarker("lmcache")` (re-exported as
`lmcache_adapters.plugin.hookimpl`) and advertises itself in the `lmcache` entry-point group::

    [project.entry-points.lmcache]
    my_adapter = "my_package.lmcache_plugin"
"""

from __future__ import annotations

from lmcache_core.plugin.registry import FrontendRegistry, L2AdapterRegistry

PROJECT_NAME = "lmcache"
ENTRY_POINT_GROUP = "lmcache"


def lmcache_register_l2_adapters(registry: L2AdapterRegistry) -> None:
    """Register L2 adapter kinds.

    Called once at start with the server's registry. Call `registry.register(kind, factory,
    fields=..., description=...)` for each kind you provide. `factory(config, context)` receives
    the validated JSON object of one `--l2-adapter` flag (without `type`) and returns an object
    implementing `lmcache_core.ports.L2Adapter`. Import heavy libraries inside the factory and
    raise `lmcache_core.errors.ConfigError` naming the extra to install when one is missing.
    """


def lmcache_register_frontends(registry: FrontendRegistry) -> None:
    """Register frontends: HTTP route groups and long-running servers.

    `registry.add_http_routes(name, factory)`: `factory(context)` (a `RouteContext`) returns the
    `RouteGroup` the admin server mounts. `registry.add_server(name, factory)`: `factory(context)`
    (a `ServerContext`) returns a `ServerFrontend`: `start()`, `stop()`, `report_status()` and
    `endpoints()` (the ZeroMQ data path is one).
    """


HOOKSPECS = (lmcache_register_l2_adapters, lmcache_register_frontends)
