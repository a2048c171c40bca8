"""L1Manager: the CPU-memory tier's object table over a MemoryPool port."""

from __future__ import annotations

import logging
import operator
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l1.objects import L1Object, lock_reads
from lmcache_core.l1.pending import PendingFrees
from lmcache_core.l1.pins import Pins
from lmcache_core.l1.results import OpResult, WriteMode
from lmcache_core.ports import Clock, MemoryHandle, MemoryPool
from lmcache_core.status import compose_status

log = logging.getLogger(__name__)

Reclaimer = Callable[[int], int]
"""`reclaim(bytes_needed) -> bytes_freed`: evicts unlocked objects on the spot when an
allocation does not fit (wired to the eviction controller's policy)."""

# A write that does not fit asks the reclaimer this many times at most: freed bytes may sit in
# slots of another size class, so one round is not always enough, but the loop must be bounded.
_MAX_RECLAIM_ROUNDS = 3


@dataclass(frozen=True)
class L1ObjectInfo:
    """What `L1Manager.inspect` tells about one resident object (for the per-request CLI)."""

    size: int
    readable: bool
    write_locked: bool
    read_lock_count: int
    temporary: bool
    pinned_until: float | None
    """Monotonic deadline of its pin (inf: until unpinned); None when not pinned."""

    @property
    def locked(self) -> bool:
        return self.write_locked or self.read_lock_count > 0


def _missing_status(key: ObjectKey, seen: set[ObjectKey]) -> OpResult:
    """A batch operation's answer for a key that is not in L1: KEY_NOT_EXIST the first time,
    KEY_IN_WRONG_STATE for a repeat of it in the same batch (as for a repeated present key)."""
    before = len(seen)
    seen.add(key)
    return OpResult.KEY_NOT_EXIST if len(seen) != before else OpResult.KEY_IN_WRONG_STATE


def _validate_size(size: Any) -> int:
    if isinstance(size, bool):
        raise ValueError(f"object sizes must be integers > 0, got {size!r}")
    try:
        value = operator.index(size)
    except TypeError:
        raise ValueError(f"object sizes must be integers > 0, got {size!r}") from None
    if value <= 0:
        raise ValueError(f"object sizes must be integers > 0, got {value}")
    return value


# Every L1Listener event (its method names).
_EVENTS = tuple(name for name in vars(L1Listener) if name.startswith("on_l1_"))


def _validate_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if count < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {count}")
    return count


