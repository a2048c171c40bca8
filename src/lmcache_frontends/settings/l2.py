"""Settings section: The L2 tiers: adapters, store and prefetch policies."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_positive, choices_metavar, one_of, option
from lmcache_frontends.settings.values import (
    L2_PREFETCH_POLICIES,
    L2_STORE_POLICIES,
    check_l2_adapter_json,
)


@dataclass(frozen=True)
class L2Settings:
    """The L2 tiers: adapters, store and prefetch policies."""

    l2_adapters: tuple[str, ...] = option(
        (),
        'An L2 storage adapter as JSON, e.g. \'{"type": "fs", "base_path": "/data/kv"}\'; repeat for '
        "several (the first is the primary).",
        section="storage_manager",
        flag="--l2-adapter",
        metavar="JSON",
        check=check_l2_adapter_json,
    )
    l2_store_policy: str = option(
        "default",
        "default: keep objects in L1 after copying them to L2; skip_l1: drop them from L1 afterwards.",
        section="storage_manager",
        metavar=choices_metavar(L2_STORE_POLICIES),
        check=one_of(L2_STORE_POLICIES),
    )
    l2_prefetch_max_in_flight: int = option(
        8, "At most this many L2 prefetch jobs at once.", section="storage_manager", check=check_positive
    )
    l2_prefetch_policy: str = option(
        "default",
        "default: objects prefetched from L2 are temporary in L1 (freed after their last read); "
        "retain: they stay in L1 as ordinary objects.",
        section="storage_manager",
        metavar=choices_metavar(L2_PREFETCH_POLICIES),
        check=one_of(L2_PREFETCH_POLICIES),
    )
