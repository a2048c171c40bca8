"""Engine workers' registrations on the data path, and the guard around copies over shared memory.

A registration belongs to (client, instance id): the client that sent it, never another one that
names the same id. It is either an engine-driven context (the geometry of one chunk object, the
engine copies through the shared L1 pool) or server-driven KV tensors (the engine's own shared
segments, which the server maps and copies from and into). Both kinds share liveness (pings, the
reaper) and the truncation guard: a segment another process truncates must fail the request,
never kill the server (docs/security.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmcache_adapters.memory.faultguard import GuardedRange, SegmentFaultError, fault_count
from lmcache_adapters.transfer.layout import KVCacheLayout
from lmcache_core.clients import ClientId, Registrations
from lmcache_core.l1.manager import L1Manager
from lmcache_core.lookup import DataPath
from lmcache_core.ports import Clock, MemoryHandle, MemoryPool
from lmcache_frontends.zmq.requests import EngineDrivenContext

log = logging.getLogger(__name__)

# A registration that never pinged is reaped this long after its last activity (0.5.0: 3600 s).
NEVER_PINGED_REAP_SECONDS = 3600.0

ENGINE_DRIVEN = "engine_driven"
SERVER_DRIVEN = "lmcache_driven"


class RequestFailed(Exception):
    """The request fails: it is answered with its own failure value (`Request.failure()`)."""


@dataclass
class Instance:
    """One engine worker's registration (engine-driven context or shared KV tensors), owned by
    the client that sent it."""

    client: ClientId
    instance_id: int
    mode: str  # ENGINE_DRIVEN | SERVER_DRIVEN
    model_name: str
    world_size: int
    registered_at: float
    last_seen: float
    pinged: bool = False
    object_size: int = 0
    slot_shape: tuple[int, ...] = ()
    dtype_str: str = ""
    dtype: torch.dtype | None = None
    layout: KVCacheLayout | None = None
    engine_type: str = ""
    context: EngineDrivenContext | None = None
    """The engine-driven registration's answer (a repeated registration gets the same one)."""
    guards: list[GuardedRange] = field(default_factory=list)
    """The client's shared KV segments the server maps (CPU): watched for truncation."""
    faults_seen: int = 0

    def segment_faults(self) -> int:
        return sum(g.faults() for g in self.guards)

    def segments_intact(self) -> bool:
        """Without the native guard: whether every shared segment still has its size."""
        try:
            for guard in self.guards:
                guard.check_size()
        except SegmentFaultError:
            return False
        return True


