"""L2AdapterEntry: one configured adapter, its position (0 = primary) and its eviction settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmcache_core.ports import L2Adapter, NamesItsType


def adapter_type_name(adapter: L2Adapter) -> str:
    """The class name shown by /l2/adapters (`MockL2Adapter`, `FSL2Adapter`, ...); a wrapper
    (serde) names what it wraps."""
    return adapter.type_name if isinstance(adapter, NamesItsType) else type(adapter).__name__


@dataclass(frozen=True)
class L2AdapterEntry:
    """One configured L2 adapter."""

    index: int
    name: str
    type_name: str
    adapter: L2Adapter
    eviction: dict[str, Any] | None = field(default=None)
    shared: bool = False
    """The adapter mounts a storage domain several servers share (one S3 bucket, a shared
    filesystem): `"shared": true` in its `--l2-adapter` JSON, as in LMCache 0.5.6."""

    @property
    def primary(self) -> bool:
        return self.index == 0

    @property
    def backend(self) -> str:
        """The name listings (`GET /cache/objects`) and fleet events give this adapter: its kind."""
        return str(self.adapter.kind)
