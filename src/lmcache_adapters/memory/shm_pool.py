"""SharedMemoryPool: the L1 arena in a named POSIX shared-memory segment, viewed through torch."""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import functools
import logging
import math
import mmap
import os
import re
import threading
from collections.abc import Iterator
from typing import Any, Literal

import torch

from lmcache_adapters.memory.faultguard import GuardedRange, restore_mapping
from lmcache_adapters.memory.pinning import cuda_host_register, cuda_host_unregister
from lmcache_adapters.memory.slabs import PAGE_BYTES, SlabAllocator, check_nbytes, round_up
from lmcache_core.errors import ConfigError
from lmcache_core.ports import MemoryHandle

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
SHM_NAME_PREFIX = "lmcache_l1_pool_"
DEFAULT_PREFAULT_FIRST_BYTES = 256 << 20
DEFAULT_PREFAULT_STEP_BYTES = 64 << 20
# Linux MADV_POPULATE_WRITE (5.14+); Python 3.11's mmap module does not export it.
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
# Creation leftovers: `<name>.tmp<pid>.<start ticks>` (older servers: `<name>.tmp<pid>`).
_TEMP_NAME_RE = re.compile(rf"^{SHM_NAME_PREFIX}.+\.tmp(\d+)(?:\.(\d+))?$")
# The default segment name of OUR servers: the owner process (pid, start ticks) is in the name.
# Other programs share the `lmcache_l1_pool_` prefix (LMCache's own servers name theirs
# `lmcache_l1_pool_<pid>` and hold no flock), so only this form is ever swept by name.
_OWN_DEFAULT_PREFIX = f"{SHM_NAME_PREFIX}srv-"
_OWN_DEFAULT_RE = re.compile(rf"^{re.escape(_OWN_DEFAULT_PREFIX)}(\d+)-(\d+)$")


def default_segment_name(pid: int | None = None) -> str:
    """The segment name a server gets without --shm-name: `lmcache_l1_pool_srv-<pid>-<start
    ticks>`, which names its owner process for the life of the machine."""
    pid = os.getpid() if pid is None else pid
    return f"{_OWN_DEFAULT_PREFIX}{pid}-{process_start_ticks(pid) or 0}"

