"""Circuit breaking for any storage backend: fail fast while it is unreachable, recover alone.

`CircuitBreaker` is the state machine; `CircuitBreakingBackend` wraps a StorageBackend with it:
every call first checks the circuit (open: BackendUnreachableError at once, no I/O), and every
BackendUnreachableError a call raises counts towards opening it. Once the back-off has passed,
one probe (the backend's `probe()` when it has one) runs on the adapter's threads; it closes the
circuit when the backend answers, or re-opens it with a doubled back-off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_core.errors import BackendUnreachableError, ConfigError
from lmcache_core.keys import ObjectKey
from lmcache_core.ports import (
    Clock,
    DeletesInBatches,
    KeyPage,
    L2Usage,
    ProbesBackend,
    StorageBackend,
    capability_of,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Cap = TypeVar("_Cap")

CIRCUIT_CLOSED = "closed"
CIRCUIT_OPEN = "open"
CIRCUIT_HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    """When the circuit opens (`threshold` consecutive unreachable failures) and how long it
    stays open before a probe (`backoff_seconds`, doubling per failed probe up to the cap)."""

    threshold: int = 5
    backoff_seconds: float = 5.0
    max_backoff_seconds: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise ConfigError(f"circuit_breaker_threshold must be an integer > 0, got {self.threshold!r}")
        for name in ("backoff_seconds", "max_backoff_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"circuit_breaker_{name} must be a number > 0, got {value!r}")


class CircuitBreaker:
    """Counts consecutive connection failures; opens after `threshold`; lets one probe through
    after a back-off that doubles (up to a cap) each time a probe fails. Thread-safe."""

    def __init__(self, threshold: int, backoff_seconds: float, max_backoff_seconds: float, clock: Clock) -> None:
        self._threshold = threshold
        self._base_backoff = backoff_seconds
        self._max_backoff = max(max_backoff_seconds, backoff_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CIRCUIT_CLOSED
        self._failures = 0
        self._backoff = backoff_seconds
        self._retry_at = 0.0
        self._times_opened = 0

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def is_closed(self) -> bool:
        with self._lock:
            return self._state == CIRCUIT_CLOSED

    def record_success(self) -> None:
        """The endpoint answered (any answer): the failure streak ends."""
        with self._lock:
            if self._state == CIRCUIT_CLOSED:
                self._failures = 0

    def record_failure(self) -> bool:
        """A connection-level failure; True when this one opened the circuit."""
        with self._lock:
            if self._state != CIRCUIT_CLOSED:
                return False  # stragglers of an already-open circuit change nothing
            self._failures += 1
            if self._failures < self._threshold:
                return False
            self._open_locked(self._base_backoff)
            return True

    def try_begin_probe(self) -> bool:
        """True (and half-open) for exactly one caller once the back-off has passed."""
        with self._lock:
            if self._state != CIRCUIT_OPEN or self._clock.monotonic() < self._retry_at:
                return False
            self._state = CIRCUIT_HALF_OPEN
            return True

    def end_probe(self, reachable: bool) -> None:
        """Close the circuit after a successful probe, or re-open it with a doubled back-off."""
        with self._lock:
            if self._state != CIRCUIT_HALF_OPEN:
                return
            if reachable:
                self._state = CIRCUIT_CLOSED
                self._failures = 0
                self._backoff = self._base_backoff
            else:
                self._open_locked(min(self._backoff * 2, self._max_backoff))

    def _open_locked(self, backoff: float) -> None:
        self._state = CIRCUIT_OPEN
        self._backoff = backoff
        self._retry_at = self._clock.monotonic() + backoff
        self._times_opened += 1

    def snapshot(self) -> dict[str, Any]:
        """The circuit's status fields (`circuit`, `consecutive_failures`, ...)."""
        with self._lock:
            out: dict[str, Any] = {
                "circuit": self._state,
                "consecutive_failures": self._failures,
                "circuit_times_opened": self._times_opened,
            }
            if self._state == CIRCUIT_OPEN:
                out["circuit_retry_in_seconds"] = round(max(0.0, self._retry_at - self._clock.monotonic()), 3)
                out["circuit_backoff_seconds"] = self._backoff
            return out


