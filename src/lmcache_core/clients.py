"""Data-path clients: who a request comes from, the limits each one lives under, their registrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, NewType, TypeVar

ClientId = NewType("ClientId", bytes)
"""One data-path client: the ZeroMQ ROUTER's identity frame of its connection (opaque bytes).
Everything a client reserves, locks or registers belongs to its ClientId."""

LOCAL_CLIENT = ClientId(b"")
"""In-process callers (tests, tools) that have no connection of their own."""

DEFAULT_MAX_TOKENS_PER_KEY = 1 << 20
DEFAULT_MAX_SESSIONS = 65536
DEFAULT_MAX_SESSIONS_PER_CLIENT = 8192
DEFAULT_MAX_LOOKUPS_PER_CLIENT = 4096
# Uncommitted PREPARE_STOREs of one client: at most this share of L1 (when no byte cap is set).
DEFAULT_PENDING_WRITE_SHARE = 0.25


@dataclass(frozen=True)
class ClientLimits:
    """What one data-path client may hold at once. Caps that count per client bound what a
    careless or hostile client can pin; the global session cap bounds them all together."""

    max_tokens_per_key: int = DEFAULT_MAX_TOKENS_PER_KEY
    """Token ids in one key (LOOKUP, STORE, ...); a longer key is refused before hashing."""
    max_sessions: int = DEFAULT_MAX_SESSIONS
    """Live sessions of all clients; past it the least recently used one is dropped."""
    max_sessions_per_client: int = DEFAULT_MAX_SESSIONS_PER_CLIENT
    """Live sessions one client created; past it that client's least recently used is dropped."""
    max_lookups_per_client: int = DEFAULT_MAX_LOOKUPS_PER_CLIENT
    """Live LOOKUPs (their jobs and lock leases) of one client; past it its oldest is released."""
    max_pending_write_bytes_per_client: int | None = None
    """Bytes of uncommitted PREPARE_STORE reservations of one client; None: a quarter of L1."""

    def __post_init__(self) -> None:
        for name in ("max_tokens_per_key", "max_sessions", "max_sessions_per_client", "max_lookups_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        cap = self.max_pending_write_bytes_per_client
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ValueError(f"max_pending_write_bytes_per_client must be an integer >= 1 or None, got {cap!r}")

    def pending_write_cap(self, l1_capacity: int) -> int:
        """The per-client cap on uncommitted write bytes for an L1 of `l1_capacity` bytes."""
        if self.max_pending_write_bytes_per_client is not None:
            return self.max_pending_write_bytes_per_client
        return max(1, int(l1_capacity * DEFAULT_PENDING_WRITE_SHARE))


T = TypeVar("T")


class Registrations(Generic[T]):
    """(client, instance_id) -> registration. Several clients may use the same instance id
    (every `lmcache bench` process uses 0): each has its own registration, and one client's
    unregister or reaping never touches another's. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Insertion order is registration order: the last entry of an instance id is its newest.
        self._items: dict[tuple[ClientId, int], T] = {}

    def get(self, client: ClientId, instance_id: int) -> T | None:
        with self._lock:
            return self._items.get((client, instance_id))

    def put(self, client: ClientId, instance_id: int, value: T) -> T | None:
        """Register (replacing and returning the client's earlier registration of the id)."""
        with self._lock:
            old = self._items.pop((client, instance_id), None)
            self._items[(client, instance_id)] = value
            return old

    def pop(self, client: ClientId, instance_id: int, expected: T | None = None) -> T | None:
        """Remove the client's registration of the id (only `expected`, when given)."""
        with self._lock:
            current = self._items.get((client, instance_id))
            if current is None or (expected is not None and current is not expected):
                return None
            del self._items[(client, instance_id)]
            return current

    def of_instance(self, instance_id: int) -> list[T]:
        """Every client's registration of `instance_id`, newest first."""
        with self._lock:
            return [v for (_, iid), v in reversed(self._items.items()) if iid == instance_id]

    def items(self) -> list[tuple[tuple[ClientId, int], T]]:
        with self._lock:
            return list(self._items.items())

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[T]:
        with self._lock:
            return iter(list(self._items.values()))
