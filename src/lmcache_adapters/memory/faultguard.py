"""Copies over shared-memory mappings that another process may truncate, without dying of SIGBUS.

A same-uid client can truncate the L1 pool segment (its name is in the engine-driven
registration reply) or its own registered KV segment at any moment; the next access past the
new end of file raises SIGBUS, which kills the whole server. `GuardedRange` watches one mapped
range. With the native guard (the optional `_faultguard` extension, built by setuptools when a
C compiler is present) a fault inside a watched range is caught: the faulting pages are
replaced with anonymous zero pages, the fault is counted and the copy finishes. The copy site
compares `fault_count()` before and after and fails the request (`SegmentFaultError`); the
owner then recovers or drops the mapping. Nothing is added to the copy itself: one counter
read before and one after.

Without the extension the guard falls back to checking the file size (fstat) before each
copy: that catches a truncation done before the copy starts, but one racing the copy still
kills the process. `native_guard()` says which one is active (also in /status).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any

log = logging.getLogger(__name__)

try:  # the optional native part (see setup.py)
    from lmcache_adapters.memory import _faultguard as _native
except ImportError:  # pragma: no cover - built wherever a C compiler exists
    _native = None

__all__ = ["GuardedRange", "SegmentFaultError", "fault_count", "native_guard", "restore_mapping"]

_PAGE = 4096

_install_lock = threading.Lock()
_installed = False


class SegmentFaultError(RuntimeError):
    """A copy touched shared memory that was truncated under it (the request fails)."""


def native_guard() -> bool:
    """Whether SIGBUS in a guarded range is caught (else: size checks before each copy)."""
    return _native is not None


def _install() -> None:
    global _installed
    if _native is None or _installed:
        return
    with _install_lock:
        if not _installed:
            _native.install()
            _installed = True


def fault_count() -> int:
    """Faults caught in every guarded range so far (0 without the native guard)."""
    return int(_native.total_faults()) if _native is not None else 0


class GuardedRange:
    """One mapped range `[address, address + length)` of the file `fd` (kept open only for the
    fallback's size checks; the caller owns it), watched while `owner` (the object keeping the
    mapping alive, e.g. its mmap) lives."""

    def __init__(self, address: int, length: int, *, fd: int | None, name: str, owner: Any = None) -> None:
        self.address = address
        self.length = length
        self.name = name
        self._fd = fd
        self._slot: tuple[int, int] | None = None
        if _native is not None:
            _install()
            self._slot = tuple(_native.register(address, length))  # type: ignore[assignment]
            if owner is not None:
                # The mapping goes away with its owner: stop watching those addresses then.
                weakref.finalize(owner, _unregister, self._slot)

    @property
    def native(self) -> bool:
        return self._slot is not None

    def faults(self) -> int:
        """Faults caught in this range so far (0 without the native guard)."""
        if self._slot is None or _native is None:
            return 0
        return max(0, int(_native.faults(*self._slot)))

    def check_size(self, needed: int | None = None) -> None:
        """Fallback only (no native guard): SegmentFaultError when the file is now shorter than
        the mapping (or `needed` bytes). A no-op with the native guard, which catches it."""
        if self._slot is not None or self._fd is None:
            return
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise SegmentFaultError(f"cannot check {self.name}: {exc}") from None
        if size < (self.length if needed is None else needed):
            raise SegmentFaultError(f"{self.name} was truncated to {size} bytes (mapped: {self.length})")

    def take_lowest_fault(self) -> int | None:
        """Offset (from the range's start) of the lowest page patched since the last call, or
        None; the next call answers only faults after this one."""
        if self._slot is None or _native is None:
            return None
        lowest = int(_native.take_lowest(*self._slot))
        return None if lowest < 0 else lowest

    def remap(self, fd: int, offset: int, start: int, length: int) -> None:
        """Map `length` bytes of `fd` from `offset` at `address + start` again (after a caught
        fault replaced them with anonymous pages)."""
        if _native is None:
            raise SegmentFaultError("no native guard: nothing was patched")
        _native.remap(self.address + start, length, fd, offset)

    def close(self) -> None:
        if self._slot is not None:
            _unregister(self._slot)
            self._slot = None


def _unregister(slot: tuple[int, int]) -> None:
    if _native is not None:
        _native.unregister(*slot)


def restore_mapping(guard: GuardedRange, fd: int, length: int, *, resizable: bool = True) -> int | None:
    """After a fault or a truncation of the file mapped at `guard` (its first `length` bytes of
    `fd`): give the file its length back, map it again over the pages the guard patched and
    reserve its blocks again. Returns the offset (from the range's start) from which bytes were
    lost, or None when nothing was wrong. `resizable` False: a device whose size never changes
    (Device-DAX): only patched pages count as lost, nothing is truncated or reserved."""
    lowest = guard.take_lowest_fault()
    size = os.fstat(fd).st_size if resizable else length
    if lowest is None and size >= length:
        return None
    lost_from = min(size, length) // _PAGE * _PAGE
    if lowest is not None:
        lost_from = min(lost_from, lowest)
    if size < length:
        os.ftruncate(fd, length)
    if lowest is not None and native_guard():
        guard.remap(fd, lowest, lowest, length - lowest)
    if resizable:
        try:
            os.posix_fallocate(fd, lost_from, length - lost_from)
        except OSError as exc:
            log.error("re-reserving %s after a truncation failed: %s", guard.name, exc)
    return lost_from
