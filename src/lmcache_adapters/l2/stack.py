"""The standard L2 stack: what turns a narrow StorageBackend into a full L2Adapter.

Every backend (ours and third parties') gets the same wrappers, composed here and nowhere else:

    BackendL2Adapter            Futures on one thread pool, pending count, closed flag,
      KeyLocks                  lookup locks; skip-locked delete without a window,
      L2Instruments             metrics labelled adapter=<configured name>, kind=<kind>,
      CircuitBreakingBackend    (optional) fail fast while the backend is unreachable,
        the backend             put / get_into / exists / delete / list / usage / status.

The serde wrapper (`serde.py`) goes on top when an adapter's config has a `serde` field; the
container adds it, as it is configured per adapter and not chosen by the backend.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from lmcache_adapters.l2.batch import check_lengths, failed_future
from lmcache_adapters.l2.breaker import BreakerSettings, CircuitBreakingBackend
from lmcache_adapters.l2.instruments import L2Instruments
from lmcache_adapters.l2.locks import KeyLocks
from lmcache_core.clock import SystemClock
from lmcache_core.errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptObjectError,
    NotInitializedError,
)
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.context import AdapterContext
from lmcache_core.ports import (
    Clock,
    DeletesInBatches,
    Interruptible,
    KeyPage,
    L2Adapter,
    L2Usage,
    MetricsSink,
    SeesKeyLocks,
    StorageBackend,
    capability_of,
)

__all__ = [
    "DEFAULT_WORKERS",
    "MAX_WORKERS_LIMIT",
    "BackendL2Adapter",
    "BreakerSettings",
    "StackContext",
    "as_l2_adapter",
    "check_workers",
]

log = logging.getLogger(__name__)

_Cap = TypeVar("_Cap")
_Item = TypeVar("_Item")

DEFAULT_WORKERS = 4
MAX_WORKERS_LIMIT = 256


def check_workers(max_workers: object) -> None:
    """ConfigError unless `max_workers` is an int in 1..MAX_WORKERS_LIMIT (a factory that opens
    devices before building the stack checks first)."""
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or not 1 <= max_workers <= MAX_WORKERS_LIMIT:
        raise ConfigError(f"max_workers must be an integer in 1..{MAX_WORKERS_LIMIT}, got {max_workers!r}")


class BackendL2Adapter:
    """A StorageBackend behind the standard wrappers: a complete L2Adapter.

    Batches run on the adapter's pool (one Future per batch, per-key results): split into at
    most `max_workers` parallel tasks for a backend whose calls wait on I/O (`split_batches`,
    the default), or one task per batch, keys in order, for a memory-speed backend. A key whose call raises fails alone (False). After
    `close()` every submit fails with NotInitializedError; close waits for the calls in flight,
    then closes the backend. Capabilities of the backend (probe, reconfiguration, device
    ownership, stored sizes) are found with `capability_of(adapter, Protocol)`."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        name: str | None = None,
        max_workers: int = DEFAULT_WORKERS,
        metrics: MetricsSink | None = None,
        clock: Clock | None = None,
        circuit_breaker: BreakerSettings | None = None,
        instruments: L2Instruments | None = None,
        split_batches: bool = True,
    ) -> None:
        check_workers(max_workers)
        self.backend = backend
        self.kind: str = backend.kind
        self.name: str = name or backend.kind
        self.max_workers = max_workers
        self._split = split_batches
        self.instruments = instruments or L2Instruments(metrics, adapter=self.name, kind=self.kind)
        self._lock = threading.Lock()
        self._closed = False
        self._pending = 0
        self._locks = KeyLocks()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"lmcache-l2-{self.name}")
        self._gate: CircuitBreakingBackend | None = None
        io: StorageBackend = backend
        if circuit_breaker is not None:
            self._gate = CircuitBreakingBackend(
                backend, circuit_breaker, clock=clock or SystemClock(), instruments=self.instruments, schedule=self._schedule
            )
            io = self._gate
        self._io = io
        lock_user = capability_of(backend, SeesKeyLocks)
        if lock_user is not None:
            lock_user.attach_key_locks(self._locks)

    # ------------------------------------------------------------------ asynchronous operations

    def submit_store(self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]) -> Future[list[bool]]:
        """Store each payload; per key True when the backend stored it."""
        check_lengths(keys, payloads, "payloads")
        return self._run(list(zip(keys, payloads, strict=True)), self._put_one)

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Hit bitmap; every hit holds one lock count until `unlock`."""
        return self._run(list(keys), self._lookup_one)

    def submit_load(self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]) -> Future[list[bool]]:
        """Load each key into its buffer; a missing, wrong-sized or corrupt object is False."""
        check_lengths(keys, buffers, "buffers")
        return self._run(list(zip(keys, buffers, strict=True)), self._load_one)

    def _put_one(self, item: tuple[ObjectKey, memoryview]) -> bool:
        key, payload = item
        return self._io.put(key, _flat(payload))

    def _lookup_one(self, key: ObjectKey) -> bool:
        return self._locks.lock_if_present(key, self._io.exists)

    def _load_one(self, item: tuple[ObjectKey, memoryview]) -> bool:
        key, buffer = item
        try:
            target = _flat(buffer)
        except TypeError:  # non-contiguous: cannot be filled in one copy
            return False
        if target.readonly:
            return False
        try:
            return self._io.get_into(key, target)
        except CorruptObjectError as exc:
            log.warning("L2 adapter %r (%s): %r failed verification (%s); removed", self.name, self.kind, key, exc)
            self.instruments.checksum_failure()
            return False

    # ------------------------------------------------------------------ synchronous operations

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        """Release one lock count per key; unknown or unlocked keys are ignored."""
        self._locks.release(keys)

    def delete(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Remove the unlocked keys; False for locked, absent or repeated ones (see KeyLocks)."""
        with self._lock:
            closed = self._closed
        if closed or not keys:
            return [False] * len(keys)
        if self._gate is not None and self._gate.is_open():
            return [False] * len(keys)
        return self._locks.delete_unlocked(keys, self._remove)

    def _remove(self, keys: list[ObjectKey]) -> list[bool]:
        try:
            batch = capability_of(self._io, DeletesInBatches)
            if batch is not None:
                return batch.delete_many(keys)
            return [self._io.delete(key) for key in keys]
        except BackendUnavailableError as exc:
            log.warning("L2 adapter %r (%s): delete failed: %s", self.name, self.kind, exc)
            return [False] * len(keys)

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        """The backend's listing (through the circuit breaker when there is one)."""
        return self._io.list_keys(page_size, page_token, model_name=model_name, cache_salt=cache_salt)

    def usage(self) -> L2Usage:
        return self._io.usage()

    def report_status(self) -> dict[str, Any]:
        """The backend's status plus the wrappers' fields; unhealthy once closed."""
        report = dict(self._io.report_status())
        with self._lock:
            closed, pending = self._closed, self._pending
        report.setdefault("type", self.type_name)
        report.setdefault("kind", self.kind)
        report.setdefault("name", self.name)
        report["is_healthy"] = bool(report.get("is_healthy", True)) and not closed
        report["locked_key_count"] = self._locks.locked_count()
        report["pending_operations"] = pending
        report["closed"] = closed
        return report

    def close(self) -> None:
        """Refuse new work, cancel queued work, wait for calls in flight, close the backend. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        interruptible = capability_of(self.backend, Interruptible)
        if interruptible is not None:
            interruptible.interrupt()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._io.close()

    # ------------------------------------------------------------------ declared capabilities

    @property
    def type_name(self) -> str:
        """The class /l2/adapters shows: a kind's own adapter class, else the backend's class."""
        return type(self).__name__ if type(self) is not BackendL2Adapter else type(self.backend).__name__

    def capability(self, protocol: type[_Cap]) -> _Cap | None:
        """This adapter when it implements `protocol`, else the backend's (through the breaker)."""
        if isinstance(self, protocol):
            return self
        return capability_of(self._io, protocol)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, backend={self.backend!r})"

    # ------------------------------------------------------------------ execution

    def _schedule(self, fn: Callable[[], None]) -> bool:
        """Run `fn` on the pool (breaker probes); False once the pool is shut down."""
        try:
            self._executor.submit(_logged, fn)
        except RuntimeError:
            return False
        return True

    def _run(self, items: list[_Item], op: Callable[[_Item], bool]) -> Future[list[bool]]:
        with self._lock:
            closed = self._closed
        if closed:
            return failed_future(NotInitializedError(f"L2 adapter {self.name!r} ({self.kind}) is closed"))
        out: Future[list[bool]] = Future()
        n = len(items)
        if n == 0:
            out.set_result([])
            return out
        if self._gate is not None and self._gate.is_open():
            out.set_result([False] * n)  # fail fast: no I/O while the circuit is open
            return out
        results = [False] * n
        tasks = min(n, self.max_workers) if self._split else 1
        remaining = [tasks]
        with self._lock:
            self._pending += 1

        def chunk(start: int) -> None:
            for index in range(start, n, tasks):
                results[index] = self._guarded(op, items[index])

        def finished(_task: Future[None]) -> None:
            with self._lock:
                remaining[0] -= 1
                last = remaining[0] == 0
                if last:
                    self._pending -= 1
            if last:
                out.set_result(list(results))  # a cancelled chunk (close) leaves its keys False

        for start in range(tasks):
            try:
                task = self._executor.submit(chunk, start)
            except RuntimeError:  # close() shut the pool between the check and this submit
                task = Future()
                task.cancel()
                finished(task)
                continue
            task.add_done_callback(finished)
        return out

    def _guarded(self, op: Callable[[_Item], bool], item: _Item) -> bool:
        try:
            return bool(op(item))
        except BackendUnavailableError as exc:
            log.debug("L2 adapter %r (%s): %s", self.name, self.kind, exc)
        except Exception:
            log.exception("L2 adapter %r (%s): unexpected error in an operation", self.name, self.kind)
        return False


