"""StoreController: writes every finished L1 object back to every active L2 adapter."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock, MemoryHandle, MetricsSink, NullMetricsSink

log = logging.getLogger(__name__)

STORE_POLICIES = ("default", "skip_l1")

StoredCallback = Callable[[L2AdapterEntry, list[ObjectKey], list[int]], None]


@dataclass
class _AdapterCounters:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    bytes_completed: int = 0


@dataclass
class _Batch:
    keys: list[ObjectKey]
    sizes: list[int]
    remaining: int
    started: float
    ok_everywhere: list[bool] = field(default_factory=list)
    # The exact objects read (a CLEAR may replace an object of the same key meanwhile).
    handles: list[MemoryHandle] = field(default_factory=list)


class StoreController(L1Listener):
    """Copies each object whose L1 write finished to every adapter, asynchronously.

    The L1 event only enqueues the key (cheap, under the L1 lock); the controller thread
    read-locks a batch, submits one store per adapter and releases the locks when every adapter
    answered, so L1 never waits on L2. With `skip_l1`, objects stored everywhere leave L1."""

    def __init__(
        self,
        l1: L1Manager,
        adapters: Sequence[L2AdapterEntry],
        *,
        policy: str = "default",
        metrics: MetricsSink | None = None,
        batch_size: int = 64,
        max_in_flight_batches: int = 32,
        on_stored: StoredCallback | None = None,
        interval_seconds: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        if policy not in STORE_POLICIES:
            raise ValueError(f"l2 store policy must be one of {', '.join(STORE_POLICIES)}, got {policy!r}")
        self.l1 = l1
        self.adapters = list(adapters)
        self.policy = policy
        self.metrics = metrics or NullMetricsSink()
        self.batch_size = batch_size
        self._on_stored = on_stored
        self._queue: deque[tuple[ObjectKey, int]] = deque()
        self._skip: set[ObjectKey] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._slots = threading.BoundedSemaphore(max_in_flight_batches)
        self._max_in_flight = max_in_flight_batches
        self._in_flight = 0
        self._in_flight_keys = 0
        self._idle = threading.Condition(self._lock)
        self._counters = {e.index: _AdapterCounters() for e in self.adapters}
        self._dropped = 0
        self._written = 0
        self.thread = PeriodicThread(
            "l2-store", self._tick, interval_seconds=interval_seconds, level="high", clock=clock
        )
        """The write-back loop (in the registry behind /periodic-threads); woken by each
        finished L1 write and each finished store, and at least every `interval_seconds`."""
        self._last_error: str | None = None
        # A plain flag, not an Event: set from a signal handler on the main thread.
        self._abandoned = False
        self.unwritten_at_shutdown = 0
        """Objects still queued or in flight when a shutdown stopped waiting for them."""

    # -- L1 events ------------------------------------------------------------------------

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        if not self.adapters:
            return
        with self._lock:
            for key, size in zip(keys, sizes, strict=True):
                if key in self._skip:
                    self._skip.discard(key)  # came from L2: nothing to write back
                    continue
                self._queue.append((key, size))
        self.thread.wake()

    def skip_once(self, keys: Sequence[ObjectKey]) -> None:
        """The next write-finished event of these keys is not written back (prefetched from L2)."""
        with self._lock:
            self._skip.update(keys)

    def forget_skip(self, keys: Sequence[ObjectKey]) -> None:
        """Undo `skip_once` for keys whose write was aborted."""
        with self._lock:
            self._skip.difference_update(keys)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if not self.adapters:
            return  # nothing to write back to: no thread to supervise
        self._stopping = False
        self.thread.start()

    def stop(self, *, drain_timeout: float = 10.0) -> bool:
        """Stop after writing back what is queued and in flight (up to `drain_timeout`, or
        until `abandon()`). Returns True when everything was drained; otherwise the objects
        left unwritten are counted in `unwritten_at_shutdown`."""
        drained = self.drain(drain_timeout)
        self._stopping = True
        if not drained:
            self.unwritten_at_shutdown = self.pending_objects()
        self.thread.stop(2.0)
        return drained

    def abandon(self) -> None:
        """Make a running or later `drain()` return at once (a second stop signal). Only sets a
        flag, so a signal handler may call it."""
        self._abandoned = True

    def pending_objects(self) -> int:
        """Objects queued for write-back plus objects being written right now."""
        with self._lock:
            return len(self._queue) + self._in_flight_keys

    def drain(self, timeout: float) -> bool:
        """Wait until the queue is empty and no store is in flight."""
        deadline = time.monotonic() + timeout
        self.thread.wake()
        with self._idle:
            while self._queue or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0 or self._abandoned:
                    return False
                if not self.thread.is_alive():
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    # -- the loop -------------------------------------------------------------------------

    def _tick(self) -> dict[str, int]:
        """One run of the loop: submit queued objects in batches while a batch slot is free
        (a full pipeline leaves the rest queued: the run ends instead of blocking, and a
        finished store wakes the next one)."""
        submitted = 0
        while not self._stopping:
            if not self._slots.acquire(blocking=False):
                break
            with self._lock:
                if not self._queue:
                    self._idle.notify_all()
                    self._slots.release()
                    break
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            try:
                submitted += self._submit(batch)
            except Exception as exc:  # never let one bad batch stop write-back
                log.exception("L2 write-back batch failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            return {"submitted": submitted, "queued": len(self._queue), "in_flight_batches": self._in_flight}

    def _submit(self, batch: list[tuple[ObjectKey, int]]) -> int:
        """Read-lock and submit one batch, holding one batch slot (released here when nothing
        is left to write, else when the last adapter answered). Returns the objects submitted."""
        keys = [k for k, _ in batch]
        # A copy in flight on each object: a CLEAR meanwhile keeps its memory until we finish.
        # Not a hit: writing an object back does not make it recent (nor a fleet access).
        results = self.l1.reserve_read(keys, hit=False)
        locked: list[ObjectKey] = []
        handles: list[MemoryHandle] = []
        sizes: list[int] = []
        views: list[memoryview] = []
        for (key, size), (result, handle) in zip(batch, results, strict=True):
            if result is not OpResult.SUCCESS or handle is None:
                self._dropped += 1  # deleted, cleared or evicted before write-back: nothing to do
                continue
            locked.append(key)
            handles.append(handle)
            sizes.append(size)
            views.append(self.l1.pool.view(handle))
        if not locked:
            self._slots.release()
            return 0
        state = _Batch(locked, sizes, remaining=len(self.adapters), started=time.perf_counter(), handles=handles)
        state.ok_everywhere = [True] * len(locked)
        with self._lock:
            self._in_flight += 1
            self._in_flight_keys += len(locked)
        for entry in self.adapters:
            counters = self._counters[entry.index]
            counters.submitted += len(locked)
            self.metrics.inc("l2_stores_submitted", len(locked), adapter=entry.name)
            self.metrics.inc("l2_store_batches_submitted", adapter=entry.name)
            try:
                future = entry.adapter.submit_store(locked, views)
            except Exception as exc:
                log.exception("adapter %s refused a store batch", entry.name)
                failed: Future[list[bool]] = Future()
                failed.set_exception(exc)
                future = failed
            future.add_done_callback(functools.partial(self._on_done, state, entry))
        return len(locked)

    def _on_done(self, state: _Batch, entry: L2AdapterEntry, future: Future[list[bool]]) -> None:
        try:
            ok = future.result()
            if len(ok) != len(state.keys):
                raise RuntimeError(f"adapter returned {len(ok)} results for {len(state.keys)} keys")
        except Exception as exc:
            log.warning("L2 store to %s failed: %s", entry.name, exc)
            self._last_error = f"{entry.name}: {type(exc).__name__}: {exc}"
            ok = [False] * len(state.keys)
        counters = self._counters[entry.index]
        stored_keys = [k for k, good in zip(state.keys, ok, strict=True) if good]
        stored_sizes = [s for s, good in zip(state.sizes, ok, strict=True) if good]
        counters.completed += len(stored_keys)
        counters.failed += len(state.keys) - len(stored_keys)
        self.metrics.inc("l2_store_batches_completed", adapter=entry.name)
        counters.bytes_completed += sum(stored_sizes)
        self.metrics.inc("l2_stores_completed", len(stored_keys), adapter=entry.name)
        if len(stored_keys) < len(state.keys):
            self.metrics.inc("l2_stores_failed", len(state.keys) - len(stored_keys), adapter=entry.name)
        if stored_keys and self._on_stored:
            try:
                self._on_stored(entry, stored_keys, stored_sizes)
            except Exception:
                log.exception("on_stored callback failed")
        with self._lock:
            for i, good in enumerate(ok):
                if not good:
                    state.ok_everywhere[i] = False
            state.remaining -= 1
            last = state.remaining == 0
        if not last:
            return
        elapsed = time.perf_counter() - state.started
        if elapsed > 0:
            self.metrics.observe("l2_store_throughput_gbps", sum(state.sizes) / elapsed / 1e9)
        self.l1.finish_read(state.keys, handles=state.handles)
        if self.policy == "skip_l1":
            done = [k for k, good in zip(state.keys, state.ok_everywhere, strict=True) if good]
            if done:
                self.l1.delete(done)
        with self._lock:
            self._in_flight -= 1
            self._in_flight_keys -= len(state.keys)
            self._idle.notify_all()
        self._slots.release()
        self.thread.wake()  # a slot is free: queued objects can go

    # -- status ---------------------------------------------------------------------------

    def report_status(self) -> dict[str, Any]:
        alive = self.is_alive()
        with self._lock:
            queue = len(self._queue)
            in_flight = self._in_flight
            in_flight_keys = self._in_flight_keys
        return {
            "is_healthy": (alive or not self.adapters) and self.thread.unhealthy_reason() is None,
            "thread_alive": alive,
            "thread": self.thread.to_dict() if self.adapters else None,
            "policy": self.policy,
            "queue_size": queue,
            "in_flight_batches": in_flight,
            "in_flight_keys": in_flight_keys,
            "max_in_flight_batches": self._max_in_flight,
            "dropped_before_write_back": self._dropped,
            "unwritten_at_shutdown": self.unwritten_at_shutdown,
            "last_error": self._last_error,
            "adapters": {
                f"{e.index}:{e.name}": {
                    "submitted": self._counters[e.index].submitted,
                    "completed": self._counters[e.index].completed,
                    "failed": self._counters[e.index].failed,
                    "bytes_completed": self._counters[e.index].bytes_completed,
                }
                for e in self.adapters
            },
        }