class L1Manager:
    """Object table of the L1 tier.

    Each object: a handle into the pool, a write lock and a read lock (each a counter with a
    TTL, so a crashed client cannot pin memory forever), a `temporary` flag (prefetch buffers,
    freed after their last read). Readable = not write-locked. Writable = not locked and not
    temporary. Every batch operation holds the manager's lock once (atomic per call) and returns
    one OpResult per key, in input order. Status counters are incremental: report_status() is
    O(number of currently locked objects), not O(objects).

    Details every caller can rely on:
    - A key repeated within one batch is processed once; its later occurrences answer
      KEY_IN_WRONG_STATE.
    - An object whose write lock expires before `finish_write` (a crashed writer) is never made
      readable: it answers KEY_NOT_READABLE, can be deleted or evicted, and the next
      `expire_locks()` removes it (reason "aborted").
    - A temporary object is freed after its last `finish_read`, when its read lock expires, or
      when nobody has locked it for `read_ttl_seconds` (a prefetch nobody came to read).
    - Read locks are either *copies* (the default: the caller is about to read the memory) or
      *promises* (`promise=True`: kept for a later copy, nothing reads the memory yet; LOOKUP
      locks). `convert_promises` turns one promise into a copy on the exact object.
    - `clear(force=True)` takes every matching object out of the table at once. Promises on it
      are void. Its memory is freed at once unless a writer or a copy is using it; then it is
      kept in a pending-free table until those finish (the `finish_*` call answers
      KEY_NOT_EXIST) or their locks expire. The key itself can be stored again at once.
    - Pass `handles` (the ones the reservation returned) to the `finish_*`/`abort_write` calls
      to name the exact object: a late finish of a cleared object then lands on that object and
      never on a newer one of the same key. Without handles a key names the object in the
      table, or else a pending one of that key.
    - A pinned object (`pin`) is skipped by eviction (`evict`, the reclaimer) and by
      `clear(force=False)` until it is unpinned or its pin's TTL passes; `delete`, `clear(force=True)`
      and a rewrite still reach it (explicit operator or client actions win over a pin).
    """

    def __init__(
        self,
        pool: MemoryPool,
        *,
        clock: Clock,
        write_ttl_seconds: float = 600.0,
        read_ttl_seconds: float = 300.0,
    ) -> None:
        if not write_ttl_seconds > 0:
            raise ValueError(f"write_ttl_seconds must be > 0, got {write_ttl_seconds!r}")
        if not read_ttl_seconds > 0:
            raise ValueError(f"read_ttl_seconds must be > 0, got {read_ttl_seconds!r}")
        self._pool = pool
        self._clock = clock
        self._write_ttl = float(write_ttl_seconds)
        self._read_ttl = float(read_ttl_seconds)
        # Re-entrant: the reclaimer runs while reserve_write holds the lock and evicts through
        # _evict_locked on the same thread.
        self._lock = threading.RLock()
        self._listeners: list[L1Listener] = []
        self._receivers: dict[str, list[tuple[L1Listener, Callable[..., None]]]] = {event: [] for event in _EVENTS}
        self._reclaimer: Reclaimer | None = None
        self._objects: dict[ObjectKey, L1Object] = {}
        # Force-cleared objects with a copy or writer in flight.
        self._pending = PendingFrees(pool.free)
        # Keys of table objects holding a lock (may include expired ones until _expire runs);
        # small sets, so status never walks the whole table.
        self._write_locked: set[ObjectKey] = set()
        self._read_locked: set[ObjectKey] = set()
        self._temporary: set[ObjectKey] = set()
        # Keys the reclaimer must not evict (existing objects a reserve_write is about to rewrite).
        self._protected: set[ObjectKey] = set()
        self._pins = Pins()
        self._bytes_by_salt: dict[str, int] = {}
        self._object_bytes = 0
        self._expired_locks_total = 0
        self._aborted_total = 0
        self._out_of_memory_total = 0
        self._reclaim_calls_total = 0
        self._reclaim_failures_total = 0
        self._reclaim_refused_total = 0

    # -- wiring ---------------------------------------------------------------------------

    def add_listener(self, listener: L1Listener) -> None:
        """Subscribe to L1 events (see L1Listener for the delivery rules)."""
        with self._lock:
            self._listeners.append(listener)
            # Per event, the listeners that handle it: an L1Listener subclass that keeps the
            # base class's do-nothing method is not called for that event (hot paths emit one
            # event per batch operation).
            self._receivers = {
                event: [
                    (listener, getattr(listener, event))
                    for listener in self._listeners
                    if hasattr(listener, event) and getattr(type(listener), event, None) is not getattr(L1Listener, event)
                ]
                for event in _EVENTS
            }

    def set_reclaimer(self, reclaimer: Reclaimer | None) -> None:
        """Install the on-the-spot evictor used when reserve_write cannot allocate."""
        with self._lock:
            self._reclaimer = reclaimer

    @property
    def pool(self) -> MemoryPool:
        return self._pool

    @property
    def write_ttl_seconds(self) -> float:
        return self._write_ttl

    @property
    def read_ttl_seconds(self) -> float:
        return self._read_ttl

    # -- batch operations -----------------------------------------------------------------

    def reserve_write(
        self,
        keys: Sequence[ObjectKey],
        sizes: Sequence[int],
        mode: WriteMode = WriteMode.NEW,
        *,
        temporary: bool = False,
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """Allocate and write-lock objects. Allocation is all-or-nothing for the keys that
        passed the state checks: if they do not all fit (after asking the reclaimer to free
        space), none is allocated and each of them answers OUT_OF_MEMORY. UPDATE of an existing
        object reuses its memory when the size is unchanged."""
        if len(keys) != len(sizes):
            raise ValueError(f"got {len(keys)} keys but {len(sizes)} sizes")
        checked_sizes = [_validate_size(size) for size in sizes]
        mode = WriteMode(mode)
        results: list[tuple[OpResult, MemoryHandle | None]] = [
            (OpResult.KEY_IN_WRONG_STATE, None)
        ] * len(keys)
        with self._lock:
            now = self._clock.monotonic()
            seen: set[ObjectKey] = set()
            # (index, key, size, existing object or None)
            plan: list[tuple[int, ObjectKey, int, L1Object | None]] = []
            for i, (key, size) in enumerate(zip(keys, checked_sizes, strict=True)):
                if key in seen:
                    continue  # answered KEY_IN_WRONG_STATE
                seen.add(key)
                obj = self._objects.get(key)
                if obj is not None and mode is not WriteMode.UPDATE and obj.abandoned(now):
                    self._drop([obj], "aborted")
                    obj = None
                if obj is None:
                    if mode is WriteMode.UPDATE:
                        results[i] = (OpResult.KEY_NOT_EXIST, None)
                    else:
                        plan.append((i, key, size, None))
                elif mode is WriteMode.NEW:
                    results[i] = (OpResult.KEY_IN_WRONG_STATE, None)
                elif not obj.writable(now):
                    results[i] = (OpResult.KEY_NOT_WRITABLE, None)
                else:
                    plan.append((i, key, size, obj))
            if not plan:
                return results

            to_allocate = [size for _, _, size, obj in plan if obj is None or obj.size != size]
            protect = [key for _, key, _, obj in plan if obj is not None]
            handles = self._allocate_all(to_allocate, protect)
            if handles is None:
                self._out_of_memory_total += 1
                for i, _, _, _ in plan:
                    results[i] = (OpResult.OUT_OF_MEMORY, None)
                return results

            fresh = iter(handles)
            write_until = now + self._write_ttl
            reserved_keys: list[ObjectKey] = []
            reserved_sizes: list[int] = []
            for i, key, size, existing in plan:
                if existing is None:
                    obj = L1Object(key, next(fresh), size, temporary, now)
                    self._attach(obj)
                else:
                    obj = existing
                    if obj.size != size:
                        old = obj.handle
                        obj.handle = next(fresh)
                        self._pool.free(old)
                        self._account(obj, -obj.size)
                        obj.size = size
                        self._account(obj, size)
                    obj.ready = False
                    if temporary:  # (a temporary object never gets here: it is not writable)
                        obj.temporary = True
                        self._temporary.add(key)
                    obj.last_access = now
                obj.lock_write(now, write_until)
                self._write_locked.add(key)
                results[i] = (OpResult.SUCCESS, obj.handle)
                reserved_keys.append(key)
                reserved_sizes.append(size)
            self._emit("on_l1_keys_reserved_write", reserved_keys, reserved_sizes)
            return results

    def finish_write(
        self, keys: Sequence[ObjectKey], *, handles: Sequence[MemoryHandle | None] | None = None
    ) -> list[OpResult]:
        """Release the write lock: the object becomes readable; listeners get write_finished."""
        with self._lock:
            now = self._clock.monotonic()
            results, done = self._finish_write_locked(keys, now, handles)
            self._emit("on_l1_keys_write_finished", [o.key for o in done], [o.size for o in done])
            return results

    def abort_write(
        self, keys: Sequence[ObjectKey], *, handles: Sequence[MemoryHandle | None] | None = None
    ) -> list[OpResult]:
        """Drop write-locked objects whose write will never complete (never made readable)."""
        with self._lock:
            now = self._clock.monotonic()
            results, aborted = self._release_write_locks(keys, now, handles)
            self._drop(aborted, "aborted")
            return results

    def finish_write_and_reserve_read(
        self,
        keys: Sequence[ObjectKey],
        extra_count: int = 0,
        *,
        handles: Sequence[MemoryHandle | None] | None = None,
        promise: bool = False,
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """finish_write, then take `1 + extra_count` read locks (promises with `promise`),
        atomically."""
        holders = 1 + _validate_count("extra_count", extra_count, 0)
        with self._lock:
            now = self._clock.monotonic()
            statuses, done = self._finish_write_locked(keys, now, handles)
            self._lock_for_read(done, holders, now, not promise)
            results: list[tuple[OpResult, MemoryHandle | None]] = []
            finished = iter(obj.handle for obj in done)
            for status in statuses:
                results.append((status, next(finished) if status is OpResult.SUCCESS else None))
            done_keys = [o.key for o in done]
            self._emit("on_l1_keys_write_finished", done_keys, [o.size for o in done])
            self._emit("on_l1_keys_read_reserved", done_keys)
            return results

    def reserve_read(
        self, keys: Sequence[ObjectKey], extra_count: int = 0, *, promise: bool = False, hit: bool = True
    ) -> list[tuple[OpResult, MemoryHandle | None]]:
        """Take `1 + extra_count` read locks (tensor-parallel readers) on readable objects:
        copies in flight, or promises with `promise`. `hit=False` for the server's own reads
        (the L2 write-back): the locks are the same, but listeners hear of no hit, so the
        eviction policy's recency and the fleet's access events stay the clients' own."""
        holders = 1 + _validate_count("extra_count", extra_count, 0)
        with self._lock:
            now = self._clock.monotonic()
            results: list[tuple[OpResult, MemoryHandle | None]] = []
            readable: list[L1Object] = []
            # Hot loop (128+ keys per LOOKUP): locals are bound once. A duplicate is recognised
            # by a per-call stamp on the object, so a found key is hashed once; the stored key
            # (obj.key) is used from here on so later set/dict/LRU lookups hit on identity,
            # skipping __eq__.
            stamp = object()
            get = self._objects.get
            append, append_readable = results.append, readable.append
            missing_seen: set[ObjectKey] = set()
            unreadable, wrong = (OpResult.KEY_NOT_READABLE, None), (OpResult.KEY_IN_WRONG_STATE, None)
            success = OpResult.SUCCESS
            for key in keys:
                obj = get(key)
                if obj is None:
                    append((_missing_status(key, missing_seen), None))
                    continue
                if obj.stamp is stamp:
                    append(wrong)
                    continue
                obj.stamp = stamp
                if not obj.readable(now):
                    append(unreadable)
                    continue
                append_readable(obj)
                append((success, obj.handle))
            locked = self._lock_for_read(readable, holders, now, not promise)
            if hit:
                self._emit("on_l1_keys_read_reserved", locked)
            return results

    def lock_read_prefix(
        self,
        keys: Sequence[ObjectKey],
        extra_count: int = 0,
        *,
        nbytes: int | None = None,
        group: int = 1,
        promise: bool = False,
    ) -> list[MemoryHandle]:
        """Take `1 + extra_count` read locks (promises with `promise`) on the leading run of
        `keys` that are readable (and, with `nbytes`, hold objects of exactly that size),
        stopping at the first key that is not (missing, being written, another size, or a
        repeat); the run is cut to a multiple of `group`. Returns the handles of the run, in
        order. Nothing past the run is locked, not even for a moment: what a LOOKUP needs,
        whose engine can only use a prefix."""
        holders = 1 + _validate_count("extra_count", extra_count, 0)
        group = _validate_count("group", group, 1)
        with self._lock:
            now = self._clock.monotonic()
            # Hot loop, as in reserve_read: checks first (so no lock is taken and dropped for a
            # partial group), duplicates recognised by a per-call stamp.
            stamp = object()
            run: list[L1Object] = []
            append = run.append
            for obj in map(self._objects.get, keys):
                if obj is None or obj.stamp is stamp:
                    break
                obj.stamp = stamp
                if not obj.readable(now) or (nbytes is not None and obj.handle.nbytes != nbytes):
                    break
                append(obj)
            del run[len(run) - len(run) % group :]
            self._emit("on_l1_keys_read_reserved", self._lock_for_read(run, holders, now, not promise))
            return [obj.handle for obj in run]

    def _lock_for_read(self, objs: list[L1Object], holders: int, now: float, copy: bool) -> list[ObjectKey]:
        """Add `holders` read locks (copies in flight with `copy`, else promises) to readable
        objects (the caller holds the L1 lock); returns their stored keys (later set/dict/LRU
        lookups hit on identity)."""
        locked = lock_reads(objs, holders, now, now + self._read_ttl, copy)
        self._read_locked.update(locked)
        return locked

    def finish_read(
        self,
        keys: Sequence[ObjectKey],
        count: int = 1,
        *,
        handles: Sequence[MemoryHandle | None] | None = None,
        promise: bool = False,
    ) -> list[OpResult]:
        """Release `count` read locks: copies (the default) or, with `promise`, promises; never
        more of the kind than the object holds (KEY_IN_WRONG_STATE, nothing changed). A
        temporary object is freed after its last read. A force-cleared object answers
        KEY_NOT_EXIST (its promises were void; a copy's release frees its memory)."""
        count = _validate_count("count", count, 1)
        if handles is not None and len(handles) != len(keys):
            raise ValueError(f"got {len(keys)} keys but {len(handles)} handles")
        with self._lock:
            now = self._clock.monotonic()
            results: list[OpResult] = []
            finished: list[ObjectKey] = []
            spent: list[L1Object] = []
            # Hot loop: as in reserve_read, duplicates recognised by a per-call stamp.
            stamp = object()
            append, append_finished = results.append, finished.append
            get, discard_locked, pending = self._objects.get, self._read_locked.discard, self._pending
            missing_seen: set[ObjectKey] = set()
            success, wrong, missing = OpResult.SUCCESS, OpResult.KEY_IN_WRONG_STATE, OpResult.KEY_NOT_EXIST
            by_key = handles is None
            for key, obj, handle in zip(keys, map(get, keys), repeat(None) if handles is None else handles, strict=False):
                if by_key:
                    if obj is None and pending:
                        obj = pending.latest_of_key(key)
                elif handle is not None and (obj is None or obj.handle is not handle):
                    obj = self._exact(key, handle)
                if obj is None:
                    append(_missing_status(key, missing_seen))
                    continue
                if obj.stamp is stamp:
                    append(wrong)
                    continue
                obj.stamp = stamp
                left = obj.unlock_read(count, now, promise)
                if left < 0:
                    append(missing if obj.pending else wrong)
                    continue
                if obj.pending:
                    pending.free_if_unlocked(obj, now)
                    append(missing)
                    continue
                key = obj.key  # identity hits in the sets and listeners below
                append_finished(key)
                append(success)
                if left == 0:
                    discard_locked(key)
                    if obj.temporary and not obj.write_locked(now):
                        spent.append(obj)
            self._emit("on_l1_keys_read_finished", finished)
            self._drop(spent, "temporary")
            return results

    def convert_promises(self, keys: Sequence[ObjectKey], handles: Sequence[MemoryHandle]) -> list[OpResult]:
        """Turn one promise into a copy in flight on each exact object (a retrieve starts
        reading it). Per key: SUCCESS; KEY_NOT_EXIST when the object is gone or was replaced
        (its promises died with it); KEY_NOT_READABLE; KEY_IN_WRONG_STATE when it holds no
        promise (or the key repeats). Release the copy with `finish_read(..., handles=...)`."""
        if len(handles) != len(keys):
            raise ValueError(f"got {len(keys)} keys but {len(handles)} handles")
        with self._lock:
            now = self._clock.monotonic()
            until = now + self._read_ttl
            results: list[OpResult] = []
            stamp = object()
            for key, handle in zip(keys, handles, strict=True):
                obj = self._exact(key, handle)
                if obj is None or obj.pending:
                    results.append(OpResult.KEY_NOT_EXIST)
                    continue
                if obj.stamp is stamp:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                    continue
                obj.stamp = stamp
                if not obj.readable(now):
                    results.append(OpResult.KEY_NOT_READABLE)
                    continue
                results.append(OpResult.SUCCESS if obj.convert_promise(now, until) else OpResult.KEY_IN_WRONG_STATE)
            return results

    def delete(self, keys: Sequence[ObjectKey], *, force: bool = False) -> list[OpResult]:
        """Remove unlocked objects and free their memory; locked ones answer KEY_IS_LOCKED.
        With `force`, locked objects leave the table too, as `clear(force=True)` removes them:
        their promises are void and their memory is freed at once unless a copy or a writer is
        using it (then when that finishes); the key can be stored again at once."""
        with self._lock:
            now = self._clock.monotonic()
            results: list[OpResult] = []
            seen: set[ObjectKey] = set()
            doomed: list[L1Object] = []
            parked: list[L1Object] = []
            for key in keys:
                if key in seen:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                    continue
                seen.add(key)
                obj = self._objects.get(key)
                if obj is None:
                    results.append(OpResult.KEY_NOT_EXIST)
                elif obj.locked(now):
                    if force:
                        parked.append(obj)
                        results.append(OpResult.SUCCESS)
                    else:
                        results.append(OpResult.KEY_IS_LOCKED)
                else:
                    doomed.append(obj)
                    results.append(OpResult.SUCCESS)
            self._drop(doomed, "delete")
            self._force_remove(parked, now, "delete")
            return results

    def evict(
        self, keys: Iterable[ObjectKey], max_bytes: int | None = None
    ) -> tuple[list[ObjectKey], int]:
        """Remove unlocked, non-temporary objects among `keys` (in order) until `max_bytes`
        are freed; skip locked ones. Returns (evicted keys, bytes freed). Reason "evict"."""
        with self._lock:
            return self._evict_locked(keys, max_bytes)

    def _evict_locked(
        self, keys: Iterable[ObjectKey], max_bytes: int | None
    ) -> tuple[list[ObjectKey], int]:
        """evict() for callers already inside the manager's lock (the reclaimer). Consumes
        `keys` lazily and stops as soon as `max_bytes` are freed."""
        with self._lock:
            if max_bytes is not None and max_bytes <= 0:
                return [], 0
            now = self._clock.monotonic()
            victims: list[L1Object] = []
            freed = 0
            seen: set[ObjectKey] = set()
            try:
                for key in keys:
                    if key in seen:
                        continue
                    seen.add(key)
                    obj = self._objects.get(key)
                    if (
                        obj is None
                        or obj.temporary
                        or key in self._protected
                        or obj.locked(now)
                        or self._pins.pinned(key, now)
                    ):
                        continue
                    # Detach at once so a repeated or later key cannot pick the same object.
                    self._detach(obj)
                    self._pool.free(obj.handle)
                    victims.append(obj)
                    freed += obj.size
                    if max_bytes is not None and freed >= max_bytes:
                        break
            finally:
                # A policy iterator that raises midway must not hide what was already evicted.
                self._emit(
                    "on_l1_keys_removed",
                    [o.key for o in victims],
                    [o.size for o in victims],
                    "evict",
                )
            return [o.key for o in victims], freed

    def touch(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Mark objects as used (LRU refresh) without locking."""
        with self._lock:
            now = self._clock.monotonic()
            results: list[OpResult] = []
            seen: set[ObjectKey] = set()
            touched: list[ObjectKey] = []
            add_seen, get = seen.add, self._objects.get
            for key in keys:
                before = len(seen)
                add_seen(key)
                if len(seen) == before:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                    continue
                obj = get(key)
                if obj is None:
                    results.append(OpResult.KEY_NOT_EXIST)
                else:
                    obj.last_access = now
                    touched.append(obj.key)  # identity hits in the listeners' tables
                    results.append(OpResult.SUCCESS)
            self._emit("on_l1_keys_touched", touched)
            return results

    def clear(
        self, force: bool = False, *, cache_salt: str | None = None, model_name: str | None = None
    ) -> int:
        """Remove every (matching) object; without `force`, locked and pinned objects stay.
        With `force`, every matching object leaves the table at once and its key can be stored
        again at once: promises on it are void, its memory is freed at once unless a writer or
        a copy is using it, and then only when they finish or their locks expire (an in-flight
        transfer never touches reused memory). Returns the number of objects removed."""
        with self._lock:
            now = self._clock.monotonic()
            doomed: list[L1Object] = []
            for key, obj in list(self._objects.items()):
                if cache_salt is not None and key.cache_salt != cache_salt:
                    continue
                if model_name is not None and key.model_name != model_name:
                    continue
                if not force and (obj.locked(now) or self._pins.pinned(key, now)):
                    continue
                doomed.append(obj)
            self._force_remove(doomed, now, "clear")
            return len(doomed)

    def drop_where(self, lost: Callable[[MemoryHandle], bool], reason: str = "lost") -> int:
        """Force-remove every object whose memory `lost(handle)` says is gone (a pool segment
        that was truncated under us, say), as `clear(force=True)` removes them. Returns the
        number removed."""
        return self.remove_where(lost, force=True, reason=reason)[0]

    def remove_where(
        self,
        match: Callable[[MemoryHandle], bool],
        *,
        force: bool = False,
        reason: str = "delete",
        keys: Iterable[ObjectKey] | None = None,
    ) -> tuple[int, list[ObjectKey]]:
        """Remove the objects whose memory `match(handle)` selects (an arena being drained, say),
        as `delete` removes them: unlocked ones leave and their memory is freed (pinned and
        temporary ones too: an operator's removal wins over a pin); locked ones stay, or with
        `force` leave as `clear(force=True)` removes them. `keys` limits the walk to those keys
        (the ones a previous call left locked) instead of the whole table. Returns (number
        removed, keys left because they are locked)."""
        with self._lock:
            now = self._clock.monotonic()
            doomed: list[L1Object] = []
            parked: list[L1Object] = []
            left: list[ObjectKey] = []
            if keys is None:
                candidates: Iterable[L1Object] = list(self._objects.values())
            else:
                candidates = [o for o in (self._objects.get(k) for k in dict.fromkeys(keys)) if o is not None]
            for obj in candidates:
                if not match(obj.handle):
                    continue
                if not obj.locked(now):
                    doomed.append(obj)
                elif force:
                    parked.append(obj)
                else:
                    left.append(obj.key)
            self._drop(doomed, reason)
            self._force_remove(parked, now, reason)
            return len(doomed) + len(parked), left

    def _force_remove(self, objs: list[L1Object], now: float, reason: str) -> None:
        for obj in objs:
            self._detach(obj)
            if obj.in_flight(now):
                self._pending.park(obj, now)  # promises die with it; copies and writer keep the memory
            else:
                self._pool.free(obj.handle)
        self._emit("on_l1_keys_removed", [o.key for o in objs], [o.size for o in objs], reason)

    # -- pins -----------------------------------------------------------------------------

    def pin(
        self,
        keys: Sequence[ObjectKey],
        ttl_seconds: float | None = None,
        *,
        max_pinned_bytes: int | None = None,
    ) -> list[OpResult]:
        """Keep readable objects in L1 against eviction for `ttl_seconds` (None: until
        `unpin`); pinning an already pinned key refreshes its deadline. Per key: KEY_NOT_EXIST
        (not resident), KEY_NOT_READABLE (write not finished), KEY_IN_WRONG_STATE (temporary or
        repeated in the batch). Admission is all-or-nothing: when the pinned bytes would exceed
        `max_pinned_bytes`, nothing is pinned and each pinnable key answers OUT_OF_MEMORY."""
        if ttl_seconds is not None and not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be > 0 or None, got {ttl_seconds!r}")
        with self._lock:
            now = self._clock.monotonic()
            self._pins.expire(now)
            results: list[OpResult] = []
            seen: set[ObjectKey] = set()
            chosen: list[tuple[int, L1Object]] = []
            for key in keys:
                if key in seen:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                    continue
                seen.add(key)
                obj = self._objects.get(key)
                if obj is None:
                    results.append(OpResult.KEY_NOT_EXIST)
                elif obj.temporary:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                elif not obj.readable(now):
                    results.append(OpResult.KEY_NOT_READABLE)
                else:
                    chosen.append((len(results), obj))
                    results.append(OpResult.SUCCESS)
            if max_pinned_bytes is not None and chosen:
                added = sum(o.size for _, o in chosen if o.key not in self._pins)
                if self._pins.pinned_bytes(self._objects) + added > max_pinned_bytes:
                    for i, _ in chosen:
                        results[i] = OpResult.OUT_OF_MEMORY
                    return results
            deadline = float("inf") if ttl_seconds is None else now + float(ttl_seconds)
            self._pins.pin([obj.key for _, obj in chosen], deadline)
            return results

    def unpin(self, keys: Sequence[ObjectKey]) -> list[OpResult]:
        """Release pins. Per key: SUCCESS, KEY_NOT_EXIST (not resident) or KEY_IN_WRONG_STATE
        (resident but not pinned, or repeated in the batch)."""
        with self._lock:
            self._pins.expire(self._clock.monotonic())
            results: list[OpResult] = []
            seen: set[ObjectKey] = set()
            for key in keys:
                if key in seen:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                    continue
                seen.add(key)
                if self._pins.unpin(key):
                    results.append(OpResult.SUCCESS)
                elif key in self._objects:
                    results.append(OpResult.KEY_IN_WRONG_STATE)
                else:
                    results.append(OpResult.KEY_NOT_EXIST)
            return results

    def inspect(self, keys: Sequence[ObjectKey]) -> list[L1ObjectInfo | None]:
        """Per key, the state of its resident object (None when absent); one lock hold."""
        with self._lock:
            now = self._clock.monotonic()
            out: list[L1ObjectInfo | None] = []
            for key in keys:
                obj = self._objects.get(key)
                if obj is None:
                    out.append(None)
                    continue
                out.append(
                    L1ObjectInfo(
                        size=obj.size,
                        readable=obj.readable(now),
                        write_locked=obj.write_locked(now),
                        read_lock_count=obj.read_count(now),
                        temporary=obj.temporary,
                        pinned_until=self._pins.deadline(key, now),
                    )
                )
            return out

    def pin_deadline(self, key: ObjectKey) -> float | None:
        """Monotonic time at which the pin of `key` lapses (inf: until unpinned); None when not
        pinned."""
        with self._lock:
            return self._pins.deadline(key, self._clock.monotonic())

    def pinned_count(self) -> int:
        """Live pins (O(pinned))."""
        with self._lock:
            self._pins.expire(self._clock.monotonic())
            return len(self._pins)

    def pinned_bytes(self) -> int:
        """Bytes of pinned objects (O(pinned))."""
        with self._lock:
            self._pins.expire(self._clock.monotonic())
            return self._pins.pinned_bytes(self._objects)

    # -- queries --------------------------------------------------------------------------

    def contains(self, key: ObjectKey) -> bool:
        with self._lock:
            return key in self._objects

    def is_readable(self, key: ObjectKey) -> bool:
        with self._lock:
            obj = self._objects.get(key)
            return obj is not None and obj.readable(self._clock.monotonic())

    def get_handle(self, key: ObjectKey) -> MemoryHandle | None:
        """The handle of an object (no lock taken: the caller must already hold one)."""
        with self._lock:
            obj = self._objects.get(key)
            return None if obj is None else obj.handle

    def view(self, key: ObjectKey) -> memoryview | None:
        """Zero-copy bytes of an object (the caller must hold a lock)."""
        handle = self.get_handle(key)
        return None if handle is None else self._pool.view(handle)

    def keys(
        self, *, cache_salt: str | None = None, model_name: str | None = None
    ) -> list[ObjectKey]:
        """A snapshot of the (matching) keys; O(n), for admin use."""
        with self._lock:
            snapshot = list(self._objects)
        return [
            k
            for k in snapshot
            if (cache_salt is None or k.cache_salt == cache_salt)
            and (model_name is None or k.model_name == model_name)
        ]

    def object_count(self) -> int:
        with self._lock:
            return len(self._objects)

    def usage_bytes(self) -> tuple[int, int]:
        """(used, total) bytes of the pool."""
        return self._pool.used_bytes, self._pool.capacity_bytes

    def bytes_by_salt(self) -> dict[str, int]:
        """Object bytes per cache_salt (incremental; O(salts))."""
        with self._lock:
            return dict(self._bytes_by_salt)

    def expire_locks(self) -> int:
        """Drop expired locks now (also done lazily); frees memory of force-cleared objects
        whose locks are gone. Returns the number of locks expired."""
        with self._lock:
            return self._expire(self._clock.monotonic())

    def report_status(self) -> dict[str, Any]:
        """`is_healthy`, `total_object_count`, `write_locked_count`, `read_locked_count`,
        `temporary_count`, `memory_used_bytes`, `memory_total_bytes`, `memory_usage_ratio`,
        `write_ttl_seconds`, `read_ttl_seconds`, `pending_free_count`, `pinned_count`,
        `pinned_bytes`, `pool` (the pool's report)."""
        with self._lock:
            self._expire(self._clock.monotonic())
            fields: dict[str, Any] = {
                "pinned_count": len(self._pins),
                "pinned_bytes": self._pins.pinned_bytes(self._objects),
                "total_object_count": len(self._objects),
                "write_locked_count": len(self._write_locked),
                "read_locked_count": len(self._read_locked),
                "temporary_count": len(self._temporary),
                "object_bytes": self._object_bytes,
                "pending_free_count": len(self._pending),
                "pending_free_bytes": sum(o.size for o in self._pending.objects()),
                "write_ttl_seconds": self._write_ttl,
                "read_ttl_seconds": self._read_ttl,
                "expired_locks_total": self._expired_locks_total,
                "aborted_writes_total": self._aborted_total,
                "out_of_memory_total": self._out_of_memory_total,
                "reclaim_calls_total": self._reclaim_calls_total,
                "reclaim_failures_total": self._reclaim_failures_total,
                "reclaim_refused_total": self._reclaim_refused_total,
                "reclaimer_installed": self._reclaimer is not None,
                "listener_count": len(self._listeners),
            }
        used, total = self.usage_bytes()
        fields["memory_used_bytes"] = used
        fields["memory_total_bytes"] = total
        fields["memory_usage_ratio"] = used / total if total else 0.0
        return compose_status(fields, {"pool": self._pool})

    # -- internals (lock held) ------------------------------------------------------------

    def _account(self, obj: L1Object, delta: int) -> None:
        salt = obj.key.cache_salt
        total = self._bytes_by_salt.get(salt, 0) + delta
        if total:
            self._bytes_by_salt[salt] = total
        else:
            self._bytes_by_salt.pop(salt, None)
        self._object_bytes += delta

    def _attach(self, obj: L1Object) -> None:
        self._objects[obj.key] = obj
        self._account(obj, obj.size)
        if obj.temporary:
            self._temporary.add(obj.key)

    def _detach(self, obj: L1Object) -> None:
        """Take an object out of the table and its counters (its memory is the caller's)."""
        key = obj.key
        del self._objects[key]
        self._account(obj, -obj.size)
        self._write_locked.discard(key)
        self._read_locked.discard(key)
        self._temporary.discard(key)
        self._pins.discard(key)

    def _drop(self, objs: list[L1Object], reason: str) -> None:
        """Detach and free unlocked objects, then tell the listeners."""
        if not objs:
            return
        for obj in objs:
            self._detach(obj)
            self._pool.free(obj.handle)
        if reason == "aborted":
            self._aborted_total += len(objs)
        self._emit("on_l1_keys_removed", [o.key for o in objs], [o.size for o in objs], reason)

    def _exact(self, key: ObjectKey, handle: MemoryHandle) -> L1Object | None:
        """The object of `key` whose memory is `handle` (in the table or pending), else None."""
        obj = self._objects.get(key)
        if obj is not None and obj.handle is handle:
            return obj
        return self._pending.exact(key, handle)

    def _finish_write_locked(
        self, keys: Sequence[ObjectKey], now: float, handles: Sequence[MemoryHandle | None] | None = None
    ) -> tuple[list[OpResult], list[L1Object]]:
        results, done = self._release_write_locks(keys, now, handles)
        for obj in done:
            self._write_locked.discard(obj.key)
            obj.ready = True
            obj.last_access = now
        return results, done

    def _release_write_locks(
        self, keys: Sequence[ObjectKey], now: float, handles: Sequence[MemoryHandle | None] | None = None
    ) -> tuple[list[OpResult], list[L1Object]]:
        """Release one write lock per key (finish or abort), on the exact object when its handle
        is given. Returns the per-key results and the objects whose lock was released; a
        force-cleared (pending) object answers KEY_NOT_EXIST and its memory is freed once
        unlocked; a repeated key answers KEY_IN_WRONG_STATE."""
        if handles is not None and len(handles) != len(keys):
            raise ValueError(f"got {len(keys)} keys but {len(handles)} handles")
        results: list[OpResult] = []
        released: list[L1Object] = []
        seen: set[ObjectKey] = set()
        for i, key in enumerate(keys):
            if key in seen:
                results.append(OpResult.KEY_IN_WRONG_STATE)
                continue
            seen.add(key)
            handle = None if handles is None else handles[i]
            if handle is None:
                obj = self._objects.get(key)
                if obj is None and self._pending:
                    obj = self._pending.latest_of_key(key)
            else:
                obj = self._exact(key, handle)
            if obj is not None and obj.pending:
                obj.unlock_write(now)
                self._pending.free_if_unlocked(obj, now)
                results.append(OpResult.KEY_NOT_EXIST)
                continue
            if obj is None:
                results.append(OpResult.KEY_NOT_EXIST)
            elif not obj.unlock_write(now):
                results.append(OpResult.KEY_IN_WRONG_STATE)
            else:
                released.append(obj)
                results.append(OpResult.SUCCESS)
        return results, released

    def _allocate_all(
        self, sizes: list[int], protect: list[ObjectKey]
    ) -> list[MemoryHandle] | None:
        """Allocate every size or none, asking the reclaimer for room between attempts."""
        handles: list[MemoryHandle] = []
        try:
            for attempt in range(_MAX_RECLAIM_ROUNDS + 1):
                while len(handles) < len(sizes):
                    handle = self._pool.allocate(sizes[len(handles)])
                    if handle is None:
                        break
                    handles.append(handle)
                if len(handles) == len(sizes):
                    return handles
                if attempt == _MAX_RECLAIM_ROUNDS or self._reclaimer is None:
                    break
                needed = sum(sizes[len(handles) :])
                if not self._could_fit(needed, sizes[len(handles) :], protect):
                    # Evicting cannot make room: never flush other objects for nothing.
                    self._reclaim_refused_total += 1
                    break
                if self._reclaim(needed, protect) <= 0:
                    break
        except BaseException:
            for handle in handles:
                self._pool.free(handle)
            raise
        for handle in handles:
            self._pool.free(handle)
        return None

    def _could_fit(self, needed: int, sizes: Sequence[int], protect: list[ObjectKey]) -> bool:
        """Whether evicting every evictable object could leave room for `needed` more bytes:
        free bytes plus the bytes of objects that are not locked, pinned, temporary or about
        to be rewritten. Walks only those (small) sets, never the whole table."""
        capacity = self._pool.capacity_bytes
        if needed > capacity or max(sizes, default=0) > capacity:
            return False
        kept = 0
        seen: set[ObjectKey] = set()
        for group in (self._write_locked, self._read_locked, self._temporary, self._pins, protect):
            for key in group:
                obj = self._objects.get(key)
                if obj is not None and key not in seen:
                    seen.add(key)
                    kept += obj.size
        evictable = max(0, self._object_bytes - kept)
        free = capacity - self._pool.used_bytes
        return free + evictable >= needed

    def _reclaim(self, needed: int, protect: list[ObjectKey]) -> int:
        assert self._reclaimer is not None
        self._reclaim_calls_total += 1
        self._protected.update(protect)
        try:
            return int(self._reclaimer(needed))
        except Exception:
            # A broken reclaimer turns into OUT_OF_MEMORY for this write, never into a crash.
            self._reclaim_failures_total += 1
            log.exception("L1 reclaimer failed while freeing %d bytes", needed)
            return 0
        finally:
            self._protected.clear()

    def _expire(self, now: float) -> int:
        expired = 0
        aborted: dict[ObjectKey, L1Object] = {}
        for key in list(self._write_locked):
            obj = self._objects.get(key)
            if obj is None or not obj.write_locked(now):
                self._write_locked.discard(key)
                expired += obj is not None
                if obj is not None and not obj.ready:
                    aborted[key] = obj
        for key in list(self._read_locked):
            obj = self._objects.get(key)
            if obj is None or not obj.read_locked(now):
                self._read_locked.discard(key)
                expired += obj is not None
        stale: list[L1Object] = []
        for key in self._temporary:
            obj = self._objects[key]
            if (
                key not in aborted
                and not obj.locked(now)
                and now - obj.last_access >= self._read_ttl
            ):
                stale.append(obj)
        expired += self._pending.expire(now)
        self._expired_locks_total += expired
        self._pins.expire(now)
        self._drop(list(aborted.values()), "aborted")
        self._drop(stale, "temporary")
        return expired

    def _emit(self, event: str, *args: Any) -> None:
        if not args[0]:
            return
        for listener, method in self._receivers[event]:
            try:
                method(*args)
            except Exception:
                log.exception("L1 listener %r failed on %s", listener, event)
