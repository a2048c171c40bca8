"""Lookup leases: the read locks a LOOKUP took, owned by its client and request, and consumed by retrieves.

The rule (docs/security.md):

- A LOOKUP from client C for request R creates (or adds to) the lease (C, R). It holds exactly
  the promise read locks the lookup took, per key and on the exact L1 object; the L2 prefetch
  of the lookup adds the locks of what it loaded.
- FREE_LOOKUP_LOCKS and END_SESSION release only what the caller's own lease (C, R) holds.
- A retrieve (RETRIEVE, PREPARE_RETRIEVE) names R in its key and consumes one lock per key from
  a lease of R: the caller's own first, else the newest lease of R from another client. It is
  request-scoped, not client-scoped, because vLLM looks up on its scheduler's socket and
  retrieves on each worker's socket. It never takes more than the lease holds; without a lock
  on every key it fails and releases only the locks of that lease it was about to consume.
- A lease forgets a lock once the L1 read TTL may have expired it (L1 then no longer counts
  it, so releasing it later could release someone else's).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from lmcache_core.clients import ClientId
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.manager import L1Manager
from lmcache_core.l1.results import OpResult
from lmcache_core.ports import Clock, MemoryHandle


class Lease:
    """The promise read locks of one (client, request) LOOKUP: per key, the exact object and
    how many locks are held on it. One expiry for the whole lease: the L1 read TTL from its
    first lock (a later lookup of the same request does not extend it: forgetting a lock early
    only leaves it to lapse in L1, never releases anyone else's)."""

    __slots__ = ("alive", "counts", "created_at", "expires", "handles", "owner", "prefetching", "request_id")

    def __init__(self, owner: ClientId, request_id: str, now: float, expires: float) -> None:
        self.owner = owner
        self.request_id = request_id
        self.created_at = now
        self.expires = expires
        self.handles: dict[ObjectKey, MemoryHandle] = {}
        self.counts: dict[ObjectKey, int] = {}
        self.prefetching = 0
        self.alive = True

    def lock_count(self, now: float) -> int:
        """Locks still held (not expired)."""
        return sum(self.counts.values()) if self.expires > now else 0

    def live(self, now: float) -> bool:
        return self.expires > now

    def drop_key(self, key: ObjectKey) -> None:
        del self.counts[key]
        del self.handles[key]


@dataclass(frozen=True)
class ReadTicket:
    """Copies in flight on exact L1 objects (one retrieve's); release it once the copy is done."""

    keys: list[ObjectKey]
    handles: list[MemoryHandle]
    expires_at: float


class LeaseTable:
    """Every live lease, with per-client and global caps (the oldest lease is released past
    them). Thread-safe; L1 is called after the table's own lock is released."""

    def __init__(
        self,
        l1: L1Manager,
        *,
        clock: Clock,
        max_per_client: int,
        max_total: int,
    ) -> None:
        self._l1 = l1
        self._clock = clock
        self._ttl = l1.read_ttl_seconds
        self._max_per_client = max(1, max_per_client)
        self._max_total = max(1, max_total)
        self._lock = threading.Lock()
        self._leases: OrderedDict[tuple[ClientId, str], Lease] = OrderedDict()
        self._by_request: dict[str, list[Lease]] = {}
        self._per_client: dict[ClientId, OrderedDict[str, Lease]] = {}
        self.released_over_cap_total = 0

    # -- granting -------------------------------------------------------------------------

    def grant(
        self,
        owner: ClientId,
        request_id: str,
        keys: Sequence[ObjectKey],
        handles: Sequence[MemoryHandle],
        count: int,
        *,
        locked_since: float,
        prefetching: bool = False,
    ) -> Lease | None:
        """Record `count` promise locks on each of `keys` (their exact objects `handles`) in
        the lease (owner, request_id), creating it. `locked_since`: the clock read before L1
        took the locks, so the lease forgets them no later than L1 may expire them. None when
        there is nothing to hold."""
        if not keys and not prefetching:
            return None
        now = self._clock.monotonic()
        expires = locked_since + self._ttl
        evicted: list[Lease] = []
        with self._lock:
            lease = self._leases.get((owner, request_id))
            if lease is None:
                lease = Lease(owner, request_id, now, expires)
                self._leases[(owner, request_id)] = lease
                self._by_request.setdefault(request_id, []).append(lease)
                mine = self._per_client.setdefault(owner, OrderedDict())
                mine[request_id] = lease
                while len(mine) > self._max_per_client:
                    evicted.append(self._forget(next(iter(mine.values()))))
                while len(self._leases) > self._max_total:
                    evicted.append(self._forget(next(iter(self._leases.values()))))
            else:
                self._leases.move_to_end((owner, request_id))
                self._per_client[owner].move_to_end(request_id)
            self._merge(lease, keys, handles, count, expires)
            if prefetching:
                lease.prefetching += 1
            self.released_over_cap_total += len(evicted)
        for old in evicted:
            self._release_lease(old, now)
        return lease

    def attach_prefetch(
        self,
        lease: Lease,
        keys: Sequence[ObjectKey],
        handles: Sequence[MemoryHandle],
        count: int,
        *,
        locked_since: float,
    ) -> None:
        """A lease's L2 prefetch finished: its locks join the lease, or are released at once
        when the lease is gone (ended, released over a cap, reaped). `locked_since`: a clock
        read from before the prefetch took them (the lookup's start)."""
        with self._lock:
            lease.prefetching = max(0, lease.prefetching - 1)
            if lease.alive:
                lease.expires = min(lease.expires, locked_since + self._ttl)
                self._merge(lease, keys, handles, count, locked_since + self._ttl)
                keys, handles = [], []
        if keys:
            self._l1.finish_read(keys, count, handles=handles, promise=True)

    @staticmethod
    def _merge(
        lease: Lease, keys: Sequence[ObjectKey], handles: Sequence[MemoryHandle], count: int, expires: float
    ) -> None:
        """Add locks to the lease. A lock on a newer object of a key replaces the entry of the
        older one: that one was cleared, and its promises died with it (nothing to release)."""
        if not lease.counts:
            # The common case (a LOOKUP's own lease): built in C, no loop in Python.
            lease.handles = dict(zip(keys, handles, strict=True))
            lease.counts = dict.fromkeys(keys, count)
            return
        held, counts = lease.handles, lease.counts
        for key, handle in zip(keys, handles, strict=True):
            if held.get(key) is handle:
                counts[key] += count
            else:
                held[key] = handle
                counts[key] = count

    # -- releasing ------------------------------------------------------------------------

    def release(self, owner: ClientId, request_id: str, keys: Sequence[ObjectKey], count: int) -> int:
        """FREE_LOOKUP_LOCKS: release up to `count` locks on each key from the caller's own
        lease only. Returns how many keys had locks released."""
        now = self._clock.monotonic()
        out: list[tuple[ObjectKey, MemoryHandle, int]] = []
        with self._lock:
            lease = self._leases.get((owner, request_id))
            if lease is None:
                return 0
            live = lease.live(now)
            counts, handles = lease.counts, lease.handles
            if len(counts) <= len(keys) and max(counts.values(), default=0) <= count and counts.keys() <= set(keys):
                # The common case: everything the lease holds goes (built in C, no loop).
                held_keys = list(counts)
                entries = (held_keys, [handles[k] for k in held_keys], list(counts.values()))
                lease.counts, lease.handles = {}, {}
                self._drop_if_spent(lease)
                if not live:
                    return 0
            else:
                entries = None
            pop_count, pop_handle = counts.pop, handles.pop
            append = out.append
            for key in (keys if entries is None else ()):
                held = pop_count(key, 0)
                if held <= 0:
                    continue
                if held > count:
                    counts[key] = held - count
                    handle = handles[key]
                    held = count
                else:
                    handle = pop_handle(key)
                if live:
                    append((key, handle, held))
            self._drop_if_spent(lease)
        if entries is not None:
            self._release_lists(*entries)
            return len(entries[0])
        self._release_entries(out)
        return len(out)

    def end(self, owner: ClientId, request_id: str) -> int:
        """END_SESSION: release every lock left in the caller's own lease and forget it."""
        with self._lock:
            lease = self._leases.get((owner, request_id))
            if lease is None:
                return 0
            self._forget(lease)
        return self._release_lease(lease, self._clock.monotonic())

    def take(
        self, client: ClientId, request_id: str, keys: Sequence[ObjectKey], object_size: int | None = None
    ) -> ReadTicket | None:
        """A retrieve of `keys` for `request_id`: consume one lock per key from a lease of the
        request and turn it into a copy in flight (a ReadTicket). None when some key has no
        lock there (or holds another size, or its object is gone): then the locks this call
        would have consumed are released (the engine will not retrieve those keys) and
        nothing else is touched."""
        if not keys:
            return ReadTicket([], [], self._clock.monotonic() + self._ttl)
        now = self._clock.monotonic()
        handles: list[MemoryHandle] = []
        give_back: list[tuple[ObjectKey, MemoryHandle, int]] = []
        with self._lock:
            lease = self._find(client, request_id, keys, now)
            if lease is None:
                return None
            if len(set(keys)) != len(keys):
                return None  # a key twice: not a retrieve any engine sends
            live = lease.live(now)
            counts, held_handles = lease.counts, lease.handles
            found = [k for k in keys if counts.get(k, 0) >= 1]
            ok = live and len(found) == len(keys)
            if ok and object_size is not None:
                ok = all(held_handles[k].nbytes == object_size for k in keys)
            for key in found:
                handle = held_handles[key]
                if counts[key] <= 1:
                    lease.drop_key(key)
                else:
                    counts[key] -= 1
                if ok:
                    handles.append(handle)
                elif live:
                    give_back.append((key, handle, 1))
            self._drop_if_spent(lease)
        if not ok:
            self._release_entries(give_back)
            return None
        results = self._l1.convert_promises(keys, handles)
        if all(r is OpResult.SUCCESS for r in results):
            return ReadTicket(list(keys), handles, now + self._ttl)
        # An object was cleared (or replaced) since the lookup: the retrieve fails. The copies
        # just taken are released at once (their promises are consumed either way).
        done = [i for i, r in enumerate(results) if r is OpResult.SUCCESS]
        if done:
            self._l1.finish_read([keys[i] for i in done], handles=[handles[i] for i in done])
        rest = [(keys[i], handles[i], 1) for i, r in enumerate(results) if r is OpResult.KEY_NOT_READABLE]
        self._release_entries(rest)
        return None

    def release_ticket(self, ticket: ReadTicket) -> None:
        """The copy is done: release its locks (unless the TTL may have lapsed them)."""
        if ticket.keys and self._clock.monotonic() < ticket.expires_at:
            self._l1.finish_read(ticket.keys, handles=ticket.handles)

    # -- housekeeping ---------------------------------------------------------------------

    def reap(self) -> int:
        """Forget expired leases and spent ones; returns how many were forgotten. Expired locks
        are not released: L1 already stopped counting them."""
        now = self._clock.monotonic()
        with self._lock:
            doomed = [
                lease for lease in self._leases.values()
                if lease.prefetching == 0 and not lease.live(now)
            ]
            for lease in doomed:
                self._forget(lease)
        return len(doomed)

    def count(self, owner: ClientId | None = None) -> int:
        with self._lock:
            if owner is None:
                return len(self._leases)
            return len(self._per_client.get(owner, ()))

    def get(self, owner: ClientId, request_id: str) -> Lease | None:
        with self._lock:
            return self._leases.get((owner, request_id))

    # -- internals ------------------------------------------------------------------------

    def _find(self, client: ClientId, request_id: str, keys: Sequence[ObjectKey], now: float) -> Lease | None:
        own = self._leases.get((client, request_id))
        if own is not None:
            return own
        others = self._by_request.get(request_id)
        if not others:
            return None
        # Newest first; prefer one that holds a live lock on the first key.
        for lease in reversed(others):
            if lease.live(now) and lease.counts.get(keys[0], 0) >= 1:
                return lease
        return others[-1]

    def _drop_if_spent(self, lease: Lease) -> None:
        if not lease.counts and lease.prefetching == 0 and lease.alive:
            self._forget(lease)

    def _forget(self, lease: Lease) -> Lease:
        """Take a lease out of every index (the caller holds the lock); returns it."""
        lease.alive = False
        self._leases.pop((lease.owner, lease.request_id), None)
        same = self._by_request.get(lease.request_id)
        if same is not None:
            same[:] = [other for other in same if other is not lease]
            if not same:
                del self._by_request[lease.request_id]
        mine = self._per_client.get(lease.owner)
        if mine is not None:
            mine.pop(lease.request_id, None)
            if not mine:
                del self._per_client[lease.owner]
        return lease

    def _release_lease(self, lease: Lease, now: float) -> int:
        entries = (
            [(key, lease.handles[key], n) for key, n in lease.counts.items() if n > 0] if lease.live(now) else []
        )
        lease.counts, lease.handles = {}, {}
        self._release_entries(entries)
        return len(entries)

    def _release_lists(self, keys: list[ObjectKey], handles: list[MemoryHandle], counts: list[int]) -> None:
        """Release `counts[i]` promise locks of `keys[i]` (on `handles[i]`) in L1."""
        if not keys:
            return
        if counts.count(counts[0]) == len(counts):
            self._l1.finish_read(keys, counts[0], handles=handles, promise=True)
        else:
            self._release_entries(list(zip(keys, handles, counts, strict=True)))

    def _release_entries(self, entries: list[tuple[ObjectKey, MemoryHandle, int]]) -> None:
        """Release promise locks in L1, one batch call per distinct count (usually one)."""
        if not entries:
            return
        by_count: dict[int, tuple[list[ObjectKey], list[MemoryHandle]]] = {}
        for key, handle, n in entries:
            keys, handles = by_count.setdefault(n, ([], []))
            keys.append(key)
            handles.append(handle)
        for n, (keys, handles) in by_count.items():
            self._l1.finish_read(keys, n, handles=handles, promise=True)
