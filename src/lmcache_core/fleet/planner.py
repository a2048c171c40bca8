"""Fleet quota enforcement as pure decisions: which salts are over quota and by how much, and
which of their coldest keys to delete."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from lmcache_core.fleet.model import EvictionCandidate


@dataclass(frozen=True, slots=True)
class SaltPlan:
    """One salt to trim: its L2 usage, its limit, and the bytes to free."""

    cache_salt: str
    usage_bytes: int
    limit_bytes: int
    to_free: int


def over_quota(
    l2_bytes_by_salt: Mapping[str, int],
    quotas: Mapping[str, int],
    default_limit: int | None,
    *,
    trigger_watermark: float,
    eviction_ratio: float,
) -> list[SaltPlan]:
    """Salts whose L2 usage reached `trigger_watermark` x their limit. Each is trimmed to
    `(1 - eviction_ratio)` x its limit (a limit of 0 frees everything). A salt without a quota
    uses `default_limit`; with none, it is exempt."""
    plans = []
    for salt, usage in sorted(l2_bytes_by_salt.items()):
        limit = quotas.get(salt, default_limit)
        if limit is None or usage <= 0 or usage < trigger_watermark * limit:
            continue
        target = int(limit * (1.0 - eviction_ratio))
        if usage > target:
            plans.append(SaltPlan(salt, usage, limit, usage - target))
    return plans


def choose(candidates: Iterable[EvictionCandidate], to_free: int) -> list[EvictionCandidate]:
    """The coldest candidates (in the order given) until their L2 bytes reach `to_free`."""
    chosen = []
    freed = 0
    for candidate in candidates:
        if freed >= to_free:
            break
        chosen.append(candidate)
        freed += candidate.record.l2_bytes()
    return chosen
