"""Pins: the keys L1 keeps against eviction, each until its deadline (or until unpinned)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.objects import L1Object


class Pins:
    """Pinned keys -> monotonic deadline (inf: until unpinned).

    Kept small by the manager's admission rule (`max_pinned_bytes`), so status and expiry walk
    only this table, never the object table. Not thread-safe: the L1 manager's lock guards it."""

    __slots__ = ("_deadlines",)

    def __init__(self) -> None:
        self._deadlines: dict[ObjectKey, float] = {}

    def __len__(self) -> int:
        return len(self._deadlines)

    def __iter__(self) -> Iterator[ObjectKey]:
        return iter(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def pinned(self, key: ObjectKey, now: float) -> bool:
        deadline = self._deadlines.get(key) if self._deadlines else None
        return deadline is not None and now < deadline

    def deadline(self, key: ObjectKey, now: float) -> float | None:
        """The live pin's deadline, else None."""
        deadline = self._deadlines.get(key)
        return deadline if deadline is not None and now < deadline else None

    def pin(self, keys: list[ObjectKey], deadline: float) -> None:
        """Pin (or re-pin, moving the deadline) every key."""
        for key in keys:
            self._deadlines[key] = deadline

    def unpin(self, key: ObjectKey) -> bool:
        """False when the key was not pinned."""
        return self._deadlines.pop(key, None) is not None

    def discard(self, key: ObjectKey) -> None:
        """Forget the key's pin (its object left the table)."""
        if self._deadlines:
            self._deadlines.pop(key, None)

    def expire(self, now: float) -> None:
        if self._deadlines:
            for key in [k for k, deadline in self._deadlines.items() if deadline <= now]:
                del self._deadlines[key]

    def pinned_bytes(self, objects: Mapping[ObjectKey, L1Object]) -> int:
        """Bytes of the pinned objects resident in `objects` (the object table)."""
        return sum(objects[k].size for k in self._deadlines if k in objects)