class InstanceRegistry:
    """Every registration of the data path, their liveness, and the copies over shared memory
    (the L1 pool and the clients' segments) with the truncation guard around them."""

    def __init__(
        self, data_path: DataPath, l1: L1Manager, pool: MemoryPool, *, clock: Clock, reap_timeout_seconds: float
    ) -> None:
        self.data_path = data_path
        self.l1 = l1
        self.pool = pool
        self.clock = clock
        self.reap_timeout = float(reap_timeout_seconds)
        self._registrations: Registrations[Instance] = Registrations()
        self._pool_lock = threading.Lock()
        self.reaped_total = 0
        self.segment_faults_total = 0
        self.pool_identity: tuple[int, int] | None = getattr(pool, "segment_identity", None)
        """(st_dev, st_ino) of the server's own L1 segment: never mapped as a client's tensor."""

    # -- lookups ----------------------------------------------------------------------------

    def get(self, client: ClientId, instance_id: int) -> Instance | None:
        return self._registrations.get(client, instance_id)

    def instance(self, client: ClientId, instance_id: int) -> Instance:
        """The caller's own registration of `instance_id` (liveness refreshed); RequestFailed
        when it has none (another client's registration of the same id is never used)."""
        inst = self._registrations.get(client, instance_id)
        if inst is None:
            raise RequestFailed(f"unknown instance_id {instance_id}")
        inst.last_seen = self.clock.monotonic()
        return inst

    def items(self) -> list[tuple[tuple[ClientId, int], Instance]]:
        return self._registrations.items()

    def of_instance(self, instance_id: int) -> list[Instance]:
        """Every client's registration of `instance_id`, newest first."""
        return self._registrations.of_instance(instance_id)

    def __len__(self) -> int:
        return len(self._registrations)

    # -- changes ----------------------------------------------------------------------------

    def install(self, inst: Instance) -> None:
        """Register `inst` for its client (replacing that client's earlier one of the id)."""
        self.data_path.register_layout(inst.model_name, inst.world_size, inst.object_size)
        old = self._registrations.get(inst.client, inst.instance_id)
        if old is not None:
            self.drop(inst.client, inst.instance_id, "re-registered", expected=old)
        self._registrations.put(inst.client, inst.instance_id, inst)

    def drop(self, client: ClientId, instance_id: int, reason: str, *, expected: Instance | None = None) -> bool:
        """Remove a registration; its prepared writes never committed are discarded (they hold
        incomplete data, never published). False when there was none (or not `expected`)."""
        inst = self._registrations.pop(client, instance_id, expected)
        if inst is None:
            return False
        self.data_path.drop_instance(client, instance_id)
        self.data_path.unregister_layout(inst.model_name, inst.world_size)
        for guard in inst.guards:
            guard.close()
        log.info("instance %d (%s) of client %s removed: %s", instance_id, inst.mode, client.hex() or "-", reason)
        return True

    def drop_all(self, reason: str) -> None:
        for (client, iid), _inst in self._registrations.items():
            self.drop(client, iid, reason)

    def ping(self, client: ClientId, instance_id: int | None) -> None:
        """A ping refreshes the caller's own registration of `instance_id` (if any)."""
        if instance_id is None:
            return
        inst = self._registrations.get(client, instance_id)
        if inst is not None:
            inst.pinged = True
            inst.last_seen = self.clock.monotonic()

    def reap(self) -> int:
        """Drop registrations silent for longer than the reap timeout (one that never pinged
        gets at least NEVER_PINGED_REAP_SECONDS); returns how many."""
        now = self.clock.monotonic()
        reaped = 0
        for (client, iid), inst in self._registrations.items():
            limit = self.reap_timeout if inst.pinged else max(self.reap_timeout, NEVER_PINGED_REAP_SECONDS)
            if now - inst.last_seen >= limit and self.drop(client, iid, "reaped: no ping", expected=inst):
                reaped += 1
        self.reaped_total += reaped
        return reaped

    # -- copies over shared memory ----------------------------------------------------------

    def object_tensor(self, handle: MemoryHandle) -> torch.Tensor:
        """The bytes of one L1 object as a uint8 tensor (zero-copy)."""
        view = getattr(self.pool, "tensor_view", None)
        if view is not None:
            tensor: torch.Tensor = view(handle)
            return tensor
        return torch.frombuffer(self.pool.view(handle), dtype=torch.uint8)

    def copy_guarded(self, inst: Instance | None, copy: Callable[[], Any]) -> Any:
        """Run a copy over the L1 pool (and `inst`'s shared segments). A segment truncated by
        another process fails the request with SegmentFaultError instead of killing the
        server: found before the copy (the pool's size or fault count, one fstat; a client
        segment's size without the native guard), or caught during it by the SIGBUS guard.
        The broken side is then recovered (the pool) or dropped (the client's registration)."""
        needs = getattr(self.pool, "needs_recovery", None)
        broken = needs is not None and needs()
        if not broken and inst is not None:
            broken = inst.segment_faults() != inst.faults_seen or not inst.segments_intact()
        if broken:
            self.check_segments()
            raise SegmentFaultError("shared memory was truncated by another process; the request failed")
        before = fault_count()
        result = copy()
        if fault_count() != before:
            self.check_segments()
            raise SegmentFaultError("shared memory was truncated during the copy; the request failed")
        return result

    def check_segments(self) -> None:
        """Recover the pool after a truncation (dropping objects whose bytes are gone) and drop
        registrations whose client segments were truncated."""
        needs = getattr(self.pool, "needs_recovery", None)
        if needs is not None and needs():
            with self._pool_lock:
                lost_from = self.pool.recover()  # type: ignore[attr-defined]
            if lost_from is not None:
                self.segment_faults_total += 1
                dropped = self.l1.drop_where(lambda h: h.offset + h.slot_bytes > lost_from)
                log.error("dropped %d L1 objects whose bytes were lost with the truncated pool segment", dropped)
        for (client, iid), inst in self._registrations.items():
            faults = inst.segment_faults()
            if faults != inst.faults_seen or not inst.segments_intact():
                inst.faults_seen = faults
                self.segment_faults_total += 1
                self.drop(client, iid, "its shared KV segment was truncated", expected=inst)
