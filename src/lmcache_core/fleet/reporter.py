"""CacheEventReporter: a server's L1 and L2 events, as the storage manager's listener seams see
them, turned into fleet cache events in an EventBuffer (which a CoordinatorClient flushes).

It runs on the data path (L1 events arrive under the L1 manager's lock), so each event is one
append to the bounded buffer: no I/O, no waiting, drops counted by the buffer when it is full."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.fleet.buffer import EventBuffer
from lmcache_core.fleet.model import CapacityDecl, Tier
from lmcache_core.keys import ObjectKey
from lmcache_core.l1.listener import L1Listener
from lmcache_core.l2.entry import L2AdapterEntry
from lmcache_core.l2.listener import L2Listener
from lmcache_core.storage_manager import StorageManager


class CacheEventReporter(L1Listener, L2Listener):
    """Stores, reads and removals of L1 and of every L2 adapter, reported under the names the
    server's own listings use (`dram`/`devdax` for L1; an adapter's kind, and its `shared` flag,
    for L2), so the coordinator's resync and later events speak of the same placements."""

    def __init__(self, events: EventBuffer, *, l1_backend: str = "dram") -> None:
        self.events = events
        self.l1_backend = l1_backend
        self._l1_open = True
        self._storage: StorageManager | None = None
        self._declared: list[CapacityDecl] | None = None

    @classmethod
    def attach(cls, storage: StorageManager, events: EventBuffer) -> CacheEventReporter:
        """A reporter subscribed to `storage`'s L1 and L2 events, its capacity declared."""
        reporter = cls(events, l1_backend=str(getattr(storage.l1.pool, "backend", "dram")))
        reporter._storage = storage
        storage.l1.add_listener(reporter)
        storage.add_l2_listener(reporter)
        reporter.refresh_capacity()
        return reporter

    def refresh_capacity(self) -> bool:
        """Declare the server's compartments again when they changed since the last declaration
        (a Device-DAX device added to or removed from L2, an L1 arena added or drained, at run
        time); returns whether a new declaration was queued. Cheap: each adapter's usage()."""
        if self._storage is None:
            return False
        modules = capacities(self._storage, self.l1_backend)
        if modules == self._declared:
            return False
        self._declared = modules
        self.events.declare(modules)
        return True

    def close_l1(self) -> None:
        """Stop reporting L1 (the server is shutting down: its deregistration drops every L1
        placement at once, so the removals of the final L1 clear need not be sent)."""
        self._l1_open = False

    # -- L1 ----------------------------------------------------------------------------------

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        if self._l1_open:
            self.events.store(Tier.L1, self.l1_backend, keys, sizes)

    def on_l1_keys_read_reserved(self, keys: Sequence[ObjectKey]) -> None:
        # A hit (a lookup's lock, a retrieve): it refreshes the key's recency in the fleet too.
        if self._l1_open:
            self.events.access(Tier.L1, keys)

    def on_l1_keys_removed(self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str) -> None:
        # Every reason (delete, evict, clear, a spent temporary, an aborted write): a delete of a
        # placement the coordinator never saw changes nothing there.
        if self._l1_open:
            self.events.delete(Tier.L1, self.l1_backend, keys)

    # -- L2 ----------------------------------------------------------------------------------

    def on_l2_keys_stored(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        self.events.store(Tier.L2, entry.backend, keys, sizes, shared=entry.shared)

    def on_l2_keys_loaded(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> None:
        self.events.access(Tier.L2, keys)

    def on_l2_keys_removed(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], reason: str) -> None:
        self.events.delete(Tier.L2, entry.backend, keys, shared=entry.shared)


def capacities(storage: StorageManager, l1_backend: str) -> list[CapacityDecl]:
    """The server's memory compartments as a coordinator's capacity declaration: L1, then each
    L2 adapter (0 bytes for an unbounded one). The revision is stamped when it is sent."""
    modules = [CapacityDecl(Tier.L1, l1_backend, False, int(storage.l1.pool.capacity_bytes), 0)]
    for entry in storage.l2_adapters:
        try:
            capacity = entry.adapter.usage().capacity_bytes or 0
        except Exception:  # an adapter that cannot answer now is declared unbounded
            capacity = 0
        modules.append(CapacityDecl(Tier.L2, entry.backend, entry.shared, int(capacity), 0))
    return modules
