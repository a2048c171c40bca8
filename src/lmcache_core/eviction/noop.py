"""NoopPolicy: never proposes a victim (L1 then relies on TTLs, deletes and clears only)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from lmcache_core.keys import ObjectKey


class NoopPolicy:
    """An eviction policy that tracks nothing and evicts nothing."""

    name = "noop"

    def on_added(self, key: ObjectKey, size: int) -> None:
        return None

    def on_accessed(self, key: ObjectKey) -> None:
        return None

    def on_accessed_many(self, keys: Sequence[ObjectKey]) -> None:
        return None

    def on_removed(self, key: ObjectKey) -> None:
        return None

    def mandatory_victims(self) -> Iterator[ObjectKey]:
        return iter(())

    def victims(self) -> Iterator[ObjectKey]:
        return iter(())

    def report_status(self) -> dict[str, Any]:
        return {"is_healthy": True, "policy": self.name, "tracked_keys": 0}
