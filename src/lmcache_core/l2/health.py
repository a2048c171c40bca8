"""L2HealthMonitor: probes each L2 adapter's backend for real, so readiness and /status tell the truth."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock, ProbesBackend, capability_of

log = logging.getLogger(__name__)


@dataclass
class _Result:
    error: str | None
    checked_at: float
    failures_in_a_row: int


class L2HealthMonitor:
    """Runs `probe()` of every adapter that has one (ProbesBackend) on the `l2-health` periodic
    thread, right after start and then every `interval_seconds`, and keeps the last result per
    adapter for /status. `GET /readyz` probes through `probe()` too, so both agree. The first
    failure of an adapter is logged as an error naming the problem; its recovery as a warning."""

    def __init__(self, adapters: Sequence[L2AdapterEntry], *, interval_seconds: float = 5.0, clock: Clock) -> None:
        self._clock = clock
        self._probed = [e for e in adapters if capability_of(e.adapter, ProbesBackend) is not None]
        self._results: dict[int, _Result] = {}
        self._lock = threading.Lock()
        self._first_round = threading.Event()
        self.thread = PeriodicThread(
            "l2-health", self.probe_all, interval_seconds=interval_seconds, level="high", clock=clock
        )

    @property
    def enabled(self) -> bool:
        """Whether any adapter can be probed (otherwise there is no thread to run)."""
        return bool(self._probed)

    def start(self) -> None:
        if self._probed:
            self.thread.start()
            self.thread.wake()  # the first round now, not one interval later

    def stop(self) -> None:
        self.thread.stop(2.0)

    def probe(self, entry: L2AdapterEntry) -> str | None:
        """Probe one adapter now; the problem it reports, or None when its backend is usable
        (also None for an adapter that cannot be probed)."""
        prober = capability_of(entry.adapter, ProbesBackend)
        if prober is None:
            return None
        try:
            prober.probe()
            error = None
        except Exception as exc:
            error = str(exc) or type(exc).__name__
        with self._lock:
            previous = self._results.get(entry.index)
            streak = (previous.failures_in_a_row + 1) if (error and previous) else (1 if error else 0)
            self._results[entry.index] = _Result(error, self._clock.time(), streak)
        label = f"{entry.index}:{entry.name}"
        if error and (previous is None or previous.error is None):
            log.error("L2 adapter %s is not usable: %s (GET /readyz answers 503 until it is)", label, error)
        elif error is None and previous is not None and previous.error is not None:
            log.warning("L2 adapter %s is usable again", label)
        return error

    def probe_all(self) -> dict[str, Any]:
        """One round over every probed adapter (the thread's target)."""
        failing = {}
        for entry in self._probed:
            error = self.probe(entry)
            if error:
                failing[f"{entry.index}:{entry.name}"] = error
        self._first_round.set()
        return {"probed": len(self._probed), "failing": failing}

    def wait_first_round(self, timeout: float) -> bool:
        """Wait until every adapter was probed once (True), at most `timeout` seconds."""
        return not self._probed or self._first_round.wait(timeout)

    def result(self, entry: L2AdapterEntry) -> dict[str, Any] | None:
        """The last probe of `entry` for /status: ok, error, when, failures in a row; None
        when it was never probed (or cannot be)."""
        with self._lock:
            r = self._results.get(entry.index)
        if r is None:
            return None
        return {"ok": r.error is None, "error": r.error, "checked_at": r.checked_at, "failures_in_a_row": r.failures_in_a_row}
