"""L2EvictionController: applies an eviction policy to each L2 adapter configured with one."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.keys import ObjectKey
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.l2.listener import L2Listener
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock, ListingNotSupportedError, MetricsSink, NullMetricsSink

log = logging.getLogger(__name__)

PolicyFactory = Callable[[str], EvictionPolicy]
EVICTION_FIELDS = {"policy", "trigger_watermark", "eviction_ratio"}


@dataclass
class L2EvictionSettings:
    """Validated `"eviction": {...}` of one adapter."""

    policy: str = "LRU"
    trigger_watermark: float = 0.8
    eviction_ratio: float = 0.2

    @classmethod
    def parse(cls, adapter_name: str, raw: Mapping[str, Any]) -> L2EvictionSettings:
        unknown = sorted(set(raw) - EVICTION_FIELDS)
        if unknown:
            raise ConfigError(
                f"unknown field(s) {', '.join(unknown)} in eviction of L2 adapter {adapter_name!r} "
                f"(accepted: {', '.join(sorted(EVICTION_FIELDS))})"
            )
        out = cls()
        if "policy" in raw:
            if not isinstance(raw["policy"], str):
                raise ConfigError(f"eviction.policy of L2 adapter {adapter_name!r} must be a string")
            out.policy = raw["policy"]
        for name in ("trigger_watermark", "eviction_ratio"):
            if name in raw:
                value = raw[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                    raise ConfigError(f"eviction.{name} of L2 adapter {adapter_name!r} must be a number in (0, 1]")
                setattr(out, name, float(value))
        return out


@dataclass
class _Managed:
    entry: L2AdapterEntry
    settings: L2EvictionSettings
    policy: EvictionPolicy
    sizes: dict[ObjectKey, int] = field(default_factory=dict)
    seeded: str = "pending"
    cycles: int = 0
    evicted_objects: int = 0
    evicted_bytes: int = 0
    failures: int = 0
    last_error: str | None = None


class L2EvictionController(L2Listener):
    """One thread for every adapter with an eviction policy: each cycle it evicts the policy's
    mandatory victims (salts over quota) and, above the trigger watermark of the adapter's
    capacity, victims until `eviction_ratio` of the capacity is freed — one delete call per
    adapter per cycle. Locked keys are skipped by the adapter's delete."""

    def __init__(
        self,
        managed: Sequence[tuple[L2AdapterEntry, L2EvictionSettings, EvictionPolicy]],
        *,
        interval_seconds: float = 1.0,
        metrics: MetricsSink | None = None,
        max_victims_per_cycle: int = 10_000,
        clock: Clock | None = None,
        on_evicted: Callable[[L2AdapterEntry, list[ObjectKey]], None] | None = None,
    ) -> None:
        self._managed = {e.index: _Managed(e, s, p) for e, s, p in managed}
        self._on_evicted = on_evicted
        self.interval_seconds = interval_seconds
        self.metrics = metrics or NullMetricsSink()
        self.max_victims_per_cycle = max_victims_per_cycle
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.thread = PeriodicThread(
            "l2-eviction", self._tick, interval_seconds=interval_seconds, level="high", clock=clock
        )

    @property
    def enabled(self) -> bool:
        return bool(self._managed)

    # -- events from the store / prefetch controllers -------------------------------------

    def on_l2_keys_stored(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self.on_stored(entry, list(keys), list(sizes))

    def on_l2_keys_loaded(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> None:
        self.on_loaded(entry, list(keys))

    def on_l2_keys_removed(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], reason: str) -> None:
        if reason != "evict":  # its own evictions are already off its books
            self.on_deleted(entry, keys)

    def on_stored(self, entry: L2AdapterEntry, keys: list[ObjectKey], sizes: list[int]) -> None:
        m = self._managed.get(entry.index)
        if m is None:
            return
        with self._lock:
            for key, size in zip(keys, sizes, strict=True):
                m.sizes[key] = size
                m.policy.on_added(key, size)

    def on_loaded(self, entry: L2AdapterEntry, keys: list[ObjectKey]) -> None:
        m = self._managed.get(entry.index)
        if m is None:
            return
        m.policy.on_accessed_many(keys)

    def on_deleted(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> None:
        """Keys removed from an adapter by someone else (DELETE /l2)."""
        m = self._managed.get(entry.index)
        if m is None:
            return
        with self._lock:
            for key in keys:
                m.sizes.pop(key, None)
                m.policy.on_removed(key)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._managed:
            self._stop.clear()
            self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.stop(2.0)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _tick(self) -> str:
        for m in self._managed.values():
            if m.seeded == "pending":
                self._seed(m)
        self.run_cycle()
        return ", ".join(f"{m.entry.name}: {m.evicted_objects} evicted" for m in self._managed.values())

    def _seed(self, m: _Managed) -> None:
        """Teach the policy what the adapter already holds (e.g. an fs tier after a restart)."""
        try:
            usage = m.entry.adapter.usage()
            token: str | None = None
            keys: list[ObjectKey] = []
            while not self._stop.is_set():
                page = m.entry.adapter.list_keys(1000, token)
                keys.extend(page.keys)
                token = page.next_page_token
                if token is None:
                    break
            size = usage.used_bytes // max(1, len(keys))
            with self._lock:
                for key in keys:
                    if key not in m.sizes:
                        m.sizes[key] = size
                        m.policy.on_added(key, size)
            m.seeded = "done"
        except ListingNotSupportedError:
            m.seeded = "unsupported"
        except Exception as exc:
            log.warning("seeding L2 eviction for %s failed: %s", m.entry.name, exc)
            m.seeded = "failed"
            m.last_error = f"seed: {type(exc).__name__}: {exc}"

    def run_cycle(self) -> None:
        """One eviction cycle over every managed adapter (also callable from tests)."""
        for m in self._managed.values():
            try:
                self._cycle(m)
                m.last_error = None
            except Exception as exc:
                log.exception("L2 eviction cycle for %s failed", m.entry.name)
                m.failures += 1
                m.last_error = f"{type(exc).__name__}: {exc}"
            m.cycles += 1

    def _cycle(self, m: _Managed) -> None:
        victims: list[ObjectKey] = []
        seen: set[ObjectKey] = set()
        self._take(m.policy.mandatory_victims(), victims, seen, None, m)
        usage = m.entry.adapter.usage()
        capacity = usage.capacity_bytes
        if capacity and usage.used_bytes >= m.settings.trigger_watermark * capacity:
            target = int(m.settings.eviction_ratio * capacity)
            self._take(m.policy.victims(), victims, seen, target, m)
        if not victims:
            return
        results = m.entry.adapter.delete(victims)
        gone = [k for k, ok in zip(victims, results, strict=True) if ok]
        with self._lock:
            freed = sum(m.sizes.pop(k, 0) for k in gone)
            for key in gone:
                m.policy.on_removed(key)
        m.evicted_objects += len(gone)
        m.evicted_bytes += freed
        if gone:
            self.metrics.inc("l2_evicted_objects", len(gone), adapter=m.entry.name)
            if self._on_evicted is not None:
                self._on_evicted(m.entry, gone)

    def _take(
        self,
        source: Iterator[ObjectKey],
        victims: list[ObjectKey],
        seen: set[ObjectKey],
        target_bytes: int | None,
        m: _Managed,
    ) -> None:
        freed = 0
        for key in source:
            if len(victims) >= self.max_victims_per_cycle:
                return
            if key in seen:
                continue
            seen.add(key)
            victims.append(key)
            freed += m.sizes.get(key, 0)
            if target_bytes is not None and freed >= target_bytes:
                return

    def report_status(self) -> dict[str, Any]:
        alive = self.is_alive()
        adapters = {}
        for m in self._managed.values():
            adapters[f"{m.entry.index}:{m.entry.name}"] = {
                "policy": m.settings.policy,
                "trigger_watermark": m.settings.trigger_watermark,
                "eviction_ratio": m.settings.eviction_ratio,
                "tracked_keys": len(m.sizes),
                "seeded": m.seeded,
                "cycles": m.cycles,
                "evicted_objects": m.evicted_objects,
                "evicted_bytes": m.evicted_bytes,
                "failures": m.failures,
                "last_error": m.last_error,
            }
        healthy = (alive or not self._managed) and all(m.last_error is None for m in self._managed.values())
        return {
            "is_healthy": healthy,
            "thread_alive": alive,
            "thread": self.thread.to_dict() if self._managed else None,
            "adapters": adapters,
        }
