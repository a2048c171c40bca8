"""DaxMemoryPool: L1 in one or more mmap'ed Device-DAX devices (or regular files), grown and drained at run time."""

from __future__ import annotations

import errno
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from lmcache_adapters.memory.devices import (
    DeviceInfo,
    device_identity,
    inspect_device,
    map_device,
    open_device,
    unmap_device,
)
from lmcache_adapters.memory.faultguard import GuardedRange, native_guard, restore_mapping
from lmcache_adapters.memory.pinning import cuda_host_register, cuda_host_unregister
from lmcache_adapters.memory.shm_pool import SHM_DIR, object_tensor
from lmcache_adapters.memory.slabs import PAGE_BYTES, SlabAllocator, check_nbytes
from lmcache_core.errors import ConfigError, ConflictError, NotFoundError
from lmcache_core.ports import ARENA_ACTIVE, ARENA_DRAINING, ARENA_REMOVED, MemoryHandle

log = logging.getLogger(__name__)

__all__ = ["DaxMemoryPool", "create_dax_pool"]


@dataclass(eq=False)
class _Arena:
    """One mapped device: its mapping, its allocator (handles offset by `slabs.base`) and state."""

    path: str
    size: int
    is_dax: bool
    fd: int
    identity: tuple[int, int, int]
    mm: Any
    memview: memoryview | None
    tensor: torch.Tensor | None
    slabs: SlabAllocator
    guard: GuardedRange
    is_primary: bool
    state: str = ARENA_ACTIVE
    pinned: bool = False
    pin_note: str = "not requested"
    recovered_faults: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        """LMCache 0.5.6's arena status fields, exactly."""
        used = self.slabs.used_bytes
        return {
            "device_path": self.path,
            "size_in_bytes": self.size,
            "used_bytes": used,
            "free_bytes": self.slabs.capacity_bytes - used,
            "active_allocations": self.slabs.objects,
            "state": self.state,
            "is_primary": self.is_primary,
        }


