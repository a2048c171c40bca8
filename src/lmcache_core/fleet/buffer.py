"""EventBuffer: a server's cache events waiting for the coordinator, bounded, with counted drops.

Events from the data path are appended in O(1) under a short lock and never block on the
network; the flusher takes numbered batches out, and puts back the ones it could not deliver
(a retry is safe: the coordinator applies each (instance, incarnation, seq) once). When the
buffer holds `max_entries`, new events are dropped and counted; the coordinator then sees a
sequence gap and its directory under-reports that server until the next stores."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lmcache_core.fleet.model import CapacityDecl, Entry, EventBatch, Op, Tier
from lmcache_core.keys import ObjectKey


@dataclass
class _Run:
    op: Op
    tier: Tier
    backend: str
    shared: bool
    entries: list[Entry]


class EventBuffer:
    """Thread-safe; `instance_id` and `incarnation` stamp every batch."""

    def __init__(self, instance_id: str, incarnation: int, *, max_entries: int = 100_000, max_batch_entries: int = 5_000) -> None:
        if max_entries < 1 or max_batch_entries < 1:
            raise ValueError("buffer bounds must be positive")
        self.instance_id = instance_id
        self.incarnation = incarnation
        self.max_entries = max_entries
        self.max_batch_entries = max_batch_entries
        self._lock = threading.Lock()
        self._runs: list[_Run] = []
        self._unsent: list[EventBatch] = []
        self._capacity: list[CapacityDecl] | None = None
        self._capacity_revision = 0
        self._entries = 0
        self._seq = 0
        self.dropped_events = 0
        self.accepted_events = 0
        self.sent_batches = 0

    # ------------------------------------------------------------------ producers (data path)

    def store(self, tier: Tier, backend: str, keys: Sequence[ObjectKey], sizes: Sequence[int], *, shared: bool = False) -> None:
        self._add(Op.STORE, tier, backend, shared, [Entry(Op.STORE, k, int(s)) for k, s in zip(keys, sizes, strict=True)])

    def delete(self, tier: Tier, backend: str, keys: Iterable[ObjectKey], *, shared: bool = False) -> None:
        self._add(Op.DELETE, tier, backend, shared, [Entry(Op.DELETE, k) for k in keys])

    def access(self, tier: Tier, keys: Iterable[ObjectKey]) -> None:
        # An access carries no placement identity: the backend is empty by contract.
        self._add(Op.ACCESS, tier, "", False, [Entry(Op.ACCESS, k) for k in keys])

    def declare(self, modules: Sequence[CapacityDecl]) -> None:
        """Replace the pending capacity declaration (each one is the whole topology)."""
        with self._lock:
            self._capacity = list(modules)

    def _add(self, op: Op, tier: Tier, backend: str, shared: bool, entries: list[Entry]) -> None:
        if not entries:
            return
        with self._lock:
            room = self.max_entries - self._entries
            if room < len(entries):
                self.dropped_events += len(entries) - max(room, 0)
                entries = entries[: max(room, 0)]
                if not entries:
                    return
            self._entries += len(entries)
            self.accepted_events += len(entries)
            last = self._runs[-1] if self._runs else None
            if last is not None and (last.op, last.tier, last.backend, last.shared) == (op, tier, backend, shared):
                last.entries.extend(entries)
            else:
                self._runs.append(_Run(op, tier, backend, shared, entries))

    # ------------------------------------------------------------------ the flusher

    def take(self, now: float, *, max_batches: int = 1000) -> list[EventBatch]:
        """Batches to send now, oldest first: unsent ones again, then the declaration, then new
        runs (split at `max_batch_entries`), numbered in order."""
        with self._lock:
            out = self._unsent[:max_batches]
            self._unsent = self._unsent[max_batches:]
            if self._capacity is not None and len(out) < max_batches:
                self._capacity_revision += 1
                for decl in self._capacity:
                    self._seq += 1
                    stamped = CapacityDecl(decl.tier, decl.backend, decl.shared, decl.capacity_bytes, self._capacity_revision)
                    out.append(EventBatch(self.instance_id, self.incarnation, self._seq, decl.tier, decl.backend, decl.shared, (), now, capacity=stamped))
                self._capacity = None
            while self._runs and len(out) < max_batches:
                run = self._runs[0]
                part, rest = run.entries[: self.max_batch_entries], run.entries[self.max_batch_entries :]
                if rest:
                    run.entries = rest
                else:
                    self._runs.pop(0)
                self._seq += 1
                out.append(EventBatch(self.instance_id, self.incarnation, self._seq, run.tier, run.backend, run.shared, tuple(part), now))
            return out

    def sent(self, batches: Sequence[EventBatch]) -> None:
        """The coordinator answered for these batches: they leave the buffer for good."""
        with self._lock:
            self._entries -= sum(len(b.entries) for b in batches)
            self.sent_batches += len(batches)

    def failed(self, batches: Sequence[EventBatch]) -> None:
        """Delivery failed: keep them (in order, ahead of newer batches) for the next flush."""
        with self._lock:
            self._unsent = list(batches) + self._unsent

    @property
    def pending_entries(self) -> int:
        with self._lock:
            return self._entries

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "buffered_events": self._entries,
                "unsent_batches": len(self._unsent),
                "accepted_events": self.accepted_events,
                "dropped_events": self.dropped_events,
                "sent_batches": self.sent_batches,
                "last_seq": self._seq,
            }
