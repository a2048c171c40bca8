"""Device-DAX devices and regular files standing in for them: identity, geometry, open and map.

Shared by the `dax` L2 adapter and the L1 DAX pool, so both tiers judge a path the same way
(two paths naming one device are one device; a character device is sized from sysfs, a file
from its length)."""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass

from lmcache_core.errors import ConfigError

SYSFS_DAX_ROOT = "/sys/bus/dax/devices"
DEFAULT_DAX_ALIGN = 2 * 1024 * 1024

__all__ = [
    "DEFAULT_DAX_ALIGN",
    "SYSFS_DAX_ROOT",
    "DeviceInfo",
    "dax_geometry",
    "device_identity",
    "extend_file",
    "inspect_device",
    "map_device",
    "open_device",
    "unmap_device",
]


def dax_geometry(path: str) -> tuple[int, int]:
    """(size, alignment) in bytes of a Device-DAX character device, from sysfs."""
    name = os.path.basename(os.path.realpath(path))
    base = os.path.join(SYSFS_DAX_ROOT, name)
    try:
        with open(os.path.join(base, "size")) as f:
            size = int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"device_path {path!r} is a character device but {base}/size is unreadable: {exc}") from None
    align = DEFAULT_DAX_ALIGN
    try:
        with open(os.path.join(base, "align")) as f:
            align = int(f.read().strip()) or DEFAULT_DAX_ALIGN
    except (OSError, ValueError):
        pass  # older kernels have no align attribute; 2 MiB is the devdax default
    return size, align


def device_identity(st: os.stat_result) -> tuple[int, int, int]:
    """What names one device whatever path reaches it: (1, rdev, 0) for a character device,
    (0, st_dev, st_ino) for a file (hard links and symbolic links compare equal)."""
    if stat.S_ISCHR(st.st_mode):
        return (1, st.st_rdev, 0)
    return (0, st.st_dev, st.st_ino)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A path judged before it is opened: what it is and how many bytes will be mapped."""

    path: str
    exists: bool
    is_dax: bool
    align: int
    dax_size: int | None
    size: int
    file_size: int | None


def inspect_device(path: str, size: int | None, *, where: str) -> DeviceInfo:
    """Judge `path` (made absolute): a Device-DAX character device (sized from sysfs; `size`
    None = the whole device, rounded down to its alignment), a regular file (`size` required)
    or a path that does not exist yet. ConfigError naming `where` for anything else."""
    path = os.path.abspath(path)
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot stat {path!r}: {exc}") from None
    is_dax = st is not None and stat.S_ISCHR(st.st_mode)
    if st is not None and not is_dax and not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{where}: {path!r} is neither a Device-DAX character device nor a regular file")
    align = DEFAULT_DAX_ALIGN
    dax_size: int | None = None
    if is_dax:
        dax_size, align = dax_geometry(path)
        if size is None:
            size = dax_size - dax_size % align
    elif size is None:
        raise ConfigError(f"{where}: size is required for a regular file ({path!r})")
    file_size = st.st_size if st is not None and not is_dax else None
    return DeviceInfo(path, st is not None, is_dax, align, dax_size, size, file_size)


def open_device(info: DeviceInfo, *, where: str, create: bool) -> int:
    """Open the device read-write (close-on-exec); a missing regular file is created (mode
    0600) when `create`, else refused."""
    flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
    if not info.is_dax:
        parent = os.path.dirname(info.path)
        if not os.path.isdir(parent):
            raise ConfigError(f"{where}: directory {parent!r} of {info.path!r} does not exist")
        if create:
            flags |= os.O_CREAT
        elif not info.exists:
            raise ConfigError(f"{where}: {info.path!r} does not exist")
    try:
        return os.open(info.path, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot open {info.path!r} read-write: {exc}") from None


def extend_file(fd: int, path: str, size: int, *, preallocate: bool) -> None:
    """Make the file at least `size` bytes long; with `preallocate` its blocks are reserved
    (a store into a hole of a sparse file on a full filesystem would SIGBUS instead of fail)."""
    current = os.fstat(fd).st_size
    if current >= size:
        return
    try:
        if preallocate:
            os.posix_fallocate(fd, current, size - current)
        else:
            os.ftruncate(fd, size)
    except OSError as exc:
        raise ConfigError(f"cannot extend {path!r} to {size} bytes: {exc}") from None


def map_device(fd: int, path: str, size: int, *, where: str) -> mmap.mmap:
    """Map `size` bytes of the open device shared and read-write."""
    try:
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot map {size} bytes of {path!r}: {exc}") from None


def unmap_device(mm: mmap.mmap | None, fd: int, *, flush: bool = True) -> str | None:
    """Flush (optionally), unmap and close; the error text when unmapping failed (a live view
    keeps the mapping until it is garbage-collected), else None. The descriptor is always
    closed."""
    error = None
    if mm is not None:
        try:
            if flush:
                mm.flush()
            mm.close()
        except (OSError, ValueError, BufferError) as exc:
            error = str(exc) or type(exc).__name__
    if fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass
    return error
