"""Large CPU copies through glibc's memmove, which streams past the CPU caches (non-temporal
stores) from a size threshold on.

A copy into memory that is not in cache first reads every destination line (read for
ownership); a non-temporal store skips that read, so a big copy moves ~1.5x the bytes per
second. glibc's memcpy/memmove switch to non-temporal stores above
`glibc.cpu.x86_non_temporal_threshold`, by default 3/4 of what it takes for the shared cache
size (48 MiB on the test VM: never, for the 0.1–2 MiB pieces of a KV transfer); torch's copy
kernels never do. The threshold is a glibc tunable, read once when a process starts, so
`lmcache-server` re-executes itself once with it set (`--nt-copy-threshold`), and the
transfers here send each contiguous piece at least that large to memmove.

Measured on the 2-vCPU test VM, 4 x 32 MiB, 2 copy threads, against a 2-thread torch memcpy of
the same bytes: gather 1.11x and scatter 1.13x with the threshold at 256 KiB, 0.69x / 0.84x
with torch's copies."""

from __future__ import annotations

import ctypes
import os
import platform
import sys

import torch

__all__ = ["TUNABLE", "active_threshold", "copy_contiguous", "non_temporal_threshold", "tunables_with_threshold"]

TUNABLE = "glibc.cpu.x86_non_temporal_threshold"
# glibc refuses values below this (its tunable's minimum): the setting would be ignored.
MIN_THRESHOLD = 0x4040

_memmove = ctypes.memmove  # a foreign call: the GIL is released while it copies


def supported() -> bool:
    """Whether this process can use the tunable: glibc on x86-64 Linux."""
    return (
        sys.platform.startswith("linux")
        and platform.machine() in ("x86_64", "AMD64")
        and platform.libc_ver()[0] == "glibc"
    )


def non_temporal_threshold(env: dict[str, str] | None = None) -> int | None:
    """The non-temporal threshold this process was started with (from `GLIBC_TUNABLES`), or
    None when it was not set (glibc's default then applies, which large-cache hosts put far
    above any transfer piece)."""
    tunables = (os.environ if env is None else env).get("GLIBC_TUNABLES", "")
    for item in tunables.split(":"):
        name, _, value = item.partition("=")
        if name.strip() == TUNABLE:
            try:
                threshold = int(value.strip(), 0)
            except ValueError:
                return None
            return threshold if threshold >= MIN_THRESHOLD else None
    return None


def tunables_with_threshold(current: str, threshold: int) -> str:
    """`GLIBC_TUNABLES` with the non-temporal threshold set (other tunables kept)."""
    kept = [item for item in current.split(":") if item and item.partition("=")[0].strip() != TUNABLE]
    return ":".join([*kept, f"{TUNABLE}={threshold:#x}"])


# Read once: the environment a process starts with is what glibc read.
_THRESHOLD = non_temporal_threshold() if supported() else None


def active_threshold() -> int | None:
    """The threshold from which transfers copy pieces with memmove in this process (None: never)."""
    return _THRESHOLD


def copy_contiguous(dst: torch.Tensor, src: torch.Tensor, threshold: int | None = None) -> bool:
    """Copy `src` into `dst` with memmove when both are contiguous CPU tensors of the same dtype
    and size, at least the process's non-temporal threshold long. False (nothing copied) when
    that does not apply: the caller copies with torch."""
    limit = _THRESHOLD if threshold is None else threshold
    if limit is None:
        return False
    nbytes = dst.numel() * dst.element_size()
    if (
        nbytes < limit
        or dst.dtype != src.dtype
        or dst.shape != src.shape
        or dst.device.type != "cpu"
        or src.device.type != "cpu"
        or not dst.is_contiguous()
        or not src.is_contiguous()
    ):
        return False
    _memmove(dst.data_ptr(), src.data_ptr(), nbytes)
    return True
