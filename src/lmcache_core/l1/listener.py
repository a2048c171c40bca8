"""Listener interface for L1 events (eviction policies, the store controller, metrics)."""

from __future__ import annotations

from collections.abc import Sequence

from lmcache_core.keys import ObjectKey


class L1Listener:
    """Receives L1 events. Override only what you need; the defaults do nothing.

    Events are delivered synchronously on the calling thread while the L1 manager holds its
    lock, in the order the state changed. A listener must be fast, must not block and must not
    call back into the L1 manager (hand work to your own thread instead). An exception raised
    by a listener is logged and swallowed; it never fails the L1 operation."""

    def on_l1_keys_reserved_write(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        """New objects were allocated and write-locked (not yet readable)."""

    def on_l1_keys_write_finished(self, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        """Writes completed: the objects are now readable (the store controller copies to L2)."""

    def on_l1_keys_read_reserved(self, keys: Sequence[ObjectKey]) -> None:
        """Objects were read-locked (a hit)."""

    def on_l1_keys_read_finished(self, keys: Sequence[ObjectKey]) -> None:
        """Read locks were released."""

    def on_l1_keys_touched(self, keys: Sequence[ObjectKey]) -> None:
        """Objects were used without locking (LRU refresh)."""

    def on_l1_keys_removed(self, keys: Sequence[ObjectKey], sizes: Sequence[int], reason: str) -> None:
        """Objects left L1. `reason`: "delete", "evict", "clear", "temporary", "aborted"."""
