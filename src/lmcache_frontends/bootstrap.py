"""The composition root: `bootstrap(config, **overrides)` builds the whole server and returns its
`Application`: typed members and one `Lifecycle` (start in order, stop in reverse)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_adapters.fleet.member import FleetMember
from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_core.cache_ops import CacheOperations
from lmcache_core.clients import ClientLimits
from lmcache_core.clock import SystemClock
from lmcache_core.engine import CacheEngine
from lmcache_core.errors import NotInitializedError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.hashing import TokenHasher
from lmcache_core.inspection import RequestInspector
from lmcache_core.lookup import DataPath
from lmcache_core.periodic import PeriodicThread, PeriodicThreadRegistry, Summary
from lmcache_core.plugin import FrontendRegistry, L2AdapterRegistry, ServerFrontend
from lmcache_core.plugin.route_context import ENGINE_NOT_INITIALIZED
from lmcache_core.ports import Clock, MemoryPool, MetricsSink, NullMetricsSink
from lmcache_core.quota import QuotaManager
from lmcache_core.readiness import ReadinessRegistry
from lmcache_core.sessions import SessionManager
from lmcache_core.storage_manager import StorageManager
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.container import (
    build_l2_adapters,
    create_hasher,
    create_l1,
    create_memory_pool,
    create_metrics_sink,
    create_policy,
    create_quotas,
    create_storage,
)
from lmcache_frontends.fleet import attach_fleet_member, build_fleet_member

log = logging.getLogger(__name__)


@dataclass
class _Component:
    name: str
    stop: Callable[[], None]
    start: Callable[[], None] | None
    started: bool = False


class Lifecycle:
    """The server's components in start order, and the one way they start and stop.

    `add()` a component with its `stop` (and `start`, unless building it already took its
    resources: an allocated pool, an adapter's threads — those count as started at once).
    `start()` starts the rest in order; a failure half-way stops what started, in reverse,
    and re-raises. A component added after `start()` starts at once (a failed start is not
    registered). `stop()` stops every started component in reverse order of start, logging a
    failure and going on; idempotent. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: list[_Component] = []
        self._order: list[_Component] = []  # started ones, in the order they started
        self._started = False
        self._stopped = False
        self.closing_step: str | None = None
        """What stop() is stopping right now (None before and after): a stuck shutdown names it."""

    def add(self, name: str, *, stop: Callable[[], None], start: Callable[[], None] | None = None) -> None:
        with self._lock:
            if self._stopped:
                raise RuntimeError("the application is already stopped")
            component = _Component(name, stop, start)
            started_now = self._started and start is not None
        if started_now:
            assert start is not None
            start()
        with self._lock:
            self._components.append(component)
            if start is None or started_now:
                component.started = True
                self._order.append(component)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            pending = [c for c in self._components if not c.started]
        for component in pending:
            assert component.start is not None
            try:
                component.start()
            except BaseException:
                log.debug("starting %s failed; stopping what started", component.name)
                self.stop()
                raise
            with self._lock:
                component.started = True
                self._order.append(component)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            order = list(reversed(self._order))
            self._order.clear()
        for component in order:
            self.closing_step = component.name
            try:
                component.stop()
            except Exception:
                log.exception("closing %s failed", component.name)
        self.closing_step = None


@dataclass
class Application:
    """Everything a running server is made of, as typed objects (what frontends receive), and
    its one lifecycle: `start()` (bootstrap does it unless asked not to), `close()` stops every
    component in reverse order of start."""

    config: ServerConfig
    plugins: LMCachePluginManager
    clock: Clock
    frontends: FrontendRegistry
    l2_registry: L2AdapterRegistry
    metrics: MetricsSink
    """Where every component reports metrics (the Prometheus sink behind /metrics)."""
    memory_pool: MemoryPool
    storage: StorageManager
    engine: CacheEngine
    cache_ops: CacheOperations
    """The operator operations over the engine (object listing/deletion, clear, checksums,
    warm prefetch, runtime reconfiguration) that both generations of admin routes call."""
    limits: ClientLimits
    """What one data-path client may hold at once (sessions, lookups, pending writes)."""
    sessions: SessionManager
    """The data path's sessions (per-request hash chains), built here for every data path."""
    data_path: DataPath
    """The data path's core (lookups, leases, stores, retrieves) every data-path frontend serves."""
    periodic_threads: PeriodicThreadRegistry
    """Every periodic thread of the server (behind /periodic-threads and /status health);
    modules that start their own (data-path reapers) add them with `register_periodic_thread`."""
    inspector: RequestInspector
    """Request inspection (/kvcache/requests/*): a data path attaches its sessions while it runs."""
    readiness: ReadinessRegistry
    """Checks components register for GET /readyz (the data path's socket loop)."""
    lifecycle: Lifecycle
    fleet: FleetMember | None = None
    """The link to a fleet coordinator (`--coordinator-url`, else None); the server starts it
    once its ports are bound."""
    started_at: float = 0.0
    server_frontends: dict[str, ServerFrontend] = field(default_factory=dict)
    """Long-running frontends started by the server process (the ZeroMQ data path), by name."""

    def start(self) -> None:
        """Start every component not started yet, in order (a failure stops what started)."""
        self.lifecycle.start()

    def on_close(self, name: str, closer: Callable[[], None]) -> None:
        """Run `closer` at close(), before everything registered earlier (LIFO)."""
        try:
            self.lifecycle.add(name, stop=closer)
        except RuntimeError:
            raise RuntimeError("services are already closed") from None

    @property
    def closed(self) -> bool:
        return self.lifecycle.stopped

    @property
    def closing_step(self) -> str | None:
        """What close() is stopping right now (None before and after)."""
        return self.lifecycle.closing_step

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
        self.lifecycle.stop()


Services = Application
"""The name routes and tests have used for the running server's objects."""


class AdminContext:
    """The admin app's RouteContext (one per server): the configuration, plugins and route groups,
    known before the engine exists, and the Application once `serve()` attaches it. `app()` is
    the one place that asks whether it has been attached."""

    def __init__(self, config: Any, plugins: Any, frontends: FrontendRegistry) -> None:
        self.config = config
        self.plugins = plugins
        self.frontends = frontends
        self._app: Application | None = None

    @classmethod
    def running(cls, app: Application) -> AdminContext:
        """The context of an Application already built (tests, embedders)."""
        context = cls(app.config, app.plugins, app.frontends)
        context.attach(app)
        return context

    def attach(self, app: Application) -> None:
        """The engine runs: routes reach `app` from their next request on."""
        self._app = app

    @property
    def started(self) -> bool:
        return self._app is not None

    def app(self) -> Application:
        app = self._app
        if app is None:
            raise NotInitializedError(ENGINE_NOT_INITIALIZED)
        return app


def client_limits(config: ServerConfig) -> ClientLimits:
    """The per-client caps of the data path, from --max-sessions and its neighbours."""
    return ClientLimits(
        max_tokens_per_key=config.max_tokens_per_key,
        max_sessions=config.max_sessions,
        max_sessions_per_client=config.max_sessions_per_client,
        max_lookups_per_client=config.max_lookups_per_client,
        max_pending_write_bytes_per_client=config.max_pending_write_bytes_per_client or None,
    )


def bootstrap(
    config: ServerConfig,
    *,
    plugins: LMCachePluginManager | None = None,
    frontends: FrontendRegistry | None = None,
    clock: Clock | None = None,
    memory_pool: MemoryPool | None = None,
    l2_adapters: Sequence[tuple[Any, ...]] | None = None,
    quotas: QuotaManager | None = None,
    policy: EvictionPolicy | None = None,
    hasher: TokenHasher | None = None,
    metrics: MetricsSink | None = None,
    start: bool = True,
) -> Application:
    """Build (and by default start) the whole server for `config`.

    Every dependency can be passed in instead of built: a test starts a full stack with
    `bootstrap(cfg, memory_pool=BytearrayMemoryPool(...), clock=ManualClock())`. Objects passed
    in are owned by the returned Application from then on (its close() closes them).
    `l2_adapters` replaces the adapters configured by --l2-adapter. Raises ConfigError (naming
    the flag or field) for a configuration the plugins or components refuse; nothing is left
    running then."""
    lifecycle = Lifecycle()
    try:
        the_clock: Clock = clock if clock is not None else SystemClock()
        the_plugins = plugins if plugins is not None else LMCachePluginManager(load_entrypoints=True)
        the_frontends = frontends if frontends is not None else the_plugins.frontend_registry()
        l2_registry = the_plugins.l2_adapter_registry()
        # Cheap, pure checks first (hash algorithm, quota file), then the adapters (validated
        # as a whole before any is built), and only then the big L1 allocation.
        the_hasher = hasher if hasher is not None else create_hasher(config)
        the_metrics: MetricsSink = metrics if metrics is not None else create_metrics_sink(config)
        the_quotas = quotas if quotas is not None else create_quotas(config)
        # (name, adapter) or (name, adapter, eviction settings); overrides may pass either.
        adapters: list[tuple[Any, ...]] = (
            list(l2_adapters) if l2_adapters is not None else build_l2_adapters(config, l2_registry, the_clock, the_metrics)
        )
        for spec in adapters:
            lifecycle.add(f"L2 adapter {spec[0]}", stop=spec[1].close)
        pool = memory_pool if memory_pool is not None else create_memory_pool(config)
        lifecycle.add("L1 memory pool", stop=pool.close)
        fleet = build_fleet_member(config)  # stopped after the storage manager's L2 drain
        if fleet is not None:
            lifecycle.add("fleet member", stop=fleet.stop)
        the_policy = policy if policy is not None else create_policy(config, the_quotas)
        l1 = create_l1(pool, config, the_clock)
        storage = create_storage(l1, the_policy, the_quotas, adapters, config, the_clock, the_metrics)
        lifecycle.add("storage manager", stop=lambda: storage.close(drain_timeout=config.shutdown_drain_seconds))
        engine = CacheEngine(storage, the_hasher, clock=the_clock)
        lifecycle.add("cache engine", start=engine.start, stop=engine.close)
        cache_ops = CacheOperations.for_engine(engine)
        lifecycle.add("cache operations", stop=cache_ops.close)
        threads = _observe(config, storage, engine, the_metrics)
        if fleet is not None:
            attach_fleet_member(fleet, storage, engine, the_metrics)
            lifecycle.add("fleet member's L1 reporting", stop=fleet.close_l1)
        limits = client_limits(config)
        data_path = DataPath.for_engine(
            engine, clock=the_clock, session_ttl_seconds=config.session_ttl_seconds, limits=limits, metrics=the_metrics
        )
    except BaseException:
        lifecycle.stop()
        raise

    log.debug("bootstrapped: hash=%s chunk=%d adapters=%d", the_hasher.hash_algorithm_name, config.chunk_size, len(adapters))
    app = Application(
        config=config,
        plugins=the_plugins,
        clock=the_clock,
        frontends=the_frontends,
        l2_registry=l2_registry,
        metrics=the_metrics,
        memory_pool=pool,
        storage=storage,
        engine=engine,
        cache_ops=cache_ops,
        limits=limits,
        sessions=data_path.sessions,
        data_path=data_path,
        periodic_threads=threads,
        inspector=RequestInspector(engine.chunk_size),
        readiness=ReadinessRegistry(),
        lifecycle=lifecycle,
        fleet=fleet,
        started_at=the_clock.time(),
    )
    if start:
        app.start()
    return app


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
        metrics.add_scrape_source("stack", stack_source(storage, engine.report_status, threads))
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
