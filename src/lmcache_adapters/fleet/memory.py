"""MemoryFleetStore: the whole fleet state in this process (a one-node trial: not shared
between coordinators, lost on restart)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from lmcache_core.fleet.gate import plan_batches
from lmcache_core.fleet.ledger import Ledger, pin_key
from lmcache_core.fleet.model import (
    CapacityDecl,
    Cursor,
    Entry,
    EventBatch,
    EvictionCandidate,
    InstanceInfo,
    InstanceRecord,
    KeyRecord,
    Op,
    Tier,
    UsageSnapshot,
    Verdict,
    first_cursor,
)
from lmcache_core.keys import ObjectKey


class MemoryFleetStore:
    """FleetStore in one process, under one lock."""

    kind = "memory"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ledger = Ledger()
        self._members: dict[str, InstanceRecord] = {}
        self._epoch = 0
        self._cursors: dict[str, Cursor] = {}
        self._capacity: dict[str, dict[tuple[Tier, str], tuple[int, int, CapacityDecl]]] = {}
        self._counters: dict[str, int] = {}
        self._quotas: dict[str, int] = {}
        self._default_limit: int | None = None
        self._leases: dict[str, tuple[str, float]] = {}
        self._mounts: dict[str, set[str]] = {}
        self._flags: dict[str, str] = {}
        self._evict_clock = 0.0

    # -- membership -------------------------------------------------------------------

    def register(self, info: InstanceInfo, lease_until: float) -> tuple[bool, int]:
        with self._lock:
            existed = info.instance_id in self._members
            # Epochs only grow, even across ids: a re-registration is a new 0.5.0 stream.
            self._epoch = max(self._epoch + 1, int(lease_until * 1000))
            self._members[info.instance_id] = InstanceRecord(info, lease_until, self._epoch)
            return existed, self._epoch

    def heartbeat(self, instance_id: str, lease_until: float) -> bool:
        with self._lock:
            record = self._members.get(instance_id)
            if record is None:
                return False
            self._members[instance_id] = InstanceRecord(record.info, max(lease_until, record.lease_until), record.epoch)
            return True

    def deregister(self, instance_id: str) -> bool:
        with self._lock:
            return self._members.pop(instance_id, None) is not None

    def instances(self) -> list[InstanceRecord]:
        with self._lock:
            return [self._members[k] for k in sorted(self._members)]

    def instance(self, instance_id: str) -> InstanceRecord | None:
        with self._lock:
            return self._members.get(instance_id)

    def claim_expired(self, now: float) -> list[str]:
        with self._lock:
            expired = sorted(i for i, r in self._members.items() if r.lease_until < now)
            for instance_id in expired:
                del self._members[instance_id]
            return expired

    # -- events -------------------------------------------------------------------------

    def cursors(self, instance_ids: Sequence[str]) -> dict[str, Cursor]:
        with self._lock:
            return {i: self._cursors[i] for i in instance_ids if i in self._cursors}

    def apply(self, batches: Sequence[EventBatch], now: float) -> list[Verdict]:
        out: list[Verdict] = []
        with self._lock:
            for plan in plan_batches(batches, self._cursors):
                batch = plan.batch
                cursor = self._cursors.get(batch.instance_id)
                verdict = Verdict.APPLIED if cursor is None else cursor.verdict(batch.incarnation, batch.seq)
                if plan.verdict is not None:
                    verdict = plan.verdict if verdict is Verdict.APPLIED else verdict
                if verdict is not Verdict.APPLIED:
                    self._count("batches_stale" if verdict is Verdict.STALE else "batches_duplicate", 1)
                    out.append(verdict)
                    continue
                if cursor is not None and batch.incarnation > cursor.incarnation:
                    self._ledger.fence(batch.instance_id, batch.incarnation)
                self._apply_one(batch, now)
                self._cursors[batch.instance_id] = (
                    first_cursor(batch.incarnation, batch.seq) if cursor is None else cursor.advanced(batch.incarnation, batch.seq)
                )
                if batch.legacy:
                    self._cursors[batch.instance_id] = Cursor(batch.incarnation, batch.seq)
                self._count("batches_applied", 1)
                self._count("events_applied", len(batch.entries))
                self._count(f"events_applied:{batch.instance_id}", len(batch.entries))
                out.append(verdict)
        return out

    def _apply_one(self, batch: EventBatch, now: float) -> None:
        if batch.capacity is not None:
            decl = batch.capacity
            table = self._capacity.setdefault(batch.instance_id, {})
            stamp = (batch.incarnation, decl.revision)
            newest = max((s[:2] for s in table.values()), default=(-1, -1))
            if stamp > newest:
                table.clear()
            elif stamp < newest:
                return
            table[(decl.tier, decl.backend)] = (*stamp, decl)
            return
        self._ledger.apply(batch, now, check_cursor=False)

    def fence(self, instance_id: str, below: int | None = None) -> int:
        with self._lock:
            removed = self._ledger.fence(instance_id, below)
            if below is None:
                self._cursors.pop(instance_id, None)
                self._capacity.pop(instance_id, None)
            return removed

    def resync(
        self, instance_id: str, backend: str, shared: bool, entries: Sequence[tuple[ObjectKey, int]], now: float
    ) -> int:
        batch = EventBatch(
            instance_id, 0, 1, Tier.L2, backend, shared, tuple(Entry(Op.STORE, k, s) for k, s in entries)
        )
        with self._lock:
            self._ledger.apply(batch, now, check_cursor=False)
        return len(entries)

    def capacities(self) -> dict[str, tuple[CapacityDecl, ...]]:
        with self._lock:
            return {i: tuple(v[2] for v in t.values()) for i, t in self._capacity.items() if t}

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def _count(self, name: str, n: int) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    # -- directory ----------------------------------------------------------------------

    def lookup(self, keys: Sequence[ObjectKey]) -> list[KeyRecord | None]:
        with self._lock:
            return [self._ledger.get(k) for k in keys]

    def list_keys(
        self, tier: Tier | None, instance_id: str, backend: str, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, KeyRecord]]]:
        with self._lock:
            items = list(self._ledger.items())
        return filter_keys(items, tier, instance_id, backend, offset, limit)

    def usage(self) -> UsageSnapshot:
        snapshot = UsageSnapshot()
        with self._lock:
            self._ledger.add_usage(snapshot)
        return snapshot

    # -- quotas and pins -----------------------------------------------------------------

    def set_quota(self, cache_salt: str, limit_bytes: int) -> None:
        with self._lock:
            self._quotas[cache_salt] = limit_bytes

    def delete_quota(self, cache_salt: str) -> bool:
        with self._lock:
            return self._quotas.pop(cache_salt, None) is not None

    def quotas(self) -> dict[str, int]:
        with self._lock:
            return dict(self._quotas)

    def set_default_limit(self, limit_bytes: int | None) -> None:
        with self._lock:
            self._default_limit = limit_bytes

    def default_limit(self) -> int | None:
        with self._lock:
            return self._default_limit

    def pin(self, keys: Sequence[ObjectKey], delta: int) -> None:
        with self._lock:
            self._ledger.pin(keys, delta)

    def drop_pins(self, keys: Sequence[ObjectKey]) -> None:
        with self._lock:
            self._ledger.drop_pins(keys)

    def pinned(self, keys: Sequence[ObjectKey]) -> list[int]:
        with self._lock:
            return [self._ledger.pin_count(k) for k in keys]

    def list_pins(
        self, cache_salt: str | None, model_name: str | None, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, int]]]:
        with self._lock:
            pins = self._ledger.pins()
        return filter_pins(pins, cache_salt, model_name, offset, limit)

    # -- eviction -----------------------------------------------------------------------

    def coldest(self, cache_salt: str, limit: int, now: float, retry_after: float) -> tuple[list[EvictionCandidate], int]:
        with self._lock:
            return self._ledger.coldest(cache_salt, limit, now, retry_after)

    def mark_evicting(self, keys: Sequence[ObjectKey], now: float) -> None:
        with self._lock:
            self._ledger.mark_evicting(keys, now)

    def try_lead(self, role: str, holder: str, ttl: float) -> bool:
        now = time.monotonic()
        with self._lock:
            current = self._leases.get(role)
            if current is not None and current[0] != holder and current[1] > now:
                return False
            self._leases[role] = (holder, now + ttl)
            return True

    def resign(self, role: str, holder: str) -> None:
        with self._lock:
            if self._leases.get(role, ("",))[0] == holder:
                del self._leases[role]

    def note_shared_mount(self, backend: str, instance_id: str) -> None:
        with self._lock:
            self._mounts.setdefault(backend, set()).add(instance_id)

    def shared_mounts(self, backend: str) -> set[str]:
        with self._lock:
            return set(self._mounts.get(backend, ()))

    def get_flag(self, name: str) -> str | None:
        with self._lock:
            return self._flags.get(name)

    def set_flag(self, name: str, value: str | None) -> None:
        with self._lock:
            if value is None:
                self._flags.pop(name, None)
            else:
                self._flags[name] = value

    # -- operations -----------------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        with self._lock:
            return {"kind": self.kind, "keys": len(self._ledger), "instances": len(self._members)}

    def close(self) -> None:
        pass


def filter_keys(
    items: Sequence[tuple[ObjectKey, KeyRecord]], tier: Tier | None, instance_id: str, backend: str, offset: int, limit: int
) -> tuple[int, list[tuple[ObjectKey, KeyRecord]]]:
    """The `/directory/keys` filter and page over (key, record) pairs (shared by the stores)."""
    total = 0
    page: list[tuple[ObjectKey, KeyRecord]] = []
    for key, record in items:
        kept = tuple(
            p
            for p in record.placements
            if (tier is None or p.tier == tier)
            and (not instance_id or p.instance_id == instance_id)
            and (not backend or p.backend == backend)
        )
        if not kept:
            continue
        if total >= offset and len(page) < limit:
            page.append((key, KeyRecord(kept, record.access_count, record.last_access)))
        total += 1
    return total, page


def filter_pins(
    pins: Sequence[tuple[ObjectKey, int]], cache_salt: str | None, model_name: str | None, offset: int, limit: int
) -> tuple[int, list[tuple[ObjectKey, int]]]:
    """The `/cache/pins` filter and page (shared by the stores)."""
    matching = [
        (k, n)
        for k, n in pins
        if (cache_salt is None or k.cache_salt == cache_salt) and (model_name is None or k.model_name == model_name)
    ]
    return len(matching), matching[offset : offset + limit]


__all__ = ["MemoryFleetStore", "filter_keys", "filter_pins", "pin_key"]
