"""Listener interface for L2 events: what entered, was read from, and left each L2 adapter."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from lmcache_core.keys import ObjectKey
from lmcache_core.l2.entry import L2AdapterEntry

log = logging.getLogger(__name__)


class L2Listener:
    """Receives L2 events (the fleet's cache-event reporter; the L2 eviction policies). Override
    only what you need; the defaults do nothing.

    Events are delivered synchronously on the thread that saw the adapter's answer (the
    write-back's completion, a prefetch's load, an admin delete, the L2 eviction cycle), after
    the fact and only for the keys that succeeded. A listener must be fast and must not block;
    an exception it raises is logged and swallowed."""

    def on_l2_keys_stored(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        """Objects were written to `entry` (an L1 write-back)."""

    def on_l2_keys_loaded(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> None:
        """Objects were read from `entry` into L1 (a prefetch hit)."""

    def on_l2_keys_removed(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], reason: str) -> None:
        """Objects left `entry`. `reason`: "delete" (an operator's or a coordinator's delete) or
        "evict" (the adapter's own eviction policy)."""


class L2Events:
    """Fans L2 events out to the listeners added so far (added at start-up, read on every event)."""

    def __init__(self) -> None:
        self._listeners: tuple[L2Listener, ...] = ()
        self._lock = threading.Lock()

    def add(self, listener: L2Listener) -> None:
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def stored(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], sizes: Sequence[int]) -> None:
        for listener in self._listeners:
            try:
                listener.on_l2_keys_stored(entry, keys, sizes)
            except Exception:
                log.exception("L2 listener %r failed on stored", listener)

    def loaded(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey]) -> None:
        for listener in self._listeners:
            try:
                listener.on_l2_keys_loaded(entry, keys)
            except Exception:
                log.exception("L2 listener %r failed on loaded", listener)

    def removed(self, entry: L2AdapterEntry, keys: Sequence[ObjectKey], reason: str) -> None:
        for listener in self._listeners:
            try:
                listener.on_l2_keys_removed(entry, keys, reason)
            except Exception:
                log.exception("L2 listener %r failed on removed", listener)
