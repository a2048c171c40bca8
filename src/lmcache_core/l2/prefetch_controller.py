"""PrefetchController: brings the leading run of L2 hits into L1 for a lookup, asynchronously."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.periodic import PeriodicThread
from lmcache_core.ports import Clock, MemoryHandle, MetricsSink, NullMetricsSink

log = logging.getLogger(__name__)

PREFETCH_POLICIES = ("default", "retain")

IN_L1 = -1
"""Owner marker of a key served from L1 rather than loaded from an adapter."""

LoadedCallback = Callable[[L2AdapterEntry, list[ObjectKey]], None]
SkipWriteBack = Callable[[Sequence[ObjectKey]], None]


class PrefetchJob:
    """One lookup's L2 prefetch. `loaded_count` keys (from the start of `keys`, a multiple of
    `group_size`) are readable in L1 and hold `1 + extra_read_count` promise read locks once
    `done`; `locked_handles` names the exact objects (one per key of that run).

    A *warm* job (an operator warming L1 before requests arrive) looks at every key, not only
    the leading run: `loaded_count` keys are in L1 once `done`, loaded ones kept (never
    temporary) and nothing read-locked; `keys` then holds only the keys found."""

    def __init__(
        self, keys: Sequence[ObjectKey], object_size: int, group_size: int, extra_read_count: int, warm: bool = False
    ) -> None:
        self.keys = list(keys)
        self.requested_count = len(self.keys)
        self.warm = warm
        self.object_size = object_size
        self.group_size = max(1, group_size)
        self.extra_read_count = extra_read_count
        self.state = "queued"
        self.l2_hit_count: int | None = None
        self.loaded_count = 0
        self.error: str | None = None
        self.submitted_at = time.monotonic()
        self.finished_at: float | None = None
        self._event = threading.Event()
        self._cancelled = False
        # per key: index of the adapter chosen to load it (leading run only)
        self._owners: list[int] = []
        self._l2_locks: dict[int, list[ObjectKey]] = {}
        self._reserved: list[ObjectKey] = []
        self._existing: list[ObjectKey] = []
        # The exact L1 object of each key reserved or read-locked (a CLEAR may put a newer
        # object of the same key in the table meanwhile).
        self._handles: dict[ObjectKey, MemoryHandle] = {}
        self.locked_handles: list[MemoryHandle] = []
        self._callbacks: list[Callable[[PrefetchJob], None]] = []
        self._callback_lock = threading.Lock()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def add_done_callback(self, fn: Callable[[PrefetchJob], None]) -> None:
        """Call `fn(job)` once the job is done (at once when it already is)."""
        with self._callback_lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _set_done(self) -> None:
        with self._callback_lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("prefetch done-callback failed")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until done (True) or `timeout` seconds passed (False)."""
        return self._event.wait(timeout)

    def cancel(self) -> None:
        """Ask the job to stop; keys it already locked are released when it finishes."""
        self._cancelled = True


