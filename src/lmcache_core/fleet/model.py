"""Value types of the fleet: instances, cache-event batches, placements, cursors and summaries."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from lmcache_core.keys import ObjectKey

MAX_EXACT_INT = 2**53
"""Incarnations, sequence numbers and sizes stay below this, so every store (and Lua's doubles)
holds them exactly."""

LEGACY_BACKEND = "l2"
"""Backend name of placements reported through LMCache 0.5.0's `/l2/events` or recovered by a
`/l2/keys` resync: 0.5.0 has one fleet-shared L2 pool and no backend names."""


class Tier(enum.StrEnum):
    """A cache tier a placement lives on."""

    L1 = "l1"
    L2 = "l2"


class Op(enum.StrEnum):
    """What one event entry reports about its key."""

    STORE = "store"
    DELETE = "delete"
    ACCESS = "access"


class Verdict(enum.StrEnum):
    """What the store did with one batch."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"


UNKNOWN_SIZE = -1
"""A resync entry's size when the listing server does not know it (an object of a shared pool it
neither stored nor read): keeps the size already recorded for that slot, else counts 0 bytes.
Only resync writes it; event batches always carry the size their server stored."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key's change inside a batch (`size_bytes` only for stores)."""

    op: Op
    key: ObjectKey
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class CapacityDecl:
    """One memory compartment an instance declares (a 0.5.6 `config` batch)."""

    tier: Tier
    backend: str
    shared: bool
    capacity_bytes: int
    revision: int


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Ordered events from one emitter: idempotent by (instance_id, incarnation, seq).

    A higher incarnation fences the L1 placements of every lower one of the same instance.
    `shared` marks a backend mounted by several instances (one S3 bucket): its placements
    belong to the fleet, are counted once and survive any one reporter. `capacity` is set on
    a declaration batch, which carries no entries."""

    instance_id: str
    incarnation: int
    seq: int
    tier: Tier
    backend: str
    shared: bool = False
    entries: tuple[Entry, ...] = ()
    ts: float = 0.0
    capacity: CapacityDecl | None = None
    legacy: bool = False
    """From 0.5.0's `/l2/events` (incarnation = the registration epoch, no gap tracking)."""


class Placement(NamedTuple):
    """Where one key lives: which instance reported it, on which tier and backend, how big.
    A tuple: routing decodes thousands of these per request."""

    instance_id: str
    incarnation: int
    tier: Tier
    backend: str
    size_bytes: int
    shared: bool = False

    def same_slot(self, tier: Tier, backend: str, shared: bool, instance_id: str) -> bool:
        """The placement identity the directory upserts on: a shared pool is one slot for the
        whole fleet; a private backend is one slot per instance."""
        return (
            self.tier == tier
            and self.backend == backend
            and self.shared == shared
            and (shared or self.instance_id == instance_id)
        )

    @property
    def owner(self) -> str:
        """Who the bytes belong to: the instance, or "" for a fleet-shared pool."""
        return "" if self.shared else self.instance_id


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """The directory's value for one key."""

    placements: tuple[Placement, ...]
    access_count: int = 0
    last_access: float = 0.0

    def l2_bytes(self) -> int:
        return sum(p.size_bytes for p in self.placements if p.tier == Tier.L2)


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What a server says about itself when it registers."""

    instance_id: str
    ip: str
    http_port: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    p2p_advertised_url: str = ""
    mq_port: int = 0
    registration_time: float = 0.0

    @property
    def base_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.http_port}"


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """A registered instance with its lease deadline (store time, seconds) and registration
    epoch (a per-registration number the 0.5.0 event stream uses as its incarnation)."""

    info: InstanceInfo
    lease_until: float
    epoch: int


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far an emitter's stream has been applied."""

    incarnation: int
    seq: int
    gap: bool = False

    def verdict(self, incarnation: int, seq: int) -> Verdict:
        """The gate: older incarnations are stale, seen sequence numbers duplicates."""
        if incarnation < self.incarnation:
            return Verdict.STALE
        if incarnation == self.incarnation and seq <= self.seq:
            return Verdict.DUPLICATE
        return Verdict.APPLIED

    def advanced(self, incarnation: int, seq: int) -> Cursor:
        """The cursor after admitting (incarnation, seq); a skipped seq marks a gap."""
        if incarnation == self.incarnation:
            return Cursor(incarnation, seq, self.gap or seq > self.seq + 1)
        return Cursor(incarnation, seq, seq > 1)


def first_cursor(incarnation: int, seq: int) -> Cursor:
    """The cursor of an emitter's first admitted batch."""
    return Cursor(incarnation, seq, seq > 1)


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """One batch as the store should apply it: after fencing the instance's L1 placements of
    incarnations below `fence_below` (a restart), when set."""

    batch: EventBatch
    fence_below: int | None = None
    verdict: Verdict | None = None
    """Set when the caller already knows the batch is a replay or stale: the store only counts
    it, touching neither entries nor cursor."""


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """Counts of one `POST /events`: batches applied, dropped as replays, dropped as stale."""

    applied: int = 0
    duplicates: int = 0
    stale: int = 0


class OwnerSlot(NamedTuple):
    """Bytes of one owner ("" = a shared pool) on one tier and backend."""

    owner: str
    tier: Tier
    backend: str


@dataclass
class UsageSnapshot:
    """Fleet totals rolled up from the directory (one read of every shard's counters)."""

    num_keys: int = 0
    placements: dict[Tier, int] = field(default_factory=lambda: {Tier.L1: 0, Tier.L2: 0})
    placement_bytes: dict[Tier, int] = field(default_factory=lambda: {Tier.L1: 0, Tier.L2: 0})
    salt_bytes: dict[Tier, dict[str, int]] = field(default_factory=lambda: {Tier.L1: {}, Tier.L2: {}})
    owner_bytes: dict[OwnerSlot, int] = field(default_factory=dict)
    l1_keys_by_instance: dict[str, int] = field(default_factory=dict)

    def add_salt(self, tier: Tier, salt: str, nbytes: int) -> None:
        if nbytes:
            by_salt = self.salt_bytes[tier]
            by_salt[salt] = by_salt.get(salt, 0) + nbytes


@dataclass(frozen=True, slots=True)
class EvictionCandidate:
    """A cold L2 key the planner may delete: its L2 bytes and placements."""

    key: ObjectKey
    last_access: float
    record: KeyRecord


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of a server's L2 listing (`size_bytes` None when the server does not say)."""

    entries: tuple[tuple[ObjectKey, int | None], ...]
    next_page_token: str | None
    backend: str
    shared: bool
