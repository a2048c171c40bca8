"""L1Arenas: adding and removing the arenas (Device-DAX devices) of an arena-backed L1 pool at run time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from lmcache_core.errors import ConflictError, InvalidRequestError
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.manager import L1Manager
from lmcache_core.ports import ARENA_DRAINING, ArenaMemoryPool, Clock, MemoryHandle, OwnsDevices

log = logging.getLogger(__name__)

DEFAULT_REMOVE_TIMEOUT_SECONDS = 10.0
MAX_REMOVE_TIMEOUT_SECONDS = 300.0
_POLL_SECONDS = 0.05
REMOVAL_REASON = "arena_removed"
"""The reason L1 listeners see for objects removed because their arena was drained."""


def _event_wait(seconds: float) -> None:
    threading.Event().wait(seconds)


class L1Arenas:
    """Runtime add and remove of the arenas of an arena-backed L1 pool (`/reconfigure/dax/l1/*`).

    Removal drains the arena: the pool stops putting objects there at once; its unlocked objects
    (pinned and temporary ones too) leave L1 at once; locked ones (a copy or a write in flight,
    a LOOKUP's promise) are waited for up to a deadline and then removed as they unlock. With
    `force` the ones still locked at the deadline leave too, as `clear(force=True)` removes them:
    promises are void, and the memory of a copy or write in flight is freed when it finishes, so
    no transfer ever touches unmapped memory. The arena is unmapped by the pool once its last
    object is freed; until then it reports `draining`, and `progress()` (a periodic thread)
    finishes what the request could not.

    `others` are the other components that map devices (the dax L2 adapters): a device one of
    them maps is refused, since both would overwrite each other's bytes."""

    def __init__(
        self,
        l1: L1Manager,
        pool: ArenaMemoryPool,
        *,
        clock: Clock,
        others: Callable[[], Sequence[tuple[str, Any]]] = lambda: (),
        wait: Callable[[float], None] = _event_wait,
        poll_seconds: float = _POLL_SECONDS,
    ) -> None:
        self._l1 = l1
        self._pool = pool
        self._clock = clock
        self._others = others
        self._wait = wait
        self._poll = poll_seconds
        self._lock = threading.Lock()
        # Draining arenas -> keys left in them because they were locked (None: walk them all).
        self._draining: dict[str, list[ObjectKey] | None] = {}
        self.objects_removed_total = 0

    @property
    def pool(self) -> ArenaMemoryPool:
        return self._pool

    def statuses(self) -> list[dict[str, Any]]:
        """Every mapped arena, primary first (LMCache 0.5.6's fields)."""
        return self._pool.arena_statuses()

    def owns_device(self, device_path: str) -> bool:
        """Whether an arena maps the device or file at `device_path`."""
        return isinstance(self._pool, OwnsDevices) and self._pool.owns_device(device_path)

    def add(self, device_path: str, size_bytes: int) -> dict[str, Any]:
        """Map one more device into L1; it takes new objects at once. ConflictError when another
        component (an L2 adapter) maps it, or as the pool refuses it."""
        owners = [name for name, other in self._others() if isinstance(other, OwnsDevices) and other.owns_device(device_path)]
        if owners:
            raise ConflictError(
                "cannot add a Device-DAX L1 arena: the physical device is already mapped by L2 "
                f"adapter(s) ({', '.join(owners)})"
            )
        status = self._pool.add_arena(device_path, size_bytes)
        log.info("L1 arena %s added (%d bytes)", status["device_path"], status["size_in_bytes"])
        return status

    def remove(
        self, device_path: str, *, force: bool = False, timeout_seconds: float = DEFAULT_REMOVE_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Drain one arena: see the class. Returns its status afterwards (`removed`, or
        `draining` while objects are still locked or copies in flight). NotFoundError for an
        unknown path, ConflictError for the primary arena."""
        if isinstance(timeout_seconds, bool) or not 0 <= timeout_seconds <= MAX_REMOVE_TIMEOUT_SECONDS:
            raise InvalidRequestError(
                f"timeout_seconds must be a number in 0..{MAX_REMOVE_TIMEOUT_SECONDS:g}, got {timeout_seconds!r}"
            )
        status = self._pool.drain_arena(device_path)
        path = status["device_path"]
        with self._lock:
            left = self._draining.pop(path, None)
        deadline = self._clock.monotonic() + timeout_seconds
        removed = 0
        while True:
            n, left = self._sweep(path, left)
            removed += n
            status = self._pool.arena_status(path)
            if status["state"] != ARENA_DRAINING or self._clock.monotonic() >= deadline:
                break
            self._wait(self._poll)
        if force and status["state"] == ARENA_DRAINING:
            n, left = self._sweep(path, left, force=True)
            removed += n
            status = self._pool.arena_status(path)
        if status["state"] == ARENA_DRAINING:
            with self._lock:
                self._draining[path] = left
        log.info(
            "L1 arena %s: %d object(s) removed, %d still locked, state %s%s",
            path, removed, len(left), status["state"], " (forced)" if force else "",
        )
        return status

    def progress(self) -> dict[str, Any] | None:
        """One step of every unfinished drain: remove the objects that were locked and are not
        any more. Cheap when nothing drains (the periodic thread's target)."""
        with self._lock:
            pending = dict(self._draining)
        if not pending:
            return None
        removed = 0
        for path, left in pending.items():
            n, still = self._sweep(path, left)
            removed += n
            state = self._pool.arena_status(path)["state"]
            with self._lock:
                if state != ARENA_DRAINING:
                    self._draining.pop(path, None)
                elif path in self._draining:
                    self._draining[path] = still
        return {"draining": len(self._draining), "removed": removed}

    def _sweep(
        self, path: str, keys: list[ObjectKey] | None, *, force: bool = False
    ) -> tuple[int, list[ObjectKey]]:
        def in_arena(handle: MemoryHandle) -> bool:
            return self._pool.arena_of(handle) == path

        n, left = self._l1.remove_where(in_arena, force=force, reason=REMOVAL_REASON, keys=keys)
        self.objects_removed_total += n
        return n, left

    def report_status(self) -> dict[str, Any]:
        """`draining` (paths not finished) and `objects_removed_total`."""
        with self._lock:
            draining = sorted(self._draining)
        return {"is_healthy": True, "draining": draining, "objects_removed_total": self.objects_removed_total}
