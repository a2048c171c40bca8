"""The typed context an admin route group's factory receives (`registry.add_http_routes`): what
is known before the engine starts, and one typed way to reach the running server."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lmcache_core.cache_ops import CacheOperations
from lmcache_core.periodic import PeriodicThreadRegistry
from lmcache_core.plugin.registry import FrontendRegistry
from lmcache_core.plugin.server_context import ServerContext
from lmcache_core.storage_manager import StorageManager

ENGINE_NOT_INITIALIZED = "engine not initialized"
"""The message of `RouteContext.app()`'s NotInitializedError (an admin route's 503)."""


@runtime_checkable
class RunningContext(ServerContext, Protocol):
    """The running server as a route group sees it: everything a `ServerContext` holds, plus the
    storage manager, the operator operations (`cache_ops`) and the periodic-thread registry."""

    storage: StorageManager
    cache_ops: CacheOperations
    periodic_threads: PeriodicThreadRegistry


@runtime_checkable
class RouteContext(Protocol):
    """What a route group's factory receives, once, when the admin app is built — which is before
    the engine exists (the admin API answers probes while the server starts).

    `config`, `plugins` and `frontends` are there from the start; `started` is the one question
    a route that answers before start asks; `app()` is the running server, typed, and raises
    `NotInitializedError(ENGINE_NOT_INITIALIZED)` (HTTP 503) until then. A group whose routes all
    need the engine declares the admin app's engine gate once and calls `app()` freely.
    Read it on every request, never at build time: the server is attached later."""

    @property
    def config(self) -> Any:
        """The server's configuration (the frontends ring's `ServerConfig`)."""
        ...

    @property
    def plugins(self) -> Any:
        """The plugin manager that loaded every plugin (the adapters ring's)."""
        ...

    @property
    def frontends(self) -> FrontendRegistry:
        """The registered route groups and long-running frontends."""
        ...

    @property
    def started(self) -> bool:
        """Whether the engine runs (then `app()` answers)."""
        ...

    def app(self) -> RunningContext:
        """The running server; NotInitializedError while the engine is not started."""
        ...
