"""The fleet's ports: where its state lives (FleetStore) and how it reaches servers (ServerControl).

FleetStore has two implementations in the adapters ring: Redis (shared by every coordinator, so
coordinators are stateless) and an embedded in-memory store (a one-node trial). The contract
suite in `lmcache_adapters.testing.fleet_contract` holds both to the rules written here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from lmcache_core.errors import UpstreamError
from lmcache_core.fleet.model import (
    CapacityDecl,
    Cursor,
    EventBatch,
    EvictionCandidate,
    InstanceInfo,
    InstanceRecord,
    KeyPage,
    KeyRecord,
    Tier,
    UsageSnapshot,
    Verdict,
)
from lmcache_core.keys import ObjectKey


@runtime_checkable
class FleetStore(Protocol):
    """All state of the fleet. Every method is safe to call from several threads and from
    several coordinators at once (on a shared store); times are wall-clock seconds."""

    # -- membership -------------------------------------------------------------------

    def register(self, info: InstanceInfo, lease_until: float) -> tuple[bool, int]:
        """Insert or replace `info` with a lease until `lease_until`; returns (whether the id
        was registered already, the new registration epoch). Atomic."""
        ...

    def heartbeat(self, instance_id: str, lease_until: float) -> bool:
        """Extend a live lease; False when the id is not registered (it must re-register)."""
        ...

    def deregister(self, instance_id: str) -> bool:
        """Remove the registration; True if it existed. Placements are left to `fence`."""
        ...

    def instances(self) -> list[InstanceRecord]:
        """Every registered instance, sorted by id."""
        ...

    def instance(self, instance_id: str) -> InstanceRecord | None:
        """One registration, or None."""
        ...

    def claim_expired(self, now: float) -> list[str]:
        """Remove and return the registrations whose lease ended before `now`. Each expired id
        is returned to exactly one caller, however many coordinators sweep at once."""
        ...

    # -- the event stream -------------------------------------------------------------

    def cursors(self, instance_ids: Sequence[str]) -> dict[str, Cursor]:
        """The applied-stream cursor of each id that has one."""
        ...

    def apply(self, batches: Sequence[EventBatch], now: float) -> list[Verdict]:
        """Apply batches in order, each exactly once: a batch whose (incarnation, seq) is not
        past the instance's cursor changes nothing (DUPLICATE; STALE for an older
        incarnation), even when two coordinators apply the same batch concurrently. A newer
        incarnation first drops the instance's L1 placements of the older ones. Returns one
        verdict per batch, decided atomically with the cursor's advance."""
        ...

    def fence(self, instance_id: str, below: int | None = None) -> int:
        """Drop the instance's L1 placements (of incarnations below `below`, or all of them and
        its stream cursor and capacity declarations when `below` is None). L2 placements stay:
        their bytes outlive the reporter. Returns how many placements went."""
        ...

    def resync(
        self, instance_id: str, backend: str, shared: bool, entries: Sequence[tuple[ObjectKey, int]], now: float
    ) -> int:
        """Record L2 placements found by listing a server (no cursor involved; an upsert, so a
        repeat changes nothing). An entry of `UNKNOWN_SIZE` keeps the size already recorded for
        its slot (else 0): a listing never lowers a size a store reported. Returns how many
        entries were recorded."""
        ...

    def capacities(self) -> dict[str, tuple[CapacityDecl, ...]]:
        """Declared compartments per instance (only the newest declaration of each)."""
        ...

    def counters(self) -> dict[str, int]:
        """Fleet-wide ingest counters: `batches_applied`, `batches_duplicate`,
        `batches_stale`, `events_applied`, and `events_applied:<instance_id>`."""
        ...

    # -- the directory ----------------------------------------------------------------

    def lookup(self, keys: Sequence[ObjectKey]) -> list[KeyRecord | None]:
        """The record of each key, in order (None for unknown keys)."""
        ...

    def list_keys(
        self, tier: Tier | None, instance_id: str, backend: str, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, KeyRecord]]]:
        """(keys with a placement matching the filters, the page [offset, offset+limit) of
        them with only the matching placements). Walks the whole directory."""
        ...

    def usage(self) -> UsageSnapshot:
        """Totals by tier, salt, owner and instance."""
        ...

    # -- quotas and pins ---------------------------------------------------------------

    def set_quota(self, cache_salt: str, limit_bytes: int) -> None: ...

    def delete_quota(self, cache_salt: str) -> bool: ...

    def quotas(self) -> dict[str, int]: ...

    def set_default_limit(self, limit_bytes: int | None) -> None:
        """The limit of salts without a quota; None exempts them from eviction."""
        ...

    def default_limit(self) -> int | None: ...

    def pin(self, keys: Sequence[ObjectKey], delta: int) -> None:
        """Add `delta` (+1 pin, -1 unpin) to each key's pin count, floored at zero; a pin
        covers the key's chunk in every object group."""
        ...

    def drop_pins(self, keys: Sequence[ObjectKey]) -> None: ...

    def pinned(self, keys: Sequence[ObjectKey]) -> list[int]:
        """Each key's pin count."""
        ...

    def list_pins(
        self, cache_salt: str | None, model_name: str | None, offset: int, limit: int
    ) -> tuple[int, list[tuple[ObjectKey, int]]]: ...

    # -- eviction -----------------------------------------------------------------------

    def coldest(self, cache_salt: str, limit: int, now: float, retry_after: float) -> tuple[list[EvictionCandidate], int]:
        """Up to `limit` least recently used keys of the salt holding L2 bytes, coldest first,
        without pinned keys and keys marked in flight less than `retry_after` seconds ago; and
        the L2 bytes of those in-flight keys (already on their way out)."""
        ...

    def mark_evicting(self, keys: Sequence[ObjectKey], now: float) -> None:
        """Note that deletes for `keys` were sent (the keys leave when the delete events come
        back; until `retry_after` has passed, `coldest` skips them)."""
        ...

    def try_lead(self, role: str, holder: str, ttl: float) -> bool:
        """Take or renew the lease of `role` for `holder`; False while another holder has it."""
        ...

    def resign(self, role: str, holder: str) -> None:
        """Give the role up if `holder` has it."""
        ...

    def note_shared_mount(self, backend: str, instance_id: str) -> None:
        """Remember that `instance_id` reports stores into the shared `backend`."""
        ...

    def shared_mounts(self, backend: str) -> set[str]: ...

    def get_flag(self, name: str) -> str | None: ...

    def set_flag(self, name: str, value: str | None) -> None: ...

    # -- operations ---------------------------------------------------------------------

    def ping(self) -> bool:
        """True when the store answers."""
        ...

    def describe(self) -> dict[str, Any]:
        """Kind, address (no credentials) and size figures for status pages."""
        ...

    def close(self) -> None: ...


class ServerUnreachable(UpstreamError):
    """A server did not answer, or answered with an error (HTTP 502 to the coordinator's caller)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@runtime_checkable
class ServerControl(Protocol):
    """How the coordinator calls servers' admin APIs."""

    def delete_l2(self, target: InstanceInfo, keys: Sequence[ObjectKey]) -> int:
        """Delete `keys` from the server's L2 (`DELETE /cache/objects`, or `DELETE /l2` for a
        0.5.0 server); returns how many the server reports deleted. ServerUnreachable on error."""
        ...

    def list_l2(self, target: InstanceInfo, page_token: str | None, page_size: int) -> KeyPage:
        """One page of the server's L2 keys (`GET /cache/objects`, else `GET /l2/keys`)."""
        ...

    def call(
        self, target: InstanceInfo, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> tuple[int, Any]:
        """A JSON request to the server; (status, decoded body). ServerUnreachable when the
        server cannot be reached."""
        ...
