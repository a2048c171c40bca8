"""IsolatedLRUPolicy: one LRU per cache_salt, trimmed to each salt's quota (L1 and L2 alike)."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.quota import QuotaManager


class _SaltLRU:
    """The keys of one salt, oldest first, with their sizes and last-use sequence numbers."""

    __slots__ = ("bytes", "order")

    def __init__(self) -> None:
        self.order: OrderedDict[ObjectKey, tuple[int, int]] = OrderedDict()  # key -> (size, seq)
        self.bytes = 0


class IsolatedLRUPolicy:
    """Per-tenant LRU driven by quotas.

    Every cache_salt has its own LRU and byte count. `mandatory_victims()` yields, for each salt
    whose bytes exceed its quota (a salt without a quota has limit 0), its oldest keys until
    the excess is covered, most-over salt first. `victims()` (memory pressure) yields those
    first, then every other key globally oldest first. Tier-agnostic: it sees keys and sizes
    only, so one implementation serves L1 and the L2 controllers. Thread-safe; it reads the
    QuotaManager but never calls into the tier."""

    name = "IsolatedLRU"

    def __init__(self, quotas: QuotaManager) -> None:
        self._quotas = quotas
        self._lock = threading.Lock()
        self._salts: dict[str, _SaltLRU] = {}
        self._seq = itertools.count()
        self._keys = 0

    # -- events ---------------------------------------------------------------------------

    def on_added(self, key: ObjectKey, size: int) -> None:
        with self._lock:
            lru = self._salts.get(key.cache_salt)
            if lru is None:
                lru = self._salts[key.cache_salt] = _SaltLRU()
            previous = lru.order.pop(key, None)
            if previous is None:
                self._keys += 1
            else:
                lru.bytes -= previous[0]
            lru.order[key] = (size, next(self._seq))
            lru.bytes += size

    def on_accessed(self, key: ObjectKey) -> None:
        with self._lock:
            lru = self._salts.get(key.cache_salt)
            if lru is None or key not in lru.order:
                return
            size, _ = lru.order.pop(key)
            lru.order[key] = (size, next(self._seq))

    def on_accessed_many(self, keys: Sequence[ObjectKey]) -> None:
        with self._lock:
            salts, seq = self._salts, self._seq
            for key in keys:
                lru = salts.get(key.cache_salt)
                if lru is None:
                    continue
                entry = lru.order.pop(key, None)
                if entry is not None:
                    lru.order[key] = (entry[0], next(seq))

    def on_removed(self, key: ObjectKey) -> None:
        with self._lock:
            lru = self._salts.get(key.cache_salt)
            if lru is None:
                return
            entry = lru.order.pop(key, None)
            if entry is None:
                return
            self._keys -= 1
            lru.bytes -= entry[0]
            if not lru.order:
                del self._salts[key.cache_salt]

    # -- victims --------------------------------------------------------------------------

    def _over_quota_locked(self, limits: dict[str, int]) -> list[ObjectKey]:
        plan: list[tuple[int, list[ObjectKey]]] = []
        for salt, lru in self._salts.items():
            excess = lru.bytes - limits.get(salt, 0)
            if excess <= 0:
                continue
            keys: list[ObjectKey] = []
            covered = 0
            for key, (size, _) in lru.order.items():
                if covered >= excess:
                    break
                keys.append(key)
                covered += size
            plan.append((excess, keys))
        plan.sort(key=lambda item: -item[0])
        return [key for _, keys in plan for key in keys]

    def mandatory_victims(self) -> Iterator[ObjectKey]:
        limits = self._quotas.list()  # outside our lock: the two locks are never nested
        with self._lock:
            victims = self._over_quota_locked(limits)
        return iter(victims)

    def victims(self) -> Iterator[ObjectKey]:
        limits = self._quotas.list()
        with self._lock:
            first = self._over_quota_locked(limits)
            per_salt = [
                [(seq, key) for key, (_, seq) in lru.order.items()] for lru in self._salts.values()
            ]
        return self._merge(first, per_salt)

    @staticmethod
    def _merge(
        first: list[ObjectKey], per_salt: list[list[tuple[int, ObjectKey]]]
    ) -> Iterator[ObjectKey]:
        yield from first
        taken = set(first)
        # Each salt's list is already in sequence order, so a lazy k-way merge gives the
        # global age order without sorting everything.
        for _, key in heapq.merge(*per_salt, key=lambda item: item[0]):
            if key not in taken:
                yield key

    # -- observation ----------------------------------------------------------------------

    def bytes_by_salt(self) -> dict[str, int]:
        with self._lock:
            return {salt: lru.bytes for salt, lru in self._salts.items()}

    def __len__(self) -> int:
        with self._lock:
            return self._keys

    def report_status(self) -> dict[str, Any]:
        limits = self._quotas.list()
        with self._lock:
            salts = {
                salt: {
                    "tracked_keys": len(lru.order),
                    "tracked_bytes": lru.bytes,
                    "limit_bytes": limits.get(salt, 0),
                    "has_quota": salt in limits,
                    "over_quota": lru.bytes > limits.get(salt, 0),
                }
                for salt, lru in self._salts.items()
            }
            keys = self._keys
        return {
            "is_healthy": True,
            "policy": self.name,
            "tracked_keys": keys,
            "tracked_bytes": sum(s["tracked_bytes"] for s in salts.values()),
            "over_quota_salts": sorted(salt for salt, s in salts.items() if s["over_quota"]),
            "salts": salts,
        }
