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
    optional `now` so a batch operation reads the clock once."""

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

    def _now(self, now: float | None) -> float:
        return self._clock.monotonic() if now is None else now

    def expired(self, now: float | None = None) -> bool:
        """True when holders remain but the deadline has passed (does not reset the count)."""
        return self._count > 0 and self._now(now) >= self._deadline

    def _reset_if_expired(self, now: float) -> None:
        if self._count > 0 and now >= self._deadline:
            self._count = 0

    def count(self, now: float | None = None) -> int:
        """Live holders (0 once expired)."""
        self._reset_if_expired(self._now(now))
        return self._count

    def is_locked(self, now: float | None = None) -> bool:
        return self.count(now) > 0

    def lock(self, count: int = 1, now: float | None = None) -> None:
        """Add `count` (>= 1) holders and refresh the deadline for all of them."""
        if count < 1:
            raise ValueError(f"lock count must be >= 1, got {count}")
        t = self._now(now)
        self._reset_if_expired(t)
        self._count += count
        self._deadline = t + self._ttl

    def unlock(self, count: int = 1, now: float | None = None) -> bool:
        """Remove `count` (>= 1) holders. False (and no change) when fewer are held, including
        when the lock has expired."""
        if count < 1:
            raise ValueError(f"unlock count must be >= 1, got {count}")
        self._reset_if_expired(self._now(now))
        if count > self._count:
            return False
        self._count -= count
        return True

    def __repr__(self) -> str:
        return f"TTLLock(count={self._count}, deadline={self._deadline:.3f}, ttl={self._ttl})"
