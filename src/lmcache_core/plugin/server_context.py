"""The typed context a long-running frontend's factory receives (`registry.add_server`): what a
data path needs of the server, as one Protocol a plugin types its factory against."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from lmcache_core.clients import ClientLimits
from lmcache_core.engine import CacheEngine
from lmcache_core.inspection import RequestInspector
from lmcache_core.lookup import DataPath
from lmcache_core.periodic import PeriodicThread, Summary
from lmcache_core.ports import Clock, MemoryPool, MetricsSink
from lmcache_core.readiness import ReadinessRegistry


@runtime_checkable
class ServerContext(Protocol):
    """What the server hands a frontend it starts, all built and non-optional: the engine, its L1
    pool, the data path (sessions, lookups, leases) and its client caps, the clock and metrics,
    the inspection and readiness services it reports into, and supervised periodic threads.
    `config` is the server's configuration (the frontends ring's `ServerConfig`)."""

    config: Any
    clock: Clock
    metrics: MetricsSink
    engine: CacheEngine
    memory_pool: MemoryPool
    limits: ClientLimits
    data_path: DataPath
    inspector: RequestInspector
    readiness: ReadinessRegistry

    def run_periodic(
        self, name: str, target: Callable[[], Summary], *, interval_seconds: float, level: str = "high"
    ) -> PeriodicThread:
        """Run `target` every `interval_seconds`, supervised, stopped when the server stops."""
        ...