PrefaultMode = Literal["none", "sync", "background"]


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None
    when there is no such process. A pid reused by a later process has a later start time, so
    (pid, start ticks) names one process for the life of the machine."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # no such process (or no /proc)
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _owner_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether the process that wrote (pid, start ticks) still runs; without a start time
    (an older server's name) a live pid counts as alive, whoever now has it."""
    started = process_start_ticks(pid)
    if started is None:
        return False
    return start_ticks is None or started == start_ticks


@contextlib.contextmanager
def _flocked(path: str, flags: int, lock: int) -> Iterator[int | None]:
    """Open `path` and try to take `lock` without waiting: yields the fd when taken, None
    when a live process holds a conflicting lock (or the file is gone). Closing releases it."""
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, lock | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def _unlink_if_unlocked(path: str) -> bool:
    """Unlink `path` when no live process holds its flock; True when it was removed.

    The server that owns a segment holds an exclusive flock on it from before the segment
    appears under its name until it closes it; the kernel drops that lock when the process
    dies, however it dies. A free lock is therefore proof that the owner is gone, and a reused
    pid can neither keep a dead server's segment alive nor make a live one look dead."""
    with _flocked(path, os.O_RDWR, fcntl.LOCK_EX) as fd:
        if fd is None:
            return False
        # Unlink only the inode we locked: a fresh segment may have replaced it meanwhile.
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True


def segment_owner_alive(path: str) -> bool:
    """Whether a live process holds the owner's flock of the L1 segment at `path` (False when
    the segment is gone). Read-only: it takes and releases a shared lock, never unlinks."""
    if not os.path.exists(path):
        return False
    with _flocked(path, os.O_RDONLY, fcntl.LOCK_SH) as fd:
        return fd is None and os.path.exists(path)


def remove_dead_segment(path: str) -> bool:
    """Unlink the named L1 segment at `path` when nobody holds its owner's flock (its server is
    gone, however it died); True when it was removed. For the owner of a name (a server's own
    --shm-name, a test that started that server), never a sweep over other programs' names."""
    try:
        if os.stat(path).st_uid != os.getuid():
            return False
        return _unlink_if_unlocked(path)
    except FileNotFoundError:
        return False


def cleanup_stale_segments(shm_dir: str = SHM_DIR) -> list[str]:
    """Unlink the default-named L1 segments and creation leftovers of our servers that are
    provably dead. Returns the removed names.

    Only names that prove the segment is ours are considered: `lmcache_l1_pool_srv-<pid>-<start
    ticks>` (a server's default name) and `<name>.tmp<pid>.<start ticks>` (a creation leftover),
    of our uid. Other programs use the same prefix without our lock (LMCache's own servers:
    `lmcache_l1_pool_<pid>`), and an `--shm-name`d segment may be anyone's, so neither is ever
    swept here (a server replaces a dead leftover of its OWN --shm-name at creation). A default-
    named segment goes when its owner process (pid and start time) is gone AND nobody holds its
    flock (see _unlink_if_unlocked): a live server, in this pid namespace or another one sharing
    /dev/shm, keeps its lock and its segment."""
    removed: list[str] = []
    try:
        names = os.listdir(shm_dir)
    except OSError as exc:
        log.warning("cannot scan %s for stale L1 segments: %s", shm_dir, exc)
        return removed
    uid = os.getuid()
    for name in names:
        if not name.startswith(SHM_NAME_PREFIX):
            continue
        owner = _TEMP_NAME_RE.match(name) or _OWN_DEFAULT_RE.match(name)
        if owner is None:
            continue  # not provably one of ours
        start = int(owner.group(2)) if owner.group(2) is not None else None
        if _owner_alive(int(owner.group(1)), start):
            continue
        path = os.path.join(shm_dir, name)
        try:
            st = os.stat(path)
            if st.st_uid != uid:
                continue
            if _unlink_if_unlocked(path):
                log.warning(
                    "removed stale L1 segment %s (%.1f MiB) of a server that is gone",
                    path,
                    st.st_size / (1 << 20),
                )
                removed.append(name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("cannot remove stale L1 segment %s: %s", path, exc)
    return removed


def _unlink_at_exit(path: str, inode: int) -> None:
    # Fallback when close() was never called; only our own inode, never a successor's.
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def object_tensor(
    tensor: torch.Tensor,
    start: int,
    handle: MemoryHandle,
    dtype: torch.dtype = torch.uint8,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """A zero-copy tensor over `handle`'s bytes, which begin at `start` of the uint8 `tensor`:
    `shape` of `dtype` (1-D when None); ValueError when the shape needs more than the object."""
    itemsize = dtype.itemsize
    if shape is None:
        shape = (handle.nbytes // itemsize,)
    nbytes = math.prod(shape) * itemsize
    if nbytes > handle.nbytes:
        raise ValueError(f"shape {tuple(shape)} of {dtype} needs {nbytes} bytes, the object has {handle.nbytes}")
    view = tensor[start : start + nbytes]
    if dtype is not torch.uint8:
        view = view.view(dtype)
    return view if len(shape) == 1 else view.view(shape)


class SharedMemoryPool:
    """The L1 MemoryPool: one named shm segment, slab-allocated, zero-copy torch/memoryview access.

    The pool is cut into slabs of `slab_bytes`. A size class (the request rounded up to 4096)
    owns spans of one or more contiguous slabs and hands out slots from them; a span whose
    slots are all free goes back to the free slabs, so churn of equal-sized objects never
    fragments and another size class can reuse the space."""

    def __init__(
        self,
        capacity_bytes: int,
        *,
        shm_suffix: str | None = None,
        slab_bytes: int | None = None,
        prefault: PrefaultMode = "background",
        prefault_first_bytes: int = DEFAULT_PREFAULT_FIRST_BYTES,
        prefault_step_bytes: int = DEFAULT_PREFAULT_STEP_BYTES,
        pin_memory: bool = True,
        cleanup_stale: bool = True,
        shm_dir: str = SHM_DIR,
    ) -> None:
        if prefault not in ("none", "sync", "background"):
            raise ConfigError(f"prefault must be none, sync or background, not {prefault!r}")
        if capacity_bytes < PAGE_BYTES:
            raise ConfigError(
                f"L1 pool size must be at least {PAGE_BYTES} bytes, got {capacity_bytes}"
            )
        if shm_suffix is not None and (not shm_suffix or "/" in shm_suffix or "\0" in shm_suffix):
            raise ConfigError(
                f"--shm-name must be a non-empty name without '/', got {shm_suffix!r}"
            )
        self._slabs = SlabAllocator(capacity_bytes, slab_bytes=slab_bytes)
        # Whole slabs only: the segment size is exactly what can be handed out.
        self._capacity = self._slabs.capacity_bytes

        self._name = default_segment_name() if shm_suffix is None else f"{SHM_NAME_PREFIX}{shm_suffix}"
        self._shm_dir = shm_dir
        self._path = os.path.join(shm_dir, self._name)
        self._closed = False
        self._close_lock = threading.Lock()
        self._lock = threading.Lock()

        self.stale_segments_removed: list[str] = []
        """Segments of dead servers this pool's start removed (shown in /status)."""
        if cleanup_stale:
            self.stale_segments_removed = cleanup_stale_segments(shm_dir)
        self._fd = self._create_segment()
        try:
            self._inode = os.fstat(self._fd).st_ino
            self._mmap: mmap.mmap | None = mmap.mmap(self._fd, self._capacity)
            self._memview: memoryview | None = memoryview(self._mmap)
            # Over the memoryview, not the mmap: torch keeps a reference to the object it was
            # given but not a buffer export, so only an exporting memoryview stops mmap.close()
            # from unmapping memory that live tensors still point at.
            self._tensor: torch.Tensor | None = torch.frombuffer(self._memview, dtype=torch.uint8)
        except BaseException:
            os.close(self._fd)
            os.unlink(self._path)
            raise
        self._atexit_cb = functools.partial(_unlink_at_exit, self._path, self._inode)
        atexit.register(self._atexit_cb)
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)
        # A same-uid client can truncate the segment (its name is in the registration reply):
        # faults in it are caught (native guard) or noticed by size checks; see recover().
        self._guard = GuardedRange(
            self._tensor.data_ptr(), self._capacity, fd=self._fd, name=self._path, owner=self._mmap
        )
        self._recover_lock = threading.Lock()
        self._recovered_faults = 0
        self.recoveries_total = 0
        self.lost_bytes_total = 0

        self._pinned = False
        self._pin_note = "not requested"
        if pin_memory:
            self._pin()

        self._prefault_mode: PrefaultMode = prefault
        self._prefaulted = 0
        self._prefault_error: str | None = None
        self._prefault_stop = threading.Event()
        self._prefault_done = threading.Event()
        self._prefault_thread: threading.Thread | None = None
        self._start_prefault(prefault_first_bytes, prefault_step_bytes)

    # ------------------------------------------------------------------ segment

    def _create_segment(self) -> int:
        """Create the segment already flocked: it appears under its final name only once locked."""
        pid = os.getpid()
        temp = os.path.join(self._shm_dir, f"{self._name}.tmp{pid}.{process_start_ticks(pid) or 0}")
        for attempt in range(2):
            try:
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            except FileExistsError:
                os.unlink(temp)  # our own pid's leftover: nobody else uses this name
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            except FileNotFoundError as exc:
                raise ConfigError(
                    f"shared-memory directory {self._shm_dir} does not exist"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fchmod(fd, 0o600)  # the umask may have narrowed it further; never wider
                os.ftruncate(fd, self._capacity)
                try:
                    os.link(temp, self._path)
                except FileExistsError:
                    os.close(fd)
                    fd = -1
                    if attempt == 0 and self._replace_leftover():
                        continue
                    raise ConfigError(
                        f"shared-memory segment {self._path} is held by another live "
                        "lmcache server; stop it or choose another --shm-name"
                    ) from None
                return fd
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
            finally:
                try:
                    os.unlink(temp)
                except FileNotFoundError:
                    pass
        raise AssertionError("unreachable")  # pragma: no cover

    def _replace_leftover(self) -> bool:
        """Unlink an existing segment of our name when its owner is dead; False when alive."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return True
        if st.st_uid != os.getuid():
            raise ConfigError(
                f"shared-memory segment {self._path} belongs to uid {st.st_uid}; "
                "remove it or choose another --shm-name"
            )
        try:
            removed = _unlink_if_unlocked(self._path)
        except PermissionError as exc:
            raise ConfigError(f"cannot open shared-memory segment {self._path}: {exc}") from exc
        if removed:
            log.warning("replaced leftover L1 segment %s of a dead server", self._path)
            return True
        return not os.path.exists(self._path)

    # ------------------------------------------------------------------ truncation

    @property
    def segment_identity(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the segment: no client may register it as its own KV tensor."""
        return self._identity

    @property
    def guard(self) -> GuardedRange:
        """The pool's watched range (fault counts, fallback size checks)."""
        return self._guard

    def fault_count(self) -> int:
        """Faults caught in the pool so far (a copy compares it before and after)."""
        return self._guard.faults()

    def check_intact(self) -> None:
        """Without the native guard: SegmentFaultError when the segment is shorter than the
        pool (a copy then fails instead of touching it). A no-op with the native guard."""
        self._guard.check_size(self._capacity)

    def needs_recovery(self) -> bool:
        """Whether a fault was caught since the last recovery, or the file is short."""
        if self._closed:
            return False
        if self._guard.faults() != self._recovered_faults:
            return True
        try:
            return os.fstat(self._fd).st_size < self._capacity
        except OSError:
            return False

    def recover(self) -> int | None:
        """After a truncation: restore the segment's size, map the file again over pages the
        guard patched, and reserve the pages again. Returns the offset from which bytes were
        lost (objects there must be dropped: their data is gone), or None when nothing was
        wrong. Safe to call at any time; concurrent callers recover once."""
        with self._recover_lock:
            if self._closed:
                return None
            faults = self._guard.faults()
            size = os.fstat(self._fd).st_size
            lost_from = restore_mapping(self._guard, self._fd, self._capacity)
            if lost_from is None:
                self._recovered_faults = faults
                return None
            self._recovered_faults = faults
            self.recoveries_total += 1
            self.lost_bytes_total += self._capacity - lost_from
            log.error(
                "L1 pool segment %s was truncated by another process (to %d bytes); restored it, "
                "bytes from offset %d on are lost", self._path, size, lost_from,
            )
            return lost_from

    # ------------------------------------------------------------------ CUDA

    def _pin(self) -> None:
        assert self._tensor is not None
        self._pinned, self._pin_note = cuda_host_register(self._tensor, self._capacity, "the L1 pool")

    def _unpin(self) -> None:
        if not self._pinned or self._tensor is None:
            return
        cuda_host_unregister(self._tensor)
        self._pinned = False

    # ------------------------------------------------------------------ pre-fault

    def _start_prefault(self, first_bytes: int, step_bytes: int) -> None:
        if self._pinned:
            # Pinning already made every page resident.
            self._prefaulted = self._capacity
            self._prefault_done.set()
            return
        if self._prefault_mode == "none":
            self._prefault_done.set()
            return
        step = max(PAGE_BYTES, round_up(step_bytes, PAGE_BYTES))
        if self._prefault_mode == "sync":
            first = self._capacity
        else:
            first = min(self._capacity, round_up(max(0, first_bytes), PAGE_BYTES))
        self._prefault_range(0, first, step)
        if self._prefault_error is not None:
            error = self._prefault_error
            self._prefault_done.set()
            self.close()
            raise ConfigError(
                f"could not reserve {first} bytes of L1 pool {self._path} in {self._shm_dir} "
                f"({error}); lower --l1-size-gb or enlarge {self._shm_dir}"
            )
        if first >= self._capacity:
            self._prefault_done.set()
            return
        self._prefault_thread = threading.Thread(
            target=self._prefault_background,
            args=(first, step),
            name=f"lmcache-l1-prefault-{self._name}",
            daemon=True,
        )
        self._prefault_thread.start()

    def _prefault_background(self, start: int, step: int) -> None:
        try:
            self._prefault_range(start, self._capacity, step)
        finally:
            self._prefault_done.set()

    def _prefault_range(self, start: int, end: int, step: int) -> None:
        # fallocate reserves tmpfs pages for every mapper (and fails cleanly when /dev/shm is
        # short, instead of a SIGBUS on first touch); POPULATE_WRITE maps them here. Neither
        # changes data, so this may run while objects are already being written.
        populate = True
        pos = start
        while pos < end and not self._prefault_stop.is_set():
            n = min(step, end - pos)
            try:
                os.posix_fallocate(self._fd, pos, n)
            except OSError as exc:
                self._prefault_error = f"fallocate: {exc}"
                log.error("pre-faulting the L1 pool failed at offset %d: %s", pos, exc)
                return
            if populate:
                mm = self._mmap
                if mm is None:
                    return
                try:
                    mm.madvise(_MADV_POPULATE_WRITE, pos, n)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        log.warning("MADV_POPULATE_WRITE failed: %s", exc)
                    populate = False  # old kernel: the fallocate half still helps
                except ValueError:  # mapping closed under us
                    return
            pos += n
            self._prefaulted = pos

    def wait_prefaulted(self, timeout: float | None = None) -> bool:
        """Block until pre-faulting finished (or was stopped); True when it did within `timeout`."""
        return self._prefault_done.wait(timeout)

    # ------------------------------------------------------------------ allocator

    def allocate(self, nbytes: int) -> MemoryHandle | None:
        """Reserve `nbytes` (> 0) at a 4096-aligned offset; None when no room is left."""
        check_nbytes(nbytes)
        with self._lock:
            if self._closed:
                return None
            return self._slabs.allocate(nbytes)

    def free(self, handle: MemoryHandle) -> None:
        """Return a handle from `allocate`; a double or foreign free raises ValueError."""
        with self._lock:
            self._slabs.free(handle, f"L1 pool {self._name}")

    # ------------------------------------------------------------------ access

    def _check_live(self, handle: MemoryHandle) -> None:
        if self._closed:
            raise ValueError(f"L1 pool {self._name} is closed")
        if not self._slabs.is_live(handle):
            raise ValueError(f"{handle} is not a live allocation of L1 pool {self._name}")

    def view(self, handle: MemoryHandle) -> memoryview:
        """A writable zero-copy view of exactly `handle.nbytes` bytes of the object."""
        self._check_live(handle)
        memview = self._memview
        assert memview is not None
        return memview[handle.offset : handle.offset + handle.nbytes]

    def tensor_view(
        self,
        handle: MemoryHandle,
        dtype: torch.dtype = torch.uint8,
        shape: tuple[int, ...] | None = None,
    ) -> torch.Tensor:
        """A zero-copy tensor over the object's bytes: `shape` of `dtype` (1-D when None)."""
        self._check_live(handle)
        tensor = self._tensor
        assert tensor is not None
        return object_tensor(tensor, handle.offset, handle, dtype, shape)

    @property
    def tensor(self) -> torch.Tensor:
        """The whole pool as one uint8 tensor (zero-copy)."""
        if self._tensor is None:
            raise ValueError(f"L1 pool {self._name} is closed")
        return self._tensor

    # ------------------------------------------------------------------ properties

    @property
    def capacity_bytes(self) -> int:
        """Total bytes the pool may hand out (also the segment size, `pool_size`)."""
        return self._capacity

    @property
    def used_bytes(self) -> int:
        """Slot bytes currently handed out."""
        return self._slabs.used_bytes

    @property
    def slab_bytes(self) -> int:
        """Size of one slab (the unit a size class takes from the pool)."""
        return self._slabs.slab_bytes

    @property
    def shm_name(self) -> str:
        """Segment name as engines open it with shm_open (no leading slash)."""
        return self._name

    @property
    def shm_path(self) -> str:
        """The segment's path under /dev/shm."""
        return self._path

    @property
    def pinned(self) -> bool:
        """True while the buffer is registered with CUDA (page-locked)."""
        return self._pinned

    @property
    def closed(self) -> bool:
        """True after close()."""
        return self._closed

    def report_status(self) -> dict[str, Any]:
        """Status fields for the /status tree; O(1)."""
        used = self._slabs.used_bytes
        if self._prefault_mode == "none" and not self._pinned:
            prefault = "none"
        elif self._prefault_done.is_set() and self._prefaulted >= self._capacity:
            prefault = "done"
        elif self._prefault_error is not None:
            prefault = "failed"
        elif self._prefault_done.is_set():
            prefault = "stopped"
        else:
            prefault = "in_progress"
        status: dict[str, Any] = {
            "is_healthy": not self._closed and self._prefault_error is None,
            "shm_name": self._name,
            "capacity_bytes": self._capacity,
            "used_bytes": used,
            "free_bytes": self._capacity - used,
            "usage_ratio": used / self._capacity,
            **self._slabs.report(),
            "pinned": self._pinned,
            "pin_note": self._pin_note,
            "prefault": prefault,
            "prefault_mode": self._prefault_mode,
            "prefaulted_bytes": self._prefaulted,
            "stale_segments_removed": list(self.stale_segments_removed),
            "truncation_guard": "sigbus" if self._guard.native else "size_checks",
            "truncation_recoveries_total": self.recoveries_total,
            "truncation_lost_bytes_total": self.lost_bytes_total,
        }
        if self._prefault_error is not None:
            status["error"] = (
                f"pre-faulting failed ({self._prefault_error}); /dev/shm may be too small"
            )
        if self._closed:
            status["error"] = "closed"
        return status

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Stop pre-faulting, unpin, unmap and unlink the segment. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            with self._lock:
                self._closed = True
            self._prefault_stop.set()
            thread = self._prefault_thread
            if thread is not None:
                # One step is a bounded amount of work (tens of ms), so this returns promptly.
                thread.join(timeout=30.0)
                if thread.is_alive():
                    log.error("L1 pre-fault thread did not stop; leaving the mapping to GC")
            self._unpin()
            self._guard.close()
            # Drop, never release(): views handed out keep the export alive, which is what
            # makes mm.close() refuse (BufferError) instead of unmapping under them.
            self._tensor = None
            self._memview = None
            mm, self._mmap = self._mmap, None
            if mm is not None and (thread is None or not thread.is_alive()):
                try:
                    mm.close()
                except BufferError:
                    log.warning(
                        "views of L1 pool %s are still in use; the mapping is released when "
                        "they are garbage-collected",
                        self._name,
                    )
            try:
                if os.stat(self._path).st_ino == self._inode:
                    os.unlink(self._path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not unlink %s: %s", self._path, exc)
            os.close(self._fd)
            atexit.unregister(self._atexit_cb)
            self._slabs.reset()

    def unlink_segment(self) -> None:
        """Remove the segment's name now, taking no lock (a stuck shutdown's last resort: the
        memory is freed when the process exits). The mapping stays valid until then."""
        try:
            if os.stat(self._path).st_ino == self._inode:
                os.unlink(self._path)
        except OSError:
            pass

    def __enter__(self) -> SharedMemoryPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SharedMemoryPool(name={self._name!r}, capacity={self._capacity}, used={self._slabs.used_bytes})"
        )


def create_l1_pool(
    size_gb: float,
    *,
    shm_suffix: str | None = None,
    prefault: PrefaultMode = "background",
    slab_bytes: int | None = None,
    pin_memory: bool = True,
    shm_dir: str = SHM_DIR,
) -> SharedMemoryPool:
    """Build the L1 pool for `--l1-size-gb`, checking that the segment fits in /dev/shm."""
    if not isinstance(size_gb, int | float) or not math.isfinite(size_gb) or size_gb <= 0:
        raise ConfigError(f"--l1-size-gb must be > 0, got {size_gb!r}")
    nbytes = int(size_gb * (1 << 30)) // PAGE_BYTES * PAGE_BYTES
    if nbytes < PAGE_BYTES:
        raise ConfigError(f"--l1-size-gb {size_gb} is smaller than one 4096-byte page")
    # Leftovers of dead servers count against /dev/shm until removed.
    removed = cleanup_stale_segments(shm_dir)
    try:
        st = os.statvfs(shm_dir)
    except OSError as exc:
        raise ConfigError(f"--l1-size-gb needs {shm_dir} for shared memory: {exc}") from exc
    available = st.f_bavail * st.f_frsize
    if nbytes > available:
        raise ConfigError(
            f"--l1-size-gb {size_gb} ({nbytes} bytes) does not fit in {shm_dir}: "
            f"{available} bytes ({available / (1 << 30):.2f} GiB) available"
        )
    pool = SharedMemoryPool(
        nbytes,
        shm_suffix=shm_suffix,
        slab_bytes=slab_bytes,
        prefault=prefault,
        pin_memory=pin_memory,
        cleanup_stale=False,
        shm_dir=shm_dir,
    )
    pool.stale_segments_removed = removed
    return pool
