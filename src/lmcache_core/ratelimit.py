"""LogRateLimiter: one log line per (client, reason) per period, with a count of the lines held back."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from lmcache_core.ports import Clock

DEFAULT_PERIOD_SECONDS = 10.0
DEFAULT_MAX_KEYS = 4096


class LogRateLimiter:
    """Decides whether a repeated line may be logged: the first of each key (a client and a
    reason, say) passes, later ones within `period_seconds` are counted instead, and the next
    line that passes carries that count. At most `max_keys` keys are remembered (least recently
    used forgotten), so a flood of distinct clients cannot grow it. Thread-safe."""

    def __init__(
        self, clock: Clock, *, period_seconds: float = DEFAULT_PERIOD_SECONDS, max_keys: int = DEFAULT_MAX_KEYS
    ) -> None:
        if not period_seconds > 0:
            raise ValueError(f"period_seconds must be > 0, got {period_seconds!r}")
        self._clock = clock
        self._period = float(period_seconds)
        self._max_keys = max(1, int(max_keys))
        self._lock = threading.Lock()
        # key -> [time of the last line logged, lines held back since]
        self._seen: OrderedDict[Hashable, list[float]] = OrderedDict()
        self.suppressed_total = 0

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """(log it?, lines of this key held back since the last one logged)."""
        now = self._clock.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None:
                self._seen[key] = [now, 0.0]
                while len(self._seen) > self._max_keys:
                    self._seen.popitem(last=False)
                return True, 0
            self._seen.move_to_end(key)
            if now - entry[0] >= self._period:
                held = int(entry[1])
                entry[0], entry[1] = now, 0.0
                return True, held
            entry[1] += 1
            self.suppressed_total += 1
            return False, 0
