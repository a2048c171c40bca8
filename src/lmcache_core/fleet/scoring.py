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
    alive = {inst: [True, True, True] for inst in instances}  # in L1 / in L2 / in either, so far
    lengths = {inst: [0, 0, 0] for inst in instances}
    for chunk in records:
        if not any(any(flags) for flags in alive.values()):
            break
        in_l1: set[str] | None = None
        in_l2: set[str] | None = None
        for record in chunk:
            l1: set[str] = set()
            l2: set[str] = set()
            if record is not None:
                for p in record.placements:
                    if p.tier == Tier.L1:
                        if p.incarnation >= current.get(p.instance_id, p.incarnation):
                            l1.add(p.instance_id)
                    elif p.shared:
                        l2.update(mounts.get(p.backend, ()))
                    else:
                        l2.add(p.instance_id)
            in_l1 = l1 if in_l1 is None else in_l1 & l1
            in_l2 = l2 if in_l2 is None else in_l2 & l2
        if in_l1 is None or in_l2 is None:  # no ranks: nothing to match
            break
        for inst, flags in alive.items():
            has = (inst in in_l1, inst in in_l2)
            for tier_index, present in ((0, has[0]), (1, has[1]), (2, has[0] or has[1])):
                if flags[tier_index] and present:
                    lengths[inst][tier_index] += 1
                else:
                    flags[tier_index] = False
    out = []
    for inst in instances:
        l1_tokens, l2_tokens, either = (n * chunk_size for n in lengths[inst])
        out.append(InstanceScore(inst, l1_tokens, l2_tokens, either, l1_tokens + l2_weight * (either - l1_tokens)))
    out.sort(key=lambda s: (-s.score, -s.prefix_tokens, s.instance_id))
    return out
