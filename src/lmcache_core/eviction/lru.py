"""LRUPolicy: least-recently-used first, over every key of the tier."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from typing import Any

from lmcache_core.keys import ObjectKey


class LRUPolicy:
    """Classic LRU: arrival and access move a key to the young end; victims are oldest first.
    Thread-safe; `victims()` iterates a snapshot, so concurrent updates never break it."""

    name = "LRU"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._order: OrderedDict[ObjectKey, int] = OrderedDict()
        self._bytes = 0

    def on_added(self, key: ObjectKey, size: int) -> None:
        with self._lock:
            previous = self._order.pop(key, 0)
            self._order[key] = size
            self._bytes += size - previous

    def on_accessed(self, key: ObjectKey) -> None:
        with self._lock:
            if key in self._order:
                self._order.move_to_end(key)

    def on_accessed_many(self, keys: Sequence[ObjectKey]) -> None:
        with self._lock:
            move = self._order.move_to_end
            try:
                # The common case, every key tracked: moved by a C loop.
                deque(map(move, keys), maxlen=0)
            except KeyError:
                # Some key is not tracked (already removed): the rest one by one. Moving a key
                # to the end twice leaves the same order, so the keys moved already are harmless.
                for key in keys:
                    try:
                        move(key)
                    except KeyError:
                        pass

    def on_removed(self, key: ObjectKey) -> None:
        with self._lock:
            self._bytes -= self._order.pop(key, 0)

    def mandatory_victims(self) -> Iterator[ObjectKey]:
        return iter(())

    def victims(self) -> Iterator[ObjectKey]:
        with self._lock:
            snapshot = list(self._order)
        return iter(snapshot)

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)

    def report_status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "is_healthy": True,
                "policy": self.name,
                "tracked_keys": len(self._order),
                "tracked_bytes": self._bytes,
            }
