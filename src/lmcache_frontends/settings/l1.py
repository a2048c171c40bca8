"""Settings section: The L1 tier: its size and device, the LMCache 0.5.6 `--l1-manager`, eviction, lock TTLs."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import (
    check_fraction,
    check_non_empty,
    check_positive,
    choices_metavar,
    one_of,
    option,
)
from lmcache_frontends.settings.values import EVICTION_POLICIES, check_l1_manager_json


@dataclass(frozen=True)
class L1Settings:
    """The L1 tier: its size and device, the LMCache 0.5.6 `--l1-manager`, eviction, lock TTLs."""

    l1_size_gb: float = option(1.0, "Size of the L1 (CPU memory) pool in GiB.", section="storage_manager", check=check_positive)
    l1_devdax_path: str | None = option(
        None,
        "A Device-DAX device (/dev/daxX.Y) or an existing regular file that holds L1 instead of shared "
        "memory, --l1-size-gb of it; more devices can be added at run time (POST /reconfigure/dax/l1/add). "
        "Engine-driven engines then get pickle mode (no shared L1 segment).",
        section="storage_manager",
        check=check_non_empty,
    )
    no_l1_use_lazy: bool = option(
        False,
        "Accepted so LMCache 0.5.6 command lines start unchanged (its --l1-devdax-path needs it); this "
        "server never allocates L1 lazily, so it changes nothing.",
        section="storage_manager",
    )
    l1_manager: tuple[str, ...] = option(
        (),
        'LMCache 0.5.6\'s tagged L1 as JSON instead of --l1-size-gb/--l1-devdax-path: {"type": "DRAM" or '
        '"DEVDAX", "tag": "...", "size_gb": N, "path": "/dev/dax0.0" (DEVDAX)}; one L1 per server.',
        section="storage_manager",
        metavar="JSON",
        check=check_l1_manager_json,
    )
    eviction_policy: str = option(
        "LRU",
        "L1 eviction policy: LRU, IsolatedLRU (one LRU per cache_salt, driven by quotas) or noop.",
        section="storage_manager",
        metavar=choices_metavar(EVICTION_POLICIES),
        check=one_of(EVICTION_POLICIES, ignore_case=True),
    )
    eviction_trigger_watermark: float = option(
        0.8, "Start evicting when L1 usage reaches this fraction.", section="storage_manager", check=check_fraction
    )
    eviction_ratio: float = option(
        0.2, "Fraction of L1 to free in one eviction cycle.", section="storage_manager", check=check_fraction
    )
    eviction_interval_seconds: float = option(
        1.0, "Period of the eviction controller thread.", section="storage_manager", check=check_positive
    )
    l1_write_ttl_seconds: float = option(
        600.0, "A write lock expires after this long (a crashed client cannot pin memory).",
        section="storage_manager", check=check_positive,
    )
    l1_read_ttl_seconds: float = option(
        300.0, "A read lock expires after this long.", section="storage_manager", check=check_positive
    )
