"""Tier: which cache tier(s) an operation addresses (`l1`, `l2`, or `all` where supported)."""

from __future__ import annotations

from enum import StrEnum

from lmcache_core.errors import InvalidRequestError


class Tier(StrEnum):
    """A cache tier as written on the wire (LMCache 0.5.6's `tier` field)."""

    L1 = "l1"
    L2 = "l2"
    ALL = "all"

    @property
    def includes_l1(self) -> bool:
        return self in (Tier.L1, Tier.ALL)

    @property
    def includes_l2(self) -> bool:
        return self in (Tier.L2, Tier.ALL)


def require_tier(tier: Tier, supported: Tier, what: str = "tier") -> None:
    """InvalidRequestError unless `tier` is the one the operation supports."""
    if tier is not supported:
        raise InvalidRequestError(f"{what} {tier.value!r} not supported; only {supported.value!r}")
