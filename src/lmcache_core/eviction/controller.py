"""The L1 eviction controller thread, and the listener that feeds L1 events into a policy."""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.manager import L1Manager
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock

log = logging.getLogger(__name__)


class PolicyListener(L1Listener):
    """Feeds L1 events into an eviction policy: write_finished -> on_added, read_reserved and
    touched -> on_accessed, removed -> on_removed."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        for key, size in zip(keys, sizes, strict=True):
            self.policy.on_added(key, size)

    def on_l1_keys_read_reserved(self, keys: Sequence[ObjectKey]) -> None:
        self.policy.on_accessed_many(keys)

    def on_l1_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        self.policy.on_accessed_many(keys)

    def on_l1_keys_removed(
        self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str
    ) -> None:
        for key in keys:
            self.policy.on_removed(key)


class _Recorder:
    """Wraps a victim iterator and remembers what was yielded (to forget stale keys)."""

    def __init__(self, source: Iterable[ObjectKey]) -> None:
        self._source = iter(source)
        self.yielded: list[ObjectKey] = []

    def __iter__(self) -> Iterator[ObjectKey]:
        for key in self._source:
            self.yielded.append(key)
            yield key


def _fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be in (0, 1], got {value!r}")
    return float(value)


class EvictionController:
    """Keeps L1 under its watermark with an eviction policy, on a periodic thread.

    Each cycle: expire stale locks; evict the policy's mandatory victims (salts over quota);
    then, if used/total >= `trigger_watermark`, evict the policy's victims until
    `eviction_ratio` x total bytes are freed. Locked and temporary objects are never evicted.
    A policy that raises fails the cycle, not the thread: the failure is counted, kept in
    `last_error`, and the controller reports unhealthy until a later cycle succeeds.

    `reclaim(bytes_needed)` is the L1 manager's on-the-spot evictor (a write that does not fit
    evicts instead of failing). It runs on the writer's thread while the manager holds its
    lock, so it touches only the manager's re-entrant `_evict_locked` and the policy; the
    controller never holds its own lock while calling into L1.

    With `wire=True` (the default) the constructor subscribes a PolicyListener to `l1` and
    installs `reclaim` as its reclaimer."""

    def __init__(
        self,
        l1: L1Manager,
        policy: EvictionPolicy,
        *,
        trigger_watermark: float = 0.8,
        eviction_ratio: float = 0.2,
        interval_seconds: float = 1.0,
        clock: Clock | None = None,
        name: str = "l1-eviction",
        level: str = "critical",
        wire: bool = True,
    ) -> None:
        self._l1 = l1
        self._policy = policy
        self._trigger = _fraction(
            "eviction trigger_watermark (--eviction-trigger-watermark)", trigger_watermark
        )
        self._ratio = _fraction("eviction_ratio (--eviction-ratio)", eviction_ratio)
        self._stats_lock = threading.Lock()
        self._evicted_objects = 0
        self._evicted_bytes = 0
        self._mandatory_evicted_objects = 0
        self._pressure_cycles = 0
        self._reclaim_calls = 0
        self._reclaim_failures = 0
        self._reclaimed_bytes = 0
        self._stale_keys_forgotten = 0
        self._last_reclaim_error: str | None = None
        self._last_cycle: dict[str, Any] = {}
        self._thread = PeriodicThread(
            name, self._cycle, interval_seconds=interval_seconds, level=level, clock=clock
        )
        if wire:
            l1.add_listener(PolicyListener(policy))
            l1.set_reclaimer(self.reclaim)

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def thread(self) -> PeriodicThread:
        """The periodic thread (register it in the PeriodicThreadRegistry)."""
        return self._thread

    @property
    def policy(self) -> EvictionPolicy:
        return self._policy

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the thread; True when it has exited within `timeout`."""
        return self._thread.stop(timeout)

    def ensure_running(self) -> bool:
        """Restart the thread if it died; True when it did."""
        return self._thread.ensure_running()

    def run_cycle(self) -> bool:
        """Run one cycle now on the caller's thread; True when it succeeded."""
        return self._thread.run_once()

    # -- the work -------------------------------------------------------------------------

    def _evict(self, keys: Iterable[ObjectKey], max_bytes: int | None) -> tuple[int, int]:
        recorder = _Recorder(keys)
        evicted, freed = self._l1.evict(recorder, max_bytes)
        self._forget_stale(recorder.yielded, evicted)
        with self._stats_lock:
            self._evicted_objects += len(evicted)
            self._evicted_bytes += freed
        return len(evicted), freed

    def _forget_stale(self, yielded: list[ObjectKey], evicted: list[ObjectKey]) -> None:
        # A key the policy proposes but L1 no longer holds would be proposed every cycle (and
        # keep a salt "over quota" forever); tell the policy it is gone.
        if len(yielded) == len(evicted):
            return
        gone = set(evicted)
        for key in yielded:
            if key not in gone and not self._l1.contains(key):
                self._policy.on_removed(key)
                with self._stats_lock:
                    self._stale_keys_forgotten += 1

    def _cycle(self) -> str:
        expired = self._l1.expire_locks()
        mandatory_objects, mandatory_bytes = self._evict(self._policy.mandatory_victims(), None)
        with self._stats_lock:
            self._mandatory_evicted_objects += mandatory_objects
        used, total = self._l1.usage_bytes()
        pressure_objects = pressure_bytes = 0
        under_pressure = bool(total) and used / total >= self._trigger
        if under_pressure:
            target = max(1, int(self._ratio * total))
            pressure_objects, pressure_bytes = self._evict(self._policy.victims(), target)
            with self._stats_lock:
                self._pressure_cycles += 1
        used_after, _ = self._l1.usage_bytes()
        summary = {
            "expired_locks": expired,
            "mandatory_evicted_objects": mandatory_objects,
            "mandatory_evicted_bytes": mandatory_bytes,
            "under_pressure": under_pressure,
            "pressure_evicted_objects": pressure_objects,
            "pressure_evicted_bytes": pressure_bytes,
            "usage_ratio_before": used / total if total else 0.0,
            "usage_ratio_after": used_after / total if total else 0.0,
        }
        with self._stats_lock:
            self._last_cycle = summary
        return (
            f"expired {expired} locks, evicted {mandatory_objects + pressure_objects} objects "
            f"({mandatory_bytes + pressure_bytes} bytes), usage {summary['usage_ratio_after']:.3f}"
        )

    def reclaim(self, bytes_needed: int) -> int:
        """Evict unlocked objects now, mandatory victims first, until `bytes_needed` are freed.
        Returns the bytes freed (0 when nothing could go, or when the policy failed)."""
        if bytes_needed <= 0:
            return 0
        with self._stats_lock:
            self._reclaim_calls += 1
        try:
            victims = itertools.chain(self._policy.mandatory_victims(), self._policy.victims())
            recorder = _Recorder(victims)
            evicted, freed = self._l1._evict_locked(recorder, bytes_needed)
            self._forget_stale(recorder.yielded, evicted)
        except Exception as exc:
            log.exception("on-the-spot eviction of %d bytes failed", bytes_needed)
            with self._stats_lock:
                self._reclaim_failures += 1
                self._last_reclaim_error = f"{type(exc).__name__}: {exc}"
            return 0
        with self._stats_lock:
            self._evicted_objects += len(evicted)
            self._evicted_bytes += freed
            self._reclaimed_bytes += freed
        return freed

    # -- status ---------------------------------------------------------------------------

    def report_status(self) -> dict[str, Any]:
        """`is_healthy`, `thread_alive`, `policy` (also as `eviction_policy`), `trigger_watermark`,
        `eviction_ratio`, `cycles`, `failures`, `last_error`, eviction totals, and the policy's own report."""
        thread = self._thread.to_dict()
        try:
            policy_report = self._policy.report_status()
        except Exception as exc:
            policy_report = {
                "is_healthy": False,
                "error": f"report_status failed: {type(exc).__name__}: {exc}",
            }
        started = thread["is_running"]
        healthy = (
            (not started or thread["is_alive"])
            and thread["consecutive_failures"] == 0
            and bool(policy_report.get("is_healthy", False))
        )
        with self._stats_lock:
            return {
                "is_healthy": healthy,
                "thread_name": self._thread.name,
                "thread_running": started,
                "thread_alive": thread["is_alive"],
                "interval_seconds": thread["interval"],
                "policy": self._policy.name,
                # LMCache 0.5.6's `lmcache describe kvcache` reads this name.
                "eviction_policy": self._policy.name,
                "trigger_watermark": self._trigger,
                "eviction_ratio": self._ratio,
                "cycles": thread["total_runs"],
                "failures": thread["failed_runs"],
                "consecutive_failures": thread["consecutive_failures"],
                "last_error": thread["last_error"],
                "last_run_at": thread["last_run_at"],
                "last_cycle": dict(self._last_cycle),
                "evicted_objects_total": self._evicted_objects,
                "evicted_bytes_total": self._evicted_bytes,
                "mandatory_evicted_objects_total": self._mandatory_evicted_objects,
                "pressure_cycles_total": self._pressure_cycles,
                "reclaim_calls_total": self._reclaim_calls,
                "reclaim_failures_total": self._reclaim_failures,
                "reclaimed_bytes_total": self._reclaimed_bytes,
                "last_reclaim_error": self._last_reclaim_error,
                "stale_keys_forgotten_total": self._stale_keys_forgotten,
                "policy_status": policy_report,
            }
