"""The `fs` L2 adapter: one integrity-framed file per key under a base directory.

On-disk layout: `<base_path>/<h[0:2]>/<h[2:4]>/<storage name>` where `h` is the hex chunk hash
(two levels of 256 shards keep directories small at millions of objects) and the storage name is
`ObjectKey.to_storage_name()`, so the key set and per-salt usage are rebuilt from names and sizes
alone on start. Each file is `integrity header || payload`, written under a temporary name in the
same directory, fsync'ed and renamed over the final name: readers see the old object or the new
one, never a torn one. Leftover temporary files (a crash mid-write) are removed on start.
"""

from __future__ import annotations

import bisect
import errno
import logging
import mmap
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_adapters.l2.integrity import (
    HEADER_SIZE,
    IntegrityError,
    decode_header,
    encode_header,
    verify,
)
from lmcache_adapters.l2.listing import check_page_args, page_of
from lmcache_adapters.l2.stack import BackendL2Adapter, StackContext
from lmcache_core.errors import BackendUnavailableError, ConfigError, InvalidKeyError
from lmcache_core.keys import ObjectKey
from lmcache_core.plugin.registry import COMMON_FIELDS, ConfigField, config_field
from lmcache_core.ports import KeyPage, L2Usage, MetricsSink

log = logging.getLogger(__name__)

KIND = "fs"
TMP_PREFIX = ".lmc-tmp-"
"""Temporary files start with this and contain no `@`, so they never parse as storage names."""
_PROBE_NAME = ".lmc-odirect-probe"
_ALIGN = 4096  # O_DIRECT needs offset, length and address aligned to the logical block size
_HEX = frozenset("0123456789abcdef")

FS_FIELDS: Mapping[str, ConfigField] = {
    "base_path": config_field(
        str, required=True, help="directory holding the objects (created if missing)"
    ),
    "capacity_bytes": config_field(
        int, help="refuse stores beyond this many bytes on disk (default: unbounded)"
    ),
    "use_odirect": config_field(
        bool, help="bypass the page cache with O_DIRECT (falls back if unsupported)"
    ),
    "max_workers": config_field(int, help="I/O threads (default 4)"),
    "fsync": config_field(
        bool, help="fsync each object and its directory before reporting it stored (default true)"
    ),
}


def shard_dirs(key: ObjectKey) -> tuple[str, str]:
    """The two shard directory names of `key`: the first and second byte of its hash, in hex."""
    h = (key.chunk_hash.hex() + "00")[:4]
    return h[:2], h[2:4]


@dataclass(slots=True)
class _Entry:
    key: ObjectKey
    size: int  # bytes on disk, header included


