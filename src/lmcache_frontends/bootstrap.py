"""The composition root: `bootstrap(config)` builds the whole server and returns `Services`."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dependency_injector import providers

from lmcache_adapters.fleet.member import FleetMember
from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_core.cache_ops import CacheOperations
from lmcache_core.engine import CacheEngine
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.hashing import TokenHasher
from lmcache_core.inspection import RequestInspector
from lmcache_core.periodic import PeriodicThread, PeriodicThreadRegistry, Summary
from lmcache_core.plugin import FrontendRegistry, L2AdapterRegistry
from lmcache_core.ports import Clock, L2Adapter, MemoryPool, MetricsSink, NullMetricsSink
from lmcache_core.quota import QuotaManager
from lmcache_core.readiness import ReadinessRegistry
from lmcache_core.storage_manager import StorageManager
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.container import ApplicationContainer
from lmcache_frontends.fleet import attach_fleet_member, build_fleet_member

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything a running server is made of, as plain objects (what frontends receive).

    `engine` (and `storage`) may be None while the engine is still starting: routes answer 503
    in that state. `close()` stops everything in reverse order of construction; idempotent."""

    config: ServerConfig
    plugins: LMCachePluginManager
    clock: Clock
    frontends: FrontendRegistry
    l2_registry: L2AdapterRegistry
    memory_pool: MemoryPool | None = None
    storage: StorageManager | None = None
    engine: CacheEngine | None = None
    cache_ops: CacheOperations | None = None
    """The operator operations over the engine (object listing/deletion, clear, checksums,
    warm prefetch, runtime reconfiguration) that both generations of admin routes call."""
    started_at: float = 0.0
    server_frontends: dict[str, Any] = field(default_factory=dict)
    """Long-running frontends started by the server process (the ZeroMQ data path), by name."""
    metrics: MetricsSink = field(default_factory=NullMetricsSink)
    """Where every component reports metrics (the Prometheus sink behind /metrics)."""
    fleet: FleetMember | None = None
    """The link to a fleet coordinator (`--coordinator-url`); the server starts it once its
    ports are bound."""
    periodic_threads: PeriodicThreadRegistry = field(default_factory=PeriodicThreadRegistry)
    """Every periodic thread of the server (behind /periodic-threads and /status health);
    modules that start their own (data-path reapers) add them with `register_periodic_thread`."""
    inspector: RequestInspector = field(default_factory=lambda: RequestInspector(ServerConfig().chunk_size))
    """Request inspection (/kvcache/requests/*): a data path attaches its sessions while it runs."""
    readiness: ReadinessRegistry = field(default_factory=ReadinessRegistry)
    """Checks components register for GET /readyz (the data path's socket loop)."""
    _closers: list[tuple[str, Callable[[], None]]] = field(default_factory=list, repr=False)
    _close_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)
    closing_step: str | None = field(default=None, repr=False)
    """What close() is stopping right now (None before and after): a stuck shutdown names it."""

    def on_close(self, name: str, closer: Callable[[], None]) -> None:
        """Run `closer` at close(), before everything registered earlier (LIFO)."""
        with self._close_lock:
            if self._closed:
                raise RuntimeError("services are already closed")
            self._closers.append((name, closer))

    @property
    def closed(self) -> bool:
        return self._closed

    def register_periodic_thread(self, thread: PeriodicThread) -> None:
        """Make a module's periodic thread visible in /periodic-threads and /status health."""
        self.periodic_threads.register(thread)

    def run_periodic(
        self,
        name: str,
        target: Callable[[], Summary],
        *,
        interval_seconds: float,
        level: str = "high",
    ) -> PeriodicThread:
        """Run `target` every `interval_seconds` as a supervised loop: registered (so
        /periodic-threads, /periodic-threads-health and /status see it, dead or stalled),
        started now, stopped at close() before everything registered earlier. What a frontend
        uses for its housekeeping (a reaper, a heartbeat) instead of a thread of its own; the
        returned thread's `wake()` runs the next iteration at once. A name already taken raises
        ConflictError."""
        thread = PeriodicThread(name, target, interval_seconds=interval_seconds, level=level, clock=self.clock)
        self.periodic_threads.register(thread)
        thread.start()
        self.on_close(f"periodic thread {name}", thread.stop)
        return thread

    def close(self) -> None:
        """Stop frontends, the engine, the storage manager, the adapters, then free L1 memory.
        Each step's failure is logged and the rest still run."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            closers = list(reversed(self._closers))
            self._closers.clear()
        for name, closer in closers:
            self.closing_step = name
            try:
                closer()
            except Exception:
                log.exception("closing %s failed", name)
        self.closing_step = None


@dataclass
class StartingServices:
    """What is known before the engine exists (configuration, plugins, route groups): the
    admin API serves this state, answering 503 where the engine is needed."""

    config: ServerConfig
    plugins: LMCachePluginManager
    frontends: FrontendRegistry
    engine: None = None
    storage: None = None
    memory_pool: None = None
    cache_ops: None = None
    server_frontends: dict[str, Any] = field(default_factory=dict)
    metrics: None = None
    periodic_threads: None = None
    inspector: None = None
    readiness: None = None


class LiveServices:
    """A stable handle for the admin app whose target moves from the starting state to the
    running Services once bootstrap finishes (routes read it on every request)."""

    def __init__(self, initial: StartingServices | Services) -> None:
        object.__setattr__(self, "_target", initial)

    def attach(self, services: Services) -> None:
        object.__setattr__(self, "_target", services)

    @property
    def target(self) -> StartingServices | Services:
        return self._target  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_target"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LiveServices is read-only; attach() a new target instead")


def bootstrap(
    config: ServerConfig,
    *,
    plugins: LMCachePluginManager | None = None,
    frontends: FrontendRegistry | None = None,
    clock: Clock | None = None,
    memory_pool: MemoryPool | None = None,
    l2_adapters: Sequence[tuple[str, L2Adapter]] | None = None,
    quotas: QuotaManager | None = None,
    policy: EvictionPolicy | None = None,
    hasher: TokenHasher | None = None,
    metrics: MetricsSink | None = None,
    start: bool = True,
) -> Services:
    """Build (and by default start) the whole server for `config`.

    Every dependency can be passed in instead of built: a test starts a full stack with
    `bootstrap(cfg, memory_pool=BytearrayMemoryPool(...), clock=ManualClock())`. Objects passed
    in are owned by the returned Services from then on (its close() closes them). `l2_adapters`
    replaces the adapters configured by --l2-adapter. Raises ConfigError (naming the flag or
    field) for a configuration the plugins or components refuse; nothing is left running then."""
    container = ApplicationContainer()
    container.core.config.override(providers.Object(config))
    if plugins is not None:
        container.core.plugins.override(providers.Object(plugins))
    if frontends is not None:
        container.frontends.registry.override(providers.Object(frontends))
    if clock is not None:
        container.core.clock.override(providers.Object(clock))
    if memory_pool is not None:
        container.adapters.memory_pool.override(providers.Object(memory_pool))
    if l2_adapters is not None:
        container.adapters.l2_adapters.override(providers.Object(list(l2_adapters)))
    if quotas is not None:
        container.services.quotas.override(providers.Object(quotas))
    if policy is not None:
        container.services.policy.override(providers.Object(policy))
    if hasher is not None:
        container.services.hasher.override(providers.Object(hasher))
    if metrics is not None:
        container.core.metrics.override(providers.Object(metrics))

    closers: list[tuple[str, Callable[[], None]]] = []
    try:
        the_clock: Clock = container.core.clock()
        the_plugins: LMCachePluginManager = container.core.plugins()
        the_frontends: FrontendRegistry = container.frontends.registry()
        l2_registry: L2AdapterRegistry = container.adapters.l2_registry()
        # Cheap, pure checks first (hash algorithm, quota file), then the adapters (validated
        # as a whole before any is built), and only then the big L1 allocation.
        the_hasher: TokenHasher = container.services.hasher()
        the_metrics: MetricsSink = container.core.metrics()
        container.services.quotas()
        # (name, adapter) or (name, adapter, eviction settings); overrides may pass either.
        adapters: list[tuple[Any, ...]] = container.adapters.l2_adapters()
        for spec in adapters:
            closers.append((f"L2 adapter {spec[0]}", spec[1].close))
        pool: MemoryPool = container.adapters.memory_pool()
        closers.append(("L1 memory pool", pool.close))
        fleet = build_fleet_member(config)  # stopped after the storage manager's L2 drain
        if fleet is not None:
            closers.append(("fleet member", fleet.stop))
        storage: StorageManager = container.services.storage()
        closers.append(("storage manager", lambda: storage.close(drain_timeout=config.shutdown_drain_seconds)))
        engine: CacheEngine = container.services.engine()
        closers.append(("cache engine", engine.close))
        cache_ops = CacheOperations.for_engine(engine)
        closers.append(("cache operations", cache_ops.close))
        threads = _observe(config, storage, engine, the_metrics)
        if fleet is not None:
            attach_fleet_member(fleet, storage, engine, the_metrics)
            closers.append(("fleet member's L1 reporting", fleet.close_l1))
        if start:
            engine.start()
    except BaseException:
        for name, closer in reversed(closers):
            try:
                closer()
            except Exception:
                log.exception("closing %s after a failed start", name)
        raise

    log.debug("bootstrapped: hash=%s chunk=%d adapters=%d", the_hasher.hash_algorithm_name, config.chunk_size, len(adapters))
    return Services(
        config=config,
        plugins=the_plugins,
        clock=the_clock,
        frontends=the_frontends,
        l2_registry=l2_registry,
        memory_pool=pool,
        storage=storage,
        engine=engine,
        cache_ops=cache_ops,
        started_at=the_clock.time(),
        metrics=the_metrics,
        periodic_threads=threads,
        inspector=RequestInspector(config.chunk_size),
        fleet=fleet,
        _closers=closers,
    )


def _observe(config: ServerConfig, storage: StorageManager, engine: CacheEngine, metrics: MetricsSink) -> PeriodicThreadRegistry:
    """Metrics and thread-health wiring: L1 chunk counters, scrape-time gauges, the periodic
    thread registry and its contribution to /status health."""
    from lmcache_adapters.metrics import (
        L1MetricsListener,
        PrometheusMetricsSink,
        legacy_metrics,
        stack_source,
    )

    threads = PeriodicThreadRegistry()
    for thread in storage.periodic_threads():
        threads.register(thread)
    engine.add_status_contributor("periodic_threads", _threads_status(threads))
    if isinstance(metrics, NullMetricsSink):
        return threads  # metrics off: not even a listener on the L1 hot path
    labels = getattr(metrics, "labels_enabled", config.metrics_labels == "on")
    storage.l1.add_listener(L1MetricsListener(metrics, tenant_labels=bool(labels)))
    if isinstance(metrics, PrometheusMetricsSink):
        metrics.add_scrape_source("stack", stack_source(storage, engine, threads))
        # LMCache 0.5.0's names for the same data, so its dashboards work unchanged.
        metrics.add_derived_source("lmcache-0.5.0", functools.partial(legacy_metrics, chunk_size=config.chunk_size))
    return threads


def _threads_status(threads: PeriodicThreadRegistry) -> Callable[[], dict[str, Any]]:
    def contribute() -> dict[str, Any]:
        health = threads.health()
        return {
            "periodic_threads": {
                "healthy": health["healthy"],
                "total_count": len(threads.list()),
                "unhealthy_count": health["unhealthy_count"],
                "unhealthy_threads": health["unhealthy_threads"],
            },
            "is_healthy": health["healthy"],
        }

    return contribute
