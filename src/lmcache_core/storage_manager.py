"""StorageManager: owns L1, the quotas, the L2 adapters (in order) and every controller."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lmcache_core.errors import ConfigError, NotFoundError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.eviction.controller import EvictionController
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.arenas import L1Arenas
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l2.entry import L2AdapterEntry, adapter_type_name
from lmcache_core.l2.eviction_controller import L2EvictionController, L2EvictionSettings
from lmcache_core.l2.health import L2HealthMonitor
from lmcache_core.l2.listener import L2Events, L2Listener
from lmcache_core.l2.prefetch_controller import PrefetchController
from lmcache_core.l2.store_controller import StoreController
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import (
    ArenaMemoryPool,
    Clock,
    L2Adapter,
    MetricsSink,
    NullMetricsSink,
    OwnsDevices,
    capability_of,
)
from lmcache_core.quota import QuotaManager
from lmcache_core.status import compose_status, safe_report

log = logging.getLogger(__name__)

# (name, adapter), (name, adapter, eviction settings as given in `"eviction": {...}`), or
# (name, adapter, eviction settings, shared)
AdapterSpec = (
    tuple[str, L2Adapter]
    | tuple[str, L2Adapter, Mapping[str, Any] | None]
    | tuple[str, L2Adapter, Mapping[str, Any] | None, bool]
)
PolicyFactory = Callable[[str], EvictionPolicy]


class StorageManager:
    """The tiers below the engine and the threads that move data between them:
    L1 eviction, L2 write-back (store), L2 prefetch and L2 eviction."""

    def __init__(
        self,
        l1: L1Manager,
        *,
        policy: EvictionPolicy,
        quotas: QuotaManager,
        l2_adapters: Sequence[AdapterSpec] = (),
        clock: Clock,
        eviction_interval_seconds: float = 1.0,
        trigger_watermark: float = 0.8,
        eviction_ratio: float = 0.2,
        l2_store_policy: str = "default",
        l2_prefetch_policy: str = "default",
        l2_prefetch_max_in_flight: int = 8,
        l2_policy_factory: PolicyFactory | None = None,
        metrics: MetricsSink | None = None,
        quota_check_interval_seconds: float = 10.0,
        l2_probe_interval_seconds: float = 5.0,
    ) -> None:
        self.l1 = l1
        self.quotas = quotas
        self.policy = policy
        self.clock = clock
        self.metrics = metrics or NullMetricsSink()
        self.l2_adapters: list[L2AdapterEntry] = []
        managed = []
        for i, spec in enumerate(l2_adapters):
            name, adapter = spec[0], spec[1]
            eviction = spec[2] if len(spec) > 2 else None
            shared = bool(spec[3]) if len(spec) > 3 else False
            entry = L2AdapterEntry(
                i, name, adapter_type_name(adapter), adapter, dict(eviction) if eviction else None, shared
            )
            self.l2_adapters.append(entry)
            if eviction:
                settings = L2EvictionSettings.parse(name, eviction)
                if l2_policy_factory is None:
                    raise ConfigError(f"L2 adapter {name!r} has an eviction policy but no policy factory is wired")
                managed.append((entry, settings, l2_policy_factory(settings.policy)))
        self.eviction = EvictionController(
            l1,
            policy,
            clock=clock,
            interval_seconds=eviction_interval_seconds,
            trigger_watermark=trigger_watermark,
            eviction_ratio=eviction_ratio,
        )
        self.l2_events = L2Events()
        """Every L2 store, load and removal, for L2Listeners (`add_l2_listener`)."""
        self.l2_eviction = L2EvictionController(
            managed, interval_seconds=eviction_interval_seconds, metrics=self.metrics, clock=clock,
            on_evicted=lambda entry, keys: self.l2_events.removed(entry, keys, "evict"),
        )
        self.l2_events.add(self.l2_eviction)
        self.store = StoreController(
            l1,
            self.l2_adapters,
            policy=l2_store_policy,
            metrics=self.metrics,
            on_stored=self.l2_events.stored,
            clock=clock,
        )
        l1.add_listener(self.store)
        self.prefetch: PrefetchController | None = None
        if self.l2_adapters:
            self.prefetch = PrefetchController(
                l1,
                self.l2_adapters,
                max_in_flight=l2_prefetch_max_in_flight,
                policy=l2_prefetch_policy,
                metrics=self.metrics,
                skip_write_back=self.store.skip_once,
                forget_skip=self.store.forget_skip,
                on_loaded=self.l2_events.loaded,
                clock=clock,
            )
        self.l2_health = L2HealthMonitor(self.l2_adapters, interval_seconds=l2_probe_interval_seconds, clock=clock)
        self.quota_state: PeriodicThread | None = None
        if quotas.state_path is not None:
            self.quota_state = PeriodicThread(
                "quota-state", quotas.verify_persisted, interval_seconds=quota_check_interval_seconds,
                level="high", clock=clock,
            )
        # An L1 on Device-DAX devices: arenas added and drained at run time, and a thread that
        # finishes drains a request could not (objects that were locked then).
        self.l1_arenas: L1Arenas | None = None
        self.l1_arena_drain: PeriodicThread | None = None
        if isinstance(l1.pool, ArenaMemoryPool):
            self.l1_arenas = L1Arenas(l1, l1.pool, clock=clock, others=self.device_owners)
            self._refuse_shared_devices(self.l1_arenas)
            self.l1_arena_drain = PeriodicThread(
                "l1-arena-drain", self.l1_arenas.progress, interval_seconds=eviction_interval_seconds,
                level="low", clock=clock,
            )
        self._state_lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        with self._state_lock:
            if self._started or self._closed:
                return
            self.eviction.start()
            self.store.start()
            if self.prefetch is not None:
                self.prefetch.start()
            self.l2_eviction.start()
            self.l2_health.start()
            if self.quota_state is not None:
                self.quota_state.start()
            if self.l1_arena_drain is not None:
                self.l1_arena_drain.start()
            self._started = True

    def close(self, *, drain_timeout: float = 10.0) -> None:
        """Stop accepting prefetches, drain in-flight write-backs, stop the threads, close the
        adapters (each failure logged, never raised), free L1."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        if self.prefetch:
            self.prefetch.close()
        pending = self.store.pending_objects()
        if pending:
            log.info("shutting down: writing %d object(s) back to L2 first (up to %.0f s)", pending, drain_timeout)
        if not self.store.stop(drain_timeout=drain_timeout):
            lost = self.store.unwritten_at_shutdown
            self.metrics.inc("l2_stores_unwritten_at_shutdown", lost)
            log.warning(
                "L2 write-back stopped before it drained: %d object(s) were not written to L2 "
                "(they were only in L1, which is freed now)",
                lost,
            )
        self.l2_eviction.stop()
        self.l2_health.stop()
        self.eviction.stop()
        if self.quota_state is not None:
            self.quota_state.stop()
        if self.l1_arena_drain is not None:
            self.l1_arena_drain.stop()
        for entry in self.l2_adapters:
            try:
                entry.adapter.close()
            except Exception:
                log.exception("closing L2 adapter %s failed", entry.name)
        self.l1.clear(force=True)

    def abandon_write_back(self) -> None:
        """Stop waiting for the L2 write-back at shutdown (what is left is counted as lost).
        Only sets a flag: safe from a signal handler."""
        self.store.abandon()

    def periodic_threads(self) -> list[PeriodicThread]:
        """The periodic threads this manager runs (for the registry behind /periodic-threads)."""
        threads = [self.eviction.thread]
        if self.l2_adapters:
            threads.append(self.store.thread)
        if self.prefetch is not None:
            threads.append(self.prefetch.thread)
        if self.l2_eviction.enabled:
            threads.append(self.l2_eviction.thread)
        if self.l2_health.enabled:
            threads.append(self.l2_health.thread)
        if self.quota_state is not None:
            threads.append(self.quota_state)
        if self.l1_arena_drain is not None:
            threads.append(self.l1_arena_drain)
        return threads

    def device_owners(self) -> list[tuple[str, OwnsDevices]]:
        """The L2 adapters that map devices (the dax kind, also under serde), by label."""
        out: list[tuple[str, OwnsDevices]] = []
        for entry in self.l2_adapters:
            owner = capability_of(entry.adapter, OwnsDevices)
            if owner is not None:
                out.append((entry.name, owner))
        return out

    def _refuse_shared_devices(self, arenas: L1Arenas) -> None:
        for status in arenas.statuses():
            owners = [name for name, owner in self.device_owners() if owner.owns_device(status["device_path"])]
            if owners:
                raise ConfigError(
                    f"L1 device {status['device_path']} is also a device of L2 adapter(s) {', '.join(owners)}; "
                    "one device cannot hold both tiers"
                )

    # -- operations -----------------------------------------------------------------------

    def primary_adapter(self) -> L2AdapterEntry | None:
        return self.l2_adapters[0] if self.l2_adapters else None

    def find_adapter(self, selector: str | None) -> L2AdapterEntry:
        """The primary adapter (selector None), or the first whose type name, kind or label
        matches; NotFoundError naming the valid selectors otherwise."""
        if not self.l2_adapters:
            raise NotFoundError("no L2 adapter is configured")
        if selector is None:
            return self.l2_adapters[0]
        for entry in self.l2_adapters:
            if selector in (entry.type_name, entry.name, getattr(entry.adapter, "kind", None)):
                return entry
        valid = ", ".join(e.type_name for e in self.l2_adapters)
        raise NotFoundError(f"no L2 adapter matches {selector!r} (valid: {valid})")

    def delete_from_l2(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> list[bool]:
        """Delete keys from one adapter (locked keys skipped) and tell the L2 listeners (its
        eviction policy among them)."""
        results = entry.adapter.delete(keys)
        gone = [k for k, ok in zip(keys, results, strict=True) if ok]
        if gone:
            self.l2_events.removed(entry, gone, "delete")
        return results

    def add_l2_listener(self, listener: L2Listener) -> None:
        """Subscribe to L2 events (see L2Listener for the delivery rules)."""
        self.l2_events.add(listener)

    def clear_l1(self, *, force: bool = True, cache_salt: str | None = None, model_name: str | None = None) -> int:
        """Remove L1 objects (all, or one tenant / model). L2 is untouched."""
        return self.l1.clear(force=force, cache_salt=cache_salt, model_name=model_name)

    # -- status ---------------------------------------------------------------------------

    def _adapter_report(self, entry: L2AdapterEntry) -> dict[str, Any]:
        """One entry of `l2_adapters`: a list in configuration order, each report tagged with
        its index, label and `type` (what LMCache's status clients key on), plus the reference's
        size field names next to ours, and the last backend probe (`backend_check`)."""
        report = safe_report(entry.adapter)
        check = self.l2_health.result(entry)
        healthy = report["is_healthy"] and (check is None or check["ok"])
        out: dict[str, Any] = {
            "is_healthy": healthy,
            "index": entry.index,
            "name": entry.name,
            "type": entry.type_name,
            "primary": entry.primary,
        }
        out.update({k: v for k, v in report.items() if k not in out})
        if check is not None:
            out["backend_check"] = check
            if check["error"]:
                out["error"] = check["error"]
        if "used_bytes" in report:
            out.setdefault("current_size_bytes", report["used_bytes"])
        if "capacity_bytes" in report:
            out.setdefault("max_capacity_bytes", report["capacity_bytes"])
        return out

    def report_status(self) -> dict[str, Any]:
        adapters = [self._adapter_report(e) for e in self.l2_adapters]
        adapters_healthy = all(report["is_healthy"] for report in adapters)
        children: dict[str, Any] = {
            "l1_manager": self.l1,
            "quotas": self.quotas,
            "eviction_controller": self.eviction,
            "store_controller": self.store,
            "l2_eviction_controller": self.l2_eviction,
        }
        if self.prefetch is not None:
            children["prefetch_controller"] = self.prefetch
        if self.l1_arenas is not None:
            children["l1_arenas"] = self.l1_arenas
        pool = self.l1.pool
        return compose_status(
            {
                # LMCache 0.5.6's field: L1 bytes per medium (dram: shared memory, devdax: arenas).
                "l1_capacity_bytes_by_backend": {str(getattr(pool, "backend", "dram")): pool.capacity_bytes},
                "l2_adapter_count": len(self.l2_adapters),
                "l2_adapters": adapters,
                "quota_count": len(self.quotas.list()),
            },
            children,
            healthy=adapters_healthy and not self._closed,
        )
