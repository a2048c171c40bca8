"""The plugin SDK: the one import path a third-party lmcache plugin needs.

A plugin package registers L2 backends and frontends through the `lmcache` entry-point group::

    from lmcache_sdk import AdapterContext, L2AdapterRegistry, config_field, hookimpl

    def _create(config: dict[str, Any], context: AdapterContext) -> StorageBackend: ...

    @hookimpl
    def lmcache_register_l2_adapters(registry: L2AdapterRegistry) -> None:
        registry.register("mine", _create, fields={...})

Its tests subclass the contract suites in `lmcache_sdk.testing` (pytest, numpy; no torch).
Everything here is re-exported from where it lives in the server; those paths keep working, but
only this module is the stable surface for plugins.
"""

from lmcache_adapters.l2.breaker import BreakerSettings
from lmcache_adapters.l2.integrity import IntegrityError, frame, unframe
from lmcache_adapters.l2.stack import BackendL2Adapter
from lmcache_adapters.plugin import hookimpl
from lmcache_core.errors import (
    BackendUnavailableError,
    BackendUnreachableError,
    ConfigError,
    CorruptObjectError,
    InvalidKeyError,
    InvalidValueError,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin import (
    AdapterContext,
    Endpoint,
    FrontendRegistry,
    HttpRoutesFactory,
    L2AdapterFactory,
    L2AdapterRegistry,
    RouteContext,
    RouteGroup,
    RunningContext,
    ServerContext,
    ServerFrontend,
    ServerFrontendFactory,
)
from lmcache_core.plugin.registry import ConfigField, config_field
from lmcache_core.ports import (
    Clock,
    DeletesInBatches,
    Interruptible,
    KeyPage,
    KnowsStoredSizes,
    L2Adapter,
    L2Usage,
    ListingNotSupportedError,
    MetricsSink,
    ProbesBackend,
    Reconfigurable,
    SeesKeyLocks,
    StorageBackend,
    capability_of,
)

__all__ = [
    "AdapterContext",
    "BackendL2Adapter",
    "BackendUnavailableError",
    "BackendUnreachableError",
    "BreakerSettings",
    "Clock",
    "ConfigError",
    "ConfigField",
    "CorruptObjectError",
    "DeletesInBatches",
    "Endpoint",
    "FrontendRegistry",
    "HttpRoutesFactory",
    "IntegrityError",
    "Interruptible",
    "InvalidKeyError",
    "InvalidValueError",
    "KeyPage",
    "KnowsStoredSizes",
    "L2Adapter",
    "L2AdapterFactory",
    "L2AdapterRegistry",
    "L2Usage",
    "ListingNotSupportedError",
    "MetricsSink",
    "ObjectKey",
    "ProbesBackend",
    "Reconfigurable",
    "RouteContext",
    "RouteGroup",
    "RunningContext",
    "SeesKeyLocks",
    "ServerContext",
    "ServerFrontend",
    "ServerFrontendFactory",
    "StorageBackend",
    "capability_of",
    "config_field",
    "frame",
    "hookimpl",
    "unframe",
]
