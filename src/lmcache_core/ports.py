"""The ports: what the core needs from the outside world, as small Protocols.

Each port exists because it has two real implementations or a real test seam. Third-party
adapters implement these; every method's docstring is its contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from lmcache_core.keys import ObjectKey

# --------------------------------------------------------------------------- clock


@runtime_checkable
class Clock(Protocol):
    """Time source; tests substitute a manual clock so TTLs and periods need no sleeps."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards. Used for TTLs and periods."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch. Used only for timestamps shown to people."""
        ...


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True, slots=True)
class MemoryHandle:
    """A byte range of a memory pool: `nbytes` usable bytes at `offset`, inside a slot of
    `slot_bytes` (the allocator's size class; `slot_bytes >= nbytes`)."""

    offset: int
    nbytes: int
    slot_bytes: int


@runtime_checkable
class MemoryPool(Protocol):
    """The L1 arena: one contiguous buffer handed out in byte ranges."""

    @property
    def capacity_bytes(self) -> int:
        """Total bytes the pool may hand out."""
        ...

    @property
    def used_bytes(self) -> int:
        """Bytes currently handed out, counted in slot sizes (what is really unavailable)."""
        ...

    def allocate(self, nbytes: int) -> MemoryHandle | None:
        """Reserve `nbytes` (> 0); None when no room is left (never raises for lack of memory).
        Thread-safe."""
        ...

    def free(self, handle: MemoryHandle) -> None:
        """Return a handle from `allocate`; freeing twice or a foreign handle raises ValueError.
        Thread-safe."""
        ...

    def view(self, handle: MemoryHandle) -> memoryview:
        """A writable zero-copy view of exactly `handle.nbytes` bytes of the pool."""
        ...

    def report_status(self) -> dict[str, Any]:
        """Status fields (with `is_healthy`) for the /status tree; O(1)."""
        ...

    def close(self) -> None:
        """Release the buffer (and unlink any named segment). Idempotent."""
        ...


ARENA_ACTIVE, ARENA_DRAINING, ARENA_REMOVED = "active", "draining", "removed"
"""States of an arena: takes new objects / takes none and goes once empty / unmapped."""


@runtime_checkable
class ArenaMemoryPool(Protocol):
    """Capability of a MemoryPool made of arenas (Device-DAX devices or files) that can be
    added and drained while the server runs (`/reconfigure/dax/l1/*`).

    An arena status is a dict with `device_path`, `size_in_bytes`, `used_bytes`, `free_bytes`,
    `active_allocations`, `state` (ARENA_*) and `is_primary` (LMCache 0.5.6's fields), plus
    whatever else the pool reports. `capacity_bytes` and `used_bytes` count active arenas only
    (what L1's eviction and room checks compare); a draining arena's bytes show in its status."""

    backend: str
    """The medium (`devdax`), as /status shows it."""

    def arena_statuses(self) -> list[dict[str, Any]]:
        """Every mapped arena (active or draining), primary first."""
        ...

    def arena_status(self, device_path: str) -> dict[str, Any]:
        """One arena by the path it was added with; an arena removed since then answers its
        last status with state ARENA_REMOVED. NotFoundError for a path never mapped."""
        ...

    def add_arena(self, device_path: str, size_bytes: int) -> dict[str, Any]:
        """Map one more device and let it take new objects at once. ConflictError when the
        device is already mapped (under any path) or cannot be opened, mapped or sized."""
        ...

    def drain_arena(self, device_path: str) -> dict[str, Any]:
        """Stop new allocations in the arena; it is unmapped as soon as its last allocation is
        freed (at once when it holds none). NotFoundError for an unknown path, ConflictError
        for the primary arena. Idempotent for a draining arena."""
        ...

    def arena_of(self, handle: MemoryHandle) -> str | None:
        """The device path of the arena holding `handle`, None when no mapped arena does."""
        ...


@runtime_checkable
class OwnsDevices(Protocol):
    """Capability of a component that maps devices or files (the DAX L1 pool, the dax L2
    adapter): one device mapped by two of them would have each overwrite the other's bytes."""

    def owns_device(self, device_path: str) -> bool:
        """Whether the device or file at `device_path` (under any path naming it) is mapped."""
        ...


# --------------------------------------------------------------------------- metrics


@runtime_checkable
class MetricsSink(Protocol):
    """Where components report measurements; the Prometheus adapter is one implementation.

    Names are the metric family names without the `lmcache_mp_` prefix. Labels are optional
    keyword arguments; an implementation may drop high-cardinality labels."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (>= 0) to a counter."""
        ...

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set a gauge."""
        ...

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one sample into a histogram."""
        ...


class NullMetricsSink:
    """A MetricsSink that drops everything (metrics disabled, unit tests)."""

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        return None

    def set(self, name: str, value: float, **labels: str) -> None:
        return None

    def observe(self, name: str, value: float, **labels: str) -> None:
        return None


# --------------------------------------------------------------------------- L2


@dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of an L2 listing: keys plus the opaque token of the next page (None = last)."""

    keys: list[ObjectKey]
    next_page_token: str | None


@dataclass(frozen=True, slots=True)
class L2Usage:
    """Space accounting of one L2 adapter. `capacity_bytes` is None when unbounded/unknown."""

    used_bytes: int
    capacity_bytes: int | None
    bytes_by_salt: Mapping[str, int] = field(default_factory=dict)


class ListingNotSupportedError(NotImplementedError):
    """Raised by `L2Adapter.list_keys` when the adapter cannot enumerate its keys (HTTP 501)."""


@runtime_checkable
class L2Adapter(Protocol):
    """A storage tier below L1. All data operations are asynchronous: they return a Future at
    once and complete on the adapter's own threads, so a slow or failing adapter never blocks
    L1 or the request loop. A failing operation completes its Future with per-key False, or
    with an exception; it never raises from the submit call for I/O reasons."""

    kind: str
    """The registered kind (`mock`, `fs`, `s3`, `dax`, ...)."""

    def submit_store(self, keys: Sequence[ObjectKey], payloads: Sequence[memoryview]) -> Future[list[bool]]:
        """Store each payload under its key (overwrite allowed). The payload views stay valid
        until the Future completes. Result: per key, True when durably stored."""
        ...

    def submit_lookup_and_lock(self, keys: Sequence[ObjectKey]) -> Future[list[bool]]:
        """Check presence and lock present keys against deletion/eviction until `unlock`.
        Result: the hit bitmap, one bool per key."""
        ...

    def submit_load(self, keys: Sequence[ObjectKey], buffers: Sequence[memoryview]) -> Future[list[bool]]:
        """Load each key's bytes into the caller's buffer (exactly the stored length). Result:
        per key, True when the buffer holds the verified object; a missing, torn or corrupt
        object is False (and never partially trusted)."""
        ...

    def unlock(self, keys: Sequence[ObjectKey]) -> None:
        """Release locks taken by `submit_lookup_and_lock`. Unknown keys are ignored."""
        ...

    def delete(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Delete keys, skipping locked ones. Result: per key, True when it was removed."""
        ...

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        """One page of stored keys, optionally filtered. Raises ListingNotSupportedError when
        the adapter cannot enumerate."""
        ...

    def usage(self) -> L2Usage:
        """Bytes used, capacity and bytes per cache_salt."""
        ...

    def report_status(self) -> dict[str, Any]:
        """Status fields with `is_healthy` for the /status tree."""
        ...

    def close(self) -> None:
        """Finish or cancel pending work and release resources. Idempotent."""
        ...


# --------------------------------------------------------------------------- KV transfer


@runtime_checkable
class ProbesBackend(Protocol):
    """Capability of an L2 adapter: check its backend for real, for readiness (`GET /readyz`),
    the `l2-health` periodic thread and `/status`. Adapters without it are judged by their
    `report_status()` alone."""

    def probe(self) -> None:
        """Exercise the backend the way the adapter depends on it (S3: the bucket exists and
        the endpoint answers; fs: `base_path` is a directory a file can be written to and
        removed from). Return when it is usable; otherwise raise an exception whose message
        names the problem for an operator ("bucket 'kv' does not exist at http://..."). May
        block on I/O (it runs on a probe thread with a deadline); must not change stored data."""
        ...


# --------------------------------------------------------------------------- L2 capabilities


@runtime_checkable
class KnowsStoredSizes(Protocol):
    """An L2 adapter that can tell stored payload lengths from memory (no I/O); listings then
    show each key's size."""

    def stored_nbytes(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        """Payload length of each key the adapter holds, None for the others. Cheap: answered
        from an in-memory index."""
        ...


@runtime_checkable
class Reconfigurable(Protocol):
    """An L2 adapter whose devices change while the server runs (the dax adapter), through
    `POST /reconfigure/<backend>/<operation>` (and 0.5.6's `/reconfigure/<backend>/l2/...`)."""

    def reconfigure_status(self) -> dict[str, Any]:
        """`{"backend": str, "supported_operations": [...], "status": {...}}`."""
        ...

    def apply_reconfiguration(self, operation: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Apply one operation with its JSON body; raises ConfigError for a bad body,
        NotFoundError / ConflictError / ForbiddenOperationError as the state requires."""
        ...


@runtime_checkable
class NamesItsType(Protocol):
    """An adapter that names the class /l2/adapters shows (a wrapper names what it wraps)."""

    @property
    def type_name(self) -> str:
        """`FSL2Adapter`, `S3L2Adapter`, ... or a third-party backend's class name."""
        ...


_Cap = TypeVar("_Cap")


@runtime_checkable
class ForwardsCapabilities(Protocol):
    """A wrapper (the standard L2 stack, serde) that answers for the capabilities of what it
    wraps. A wrapper cannot *be* every capability of its inner object (runtime-checkable
    Protocols look at methods, and a wrapper's methods are fixed), so it says which object
    provides one instead."""

    def capability(self, protocol: type[_Cap]) -> _Cap | None:
        """The object (this one, or one it wraps) implementing `protocol`; None when none does."""
        ...


def capability_of(obj: object, protocol: type[_Cap]) -> _Cap | None:
    """`obj` when it implements the runtime-checkable `protocol`, else what a wrapper declares
    for it (ForwardsCapabilities), else None. The one way to ask an adapter for a capability."""
    if isinstance(obj, ForwardsCapabilities):
        return obj.capability(protocol)
    return obj if isinstance(obj, protocol) else None


# --------------------------------------------------------------------------- storage backends


@runtime_checkable
class StorageBackend(Protocol):
    """The narrow port a storage tier implements: synchronous, one key at a time, I/O only.

    The standard wrappers (`lmcache_adapters.l2.stack`) turn a backend into a full L2Adapter:
    they run calls on a thread pool and hand out Futures, count pending work, refuse work after
    close, keep the per-key lookup locks (and skip locked keys on delete, atomically), record
    metrics under one label scheme, optionally break the circuit on an unreachable backend,
    and optionally compress (serde). A backend does none of that.

    Methods may block on I/O and are called from several threads at once: a backend protects
    its own state. `BackendUnreachableError` means "did not answer" (the circuit breaker counts
    it); any other exception from put/get_into/exists fails that key only.
    """

    kind: str
    """The registered kind (`fs`, `s3`, ...), shown in /status and as the `kind` metric label."""

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """Store `payload` (a flat byte view, valid for this call only) under `key`, replacing
        any older object. True when durably stored; False when it does not fit or failed."""
        ...

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        """Fill `buffer` (a writable flat byte view) with the object's bytes. False when the key
        is absent or its length differs from `buffer`'s; raise CorruptObjectError (after
        removing the object) when it fails verification. Never leave a partial object trusted."""
        ...

    def exists(self, key: ObjectKey) -> bool:
        """Whether `key` is stored now."""
        ...

    def delete(self, key: ObjectKey) -> bool:
        """Remove `key`; True when it was there. The wrappers never call this for a locked key."""
        ...

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        """One page of stored keys, as `L2Adapter.list_keys` (ListingNotSupportedError if it
        cannot enumerate; ValueError for a bad page size or token)."""
        ...

    def usage(self) -> L2Usage:
        """Bytes used, capacity and bytes per cache_salt (cheap: no I/O)."""
        ...

    def report_status(self) -> dict[str, Any]:
        """The backend's own status fields with `is_healthy` (cheap: no I/O). The wrappers add
        `pending_operations`, `locked_key_count`, `closed` and the circuit's fields."""
        ...

    def close(self) -> None:
        """Release resources; called once, after every operation submitted has finished."""
        ...


@runtime_checkable
class DeletesInBatches(Protocol):
    """Capability of a backend that removes many keys in one request (S3's DeleteObjects)."""

    def delete_many(self, keys: Sequence[ObjectKey]) -> list[bool]:
        """Remove distinct `keys`; per key, True when it was there and is now gone."""
        ...


@runtime_checkable
class KeyLockView(Protocol):
    """The lookup locks the wrappers keep, as a backend that must not move or drop locked
    objects (dax during a device removal) sees them."""

    def is_locked(self, key: ObjectKey) -> bool:
        """Whether a lookup holds `key` now."""
        ...

    def locked_keys(self) -> list[ObjectKey]:
        """Every key a lookup holds now."""
        ...

    def discard(self, keys: Sequence[ObjectKey]) -> None:
        """Forget every lock on `keys`: the backend dropped them for good (a forced device
        removal, a corrupt object); the holders' later unlocks are ignored."""
        ...


@runtime_checkable
class SeesKeyLocks(Protocol):
    """Capability of a backend that needs to know which keys are locked (see KeyLockView)."""

    def attach_key_locks(self, locks: KeyLockView) -> None:
        """Called once by the wrappers, before any operation, with their lock table."""
        ...


@runtime_checkable
class Interruptible(Protocol):
    """Capability of a backend whose calls may block for long (a simulated slow link): at close
    the wrappers interrupt it before waiting for the calls in flight."""

    def interrupt(self) -> None:
        """Make blocked and later calls give up promptly (they fail their keys)."""
        ...
