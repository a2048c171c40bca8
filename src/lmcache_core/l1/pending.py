"""PendingFrees: force-cleared L1 objects whose memory a writer or a copy is still using."""

from __future__ import annotations

from collections.abc import Callable

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.objects import L1Object
from lmcache_core.ports import MemoryHandle


class PendingFrees:
    """Objects out of the table whose memory is freed once their writer and copies finish or
    their locks expire; found by their handle (the exact object), never reused meanwhile.

    Keyed by id() of the handle: the handle stays referenced by its object, so its id is not
    reused while the entry lives. Not thread-safe: the L1 manager's lock guards it."""

    __slots__ = ("_by_handle", "_free")

    def __init__(self, free: Callable[[MemoryHandle], None]) -> None:
        self._free = free
        self._by_handle: dict[int, L1Object] = {}

    def __len__(self) -> int:
        return len(self._by_handle)

    def objects(self) -> list[L1Object]:
        return list(self._by_handle.values())

    def park(self, obj: L1Object, now: float) -> None:
        """Keep a force-removed object's memory for its writer and copies; its promises die."""
        obj.void_promises(now)
        obj.pending = True
        self._by_handle[id(obj.handle)] = obj

    def exact(self, key: ObjectKey, handle: MemoryHandle) -> L1Object | None:
        """The pending object of `key` whose memory is `handle`, else None."""
        obj = self._by_handle.get(id(handle)) if self._by_handle else None
        if obj is not None and obj.handle is handle and obj.key == key:
            return obj
        return None

    def latest_of_key(self, key: ObjectKey) -> L1Object | None:
        """The most recently cleared pending object of `key` (for callers without handles)."""
        for obj in reversed(self._by_handle.values()):
            if obj.key == key:
                return obj
        return None

    def free_if_unlocked(self, obj: L1Object, now: float) -> None:
        """Free a pending object's memory once nothing uses it (any other object: no-op)."""
        if not obj.locked(now) and self._by_handle.pop(id(obj.handle), None) is obj:
            self._free(obj.handle)

    def expire(self, now: float) -> int:
        """Forget dead holders and free what nothing uses any more; returns the locks expired."""
        expired = 0
        for obj in list(self._by_handle.values()):
            expired += obj.expire(now)
            self.free_if_unlocked(obj, now)
        return expired
