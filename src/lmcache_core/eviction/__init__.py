"""Eviction: policies (LRU, IsolatedLRU, noop) and the controller thread that applies them."""

from __future__ import annotations

from lmcache_core.errors import ConfigError
from lmcache_core.eviction.base import EvictionPolicy
from lmcache_core.eviction.controller import EvictionController, PolicyListener
from lmcache_core.eviction.isolated_lru import IsolatedLRUPolicy
from lmcache_core.eviction.lru import LRUPolicy
from lmcache_core.eviction.noop import NoopPolicy
from lmcache_core.quota import QuotaManager

POLICY_NAMES = ("LRU", "IsolatedLRU", "noop")
"""The accepted `--eviction-policy` values (matched case-insensitively)."""


def make_policy(name: str, quotas: QuotaManager | None) -> EvictionPolicy:
    """Build a policy by name. IsolatedLRU needs the QuotaManager that drives it."""
    wanted = name.strip().lower() if isinstance(name, str) else name
    if wanted == "lru":
        return LRUPolicy()
    if wanted == "noop":
        return NoopPolicy()
    if wanted == "isolatedlru":
        if quotas is None:
            raise ConfigError("eviction policy IsolatedLRU needs a QuotaManager (quotas drive it)")
        return IsolatedLRUPolicy(quotas)
    raise ConfigError(f"unknown eviction policy {name!r}; accepted: {', '.join(POLICY_NAMES)}")


__all__ = [
    "POLICY_NAMES",
    "EvictionController",
    "EvictionPolicy",
    "IsolatedLRUPolicy",
    "LRUPolicy",
    "NoopPolicy",
    "PolicyListener",
    "make_policy",
]