@dataclass(frozen=True)
class StackContext:
    """What the stack takes from the server for one configured adapter: its configured name
    (the `adapter` metric label), the metrics sink and the clock."""

    name: str
    metrics: MetricsSink | None = None
    clock: Clock | None = None

    @classmethod
    def of(cls, context: object, config: Mapping[str, Any], kind: str) -> StackContext:
        """Read from a factory's context: the server's `AdapterContext`, a mapping with the same
        keys (tests), or None; a member that is missing or of the wrong type is left out."""
        members: Mapping[str, Any]
        if isinstance(context, AdapterContext):
            members = {"name": context.name, "metrics": context.metrics, "clock": context.clock}
        elif isinstance(context, Mapping):
            members = context
        else:
            members = {}
        metrics, clock = members.get("metrics"), members.get("clock")
        return cls(
            name=str(config.get("name") or members.get("name") or kind),
            metrics=metrics if isinstance(metrics, MetricsSink) else None,
            clock=clock if isinstance(clock, Clock) else None,
        )


def as_l2_adapter(
    built: L2Adapter | StorageBackend,
    *,
    name: str,
    metrics: MetricsSink | None = None,
    clock: Clock | None = None,
) -> L2Adapter:
    """What an adapter factory returned, as an L2Adapter: a complete adapter is used as it is;
    a bare StorageBackend gets the standard stack with default settings."""
    if isinstance(built, L2Adapter):
        return built
    if isinstance(built, StorageBackend):
        return BackendL2Adapter(built, name=name, metrics=metrics, clock=clock)
    raise ConfigError(
        f"the factory returned {type(built).__name__}, which is neither an L2Adapter nor a StorageBackend"
    )


def _flat(view: memoryview) -> memoryview:
    """A flat unsigned-byte view (raises TypeError for a non-contiguous one)."""
    view = memoryview(view)
    if view.format == "B" and view.ndim == 1:
        return view
    return view.cast("B")


def _logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("L2 background task failed")
