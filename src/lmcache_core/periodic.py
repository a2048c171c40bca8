"""Periodic threads (eviction, store, prefetch, reapers) and the registry behind /periodic-threads."""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from lmcache_core.clock import SystemClock
from lmcache_core.errors import ConfigError, ConflictError, NotFoundError
from lmcache_core.ports import Clock

log = logging.getLogger(__name__)

LEVELS = ("critical", "high", "medium", "low")
"""Importance levels; `health()` only judges critical and high threads."""

Summary = str | Mapping[str, Any] | None
"""What one run returns for operators: a short line, a small dict, or nothing."""

# A thread is active when it ran within this many intervals.
ACTIVE_INTERVALS = 3


class PeriodicThread:
    """Runs `target()` every `interval_seconds` on a daemon thread and records how it went.

    Exceptions from `target` are caught, logged and counted; the thread keeps going. If the
    thread dies anyway (a BaseException), `is_alive()` turns False while `running` stays True,
    the registry reports it, and `ensure_running()` starts a fresh thread. `stop()` returns at
    once from the wait between runs; `wake()` starts the next run at once (a loop that works
    off a queue wakes itself when work arrives and still runs at least every interval).
    `run_once()` runs one iteration on the caller's thread (deterministic tests, or a forced
    cycle)."""

    def __init__(
        self,
        name: str,
        target: Callable[[], Summary],
        *,
        interval_seconds: float,
        level: str = "medium",
        clock: Clock | None = None,
    ) -> None:
        if not name:
            raise ConfigError("a periodic thread needs a name")
        if level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        if not interval_seconds > 0:
            raise ConfigError(f"interval_seconds of {name!r} must be > 0, got {interval_seconds!r}")
        self.name = name
        self.level = level
        self._interval = float(interval_seconds)
        self._target = target
        self._clock: Clock = clock or SystemClock()
        self._state_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one iteration at a time, thread or run_once
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False
        self._started_at: float | None = None
        self._total_runs = 0
        self._failed_runs = 0
        self._consecutive_failures = 0
        self._last_run_mono: float | None = None
        self._last_run_wall: float | None = None
        self._last_duration: float | None = None
        self._last_summary: Summary = None
        self._last_error: str | None = None
        self._restarts = 0
        self._died_with: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def interval_seconds(self) -> float:
        return self._interval

    def start(self) -> None:
        """Start the thread (no-op when it is already alive)."""
        with self._state_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._wake.clear()
            self._running = True
            self._started_at = self._clock.monotonic()
            self._spawn()

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to stop and wait up to `timeout`; True when it has stopped."""
        with self._state_lock:
            self._running = False
            self._stop.set()
            self._wake.set()
            thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def is_alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def ensure_running(self) -> bool:
        """Restart the thread if it should be running but is dead; True when it restarted."""
        with self._state_lock:
            if not self._running or (self._thread is not None and self._thread.is_alive()):
                return False
            self._restarts += 1
            self._started_at = self._clock.monotonic()
            log.warning(
                "periodic thread %s was dead (%s); restarting it", self.name, self._died_with
            )
            self._spawn()
            return True

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._loop, name=f"periodic-{self.name}", daemon=True)
        self._thread = thread
        thread.start()

    def wake(self) -> None:
        """Run the next iteration now instead of at the end of the interval."""
        self._wake.set()

    def _loop(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stop.is_set():
                    break
                self.run_once()
        except BaseException as exc:  # the thread ends here; status and ensure_running see it
            self._died_with = f"{type(exc).__name__}: {exc}"
            log.critical("periodic thread %s died: %s", self.name, self._died_with, exc_info=True)

    def run_once(self) -> bool:
        """Run one iteration now; True when `target` returned normally."""
        with self._run_lock:
            started = self._clock.monotonic()
            try:
                summary = self._target()
            except Exception as exc:
                ended = self._clock.monotonic()
                log.exception("periodic thread %s failed", self.name)
                with self._state_lock:
                    self._record(started, ended)
                    self._failed_runs += 1
                    self._consecutive_failures += 1
                    self._last_error = f"{type(exc).__name__}: {exc}"
                return False
            ended = self._clock.monotonic()
            with self._state_lock:
                self._record(started, ended)
                self._consecutive_failures = 0
                # Copied: the target may keep mutating the dict it returned.
                self._last_summary = dict(summary) if isinstance(summary, Mapping) else summary
            return True

    def _record(self, started: float, ended: float) -> None:
        self._total_runs += 1
        self._last_run_mono = ended
        self._last_run_wall = self._clock.time()
        self._last_duration = ended - started

    # -- observation ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the thread is meant to run (started and not stopped)."""
        return self._running

    @property
    def total_runs(self) -> int:
        return self._total_runs

    @property
    def failed_runs(self) -> int:
        return self._failed_runs

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def last_summary(self) -> Summary:
        return self._last_summary

    @property
    def success_rate(self) -> float:
        """Percentage of successful runs (100.0 before the first run)."""
        with self._state_lock:
            return self._success_rate()

    def _success_rate(self) -> float:
        if not self._total_runs:
            return 100.0
        return 100.0 * (self._total_runs - self._failed_runs) / self._total_runs

    def _last_run_ago(self, now: float) -> float | None:
        return None if self._last_run_mono is None else max(0.0, now - self._last_run_mono)

    def _is_active(self, now: float) -> bool:
        # Before the first run, the start time stands in for it: a thread that just started is
        # active, one that never ran within 3 intervals is not.
        reference = self._last_run_mono if self._last_run_mono is not None else self._started_at
        if not self._running or reference is None:
            return False
        return now - reference <= ACTIVE_INTERVALS * self._interval

    @property
    def active(self) -> bool:
        """Ran (or started) within the last 3 intervals while running."""
        with self._state_lock:
            return self._is_active(self._clock.monotonic())

    def unhealthy_reason(self) -> str | None:
        """Why an operator should look at this thread: "dead", "stalled", "failing" or None."""
        with self._state_lock:
            return self._unhealthy_reason(self._clock.monotonic())

    def _unhealthy_reason(self, now: float) -> str | None:
        if not self._running:
            return None
        if not self.is_alive():
            return "dead"
        if not self._is_active(now):
            return "stalled"
        if self._consecutive_failures:
            return "failing"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The per-thread object of /periodic-threads (the seed's fields plus ours)."""
        with self._state_lock:
            now = self._clock.monotonic()
            summary = self._last_summary
            return {
                "name": self.name,
                "level": self.level,
                "interval": self._interval,
                "is_running": self._running,
                "is_alive": self.is_alive(),
                "is_active": self._is_active(now),
                "is_healthy": self._unhealthy_reason(now) is None,
                "unhealthy_reason": self._unhealthy_reason(now),
                "last_run_at": self._last_run_wall,
                "last_run_ago": self._last_run_ago(now),
                "last_duration_seconds": self._last_duration,
                "total_runs": self._total_runs,
                "failed_runs": self._failed_runs,
                "consecutive_failures": self._consecutive_failures,
                "success_rate": self._success_rate(),
                "last_summary": dict(summary) if isinstance(summary, Mapping) else summary,
                "last_error": self._last_error,
                "restarts": self._restarts,
                "died_with": self._died_with,
            }

    def __repr__(self) -> str:
        return f"PeriodicThread({self.name!r}, level={self.level}, interval={self._interval})"


class PeriodicThreadRegistry:
    """The set of periodic threads of one server, by unique name. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, PeriodicThread] = {}

    def register(self, thread: PeriodicThread) -> None:
        """Add a thread; a second thread under the same name raises ConflictError."""
        with self._lock:
            existing = self._threads.get(thread.name)
            if existing is not None and existing is not thread:
                raise ConflictError(
                    f"a periodic thread named {thread.name!r} is already registered"
                )
            self._threads[thread.name] = thread

    def unregister(self, name: str) -> bool:
        """Remove a thread by name; False when there was none."""
        with self._lock:
            return self._threads.pop(name, None) is not None

    def get(self, name: str) -> PeriodicThread:
        """The thread named `name`; NotFoundError("Thread not found: <name>") otherwise."""
        with self._lock:
            thread = self._threads.get(name)
        if thread is None:
            raise NotFoundError(f"Thread not found: {name}")
        return thread

    def list(self) -> list[PeriodicThread]:
        """Registered threads, sorted by name."""
        with self._lock:
            return [self._threads[name] for name in sorted(self._threads)]

    def summaries(
        self, *, level: str | None = None, running_only: bool = False, active_only: bool = False
    ) -> builtins.list[dict[str, Any]]:
        """One `to_dict()` per thread, optionally filtered (unknown level -> ConfigError)."""
        if level is not None and level not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
        out = []
        for thread in self.list():
            info = thread.to_dict()
            if level is not None and info["level"] != level:
                continue
            if running_only and not info["is_running"]:
                continue
            if active_only and not info["is_active"]:
                continue
            out.append(info)
        return out

    def snapshot(
        self, *, level: str | None = None, running_only: bool = False, active_only: bool = False
    ) -> dict[str, Any]:
        """The /periodic-threads body: counts in total and by level, then the threads."""
        threads = self.summaries(level=level, running_only=running_only, active_only=active_only)
        by_level = {lvl: {"total": 0, "running": 0, "active": 0} for lvl in LEVELS}
        for info in threads:
            counts = by_level[info["level"]]
            counts["total"] += 1
            counts["running"] += int(info["is_running"])
            counts["active"] += int(info["is_active"])
        return {
            "summary": {
                "total_count": len(threads),
                "running_count": sum(int(t["is_running"]) for t in threads),
                "active_count": sum(int(t["is_active"]) for t in threads),
                "by_level": by_level,
            },
            "threads": threads,
        }

    def health(self) -> dict[str, Any]:
        """Critical and high threads that are running but dead, stalled or failing."""
        unhealthy = []
        for info in self.summaries():
            if info["level"] in ("critical", "high") and info["unhealthy_reason"] is not None:
                unhealthy.append(
                    {
                        "name": info["name"],
                        "level": info["level"],
                        "reason": info["unhealthy_reason"],
                        "last_run_ago": info["last_run_ago"],
                        "interval": info["interval"],
                        "last_error": info["last_error"],
                    }
                )
        return {
            "healthy": not unhealthy,
            "unhealthy": [u["name"] for u in unhealthy],
            "unhealthy_count": len(unhealthy),
            "unhealthy_threads": unhealthy,
        }

    def ensure_all_running(self) -> builtins.list[str]:
        """Restart every dead thread that should be running; returns their names."""
        return [t.name for t in self.list() if t.ensure_running()]

    def stop_all(self, timeout: float = 1.0) -> None:
        for thread in self.list():
            thread.stop(timeout)
