"""The directory ledger: placements per key, usage counters, LRU order, pins and in-flight
evictions of one shard, applied from event batches. Pure Python; the in-memory FleetStore keeps
one ledger, and the Redis store's Lua scripts implement the same rules per shard."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from lmcache_core.fleet.model import (
    UNKNOWN_SIZE,
    Cursor,
    EventBatch,
    EvictionCandidate,
    KeyRecord,
    Op,
    OwnerSlot,
    Placement,
    Tier,
    UsageSnapshot,
    Verdict,
)
from lmcache_core.keys import ObjectKey


def pin_key(key: ObjectKey) -> ObjectKey:
    """A pin covers the chunk in every object group, so pins are kept under group 0."""
    if key.object_group_id == 0:
        return key
    return ObjectKey(key.chunk_hash, key.model_name, key.kv_rank, 0, key.cache_salt)


@dataclass
class _Record:
    placements: list[Placement] = field(default_factory=list)
    access_count: int = 0
    last_access: float = 0.0

    def frozen(self) -> KeyRecord:
        return KeyRecord(tuple(self.placements), self.access_count, self.last_access)

    def has_l2(self) -> bool:
        return any(p.tier == Tier.L2 for p in self.placements)

    def holds_l1(self, instance_id: str) -> bool:
        return any(p.tier == Tier.L1 and p.instance_id == instance_id for p in self.placements)


class Ledger:
    """One shard's state. Not thread-safe: the owner serialises calls."""

    def __init__(self) -> None:
        self._dir: dict[ObjectKey, _Record] = {}
        self._lru: dict[ObjectKey, float] = {}  # keys with an L2 placement -> last access
        self._cursors: dict[str, Cursor] = {}
        self._l1_keys: dict[str, set[ObjectKey]] = {}
        self._pins: dict[ObjectKey, int] = {}
        self._evicting: dict[ObjectKey, float] = {}
        self.placements = {Tier.L1: 0, Tier.L2: 0}
        self.placement_bytes = {Tier.L1: 0, Tier.L2: 0}
        self.salt_bytes: dict[tuple[Tier, str], int] = {}
        self.owner_bytes: dict[OwnerSlot, int] = {}

    # ------------------------------------------------------------------ events

    def apply(self, batch: EventBatch, now: float, *, check_cursor: bool = True) -> bool:
        """Apply `batch` unless this shard has seen (incarnation, seq) already or the
        incarnation is older; a newer incarnation first fences the instance's older L1
        placements. Returns whether the entries were applied."""
        inst = batch.instance_id
        if check_cursor:
            cursor = self._cursors.get(inst)
            if cursor is not None:
                if cursor.verdict(batch.incarnation, batch.seq) is not Verdict.APPLIED:
                    return False
                if batch.incarnation > cursor.incarnation:
                    self.fence(inst, batch.incarnation)
            self._cursors[inst] = Cursor(batch.incarnation, batch.seq)
        for entry in batch.entries:
            if entry.op is Op.STORE:
                self._store(batch, entry.key, entry.size_bytes, now)
            elif entry.op is Op.DELETE:
                self._delete(batch, entry.key)
            else:
                self._access(entry.key, now)
        return True

    def _store(self, batch: EventBatch, key: ObjectKey, size: int, now: float) -> None:
        rec = self._dir.get(key)
        if rec is None:
            rec = self._dir[key] = _Record()
        slot = next((i for i, p in enumerate(rec.placements)
                     if p.same_slot(batch.tier, batch.backend, batch.shared, batch.instance_id)), None)
        if size == UNKNOWN_SIZE:
            size = rec.placements[slot].size_bytes if slot is not None else 0
        new = Placement(batch.instance_id, batch.incarnation, batch.tier, batch.backend, size, batch.shared)
        if slot is not None:
            self._account(key, rec.placements[slot], -1)
            rec.placements[slot] = new
        else:
            rec.placements.append(new)
        self._account(key, new, +1)
        rec.last_access = now
        if batch.tier == Tier.L1:
            self._l1_keys.setdefault(batch.instance_id, set()).add(key)
        if rec.has_l2():
            self._lru[key] = now

    def _delete(self, batch: EventBatch, key: ObjectKey) -> None:
        rec = self._dir.get(key)
        if rec is None:
            return
        for i, p in enumerate(rec.placements):
            if p.same_slot(batch.tier, batch.backend, batch.shared, batch.instance_id):
                self._account(key, p, -1)
                del rec.placements[i]
                break
        if batch.tier == Tier.L1 and not rec.holds_l1(batch.instance_id):
            self._discard_l1(batch.instance_id, key)
        self._settle(key, rec)

    def _access(self, key: ObjectKey, now: float) -> None:
        rec = self._dir.get(key)
        if rec is None:
            return
        rec.access_count += 1
        rec.last_access = now
        if key in self._lru:
            self._lru[key] = now

    def fence(self, instance_id: str, below: int | None = None) -> int:
        """Drop the L1 placements `instance_id` reported (only incarnations below `below`,
        when given: a restart). `below=None` forgets the instance here entirely (it left)."""
        removed = 0
        for key in list(self._l1_keys.get(instance_id, ())):
            rec = self._dir.get(key)
            if rec is None:
                self._discard_l1(instance_id, key)
                continue
            kept = []
            for p in rec.placements:
                if p.tier == Tier.L1 and p.instance_id == instance_id and (below is None or p.incarnation < below):
                    self._account(key, p, -1)
                    removed += 1
                else:
                    kept.append(p)
            rec.placements = kept
            if not rec.holds_l1(instance_id):
                self._discard_l1(instance_id, key)
            self._settle(key, rec)
        if below is None:
            self._cursors.pop(instance_id, None)
            self._l1_keys.pop(instance_id, None)
        else:
            cursor = self._cursors.get(instance_id)
            if cursor is None or cursor.incarnation < below:
                self._cursors[instance_id] = Cursor(below, 0)
        return removed

    def _discard_l1(self, instance_id: str, key: ObjectKey) -> None:
        keys = self._l1_keys.get(instance_id)
        if keys is not None:
            keys.discard(key)

    def _settle(self, key: ObjectKey, rec: _Record) -> None:
        if not rec.placements:
            del self._dir[key]
        if not rec.has_l2():
            self._lru.pop(key, None)
            self._evicting.pop(key, None)

    def _account(self, key: ObjectKey, p: Placement, sign: int) -> None:
        self.placements[p.tier] += sign
        self.placement_bytes[p.tier] += sign * p.size_bytes
        _bump(self.salt_bytes, (p.tier, key.cache_salt), sign * p.size_bytes)
        _bump(self.owner_bytes, OwnerSlot(p.owner, p.tier, p.backend), sign * p.size_bytes)

    # ------------------------------------------------------------------ reads

    def get(self, key: ObjectKey) -> KeyRecord | None:
        rec = self._dir.get(key)
        return None if rec is None else rec.frozen()

    def items(self) -> Iterator[tuple[ObjectKey, KeyRecord]]:
        for key, rec in list(self._dir.items()):
            yield key, rec.frozen()

    def __len__(self) -> int:
        return len(self._dir)

    def add_usage(self, snapshot: UsageSnapshot) -> None:
        """Add this shard's counters to `snapshot`."""
        snapshot.num_keys += len(self._dir)
        for tier in Tier:
            snapshot.placements[tier] += self.placements[tier]
            snapshot.placement_bytes[tier] += self.placement_bytes[tier]
        for (tier, salt), nbytes in self.salt_bytes.items():
            snapshot.add_salt(tier, salt, nbytes)
        for slot, nbytes in self.owner_bytes.items():
            snapshot.owner_bytes[slot] = snapshot.owner_bytes.get(slot, 0) + nbytes
        for inst, keys in self._l1_keys.items():
            if keys:
                snapshot.l1_keys_by_instance[inst] = snapshot.l1_keys_by_instance.get(inst, 0) + len(keys)

    # ------------------------------------------------------------------ pins

    def pin(self, keys: Iterable[ObjectKey], delta: int) -> None:
        for key in keys:
            k = pin_key(key)
            count = self._pins.get(k, 0) + delta
            if count > 0:
                self._pins[k] = count
            else:
                self._pins.pop(k, None)

    def drop_pins(self, keys: Iterable[ObjectKey]) -> None:
        for key in keys:
            self._pins.pop(pin_key(key), None)

    def pin_count(self, key: ObjectKey) -> int:
        return self._pins.get(pin_key(key), 0)

    def pins(self) -> list[tuple[ObjectKey, int]]:
        return list(self._pins.items())

    # ------------------------------------------------------------------ eviction

    def coldest(self, cache_salt: str, limit: int, now: float, retry_after: float) -> tuple[list[EvictionCandidate], int]:
        """Up to `limit` least recently used L2 keys of `cache_salt`, skipping pinned keys and
        keys whose delete was dispatched less than `retry_after` seconds ago; and the L2 bytes
        of those in-flight keys."""
        in_flight = sum(
            self._dir[k].frozen().l2_bytes()
            for k, sent in self._evicting.items()
            if k.cache_salt == cache_salt and now - sent < retry_after and k in self._dir
        )
        out: list[EvictionCandidate] = []
        for key, last in sorted(self._lru.items(), key=lambda kv: kv[1]):
            if len(out) >= limit:
                break
            if key.cache_salt != cache_salt or pin_key(key) in self._pins:
                continue
            sent = self._evicting.get(key)
            if sent is not None and now - sent < retry_after:
                continue
            out.append(EvictionCandidate(key, last, self._dir[key].frozen()))
        return out, in_flight

    def mark_evicting(self, keys: Iterable[ObjectKey], now: float) -> None:
        for key in keys:
            if key in self._lru:
                self._evicting[key] = now


_Slot = TypeVar("_Slot", bound=Hashable)


def _bump(table: dict[_Slot, int], slot: _Slot, delta: int) -> None:
    value = table.get(slot, 0) + delta
    if value > 0:
        table[slot] = value
    else:
        table.pop(slot, None)
