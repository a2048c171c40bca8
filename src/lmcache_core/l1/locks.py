"""TTLLock: a lock counter that expires, so a crashed client cannot pin an object forever."""

from __future__ import annotations

from lmcache_core.ports import Clock


class TTLLock:
    """A counter of holders with one shared deadline.

    `lock()` adds holders and pushes the deadline to `now + ttl`; `unlock()` removes holders.
    The lock is held while `count > 0 and now < deadline`. Once the deadline passes, every
    holder is presumed dead: the lock reads as unlocked and its count resets to 0, so a late
    `unlock()` from a slow holder is answered False instead of corrupting a newer lock.

    Not thread-safe on its own: the L1 manager serialises access under its lock. Methods take an
    optional `now` so a batch operation reads the clock once. The manager's read-lock batch
    loops (`L1Manager._lock_for_read`, `finish_read`) apply these same rules to `_count`/`_deadline` inline,
    to save a call per key on the LOOKUP path; a change to the rules here must be made there too
    (tests/unit/core/test_l1_locks.py and test_l1_manager.py cover both)."""

    __slots__ = ("_clock", "_count", "_deadline", "_ttl")

    def __init__(self, ttl_seconds: float, clock: Clock) -> None:
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0, got {ttl_seconds!r}")
        self._ttl = float(ttl_seconds)
        self._clock = clock
        self._count = 0
        self._deadline = 0.0

    @property
    def ttl_seconds(self) -> float:
        return self._ttl

    @property
    def deadline(self) -> float:
        """Monotonic time at which the current holders are presumed dead."""
        return self._deadline

    # Each method below is one Python call with its expiry check inlined: L1 batch operations
    # call them once per key on the LOOKUP hot path (128+ keys per request).

    def expired(self, now: float | None = None) -> bool:
        """True when holders remain but the deadline has passed (does not reset the count)."""
        if now is None:
            now = self._clock.monotonic()
        return self._count > 0 and now >= self._deadline

    def count(self, now: float | None = None) -> int:
        """Live holders (0 once expired)."""
        if self._count > 0:
            if now is None:
                now = self._clock.monotonic()
            if now >= self._deadline:
                self._count = 0
        return self._count

    def is_locked(self, now: float | None = None) -> bool:
        if self._count <= 0:
            return False
        if now is None:
            now = self._clock.monotonic()
        if now >= self._deadline:
            self._count = 0
            return False
        return True

    def lock(self, count: int = 1, now: float | None = None) -> None:
        """Add `count` (>= 1) holders and refresh the deadline for all of them."""
        if count < 1:
            raise ValueError(f"lock count must be >= 1, got {count}")
        if now is None:
            now = self._clock.monotonic()
        if self._count > 0 and now >= self._deadline:
            self._count = 0
        self._count += count
        self._deadline = now + self._ttl

    def unlock(self, count: int = 1, now: float | None = None) -> bool:
        """Remove `count` (>= 1) holders. False (and no change) when fewer are held, including
        when the lock has expired."""
        if count < 1:
            raise ValueError(f"unlock count must be >= 1, got {count}")
        if self._count > 0:
            if now is None:
                now = self._clock.monotonic()
            if now >= self._deadline:
                self._count = 0
        if count > self._count:
            return False
        self._count -= count
        return True

    def __repr__(self) -> str:
        return f"TTLLock(count={self._count}, deadline={self._deadline:.3f}, ttl={self._ttl})"