class CircuitBreakingBackend:
    """A StorageBackend that fails fast while the one it wraps is unreachable.

    `schedule(fn)` runs `fn` off the caller's thread (the adapter's pool) and returns False when
    it cannot (closed); probes run there, so no caller ever waits for one."""

    def __init__(
        self,
        inner: StorageBackend,
        settings: BreakerSettings,
        *,
        clock: Clock,
        instruments: L2Instruments,
        schedule: Callable[[Callable[[], None]], bool],
    ) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.breaker = CircuitBreaker(settings.threshold, settings.backoff_seconds, settings.max_backoff_seconds, clock)
        self._instruments = instruments
        self._schedule = schedule

    # ------------------------------------------------------------------ the gate

    def is_open(self) -> bool:
        """Whether calls fail fast now (open or half-open); schedules a probe when one is due."""
        if self.breaker.is_closed:
            return False
        self.maybe_probe()
        return True

    def maybe_probe(self) -> None:
        """Schedule one probe when the back-off has passed. Never blocks."""
        if self.breaker.try_begin_probe() and not self._schedule(self._probe_once):
            self.breaker.end_probe(False)

    def _probe_once(self) -> None:
        prober = capability_of(self.inner, ProbesBackend)
        try:
            if prober is not None:
                prober.probe()
            reachable = True
        except BackendUnreachableError:
            reachable = False
        except Exception:  # the backend answered (a missing bucket is no connection problem)
            reachable = True
        self.breaker.end_probe(reachable)
        if reachable:
            log.warning("L2 adapter %r (%s): backend reachable again; circuit closed", self._instruments.adapter, self.kind)
        else:
            log.warning("L2 adapter %r (%s): probe failed; circuit stays open", self._instruments.adapter, self.kind)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self.is_open():
            raise BackendUnreachableError(
                f"L2 adapter {self._instruments.adapter!r} ({self.kind}) is unavailable: circuit open"
            )
        try:
            result = fn(*args)
        except BackendUnreachableError as exc:
            if self.breaker.record_failure():
                log.warning(
                    "L2 adapter %r (%s): circuit opened after repeated connection failures (%s); failing fast",
                    self._instruments.adapter,
                    self.kind,
                    exc,
                )
                self._instruments.circuit_opened()
            raise
        self.breaker.record_success()
        return result

    # ------------------------------------------------------------------ StorageBackend

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        return self._call(self.inner.put, key, payload)

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        return self._call(self.inner.get_into, key, buffer)

    def exists(self, key: ObjectKey) -> bool:
        return self._call(self.inner.exists, key)

    def delete(self, key: ObjectKey) -> bool:
        return self._call(self.inner.delete, key)

    def delete_many(self, keys: Sequence[ObjectKey]) -> list[bool]:
        batch = capability_of(self.inner, DeletesInBatches)
        if batch is not None:
            return self._call(batch.delete_many, keys)
        return [self._call(self.inner.delete, key) for key in keys]

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        def listing() -> KeyPage:
            return self.inner.list_keys(page_size, page_token, model_name=model_name, cache_salt=cache_salt)

        return self._call(listing)

    def usage(self) -> L2Usage:
        return self.inner.usage()

    def probe(self) -> None:
        """The wrapped backend's probe, feeding the breaker (readiness sees the same answers)."""
        prober = capability_of(self.inner, ProbesBackend)
        if prober is None:
            return
        try:
            prober.probe()
        except BackendUnreachableError:
            self.breaker.record_failure()
            raise
        except Exception:
            self.breaker.record_success()
            raise
        self.breaker.record_success()

    def report_status(self) -> dict[str, Any]:
        # Cheap: at most it schedules a probe, so /status polling alone lets a quiet adapter recover.
        self.is_open()
        breaker = self.breaker.snapshot()
        report = {**self.inner.report_status(), **breaker}
        report["is_healthy"] = bool(report.get("is_healthy", True)) and breaker["circuit"] == CIRCUIT_CLOSED
        return report

    def close(self) -> None:
        self.inner.close()

    def capability(self, protocol: type[_Cap]) -> _Cap | None:
        """Probing goes through the breaker; any other capability is the wrapped backend's."""
        if protocol is ProbesBackend or protocol is DeletesInBatches:
            return self if capability_of(self.inner, protocol) is not None else None  # type: ignore[return-value]
        return capability_of(self.inner, protocol)