class DaxMemoryPool:
    """The L1 MemoryPool (and ArenaMemoryPool) over mmap'ed Device-DAX devices or regular files.

    Each arena is one device mapped shared and read-write, cut into slabs by its own
    SlabAllocator (so equal-sized churn never fragments). Handles carry offsets in one address
    space: each arena gets a base past every earlier one, never reused, so a handle of a removed
    arena can never name memory of a newer one. New objects go to the first active arena with
    room (the primary, the one given at start, first). `drain_arena` stops new objects in an
    arena and unmaps it once its last object is freed; the primary cannot be drained.

    Engines get pickle mode: the pool has no shared-memory name (`shm_name` is ""), since its
    bytes live in the device map, which engines must never write. A file on /dev/shm is refused
    for the same reason (an engine could register it as its own KV segment). A regular file must
    exist and be at least as long as the mapped size; its blocks are reserved at map time, so
    a full filesystem fails the add instead of a later store dying of SIGBUS. Truncation of a
    file under us is caught by the SIGBUS guard like the shared-memory pool's (`recover`)."""

    backend = "devdax"
    shm_name = ""
    """No name to share: engine-driven registrations are answered in pickle mode."""

    def __init__(
        self,
        device_path: str,
        size_bytes: int,
        *,
        slab_bytes: int | None = None,
        pin_memory: bool = True,
        shm_dir: str = SHM_DIR,
        where: str = "--l1-devdax-path",
    ) -> None:
        self._slab_bytes = slab_bytes
        self._pin_memory = pin_memory
        self._shm_dir = shm_dir
        self._lock = threading.Lock()
        self._reconfigure_lock = threading.Lock()
        self._recover_lock = threading.Lock()
        self._arenas: list[_Arena] = []
        self._removed: dict[str, dict[str, Any]] = {}
        self._next_base = 0
        self._closed = False
        self.arenas_added_total = 0
        self.arenas_removed_total = 0
        self.recoveries_total = 0
        self.lost_bytes_total = 0
        self._arenas.append(self._map_arena(device_path, size_bytes, where=where, primary=True))

    # ------------------------------------------------------------------ arenas

    def _map_arena(self, device_path: str, size_bytes: int, *, where: str, primary: bool) -> _Arena:
        """Open, check, reserve and map one device (no lock held: a big file takes a while)."""
        if not isinstance(device_path, str) or not device_path.strip() or "\x00" in device_path:
            raise ConfigError("device_path must be a non-empty string")
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes < PAGE_BYTES:
            raise ConfigError(f"{where}: an L1 arena must map at least {PAGE_BYTES} bytes, got {size_bytes!r}")
        info = inspect_device(device_path.strip(), size_bytes, where=where)
        self._check_device(info, where)
        fd = open_device(info, where=where, create=False)
        try:
            identity = device_identity(os.fstat(fd))
            if not info.is_dax:
                self._reserve(fd, info, where)
            mm = map_device(fd, info.path, info.size, where=where)
        except BaseException:
            os.close(fd)
            raise
        try:
            memview = memoryview(mm)
            # Over the memoryview, not the mmap: only an exporting memoryview stops
            # mm.close() from unmapping memory that live tensors still point at.
            tensor = torch.frombuffer(memview, dtype=torch.uint8)
            slabs = SlabAllocator(info.size, slab_bytes=self._slab_bytes, base=self._next_base)
            # Regular files can be truncated by another process of our uid: watch the range
            # (native guard) or check the file's size before copies (fallback).
            guard = GuardedRange(
                tensor.data_ptr(), info.size, fd=None if info.is_dax else fd, name=info.path, owner=mm
            )
        except BaseException:
            unmap_device(mm, fd, flush=False)
            raise
        self._next_base += slabs.capacity_bytes
        arena = _Arena(
            path=info.path, size=info.size, is_dax=info.is_dax, fd=fd, identity=identity, mm=mm,
            memview=memview, tensor=tensor, slabs=slabs, guard=guard, is_primary=primary,
        )
        if self._pin_memory:
            arena.pinned, arena.pin_note = cuda_host_register(tensor, info.size, f"L1 arena {info.path}")
        log.info(
            "L1 arena %s mapped (%s, %d bytes, %d usable)", info.path, "devdax" if info.is_dax else "file",
            info.size, slabs.capacity_bytes,
        )
        return arena

    def _check_device(self, info: DeviceInfo, where: str) -> None:
        if not info.exists:
            raise ConfigError(
                f"{where}: {info.path!r} does not exist (a Device-DAX device, or a regular file at least "
                f"{info.size} bytes long, e.g. made with `truncate -s {info.size} {info.path}`)"
            )
        if info.is_dax:
            if info.size % info.align:
                raise ConfigError(f"{where}: size {info.size} of {info.path!r} must be a multiple of the device alignment {info.align}")
            if info.dax_size is not None and info.size > info.dax_size:
                raise ConfigError(f"{where}: l1 devdax size ({info.size} bytes) exceeds {info.path} capacity ({info.dax_size} bytes)")
            return
        if info.file_size is not None and info.size > info.file_size:
            raise ConfigError(f"{where}: l1 devdax size ({info.size} bytes) exceeds {info.path} capacity ({info.file_size} bytes)")
        try:
            shm_dev = os.stat(self._shm_dir).st_dev
        except OSError:
            return
        if os.stat(info.path).st_dev == shm_dev:
            raise ConfigError(
                f"{where}: {info.path!r} is on {self._shm_dir}, where engines can name it as their own KV "
                "segment; put the file on another filesystem, or use the shared-memory L1 (no --l1-devdax-path)"
            )

    @staticmethod
    def _reserve(fd: int, info: DeviceInfo, where: str) -> None:
        try:
            os.posix_fallocate(fd, 0, info.size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                log.warning("cannot reserve the blocks of %s (%s); a full filesystem will fault stores", info.path, exc)
                return
            raise ConfigError(f"{where}: cannot reserve {info.size} bytes of {info.path!r}: {exc}") from None

    def _find(self, device_path: str) -> _Arena | None:
        wanted = os.path.abspath(device_path.strip()) if isinstance(device_path, str) and device_path.strip() else None
        return next((a for a in self._arenas if a.path == wanted), None)

    def _owner(self, offset: int) -> _Arena | None:
        for arena in self._arenas:
            if arena.slabs.contains(offset):
                return arena
        return None

    def owns_device(self, device_path: str) -> bool:
        """Whether an arena (active or draining) maps the file or device at `device_path`, under
        whatever path it was added."""
        try:
            identity = device_identity(os.stat(device_path))
        except (OSError, ValueError, TypeError):
            return False
        with self._lock:
            return any(a.identity == identity for a in self._arenas)

    def arena_statuses(self) -> list[dict[str, Any]]:
        """Every mapped arena (active or draining), primary first."""
        with self._lock:
            return [a.status() for a in self._arenas]

    def arena_status(self, device_path: str) -> dict[str, Any]:
        """One arena; a removed one answers its last status (state removed); NotFoundError."""
        with self._lock:
            arena = self._find(device_path)
            if arena is not None:
                return arena.status()
            gone = self._removed.get(os.path.abspath(device_path.strip())) if device_path.strip() else None
        if gone is None:
            raise NotFoundError(f"no Device-DAX arena mapped at {device_path}")
        return dict(gone)

    def add_arena(self, device_path: str, size_bytes: int) -> dict[str, Any]:
        """Map one more device; it takes new objects at once. ConflictError (LMCache 0.5.6's 409)
        when it is already mapped under any path, or cannot be opened, sized or mapped."""
        with self._reconfigure_lock:
            self._refuse_duplicate(device_path)
            try:
                arena = self._map_arena(device_path, size_bytes, where="add", primary=False)
            except ConfigError as exc:
                raise ConflictError(str(exc)) from None
            with self._lock:
                if self._closed:
                    self._unmap(arena)
                    raise ConflictError("cannot add a device to a closed L1 pool")
                self._arenas.append(arena)
                self._removed.pop(arena.path, None)
                self.arenas_added_total += 1
                return arena.status()

    def _refuse_duplicate(self, device_path: str) -> None:
        if not isinstance(device_path, str) or not device_path.strip():
            raise ConflictError("device_path must be a non-empty string")
        with self._lock:
            arena = self._find(device_path)
        if arena is not None or self.owns_device(device_path):
            raise ConflictError(f"Device-DAX arena {device_path} is already mapped")

    def drain_arena(self, device_path: str) -> dict[str, Any]:
        """No new objects in the arena; unmapped once its last object is freed (at once when
        empty). NotFoundError for an unknown path, ConflictError for the primary arena."""
        with self._reconfigure_lock, self._lock:
            arena = self._find(device_path)
            if arena is None:
                raise NotFoundError(f"no Device-DAX arena mapped at {device_path}")
            if arena.is_primary:
                raise ConflictError(f"cannot remove primary Device-DAX arena {arena.path}")
            if arena.state == ARENA_ACTIVE:
                arena.state = ARENA_DRAINING
                log.info("L1 arena %s draining (%d objects)", arena.path, arena.slabs.objects)
            status = arena.status()
            self._maybe_reap(arena)
            return self._removed.get(arena.path, status) if arena.state == ARENA_REMOVED else status

    def arena_of(self, handle: MemoryHandle) -> str | None:
        """The device path of the arena holding `handle`, else None."""
        arena = self._owner(handle.offset)
        return None if arena is None else arena.path

    def _maybe_reap(self, arena: _Arena) -> None:
        """Unmap a draining arena without objects (lock held)."""
        if arena.state != ARENA_DRAINING or arena.slabs.objects:
            return
        arena.state = ARENA_REMOVED
        self._arenas.remove(arena)
        self._removed[arena.path] = arena.status()
        self.arenas_removed_total += 1
        self._unmap(arena)
        log.info("L1 arena %s drained and unmapped", arena.path)

    def _unmap(self, arena: _Arena) -> None:
        if arena.pinned and arena.tensor is not None:
            cuda_host_unregister(arena.tensor)
            arena.pinned = False
        arena.guard.close()
        # Drop, never release(): a view still alive keeps its export, so mm.close() refuses
        # (BufferError) instead of unmapping under it; the mapping then goes with the view.
        arena.tensor = None
        arena.memview = None
        mm, arena.mm = arena.mm, None
        error = unmap_device(mm, arena.fd, flush=False)
        arena.fd = -1
        if error is not None:
            log.warning("views of L1 arena %s are still alive (%s); it is unmapped when they are collected", arena.path, error)
        arena.slabs.reset()

    # ------------------------------------------------------------------ MemoryPool

    @property
    def capacity_bytes(self) -> int:
        """Bytes the active arenas may hand out (draining ones take no new objects)."""
        return sum(a.slabs.capacity_bytes for a in self._arenas if a.state == ARENA_ACTIVE)

    @property
    def used_bytes(self) -> int:
        """Slot bytes handed out in the active arenas: measured against `capacity_bytes`, so
        L1's eviction and room checks never count a draining arena (see `draining_used_bytes`)."""
        return sum(a.slabs.used_bytes for a in self._arenas if a.state == ARENA_ACTIVE)

    @property
    def draining_used_bytes(self) -> int:
        """Slot bytes still held in draining arenas (locked objects, copies in flight)."""
        return sum(a.slabs.used_bytes for a in self._arenas if a.state == ARENA_DRAINING)

    def allocate(self, nbytes: int) -> MemoryHandle | None:
        """Reserve `nbytes` (> 0) in the first active arena with room; None when none has."""
        check_nbytes(nbytes)
        with self._lock:
            if self._closed:
                return None
            for arena in self._arenas:
                if arena.state == ARENA_ACTIVE:
                    handle = arena.slabs.allocate(nbytes)
                    if handle is not None:
                        return handle
            return None

    def free(self, handle: MemoryHandle) -> None:
        """Return a handle from `allocate` (the last one of a draining arena unmaps it); a
        double or foreign free raises ValueError."""
        with self._lock:
            arena = self._owner(handle.offset)
            if arena is None:
                raise ValueError(f"{handle} is not a live allocation of the L1 DAX pool")
            arena.slabs.free(handle, f"L1 arena {arena.path}")
            if arena.state == ARENA_DRAINING:
                self._maybe_reap(arena)

    def _live_arena(self, handle: MemoryHandle) -> _Arena:
        arena = self._owner(handle.offset)
        if arena is None or not arena.slabs.is_live(handle):
            raise ValueError(f"{handle} is not a live allocation of the L1 DAX pool")
        return arena

    def view(self, handle: MemoryHandle) -> memoryview:
        """A writable zero-copy view of exactly `handle.nbytes` bytes of the object."""
        arena = self._live_arena(handle)
        memview = arena.memview
        if memview is None:
            raise ValueError(f"L1 arena {arena.path} is unmapped")
        start = handle.offset - arena.slabs.base
        return memview[start : start + handle.nbytes]

    def tensor_view(
        self, handle: MemoryHandle, dtype: torch.dtype = torch.uint8, shape: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """A zero-copy tensor over the object's bytes: `shape` of `dtype` (1-D when None)."""
        arena = self._live_arena(handle)
        tensor = arena.tensor
        if tensor is None:
            raise ValueError(f"L1 arena {arena.path} is unmapped")
        return object_tensor(tensor, handle.offset - arena.slabs.base, handle, dtype, shape)

    @property
    def closed(self) -> bool:
        return self._closed

    def report_status(self) -> dict[str, Any]:
        """Status fields for the /status tree: totals and one entry per arena."""
        with self._lock:
            arenas = []
            for a in self._arenas:
                arenas.append(
                    {
                        **a.status(),
                        "device_type": "devdax" if a.is_dax else "file",
                        "capacity_bytes": a.slabs.capacity_bytes,
                        **a.slabs.report(),
                        "pinned": a.pinned,
                        "pin_note": a.pin_note,
                    }
                )
            active = [a for a in self._arenas if a.state == ARENA_ACTIVE]
            capacity = sum(a.slabs.capacity_bytes for a in active)
            used = sum(a.slabs.used_bytes for a in active)
            status: dict[str, Any] = {
                "is_healthy": not self._closed,
                "backend": self.backend,
                "shm_name": self.shm_name,
                "capacity_bytes": capacity,
                "used_bytes": used,
                "free_bytes": capacity - used,
                "draining_used_bytes": sum(a.slabs.used_bytes for a in self._arenas if a.state == ARENA_DRAINING),
                "usage_ratio": used / capacity if capacity else 0.0,
                "objects": sum(a.slabs.objects for a in self._arenas),
                "arena_count": len(self._arenas),
                "arenas": arenas,
                "arenas_added_total": self.arenas_added_total,
                "arenas_removed_total": self.arenas_removed_total,
                "truncation_guard": "sigbus" if native_guard() else "size_checks",
                "truncation_recoveries_total": self.recoveries_total,
                "truncation_lost_bytes_total": self.lost_bytes_total,
            }
        if self._closed:
            status["error"] = "closed"
        return status

    # ------------------------------------------------------------------ truncation

    def fault_count(self) -> int:
        """Faults caught in the arenas so far (a copy compares it before and after)."""
        return sum(a.guard.faults() for a in list(self._arenas))

    def check_intact(self) -> None:
        """Without the native guard: SegmentFaultError when a file arena is shorter than its
        mapping (a copy then fails instead of touching it). A no-op with the native guard."""
        for arena in list(self._arenas):
            if not arena.is_dax:
                arena.guard.check_size(arena.size)

    def needs_recovery(self) -> bool:
        """Whether a fault was caught in an arena since its last recovery, or a file is short."""
        return any(self._broken(a) for a in list(self._arenas))

    def _broken(self, arena: _Arena) -> bool:
        if arena.fd < 0:
            return False
        if arena.guard.faults() != arena.recovered_faults:
            return True
        if arena.is_dax:
            return False
        try:
            return os.fstat(arena.fd).st_size < arena.size
        except OSError:
            return False

    def recover(self) -> int | None:
        """After a fault or truncation: restore each broken arena (length, mapping, blocks).
        Returns the lowest pool offset from which bytes were lost (objects at or past it must be
        dropped), or None when nothing was wrong."""
        with self._recover_lock:
            lowest: int | None = None
            for arena in list(self._arenas):
                if not self._broken(arena):
                    continue
                faults = arena.guard.faults()
                try:
                    lost = restore_mapping(arena.guard, arena.fd, arena.size, resizable=not arena.is_dax)
                except OSError as exc:
                    if arena.fd < 0:
                        continue  # drained and unmapped meanwhile: nothing of it is read any more
                    log.error("restoring L1 arena %s failed: %s", arena.path, exc)
                    lost = 0  # what is left of it cannot be trusted
                arena.recovered_faults = faults
                if lost is None:
                    continue
                self.recoveries_total += 1
                self.lost_bytes_total += arena.size - lost
                log.error("L1 arena %s was truncated or faulted; restored it, bytes from offset %d on are lost", arena.path, lost)
                start = arena.slabs.base + lost
                lowest = start if lowest is None else min(lowest, start)
            return lowest

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Unmap every arena (views still alive keep theirs until collected). Idempotent."""
        with self._reconfigure_lock, self._lock:
            if self._closed:
                return
            self._closed = True
            for arena in self._arenas:
                self._unmap(arena)
            self._arenas.clear()

    def __enter__(self) -> DaxMemoryPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaxMemoryPool(arenas={[a.path for a in self._arenas]}, capacity={self.capacity_bytes})"


def create_dax_pool(device_path: str, size_gb: float, *, where: str = "--l1-devdax-path") -> DaxMemoryPool:
    """The L1 pool for `--l1-devdax-path` sized by `--l1-size-gb` (rounded down to whole pages)."""
    nbytes = int(size_gb * (1 << 30)) // PAGE_BYTES * PAGE_BYTES
    if nbytes < PAGE_BYTES:
        raise ConfigError(f"--l1-size-gb {size_gb} is smaller than one 4096-byte page")
    return DaxMemoryPool(device_path, nbytes, where=where)