class PrefetchController:
    """Runs prefetch jobs, at most `max_in_flight` at once; the rest wait in a queue.

    Pipeline per job, driven by adapter Futures (no thread blocks on I/O): look the keys up in
    every adapter (lowest index wins), keep the leading run of hits, allocate temporary L1
    objects (an out-of-memory plan shrinks to what fits), load, make them readable and
    read-locked, release the L2 locks, publish the count."""

    def __init__(
        self,
        l1: L1Manager,
        adapters: Sequence[L2AdapterEntry],
        *,
        max_in_flight: int = 8,
        policy: str = "default",
        metrics: MetricsSink | None = None,
        skip_write_back: SkipWriteBack | None = None,
        forget_skip: SkipWriteBack | None = None,
        on_loaded: LoadedCallback | None = None,
        interval_seconds: float = 1.0,
        stuck_after_seconds: float = 60.0,
        clock: Clock | None = None,
    ) -> None:
        if policy not in PREFETCH_POLICIES:
            raise ValueError(f"l2 prefetch policy must be one of {', '.join(PREFETCH_POLICIES)}, got {policy!r}")
        if max_in_flight < 1:
            raise ValueError("l2 prefetch max in flight must be >= 1")
        self.l1 = l1
        self.adapters = list(adapters)
        self.max_in_flight = max_in_flight
        self.policy = policy
        self.metrics = metrics or NullMetricsSink()
        self._skip_write_back = skip_write_back
        self._forget_skip = forget_skip
        self._on_loaded = on_loaded
        self._lock = threading.Lock()
        self._queue: deque[PrefetchJob] = deque()
        self._running: set[PrefetchJob] = set()
        self._lookup_phase = 0
        self._load_phase = 0
        self.completed = 0
        self.failed = 0
        self.keys_loaded = 0
        self._closed = False
        self.stuck_after_seconds = stuck_after_seconds
        self._stuck_jobs = 0
        self.thread = PeriodicThread(
            "l2-prefetch", self._housekeeping, interval_seconds=interval_seconds, level="high", clock=clock
        )
        """Jobs are driven by the adapters' Futures; this loop starts queued jobs a missed
        callback left waiting and counts jobs stuck on an adapter that never answers."""

    # -- API ------------------------------------------------------------------------------

    def submit(
        self,
        keys: Sequence[ObjectKey],
        *,
        object_size: int,
        group_size: int = 1,
        extra_read_count: int = 0,
        warm: bool = False,
    ) -> PrefetchJob:
        """Start prefetching `keys` (chunk-major, `group_size` keys per chunk); `warm`: every
        key found, kept in L1 unlocked (see PrefetchJob)."""
        if object_size <= 0:
            raise ValueError("object_size must be > 0")
        if warm:
            group_size, extra_read_count = 1, 0
        job = PrefetchJob(keys, object_size, group_size, extra_read_count, warm)
        usable = len(job.keys) - len(job.keys) % job.group_size
        if not self.adapters or usable == 0 or self._closed:
            job.l2_hit_count = 0
            self._finish(job, "done", started=False)
            return job
        # Counted only for jobs that really look keys up in L2.
        self.metrics.inc("prefetch_lookups")
        self.metrics.inc("prefetch_lookup_keys", len(job.keys))
        with self._lock:
            self._queue.append(job)
        self._pump()
        return job

    def start(self) -> None:
        self.thread.start()

    def _housekeeping(self) -> dict[str, Any]:
        self._pump()
        now = time.monotonic()
        with self._lock:
            ages = [now - job.submitted_at for job in self._running]
            queued = len(self._queue)
        self._stuck_jobs = sum(1 for age in ages if age > self.stuck_after_seconds)
        return {
            "running": len(ages),
            "queued": queued,
            "oldest_job_seconds": round(max(ages, default=0.0), 3),
            "stuck_jobs": self._stuck_jobs,
        }

    def close(self, timeout: float = 5.0) -> None:
        """Refuse new jobs, wait (bounded) for running ones, stop the loop."""
        try:
            self._close(timeout)
        finally:
            self.thread.stop(2.0)

    def _close(self, timeout: float) -> None:
        self._closed = True
        with self._lock:
            queued = list(self._queue)
            self._queue.clear()
        for job in queued:
            job.l2_hit_count = job.l2_hit_count or 0
            self._finish(job, "cancelled", started=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return
            time.sleep(0.01)

    # -- pipeline -------------------------------------------------------------------------

    def _pump(self) -> None:
        to_start: list[PrefetchJob] = []
        cancelled: list[PrefetchJob] = []
        with self._lock:
            while self._queue and len(self._running) < self.max_in_flight:
                job = self._queue.popleft()
                if job._cancelled:  # its lookup was dropped while it waited: never started
                    cancelled.append(job)
                    continue
                self._running.add(job)
                to_start.append(job)
        for job in cancelled:
            job.l2_hit_count = job.l2_hit_count or 0
            self._finish(job, "cancelled", started=False)
        for job in to_start:
            self._start_lookup(job)

    def _start_lookup(self, job: PrefetchJob) -> None:
        job.state = "lookup"
        with self._lock:
            self._lookup_phase += 1
        pending = {"n": len(self.adapters)}
        bitmaps: dict[int, list[bool]] = {}
        done_lock = threading.Lock()

        def on_lookup(entry: L2AdapterEntry, fut: Future[list[bool]]) -> None:
            try:
                bitmap = fut.result()
                if len(bitmap) != len(job.keys):
                    raise RuntimeError(f"{entry.name} returned {len(bitmap)} results for {len(job.keys)} keys")
            except Exception as exc:
                log.warning("L2 lookup on %s failed: %s", entry.name, exc)
                self.metrics.inc("prefetch_failures", reason="lookup_error")
                bitmap = [False] * len(job.keys)
            with done_lock:
                bitmaps[entry.index] = [bool(b) for b in bitmap]
                pending["n"] -= 1
                last = pending["n"] == 0
            if last:
                self._guard(job, lambda: self._plan(job, bitmaps))

        for entry in self.adapters:
            try:
                fut = entry.adapter.submit_lookup_and_lock(job.keys)
            except Exception as exc:
                failed: Future[list[bool]] = Future()
                failed.set_exception(exc)
                fut = failed
            fut.add_done_callback(functools.partial(on_lookup, entry))

    def _plan(self, job: PrefetchJob, bitmaps: dict[int, list[bool]]) -> None:
        with self._lock:
            self._lookup_phase -= 1
        if job.warm:
            self._plan_warm(job, bitmaps)
            return
        owners: list[int] = []
        for i in range(len(job.keys)):
            owner = next((e.index for e in self.adapters if bitmaps[e.index][i]), None)
            if owner is None:
                # A chunk missing from L2 but back in L1 (stored again meanwhile) does not end
                # the prefix: it is read-locked in L1 below instead of being loaded.
                if not self.l1.is_readable(job.keys[i]):
                    break
                owner = IN_L1
            owners.append(owner)
        run = len(owners) - len(owners) % job.group_size
        owners = owners[:run]
        job.l2_hit_count = run
        # Keep exactly the locks we will load from; release every other lock the lookup took.
        for entry in self.adapters:
            bitmap = bitmaps[entry.index]
            keep = [job.keys[i] for i in range(run) if owners[i] == entry.index]
            release = [job.keys[i] for i, hit in enumerate(bitmap) if hit and (i >= run or owners[i] != entry.index)]
            if keep:
                job._l2_locks[entry.index] = keep
            if release:
                self._unlock(entry, release)
        if run == 0 or job._cancelled:
            self._complete(job, 0)
            return
        self.metrics.inc("prefetch_hits", run)
        self._reserve(job, owners)

    def _plan_warm(self, job: PrefetchJob, bitmaps: dict[int, list[bool]]) -> None:
        """Every key an adapter holds (lowest index wins) or L1 already has; the job's keys
        shrink to those, so the prefix-shaped steps below treat them as one run."""
        chosen: dict[int, int] = {}
        for i, key in enumerate(job.keys):
            owner = next((e.index for e in self.adapters if bitmaps[e.index][i]), None)
            if owner is None and self.l1.is_readable(key):
                owner = IN_L1
            if owner is not None:
                chosen[i] = owner
        for entry in self.adapters:
            bitmap = bitmaps[entry.index]
            keep = [job.keys[i] for i, owner in chosen.items() if owner == entry.index]
            release = [job.keys[i] for i, hit in enumerate(bitmap) if hit and chosen.get(i) != entry.index]
            if keep:
                job._l2_locks[entry.index] = keep
            if release:
                self._unlock(entry, release)
        job.keys = [job.keys[i] for i in chosen]
        job.l2_hit_count = len(chosen)
        if not chosen or job._cancelled:
            self._complete(job, 0)
            return
        self.metrics.inc("prefetch_hits", len(chosen))
        self._reserve(job, list(chosen.values()))

    def _reserve(self, job: PrefetchJob, owners: list[int]) -> None:
        """Allocate temporary objects for the run; shrink it (whole groups) while L1 is full."""
        n = len(owners)
        temporary = self.policy == "default" and not job.warm
        while n > 0:
            keys = job.keys[:n]
            results = self.l1.reserve_write(keys, [job.object_size] * n, WriteMode.NEW, temporary=temporary)
            if all(r is not OpResult.OUT_OF_MEMORY for r, _ in results):
                break
            self.metrics.inc("prefetch_failures", reason="l1_out_of_memory")
            n = (n // 2) - (n // 2) % job.group_size
        if n == 0:
            self._complete(job, 0)
            return
        reserved: list[ObjectKey] = []
        existing: list[ObjectKey] = []
        usable = 0
        fresh = [job.keys[i] for i, (r, _) in enumerate(results) if r is OpResult.SUCCESS]
        if fresh and self._skip_write_back:
            self._skip_write_back(fresh)  # their write-finished event must not trigger a write-back
        if job.warm:
            # Not a prefix: load what was reserved, count what L1 has; nothing is read-locked.
            reserved = fresh
            for i, (r, h) in enumerate(results):
                if r is OpResult.SUCCESS and h is not None:
                    job._handles[job.keys[i]] = h
            existing = [job.keys[i] for i, (r, _) in enumerate(results) if r is OpResult.KEY_IN_WRONG_STATE]
            results = []
            usable = n
        for i, (result, handle) in enumerate(results):
            key = job.keys[i]
            if result is OpResult.SUCCESS and handle is not None:
                reserved.append(key)
                job._handles[key] = handle
                usable = i + 1
                continue
            # Already in L1 (stored meanwhile): read-lock it instead of loading it (promises,
            # like the lookup's own: the engine's retrieve turns them into copies).
            if result is OpResult.KEY_IN_WRONG_STATE:
                r, existing_handle = self.l1.reserve_read([key], job.extra_read_count, promise=True)[0]
                if r is OpResult.SUCCESS and existing_handle is not None:
                    existing.append(key)
                    job._handles[key] = existing_handle
                    usable = i + 1
                    continue
            break
        # Anything reserved past the first unusable key is useless: abort it.
        tail = [k for k in reserved if job.keys.index(k) >= usable]
        if tail:
            self._abort(tail, job)
            dropped = set(tail)
            reserved = [k for k in reserved if k not in dropped]
        job._reserved = reserved
        job._existing = existing
        job.state = "load"
        with self._lock:
            self._load_phase += 1
        self._load(job, owners[:usable])

    def _load(self, job: PrefetchJob, owners: list[int]) -> None:
        by_adapter: dict[int, list[ObjectKey]] = {}
        reserved = set(job._reserved)
        for i, owner in enumerate(owners):
            key = job.keys[i]
            # An IN_L1 key that had to be reserved afresh was evicted since the lookup: no
            # adapter holds it, so it stays unloaded and ends the run.
            if key in reserved and owner != IN_L1:
                by_adapter.setdefault(owner, []).append(key)
        if not by_adapter:
            self._finish_load(job, {}, len(owners))
            return
        loaded: dict[ObjectKey, bool] = {}
        pending = {"n": len(by_adapter)}
        done_lock = threading.Lock()
        started = time.perf_counter()

        def on_load(entry: L2AdapterEntry, keys: list[ObjectKey], fut: Future[list[bool]]) -> None:
            try:
                ok = fut.result()
                if len(ok) != len(keys):
                    raise RuntimeError(f"{entry.name} returned {len(ok)} results for {len(keys)} keys")
            except Exception as exc:
                log.warning("L2 load from %s failed: %s", entry.name, exc)
                self.metrics.inc("prefetch_failures", reason="load_error")
                ok = [False] * len(keys)
            good = [k for k, g in zip(keys, ok, strict=True) if g]
            self.metrics.inc("prefetch_load_batches_completed", adapter=entry.name)
            self.metrics.inc("prefetch_loads", len(good), adapter=entry.name)
            if good and self._on_loaded:
                try:
                    self._on_loaded(entry, good)
                except Exception:
                    log.exception("on_loaded callback failed")
            with done_lock:
                loaded.update(zip(keys, (bool(g) for g in ok), strict=True))
                pending["n"] -= 1
                last = pending["n"] == 0
            if last:
                elapsed = time.perf_counter() - started
                nbytes = sum(1 for v in loaded.values() if v) * job.object_size
                if elapsed > 0 and nbytes:
                    self.metrics.observe("l2_load_throughput_gbps", nbytes / elapsed / 1e9)
                self._guard(job, lambda: self._finish_load(job, loaded, len(owners)))

        for index, keys in by_adapter.items():
            entry = self.adapters[index]
            views: list[memoryview] = []
            for key in keys:
                # The reserved object's own memory: it stays ours (write-locked) even when a
                # CLEAR takes it out of the table meanwhile.
                handle = job._handles.get(key)
                if handle is None:
                    views = []
                    break
                views.append(self.l1.pool.view(handle))
            if len(views) != len(keys):
                failed: Future[list[bool]] = Future()
                failed.set_result([False] * len(keys))
                fut = failed
            else:
                self.metrics.inc("prefetch_load_batches", adapter=entry.name)
                self.metrics.inc("prefetch_load_keys", len(keys), adapter=entry.name)
                try:
                    fut = entry.adapter.submit_load(keys, views)
                except Exception as exc:
                    failed = Future()
                    failed.set_exception(exc)
                    fut = failed
            fut.add_done_callback(functools.partial(on_load, entry, keys))

    def _finish_load(self, job: PrefetchJob, loaded: dict[ObjectKey, bool], planned: int) -> None:
        with self._lock:
            self._load_phase -= 1
        if job.warm:
            self._finish_warm(job, loaded)
            return
        existing = set(job._existing)
        run = 0
        for key in job.keys[:planned]:
            if key in existing or loaded.get(key):
                run += 1
            else:
                break
        run -= run % job.group_size
        if job._cancelled:
            run = 0
        good = [k for k in job._reserved if job.keys.index(k) < run]
        bad = [k for k in job._reserved if job.keys.index(k) >= run]
        if good:
            results = self.l1.finish_write_and_reserve_read(
                good, job.extra_read_count, handles=[job._handles[k] for k in good], promise=True
            )
            failed = [k for k, (r, _) in zip(good, results, strict=True) if r is not OpResult.SUCCESS]
            if failed:  # force-cleared while loading: the run ends before the first such key
                first = min(job.keys.index(k) for k in failed)
                run = min(run, first - first % job.group_size)
                self._release_reads([k for k in good if job.keys.index(k) >= run and k not in failed], job)
        if bad:
            self._abort(bad, job)
        extra_existing = [k for k in job._existing if job.keys.index(k) >= run]
        if extra_existing:
            self._release_reads(extra_existing, job)
        self.keys_loaded += len([k for k in good if job.keys.index(k) < run])
        job.locked_handles = [job._handles[k] for k in job.keys[:run]]
        self._complete(job, run)

    def _finish_warm(self, job: PrefetchJob, loaded: dict[ObjectKey, bool]) -> None:
        good = [] if job._cancelled else [k for k in job._reserved if loaded.get(k)]
        kept = set(good)
        bad = [k for k in job._reserved if k not in kept]
        finished = 0
        if good:
            results = self.l1.finish_write(good, handles=[job._handles.get(k) for k in good])
            finished = sum(1 for r in results if r is OpResult.SUCCESS)
        if bad:
            self._abort(bad, job)
        self.keys_loaded += finished
        self._complete(job, 0 if job._cancelled else finished + len(job._existing))

    # -- helpers --------------------------------------------------------------------------

    def _complete(self, job: PrefetchJob, loaded_count: int) -> None:
        for index, keys in job._l2_locks.items():
            self._unlock(self.adapters[index], keys)
        job._l2_locks.clear()
        job.loaded_count = loaded_count
        self._finish(job, "cancelled" if job._cancelled else "done", started=True)

    def _finish(self, job: PrefetchJob, state: str, *, started: bool) -> None:
        job.state = state
        job.finished_at = time.monotonic()
        if started:
            with self._lock:
                self._running.discard(job)
                if state == "failed":
                    self.failed += 1
                else:
                    self.completed += 1
        job._set_done()
        if started:
            self._pump()

    def _guard(self, job: PrefetchJob, step: Callable[[], None]) -> None:
        """Run a pipeline step; an unexpected error fails the job but never leaks its locks."""
        try:
            step()
        except Exception as exc:
            log.exception("prefetch job failed")
            self.metrics.inc("prefetch_failures", reason="internal_error")
            job.error = f"{type(exc).__name__}: {exc}"
            try:
                if job._reserved:
                    self._abort(job._reserved, job)
                if job._existing and not job.warm:  # a warm job holds no read locks
                    self._release_reads(job._existing, job)
            finally:
                for index, keys in job._l2_locks.items():
                    self._unlock(self.adapters[index], keys)
                job._l2_locks.clear()
                job.loaded_count = 0
                job.locked_handles = []
                self._finish(job, "failed", started=True)

    def _abort(self, keys: list[ObjectKey], job: PrefetchJob) -> None:
        if self._forget_skip:
            self._forget_skip(keys)
        self.l1.abort_write(keys, handles=[job._handles.get(k) for k in keys])

    def _release_reads(self, keys: list[ObjectKey], job: PrefetchJob) -> None:
        if keys:
            self.l1.finish_read(
                keys, 1 + job.extra_read_count, handles=[job._handles.get(k) for k in keys], promise=True
            )

    def _unlock(self, entry: L2AdapterEntry, keys: list[ObjectKey]) -> None:
        try:
            entry.adapter.unlock(keys)
        except Exception:
            log.exception("unlock on %s failed", entry.name)

    # -- status ---------------------------------------------------------------------------

    def active_jobs(self) -> int:
        with self._lock:
            return len(self._running) + len(self._queue)

    def report_status(self) -> dict[str, Any]:
        thread = self.thread.to_dict()
        with self._lock:
            return {
                "is_healthy": self._stuck_jobs == 0 and thread["is_healthy"],
                "thread_alive": thread["is_alive"],
                "thread": thread,
                "stuck_jobs": self._stuck_jobs,
                "stuck_after_seconds": self.stuck_after_seconds,
                "policy": self.policy,
                "max_in_flight": self.max_in_flight,
                "queued_jobs": len(self._queue),
                "in_flight_jobs": len(self._running),
                "lookup_phase_jobs": self._lookup_phase,
                "load_phase_jobs": self._load_phase,
                "completed_jobs": self.completed,
                "failed_jobs": self.failed,
                "keys_loaded": self.keys_loaded,
            }
