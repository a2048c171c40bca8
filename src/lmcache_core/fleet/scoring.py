"""Prefix-aware routing scores: for each live instance, how long a prefix of a prompt it holds
in L1, in L2 (its own or a shared pool it mounts), and in either, and a combined score."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from lmcache_core.fleet.model import KeyRecord, Tier


@dataclass(frozen=True, slots=True)
class InstanceScore:
    """One instance's answer for one prompt (token counts are whole chunks)."""

    instance_id: str
    l1_tokens: int
    l2_tokens: int
    prefix_tokens: int
    score: float


def prefix_scores(
    records: Sequence[Sequence[KeyRecord | None]],
    instances: Collection[str],
    mounts: Mapping[str, Collection[str]],
    *,
    chunk_size: int,
    l2_weight: float,
    incarnations: Mapping[str, int] | None = None,
) -> list[InstanceScore]:
    """Scores from `records[chunk][rank]` (a chunk counts only when every rank's key is there).

    An instance reaches an L2 placement when it is the placement's owner, or the placement is
    in a shared pool it mounts (`mounts[backend]`). `score = l1_tokens + l2_weight *
    (prefix_tokens - l1_tokens)`: a chunk in L1 costs no load, a chunk in L2 must be fetched
    first. An L1 placement of an incarnation older than the instance's current one (in
    `incarnations`) is ignored: that memory died with the restart. Sorted best first (score,
    then the longer prefix, then the id)."""
    current = incarnations or {}
    everyone = frozenset(instances)
    # Set algebra per chunk (C loops): instances still on the prefix, per tier, and where each
    # one dropped out.
    alive = [set(everyone), set(everyone), set(everyone)]  # in L1 / in L2 / in either, so far
    lengths: list[dict[str, int]] = [{}, {}, {}]
    processed = 0
    for chunk in records:
        if not (alive[0] or alive[1] or alive[2]):
            break
        in_l1: set[str] | frozenset[str] | None = None
        in_l2: set[str] | frozenset[str] | None = None
        for record in chunk:
            l1: set[str] = set()
            l2: set[str] = set()
            if record is not None:
                for p in record.placements:
                    if p.tier == Tier.L1:
                        if p.incarnation >= current.get(p.instance_id, p.incarnation):
                            l1.add(p.instance_id)
                    elif p.shared:
                        l2 |= mounts.get(p.backend, ())  # type: ignore[arg-type]
                    else:
                        l2.add(p.instance_id)
            in_l1 = l1 if in_l1 is None else in_l1 & l1
            in_l2 = l2 if in_l2 is None else in_l2 & l2
        if in_l1 is None or in_l2 is None:  # no ranks: nothing to match
            break
        for tier_index, present in enumerate((in_l1, in_l2, in_l1 | in_l2)):
            dropped = alive[tier_index] - present
            for inst in dropped:
                lengths[tier_index][inst] = processed
            alive[tier_index] -= dropped
        processed += 1
    # Whoever is still alive held every chunk looked at.
    for tier_index in range(3):
        for inst in alive[tier_index]:
            lengths[tier_index][inst] = processed
    out = []
    for inst in instances:
        l1_tokens, l2_tokens, either = (lengths[t].get(inst, 0) * chunk_size for t in range(3))
        out.append(InstanceScore(inst, l1_tokens, l2_tokens, either, l1_tokens + l2_weight * (either - l1_tokens)))
    out.sort(key=lambda s: (-s.score, -s.prefix_tokens, s.instance_id))
    return out
