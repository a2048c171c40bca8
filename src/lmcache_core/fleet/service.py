"""FleetService: the coordinator's use cases over a FleetStore (membership, event ingest, the
directory, routing scores, quotas, pins, eviction and resync). Stateless apart from short-lived
caches, so any number of coordinators can serve one store."""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.clock import SystemClock
from lmcache_core.errors import ConfigError, NotFoundError
from lmcache_core.fleet import planner
from lmcache_core.fleet.model import (
    UNKNOWN_SIZE,
    Cursor,
    Entry,
    EventBatch,
    IngestSummary,
    InstanceInfo,
    InstanceRecord,
    KeyRecord,
    Tier,
    UsageSnapshot,
    Verdict,
)
from lmcache_core.fleet.ports import FleetStore, ServerControl, ServerUnreachable
from lmcache_core.fleet.scoring import InstanceScore, prefix_scores
from lmcache_core.fleet.wire import TokenQuery, legacy_batch
from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.ports import Clock

log = logging.getLogger(__name__)

EVICTION_ROLE = "evict"
RESYNC_FLAG = "resync"
_LIVE_CACHE_S = 1.0
_MOUNT_CACHE_S = 5.0


@dataclass(frozen=True)
class FleetSettings:
    """The coordinator's tunables (flags of `lmcache coordinator`)."""

    lease_ttl: float = 30.0
    chunk_size: int = 256
    hash_algorithm: str = "blake3"
    eviction_ratio: float = 0.2
    trigger_watermark: float = 1.0
    eviction_interval: float = 5.0
    eviction_retry_seconds: float = 30.0
    eviction_max_keys: int = 100_000
    delete_batch_size: int = 1000
    resync_delay: float = 10.0
    resync_page_size: int = 1000
    resync: bool = True

    def __post_init__(self) -> None:
        if not self.lease_ttl > 0:
            raise ConfigError(f"lease TTL must be > 0, got {self.lease_ttl}")
        if not 0 <= self.eviction_ratio <= 1:
            raise ConfigError(f"eviction ratio must be in [0, 1], got {self.eviction_ratio}")
        if not 0 < self.trigger_watermark <= 1:
            raise ConfigError(f"trigger watermark must be in (0, 1], got {self.trigger_watermark}")


@dataclass
class ScoreResult:
    """A routing answer: the prompt's whole chunks and each live instance's score."""

    chunks: int
    chunk_size: int
    scores: list[InstanceScore]
    instances: dict[str, InstanceInfo]


@dataclass
class EvictionReport:
    """What one eviction cycle did (the loop's summary line and /fleet/status)."""

    leader: bool
    salts: list[dict[str, Any]] = field(default_factory=list)
    keys_sent: int = 0
    requests: int = 0
    failed_requests: int = 0
    unreachable_keys: int = 0
    resync: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "salts_over_quota": len(self.salts),
            "keys_sent": self.keys_sent,
            "requests": self.requests,
            "failed_requests": self.failed_requests,
            "unreachable_keys": self.unreachable_keys,
            **({"resync": self.resync} if self.resync else {}),
        }


