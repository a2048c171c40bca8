"""KeyLocks: the lookup locks of one L2 adapter, with a skip-locked delete that has no window."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from lmcache_core.keys import ObjectKey


class KeyLocks:
    """Counted per-key locks taken by `lookup_and_lock` and released by `unlock`.

    A delete skips locked keys. The check and the removal are one step as far as lookups can
    tell: keys chosen for deletion are marked, and a lookup of a marked key waits (on a worker
    thread) until the removal has finished, then finds the key gone. So a lookup never reports
    a hit for an object a concurrent delete is removing, and a delete never removes a key a
    lookup holds, even when the removal is a slow network call made without the table's lock.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._counts: dict[ObjectKey, int] = {}
        self._deleting: set[ObjectKey] = set()

    def lock_if_present(self, key: ObjectKey, present: Callable[[ObjectKey], bool]) -> bool:
        """Lock `key`, then ask `present(key)`; a miss (or an exception) releases the lock again.
        Locking first means a delete that starts meanwhile skips the key."""
        with self._cond:
            while key in self._deleting:
                self._cond.wait()
            self._counts[key] = self._counts.get(key, 0) + 1
        try:
            hit = present(key)
        except BaseException:
            self.release([key])
            raise
        if not hit:
            self.release([key])
        return hit

    def release(self, keys: Sequence[ObjectKey]) -> None:
        """One lock fewer per key; unknown or unlocked keys are ignored."""
        with self._cond:
            for key in keys:
                count = self._counts.get(key, 0)
                if count > 1:
                    self._counts[key] = count - 1
                elif count == 1:
                    del self._counts[key]

    def delete_unlocked(
        self, keys: Sequence[ObjectKey], remove: Callable[[list[ObjectKey]], list[bool]]
    ) -> list[bool]:
        """Remove the keys no lookup holds, through `remove(distinct keys) -> per-key bool`.
        Result per position: True when that key was removed; a locked key, a key named twice
        (after its first position) or one another delete is removing now is False."""
        chosen: dict[ObjectKey, int] = {}
        with self._cond:
            for index, key in enumerate(keys):
                if key not in chosen and key not in self._deleting and key not in self._counts:
                    chosen[key] = index
            self._deleting.update(chosen)
        results = [False] * len(keys)
        if not chosen:
            return results
        try:
            outcomes = remove(list(chosen))
        finally:
            with self._cond:
                self._deleting.difference_update(chosen)
                self._cond.notify_all()
        for index, removed in zip(chosen.values(), outcomes, strict=True):
            results[index] = bool(removed)
        return results

    # ------------------------------------------------------------------ KeyLockView

    def is_locked(self, key: ObjectKey) -> bool:
        with self._cond:
            return key in self._counts

    def locked_keys(self) -> list[ObjectKey]:
        with self._cond:
            return list(self._counts)

    def discard(self, keys: Sequence[ObjectKey]) -> None:
        with self._cond:
            for key in keys:
                self._counts.pop(key, None)

    def locked_count(self) -> int:
        """Distinct keys locked now (`locked_key_count` in /status)."""
        with self._cond:
            return len(self._counts)
