"""The eviction-policy interface shared by the L1 and L2 eviction controllers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from lmcache_core.keys import ObjectKey


@runtime_checkable
class EvictionPolicy(Protocol):
    """Orders keys for eviction. Tier-agnostic: it sees keys and sizes, never memory.

    The owner (L1 manager listener or L2 controller) reports every object's arrival, use and
    departure; the controller asks for victims and evicts the ones that are not locked.
    Implementations are thread-safe."""

    name: str

    def on_added(self, key: ObjectKey, size: int) -> None:
        """An object became resident (or was rewritten with a new size)."""
        ...

    def on_accessed(self, key: ObjectKey) -> None:
        """An object was read or touched."""
        ...

    def on_accessed_many(self, keys: Sequence[ObjectKey]) -> None:
        """`on_accessed` for each key in order, as one operation (the LOOKUP hot path reports
        128+ keys at a time: one lock round trip instead of one per key)."""
        ...

    def on_removed(self, key: ObjectKey) -> None:
        """An object left the tier (for any reason). Unknown keys are ignored."""
        ...

    def mandatory_victims(self) -> Iterator[ObjectKey]:
        """Keys that must go regardless of pressure (e.g. salts over their quota), in order.
        The controller evicts them every cycle, skipping locked ones."""
        ...

    def victims(self) -> Iterator[ObjectKey]:
        """All keys in eviction order, for memory pressure; the caller stops consuming once
        enough bytes are freed and skips locked keys. Must tolerate concurrent updates (iterate
        over a snapshot)."""
        ...

    def report_status(self) -> dict[str, Any]:
        """`is_healthy`, `policy`, tracked key count and policy-specific fields."""
        ...