class FleetService:
    """The coordinator's behaviour; frontends translate HTTP to these calls."""

    def __init__(
        self,
        store: FleetStore,
        servers: ServerControl,
        settings: FleetSettings | None = None,
        *,
        clock: Clock | None = None,
        holder: str | None = None,
    ) -> None:
        self.store = store
        self.servers = servers
        self.settings = settings or FleetSettings()
        self.clock: Clock = clock or SystemClock()
        self.holder = holder or f"coord-{uuid.uuid4().hex[:12]}"
        self.hasher = TokenHasher(self.settings.hash_algorithm, self.settings.chunk_size)
        self._lock = threading.Lock()
        self._routing_view: tuple[float, dict[str, InstanceRecord], dict[str, int]] | None = None
        self._refreshing = threading.Lock()
        self._mounts: dict[str, tuple[float, frozenset[str]]] = {}
        self._noted_mounts: dict[tuple[str, str], float] = {}
        self.last_eviction: EvictionReport | None = None

    # ------------------------------------------------------------------ membership

    def register(self, info: InstanceInfo) -> tuple[str, bool]:
        existed, _epoch = self.store.register(info, self.clock.time() + self.settings.lease_ttl)
        self._routing_view = None
        log.info("registered instance %s at %s:%d%s", info.instance_id, info.ip, info.http_port, " (again)" if existed else "")
        return info.instance_id, existed

    def heartbeat(self, instance_id: str) -> bool:
        return self.store.heartbeat(instance_id, self.clock.time() + self.settings.lease_ttl)

    def deregister(self, instance_id: str) -> bool:
        """A departing server takes its L1 with it: its L1 placements, stream cursor and
        capacity declarations go; its L2 placements stay."""
        existed = self.store.deregister(instance_id)
        removed = self.store.fence(instance_id, None)
        self._routing_view = None
        if existed or removed:
            log.info("deregistered instance %s (%d L1 placements dropped)", instance_id, removed)
        return existed

    def sweep_leases(self) -> list[str]:
        """Expire lapsed leases (each claimed by exactly one coordinator) and drop the L1
        placements of those instances."""
        expired = self.store.claim_expired(self.clock.time())
        for instance_id in expired:
            removed = self.store.fence(instance_id, None)
            log.warning("instance %s missed its heartbeats; lease expired, %d L1 placements dropped", instance_id, removed)
        if expired:
            self._routing_view = None
        return expired

    def live_instances(self, *, fresh: bool = False) -> dict[str, InstanceRecord]:
        """Registered instances. The routing path reads a cached view (at most a second old,
        refreshed off the request path once it is); `fresh` reads the store now."""
        if fresh or self._routing_view is None:
            self._refresh_view()
        else:
            self._maybe_refresh_in_background()
        view = self._routing_view
        assert view is not None
        return view[1]

    def _incarnations(self) -> dict[str, int]:
        """Each live instance's current incarnation (refreshed with the live set)."""
        if self._routing_view is None:
            self._refresh_view()
        view = self._routing_view
        assert view is not None
        return view[2]

    def _refresh_view(self) -> None:
        records = {r.info.instance_id: r for r in self.store.instances()}
        cursors = self.store.cursors(sorted(records))
        self._routing_view = (self.clock.monotonic(), records, {i: c.incarnation for i, c in cursors.items()})

    def _maybe_refresh_in_background(self) -> None:
        view = self._routing_view
        if view is None or self.clock.monotonic() - view[0] < _LIVE_CACHE_S:
            return
        if not self._refreshing.acquire(blocking=False):
            return  # one refresh at a time; this request uses the current view

        def refresh() -> None:
            try:
                self._refresh_view()
            except Exception as exc:  # the store is down: keep the last view, try again later
                log.debug("routing view refresh failed: %s", exc)
            finally:
                self._refreshing.release()

        threading.Thread(target=refresh, name="fleet-view-refresh", daemon=True).start()

    def instance(self, instance_id: str) -> InstanceInfo:
        record = self.store.instance(instance_id)
        if record is None:
            raise NotFoundError(f"no MP server registered with instance_id={instance_id!r}")
        return record.info

    # ------------------------------------------------------------------ ingest

    def ingest(self, batches: Sequence[EventBatch]) -> IngestSummary:
        """Apply batches in order. Replays and stale incarnations are counted, not errors; a new
        incarnation fences the L1 placements of the old one first."""
        if not batches:
            return IngestSummary()
        verdicts = self.store.apply(batches, self.clock.time())
        summary = {Verdict.APPLIED: 0, Verdict.DUPLICATE: 0, Verdict.STALE: 0}
        for batch, verdict in zip(batches, verdicts, strict=True):
            summary[verdict] += 1
            if verdict is Verdict.APPLIED and batch.shared and batch.entries:
                self._note_mount(batch.backend, batch.instance_id)
        return IngestSummary(summary[Verdict.APPLIED], summary[Verdict.DUPLICATE], summary[Verdict.STALE])

    def ingest_legacy(self, instance_id: str, seq: int, entries: Sequence[Entry]) -> int:
        """A 0.5.0 `/l2/events` report; its incarnation is the sender's registration epoch, so
        a restarted (re-registered) 0.5.0 server starting again at seq 1 is not a replay."""
        record = self.store.instance(instance_id)
        epoch = record.epoch if record is not None else 0
        self.ingest([legacy_batch(instance_id, epoch, seq, entries)])
        return len(entries)

    def _note_mount(self, backend: str, instance_id: str) -> None:
        # Renewed now and then rather than once: a wiped store must learn it again.
        now = self.clock.monotonic()
        slot = (backend, instance_id)
        if now - self._noted_mounts.get(slot, -1e9) > 60.0:
            self.store.note_shared_mount(backend, instance_id)
            self._noted_mounts[slot] = now
            self._mounts.pop(backend, None)

    def mounts(self, backend: str) -> frozenset[str]:
        now = self.clock.monotonic()
        cached = self._mounts.get(backend)
        if cached is not None and now - cached[0] < _MOUNT_CACHE_S:
            return cached[1]
        found = frozenset(self.store.shared_mounts(backend))
        self._mounts[backend] = (now, found)
        return found

    # ------------------------------------------------------------------ directory

    def chunk_hashes(self, query: TokenQuery) -> list[bytes]:
        if query.chunk_hashes is not None:
            return list(query.chunk_hashes)
        assert query.token_ids is not None
        return self.hasher.chunk_hashes(query.token_ids)

    @staticmethod
    def keys_for(query: TokenQuery, hashes: Sequence[bytes]) -> list[ObjectKey]:
        """One key per (chunk, rank), chunk-major, in object group 0 (LMCache's fan-out)."""
        ranks = [kv_rank_for(query.world_size, r) for r in range(query.world_size)]
        return [
            ObjectKey.trusted(h, query.model_name, rank, query.cache_salt) for h in hashes for rank in ranks
        ]

    def resolve(self, query: TokenQuery) -> tuple[list[ObjectKey], int]:
        hashes = self.chunk_hashes(query)
        return self.keys_for(query, hashes), len(hashes)

    def lookup(self, keys: Sequence[ObjectKey]) -> list[KeyRecord | None]:
        return self.store.lookup(keys) if keys else []

    def score(
        self, query: TokenQuery, *, l2_weight: float = 0.5, instance_ids: Sequence[str] | None = None
    ) -> ScoreResult:
        """Every live instance (or the named ones) with its cached prefix of the prompt."""
        hashes = self.chunk_hashes(query)
        live = self.live_instances()
        wanted = [i for i in (instance_ids if instance_ids is not None else live) if i in live]
        keys = self.keys_for(query, hashes)
        records = self.lookup(keys)
        ws = query.world_size
        by_chunk = [records[i * ws : (i + 1) * ws] for i in range(len(hashes))]
        shared_backends = {
            p.backend for r in records if r is not None for p in r.placements if p.shared and p.tier == Tier.L2
        }
        mounts = {backend: self.mounts(backend) for backend in shared_backends}
        scores = prefix_scores(
            by_chunk, wanted, mounts, chunk_size=self.settings.chunk_size, l2_weight=l2_weight,
            incarnations=self._incarnations(),
        )
        return ScoreResult(len(hashes), self.settings.chunk_size, scores, {i: live[i].info for i in wanted})

    # ------------------------------------------------------------------ views

    def usage(self) -> UsageSnapshot:
        return self.store.usage()

    def stream_positions(self) -> dict[str, Cursor]:
        return self.store.cursors([r.info.instance_id for r in self.store.instances()])

    # ------------------------------------------------------------------ eviction

    def eviction_cycle(self) -> EvictionReport:
        """One pass of the fleet quota loop, run only by the coordinator holding the eviction
        lease: resync an empty store, then delete the coldest keys of every salt over quota
        through a server that can delete them. The keys leave the directory when the delete
        events come back (at least once: unanswered deletes are sent again after
        `eviction_retry_seconds`)."""
        ttl = max(3 * self.settings.eviction_interval, 3.0)
        if not self.store.try_lead(EVICTION_ROLE, self.holder, ttl):
            report = EvictionReport(leader=False)
            self.last_eviction = report
            return report
        report = EvictionReport(leader=True)
        if self.settings.resync:
            report.resync = self.resync_step()
        now = self.clock.time()
        usage = self.store.usage()
        plans = planner.over_quota(
            usage.salt_bytes[Tier.L2],
            self.store.quotas(),
            self.store.default_limit(),
            trigger_watermark=self.settings.trigger_watermark,
            eviction_ratio=self.settings.eviction_ratio,
        )
        live = self.live_instances(fresh=True)
        for plan in plans:
            candidates, in_flight = self.store.coldest(
                plan.cache_salt, self.settings.eviction_max_keys, now, self.settings.eviction_retry_seconds
            )
            # Deletes already on their way count as freed: no second wave while they arrive.
            chosen = planner.choose(candidates, plan.to_free - in_flight)
            targets: dict[str, list[ObjectKey]] = {}
            for candidate in chosen:
                sent = False
                for p in candidate.record.placements:
                    if p.tier != Tier.L2:
                        continue
                    target = self._delete_target(p.instance_id if not p.shared else None, p.backend, live)
                    if target is not None:
                        targets.setdefault(target, []).append(candidate.key)
                        sent = True
                if not sent:
                    report.unreachable_keys += 1
            self.store.mark_evicting([c.key for c in chosen], now)
            sent_keys = 0
            for instance_id, keys in targets.items():
                unique = list(dict.fromkeys(keys))
                for start in range(0, len(unique), self.settings.delete_batch_size):
                    part = unique[start : start + self.settings.delete_batch_size]
                    report.requests += 1
                    try:
                        self.servers.delete_l2(live[instance_id].info, part)
                        sent_keys += len(part)
                    except ServerUnreachable as exc:
                        report.failed_requests += 1
                        log.warning("eviction: delete of %d keys on %s failed: %s", len(part), instance_id, exc)
            report.keys_sent += sent_keys
            report.salts.append(
                {
                    "cache_salt": plan.cache_salt,
                    "usage_bytes": plan.usage_bytes,
                    "limit_bytes": plan.limit_bytes,
                    "to_free_bytes": plan.to_free,
                    "in_flight_bytes": in_flight,
                    "keys_chosen": len(chosen),
                    "keys_sent": sent_keys,
                }
            )
            log.info(
                "eviction: cache_salt=%r usage=%d limit=%d: %d keys chosen, %d sent",
                plan.cache_salt, plan.usage_bytes, plan.limit_bytes, len(chosen), sent_keys,
            )
        self.last_eviction = report
        return report

    def _delete_target(self, owner: str | None, backend: str, live: dict[str, InstanceRecord]) -> str | None:
        if owner is not None:
            return owner if owner in live else None
        mounted = sorted(i for i in self.mounts(backend) if i in live)
        if mounted:
            return random.choice(mounted)
        return None

    def resign(self) -> None:
        self.store.resign(EVICTION_ROLE, self.holder)

    # ------------------------------------------------------------------ resync

    def resync_step(self) -> dict[str, Any] | None:
        """Backfill an empty store from the servers' L2 listings: a store with no resync flag
        (new, or wiped by a Redis restart) gets one after `resync_delay`, from every instance
        registered by then. Returns what happened, or None when nothing is due."""
        state = self.store.get_flag(RESYNC_FLAG)
        now = self.clock.time()
        if state == "done":
            return None
        if state is None or not state.startswith("pending:"):
            self.store.set_flag(RESYNC_FLAG, f"pending:{now:.3f}")
            return {"state": "pending"}
        since = float(state.split(":", 1)[1])
        live = self.live_instances(fresh=True)
        if now - since < self.settings.resync_delay or not live:
            return {"state": "pending"}
        recorded = 0
        sources = []
        seen_shared: set[str] = set()
        for instance_id, record in sorted(live.items()):
            try:
                count = self._resync_from(record.info, seen_shared)
            except ServerUnreachable as exc:
                log.warning("resync: cannot list the L2 keys of %s: %s", instance_id, exc)
                continue
            recorded += count
            sources.append(instance_id)
        self.store.set_flag(RESYNC_FLAG, "done")
        log.info("resync: %d L2 keys recorded from %s", recorded, ", ".join(sources) or "no server")
        return {"state": "done", "keys": recorded, "sources": sources}

    def _resync_from(self, info: InstanceInfo, seen_shared: set[str]) -> int:
        token: str | None = None
        total = 0
        while True:
            page = self.servers.list_l2(info, token, self.settings.resync_page_size)
            if page.shared and page.backend in seen_shared and token is None:
                return 0  # one listing of a shared pool is enough
            entries = [(key, UNKNOWN_SIZE if size is None else size) for key, size in page.entries]
            total += self.store.resync(info.instance_id, page.backend, page.shared, entries, self.clock.time())
            if page.shared:
                self.store.note_shared_mount(page.backend, info.instance_id)
            token = page.next_page_token
            if not token:
                if page.shared:
                    seen_shared.add(page.backend)
                return total
