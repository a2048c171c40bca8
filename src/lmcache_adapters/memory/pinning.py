"""Page-locking host memory with CUDA (cudaHostRegister) when CUDA is there, never failing without it."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def cuda_host_register(tensor: torch.Tensor, nbytes: int, what: str) -> tuple[bool, str]:
    """Pin `nbytes` from `tensor`'s first byte so GPU copies are DMA transfers. Returns
    (pinned, note): without CUDA, or when registration fails (logged), (False, why)."""
    try:
        available = torch.cuda.is_available()
    except Exception as exc:  # a broken driver must not stop a CPU-only server
        log.warning("torch.cuda.is_available() failed: %s", exc)
        return False, "CUDA not available"
    if not available:
        return False, "CUDA not available"
    try:
        rt = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        err = rt.cudaHostRegister(tensor.data_ptr(), nbytes, 0)
        if err != rt.cudaError.success:
            raise RuntimeError(rt.cudaGetErrorString(err))
    except Exception as exc:
        log.warning("could not pin %s (%s); continuing unpinned", what, exc)
        return False, f"cudaHostRegister failed: {exc}"
    return True, "cudaHostRegister"


def cuda_host_unregister(tensor: torch.Tensor) -> None:
    """Undo `cuda_host_register` (failures are logged)."""
    try:
        rt = torch.cuda.cudart()  # type: ignore[no-untyped-call]
        err = rt.cudaHostUnregister(tensor.data_ptr())
        if err != rt.cudaError.success:
            log.warning("cudaHostUnregister failed: %s", rt.cudaGetErrorString(err))
    except Exception as exc:
        log.warning("cudaHostUnregister failed: %s", exc)