class FSBackend:
    """Storage backend keeping one integrity-framed file per key under `base_path`."""

    kind = KIND

    def __init__(
        self,
        base_path: str,
        *,
        capacity_bytes: int | None = None,
        use_odirect: bool = False,
        fsync: bool = True,
    ) -> None:
        self.base_path = os.path.abspath(base_path)
        self._capacity = capacity_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # by storage name
        self._names: list[str] = []  # sorted storage names, for paged listing
        self._by_salt: dict[str, int] = {}
        self._used = 0
        self._reserved = (
            0  # bytes of stores in flight, so concurrent stores cannot overshoot capacity
        )
        self._known_dirs: set[str] = set()
        self._checksum_failures = 0
        self._write_failures = 0
        self._skipped_files = 0
        self._removed_temp_files = 0
        self._closed = False
        self._local = threading.local()
        os.makedirs(self.base_path, exist_ok=True)
        self._odirect = use_odirect and self._probe_odirect()
        self._scan()

    # ------------------------------------------------------------------ start-up

    def _probe_odirect(self) -> bool:
        flag = getattr(os, "O_DIRECT", 0)
        if not flag:
            log.warning(
                "fs L2 adapter: O_DIRECT is not available on this platform; using buffered I/O"
            )
            return False
        probe = os.path.join(self.base_path, _PROBE_NAME)
        buf = mmap.mmap(-1, _ALIGN)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o644)
            try:
                os.write(fd, buf)
            finally:
                os.close(fd)
            return True
        except OSError as exc:
            log.warning(
                "fs L2 adapter: %s refuses O_DIRECT (%s); falling back to buffered I/O",
                self.base_path,
                exc,
            )
            return False
        finally:
            buf.close()
            try:
                os.unlink(probe)
            except FileNotFoundError:
                pass

    def _scan(self) -> None:
        """Rebuild the index from the files on disk; never fails on a foreign or odd file."""
        for top in _scandir(self.base_path):
            if top.name == _PROBE_NAME:
                continue
            if not (top.is_dir(follow_symlinks=False) and _is_shard(top.name)):
                self._skip(top.path, "not a shard directory")
                continue
            for sub in _scandir(top.path):
                if not (sub.is_dir(follow_symlinks=False) and _is_shard(sub.name)):
                    self._skip(sub.path, "not a shard directory")
                    continue
                self._known_dirs.add(sub.path)
                for entry in _scandir(sub.path):
                    self._scan_file(top.name, sub.name, entry)
        if self._skipped_files:
            log.warning(
                "fs L2 adapter: skipped %d file(s) under %s that are not objects",
                self._skipped_files,
                self.base_path,
            )
        if self._removed_temp_files:
            log.info(
                "fs L2 adapter: removed %d leftover temporary file(s)", self._removed_temp_files
            )
        log.info(
            "fs L2 adapter: %d object(s), %d bytes under %s",
            len(self._entries),
            self._used,
            self.base_path,
        )

    def _scan_file(self, d1: str, d2: str, entry: os.DirEntry[str]) -> None:
        name = entry.name
        if name.startswith(TMP_PREFIX) and "@" not in name:
            try:
                os.unlink(entry.path)
                self._removed_temp_files += 1
            except OSError as exc:
                log.warning("fs L2 adapter: cannot remove temporary file %s: %s", entry.path, exc)
            return
        try:
            if not entry.is_file(follow_symlinks=False):
                raise InvalidKeyError("not a regular file")
            key = ObjectKey.from_storage_name(name)
            if shard_dirs(key) != (d1, d2):
                raise InvalidKeyError("file is in the wrong shard directory")
            size = entry.stat(follow_symlinks=False).st_size
        except (InvalidKeyError, OSError) as exc:
            self._skip(entry.path, str(exc))
            return
        self._index_add(name, key, size)

    def _skip(self, path: str, why: str) -> None:
        self._skipped_files += 1
        log.debug("fs L2 adapter: skipping %s: %s", path, why)

    # ------------------------------------------------------------------ index (caller holds _lock)

    def _index_add(self, name: str, key: ObjectKey, size: int) -> None:
        old = self._entries.get(name)
        if old is None:
            bisect.insort(self._names, name)
        else:
            self._account(old.key.cache_salt, -old.size)
        self._entries[name] = _Entry(key, size)
        self._account(key.cache_salt, size)

    def _index_remove(self, name: str) -> None:
        entry = self._entries.pop(name)
        i = bisect.bisect_left(self._names, name)
        del self._names[i]
        self._account(entry.key.cache_salt, -entry.size)

    def _account(self, salt: str, delta: int) -> None:
        self._used += delta
        left = self._by_salt.get(salt, 0) + delta
        if left:
            self._by_salt[salt] = left
        else:
            self._by_salt.pop(salt, None)

    # ------------------------------------------------------------------ paths and batches

    def _path(self, key: ObjectKey, name: str) -> str:
        d1, d2 = shard_dirs(key)
        return os.path.join(self.base_path, d1, d2, name)

    # ------------------------------------------------------------------ store

    def put(self, key: ObjectKey, payload: memoryview) -> bool:
        """Write `header || payload` to a temporary file, fsync, rename over the object's name."""
        name = key.to_storage_name()
        size = HEADER_SIZE + payload.nbytes
        with self._lock:
            if self._closed:
                return False
            old = self._entries.get(name)
            growth = size - (old.size if old else 0)
            if self._capacity is not None and self._used + self._reserved + growth > self._capacity:
                log.debug("fs L2 adapter: %r does not fit (%d bytes)", key, size)
                return False
            self._reserved += max(growth, 0)
        path = self._path(key, name)
        tmp = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            self._ensure_dir(os.path.dirname(path))
            self._write_file(tmp, encode_header(payload), payload)
            with self._lock:
                os.replace(tmp, path)
                self._index_add(name, key, size)
            if self._fsync:
                _fsync_dir(os.path.dirname(path))
            return True
        except OSError as exc:
            with self._lock:
                self._write_failures += 1
            log.warning("fs L2 adapter: storing %r failed: %s", key, exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            return False
        finally:
            with self._lock:
                self._reserved -= max(growth, 0)

    def _ensure_dir(self, path: str) -> None:
        if path in self._known_dirs:
            return
        os.makedirs(path, exist_ok=True)
        if self._fsync:  # a renamed file is only durable if the directories leading to it are
            _fsync_dir(os.path.dirname(path))
            _fsync_dir(os.path.dirname(os.path.dirname(path)))
        with self._lock:
            self._known_dirs.add(path)

    def _write_file(self, path: str, header: bytes, payload: memoryview) -> None:
        total = HEADER_SIZE + payload.nbytes
        if self._odirect:
            padded = -(-total // _ALIGN) * _ALIGN
            buf = self._aligned_buffer(padded)
            buf[:HEADER_SIZE] = header
            buf[HEADER_SIZE:total] = payload
            buf[total:padded] = bytes(padded - total)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
            try:
                _write_all(fd, buf[:padded])
                os.ftruncate(fd, total)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, memoryview(header))
            _write_all(fd, payload)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _aligned_buffer(self, nbytes: int) -> memoryview:
        """A per-thread page-aligned scratch buffer (anonymous mmap) of at least `nbytes`."""
        current: mmap.mmap | None = getattr(self._local, "buf", None)
        if current is None or len(current) < nbytes:
            if current is not None:
                try:
                    current.close()
                except BufferError:  # a view is still referenced somewhere; let GC reclaim it
                    pass
            current = mmap.mmap(-1, nbytes)
            self._local.buf = current
        return memoryview(current)

    # ------------------------------------------------------------------ lookup / unlock / delete

    def exists(self, key: ObjectKey) -> bool:
        """Answered from the in-memory index: never blocks on I/O."""
        with self._lock:
            return not self._closed and key.to_storage_name() in self._entries

    def stored_nbytes(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        """Payload length of each stored key (what a load buffer must hold), None when absent.

        The KnowsStoredSizes capability, answered from the in-memory index: the serde wrapper
        uses it to size load buffers for objects stored before a restart."""
        with self._lock:
            out: list[int | None] = []
            for key in keys:
                entry = self._entries.get(key.to_storage_name())
                out.append(None if entry is None else max(entry.size - HEADER_SIZE, 0))
            return out

    def delete(self, key: ObjectKey) -> bool:
        name = key.to_storage_name()
        with self._lock:
            if self._closed or name not in self._entries:
                return False
            self._index_remove(name)
            try:
                os.unlink(self._path(key, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("fs L2 adapter: removing %r from disk failed: %s", key, exc)
        return True

    # ------------------------------------------------------------------ load

    def get_into(self, key: ObjectKey, buffer: memoryview) -> bool:
        """Read and verify the object into `buffer`; a corrupt file is deleted and IntegrityError raised."""
        name = key.to_storage_name()
        with self._lock:
            if self._closed or name not in self._entries:
                return False
        path = self._path(key, name)
        try:
            fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if self._odirect else 0))
        except FileNotFoundError:
            # deleted behind our back (or by a concurrent delete): drop it from the index
            self._forget_if_gone(name)
            return False
        except OSError as exc:
            log.warning("fs L2 adapter: opening %r failed: %s", key, exc)
            return False
        try:
            st = os.fstat(fd)
            problem = self._read_verified(fd, st.st_size, buffer)
        except OSError as exc:
            log.warning("fs L2 adapter: reading %r failed: %s", key, exc)
            return False
        finally:
            os.close(fd)
        if problem is None:
            return True
        if isinstance(problem, _WrongBuffer):
            log.debug("fs L2 adapter: %r: %s", key, problem)
            return False
        self._drop_corrupt(key, name, path, st.st_ino, str(problem))
        raise problem

    def _read_verified(self, fd: int, file_size: int, buffer: memoryview) -> Exception | None:
        """Fill `buffer` from the open object file. None when verified; _WrongBuffer when the
        caller's buffer has the wrong size (object intact); IntegrityError when corrupt."""
        if self._odirect:
            padded = -(-file_size // _ALIGN) * _ALIGN
            scratch = self._aligned_buffer(max(padded, _ALIGN))[: max(padded, _ALIGN)]
            got = _read_direct(fd, scratch)
            blob = scratch[: min(got, file_size)]
            try:
                header = decode_header(blob[:HEADER_SIZE])
            except IntegrityError as exc:
                return exc
            if header.payload_length != buffer.nbytes:
                return _WrongBuffer(header.payload_length, buffer.nbytes)
            if file_size != HEADER_SIZE + header.payload_length or len(blob) != file_size:
                return IntegrityError(
                    f"object file is {file_size} bytes, header says {HEADER_SIZE + header.payload_length}"
                )
            buffer[:] = blob[HEADER_SIZE:file_size]
        else:
            raw = bytearray(HEADER_SIZE)
            got = _read_full(fd, memoryview(raw))
            try:
                header = decode_header(memoryview(raw)[:got])
            except IntegrityError as exc:
                return exc
            if header.payload_length != buffer.nbytes:
                return _WrongBuffer(header.payload_length, buffer.nbytes)
            if file_size != HEADER_SIZE + header.payload_length:
                return IntegrityError(
                    f"object file is {file_size} bytes, header says {HEADER_SIZE + header.payload_length}"
                )
            got = _read_full(fd, buffer)
            if got != buffer.nbytes:
                return IntegrityError(f"short read: {got} of {buffer.nbytes} payload bytes")
        try:
            verify(header, buffer)
        except IntegrityError as exc:
            return exc
        return None

    def _drop_corrupt(self, key: ObjectKey, name: str, path: str, inode: int, why: str) -> None:
        log.warning("fs L2 adapter: %r failed verification (%s); deleting it", key, why)
        with self._lock:
            self._checksum_failures += 1
            try:
                # only the file we read: a concurrent overwrite may already have replaced it
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
                    if name in self._entries:
                        self._index_remove(name)
            except FileNotFoundError:
                if name in self._entries:
                    self._index_remove(name)
            except OSError as exc:
                log.warning("fs L2 adapter: cannot delete corrupt object %s: %s", path, exc)

    def _forget_if_gone(self, name: str) -> None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and not os.path.exists(self._path(entry.key, name)):
                self._index_remove(name)

    # ------------------------------------------------------------------ listing, usage, status

    def list_keys(
        self,
        page_size: int,
        page_token: str | None = None,
        *,
        model_name: str | None = None,
        cache_salt: str | None = None,
    ) -> KeyPage:
        check_page_args(page_size, page_token)
        with self._lock:
            return page_of(
                self._names,
                lambda name: self._entries[name].key,
                page_size,
                page_token,
                model_name=model_name,
                cache_salt=cache_salt,
            )

    def usage(self) -> L2Usage:
        with self._lock:
            return L2Usage(
                used_bytes=self._used,
                capacity_bytes=self._capacity,
                bytes_by_salt=dict(self._by_salt),
            )

    def probe(self) -> None:
        """Write, read back and remove a small file in `base_path` (readiness): raises
        BackendUnavailableError when the directory is missing or refuses it."""
        if not os.path.isdir(self.base_path):
            what = "is not a directory" if os.path.exists(self.base_path) else "does not exist"
            raise BackendUnavailableError(f"base_path {self.base_path} {what}")
        path = os.path.join(self.base_path, f".lmcache-probe-{os.getpid()}-{threading.get_ident()}")
        payload = b"lmcache readiness probe\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            with open(path, "rb") as f:
                if f.read() != payload:
                    raise BackendUnavailableError(f"base_path {self.base_path}: a probe file read back wrong")
        except OSError as exc:
            raise BackendUnavailableError(
                f"base_path {self.base_path} is not writable: {exc.strerror or exc}"
            ) from exc
        finally:
            try:
                os.unlink(path)
            except OSError:
                pass

    def report_status(self) -> dict[str, Any]:
        writable = os.path.isdir(self.base_path) and os.access(self.base_path, os.W_OK | os.X_OK)
        with self._lock:
            return {
                "is_healthy": writable and not self._closed,
                "kind": KIND,
                "base_path": self.base_path,
                "writable": writable,
                "stored_object_count": len(self._entries),
                "used_bytes": self._used,
                "capacity_bytes": self._capacity,
                "checksum_failures": self._checksum_failures,
                "write_failures": self._write_failures,
                "skipped_files": self._skipped_files,
                "removed_temp_files": self._removed_temp_files,
                "odirect": self._odirect,
                "fsync": self._fsync,
            }

    def close(self) -> None:
        with self._lock:
            self._closed = True


class FSL2Adapter(BackendL2Adapter):
    """The `fs` kind: an FSBackend behind the standard L2 stack."""

    backend: FSBackend

    def __init__(
        self,
        base_path: str,
        *,
        capacity_bytes: int | None = None,
        use_odirect: bool = False,
        max_workers: int = 4,
        fsync: bool = True,
        metrics: MetricsSink | None = None,
        name: str = KIND,
    ) -> None:
        backend = FSBackend(base_path, capacity_bytes=capacity_bytes, use_odirect=use_odirect, fsync=fsync)
        super().__init__(backend, name=name, max_workers=max_workers, metrics=metrics)

    @property
    def base_path(self) -> str:
        return self.backend.base_path

    def stored_nbytes(self, keys: Sequence[ObjectKey]) -> list[int | None]:
        """KnowsStoredSizes: the backend's answer."""
        return self.backend.stored_nbytes(keys)

    def probe(self) -> None:
        """ProbesBackend: the backend's probe."""
        self.backend.probe()


class _WrongBuffer(Exception):
    """The caller's buffer does not match the stored length; the object itself is fine."""

    def __init__(self, stored: int, given: int) -> None:
        super().__init__(f"stored object is {stored} bytes, buffer is {given}")


def _is_shard(name: str) -> bool:
    return len(name) == 2 and set(name) <= _HEX


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        log.warning("fs L2 adapter: cannot list %s: %s", path, exc)
        return []


def _write_all(fd: int, data: memoryview) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write returned no progress")
        view = view[written:]


def _read_full(fd: int, buffer: memoryview) -> int:
    """Read until `buffer` is full or EOF; the number of bytes read."""
    view = memoryview(buffer).cast("B")
    total = 0
    while total < view.nbytes:
        got = os.readv(fd, [view[total:]])
        if got == 0:
            break
        total += got
    return total


def _read_direct(fd: int, scratch: memoryview) -> int:
    """O_DIRECT read from offset 0 in aligned steps; a short read means end of file."""
    total = 0
    while total < scratch.nbytes:
        got = os.preadv(fd, [scratch[total:]], total)
        total += got
        if got == 0 or got % _ALIGN:
            break
    return total


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- factory


def create_fs_adapter(config: dict[str, Any], services: Any) -> FSL2Adapter:
    """Build an FSL2Adapter from its validated `--l2-adapter` JSON (without `type`)."""
    allowed = {**COMMON_FIELDS, **FS_FIELDS}
    unknown = sorted(set(config) - set(allowed) - {"type"})
    if unknown:
        raise ConfigError(
            f"unknown field(s) for L2 adapter 'fs': {', '.join(unknown)} (accepted: {', '.join(sorted(allowed))})"
        )
    for field_name, fld in FS_FIELDS.items():
        value = config.get(field_name)
        if value is not None and not fld.accepts(value):
            raise ConfigError(
                f"field {field_name!r} of L2 adapter 'fs' must be {fld.type_names()}, got {type(value).__name__}"
            )
    base_path = config.get("base_path")
    if not isinstance(base_path, str) or not base_path.strip():
        raise ConfigError("L2 adapter 'fs' requires field 'base_path' (a non-empty directory path)")
    capacity = config.get("capacity_bytes")
    if capacity is not None and capacity <= 0:
        raise ConfigError(
            f"field 'capacity_bytes' of L2 adapter 'fs' must be positive, got {capacity}"
        )
    workers = config.get("max_workers", 4)
    if workers is None:
        workers = 4
    if not 1 <= workers <= 256:
        raise ConfigError(
            f"field 'max_workers' of L2 adapter 'fs' must be in 1..256, got {workers}"
        )
    if os.path.exists(base_path) and not os.path.isdir(base_path):
        raise ConfigError(
            f"field 'base_path' of L2 adapter 'fs': {base_path!r} exists and is not a directory"
        )
    context = StackContext.of(services, config, KIND)
    try:
        return FSL2Adapter(
            base_path,
            capacity_bytes=capacity,
            use_odirect=bool(config.get("use_odirect") or False),
            max_workers=workers,
            fsync=config.get("fsync", True) is not False,
            metrics=context.metrics,
            name=context.name,
        )
    except OSError as exc:
        raise ConfigError(
            f"field 'base_path' of L2 adapter 'fs': cannot use {base_path!r}: {exc.strerror or exc}"
        ) from None
