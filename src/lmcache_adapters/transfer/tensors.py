"""Tensor-handle wrappers engines send in REGISTER_KV_CACHE, and how the server maps them."""

from __future__ import annotations

import logging
import mmap
import os
from typing import Any

import torch

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_MAX_DIMS = 8


def _check_geometry(shape: Any, stride: Any, storage_offset: Any, dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype):
        raise ValueError("dtype must be a torch dtype")
    for name, seq in (("shape", shape), ("stride", stride)):
        if not isinstance(seq, tuple | list | torch.Size) or len(seq) > _MAX_DIMS:
            raise ValueError(f"{name} must be a short sequence")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seq):
            raise ValueError(f"{name} must hold non-negative integers")
    if len(shape) != len(stride):
        raise ValueError("shape and stride differ in length")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise ValueError("storage_offset must be a non-negative integer")


def _span_elements(shape: Any, stride: Any, storage_offset: int) -> int:
    if any(s == 0 for s in shape):
        return storage_offset
    return storage_offset + 1 + sum((s - 1) * st for s, st in zip(shape, stride, strict=True))


class _SharedTensorWrapper:
    """What every wrapper pickle carries: tensor geometry restored from a plain state dict."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    device_uuid: str

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise ValueError("wrapper state must be a dict")
        self.__dict__.update(state)

    def _check_geometry(self) -> None:
        self.shape = tuple(self.shape)
        self.stride = tuple(self.stride)
        _check_geometry(self.shape, self.stride, self.storage_offset, self.dtype)


class CpuShmTensorWrapper(_SharedTensorWrapper):
    """A CPU tensor in a client-created POSIX shm segment (`--mode cpu --transfer-mode
    lmcache_driven`). Mapped read-write and zero-copy over the client's pages."""

    shm_name: str
    nbytes: int

    def validate(self) -> None:
        name = getattr(self, "shm_name", None)
        if not isinstance(name, str) or not name.strip("/") or "/" in name.strip("/") or "\0" in name:
            raise ValueError(f"bad shm_name {name!r}")
        nbytes = getattr(self, "nbytes", None)
        if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
            raise ValueError("nbytes must be a positive integer")
        self._check_geometry()
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        if _span_elements(self.shape, self.stride, self.storage_offset) * itemsize > nbytes:
            raise ValueError("tensor geometry exceeds the shared segment")

    def to_tensor(self, device: Any = None) -> torch.Tensor:
        """shm_open + mmap(nbytes) + as_strided; the mapping lives as long as the tensor."""
        path = os.path.join(SHM_DIR, self.shm_name.strip("/"))
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < self.nbytes:
                raise ValueError(f"shared segment {path} is smaller than {self.nbytes} bytes")
            mapping = mmap.mmap(fd, self.nbytes)
        finally:
            os.close(fd)
        flat = torch.frombuffer(mapping, dtype=torch.uint8)
        typed = flat.view(self.dtype)
        return typed.as_strided(self.shape, self.stride, self.storage_offset)


class CudaIPCWrapper(_SharedTensorWrapper):
    """A CUDA tensor shared with `storage._share_cuda_()` (vLLM on GPU, `bench --mode gpu`)."""

    handle: Any

    def validate(self) -> None:
        self._check_geometry()
        handle = getattr(self, "handle", None)
        if not isinstance(handle, tuple) or len(handle) != 8:
            raise ValueError("CUDA IPC handle must be the 8-tuple of storage._share_cuda_()")
        if not isinstance(getattr(self, "device_uuid", None), str):
            raise ValueError("device_uuid must be a string")

    def to_tensor(self, device: Any = None) -> torch.Tensor:
        """Open the IPC memory on the local GPU whose UUID matches `device_uuid`."""
        index = find_cuda_device(self.device_uuid)
        (_dev, mem_handle, size_bytes, offset_bytes, ref_file, ref_offset, event_handle, sync) = self.handle
        with torch.cuda.device(index):
            storage = torch.UntypedStorage._new_shared_cuda(
                index, mem_handle, size_bytes, offset_bytes, ref_file, ref_offset, event_handle, sync
            )
            t = torch.empty((0,), dtype=self.dtype, device=f"cuda:{index}")
            t.set_(storage, self.storage_offset, self.shape, self.stride)
        return t


class RawCudaIPCWrapper(CudaIPCWrapper):
    """TRT-LLM's raw cudaIpcMemHandle variant (64 reserved bytes instead of a torch handle)."""

    def validate(self) -> None:
        self._check_geometry()
        raw = getattr(self, "_ipc_handle_reserved", None)
        if not isinstance(raw, bytes) or len(raw) != 64:
            raise ValueError("_ipc_handle_reserved must be 64 bytes")

    def to_tensor(self, device: Any = None) -> torch.Tensor:
        # torch has no public way to open a raw cudaIpcMemHandle as a storage; say so plainly
        # instead of registering a context whose transfers would fail later.
        raise RuntimeError("TRT-LLM raw CUDA IPC handles (RawCudaIPCWrapper) are not supported yet")


def find_cuda_device(device_uuid: str) -> int:
    """Index of the local GPU whose UUID is `device_uuid` (with or without the `GPU-` prefix)."""
    if not torch.cuda.is_available():
        raise RuntimeError("a CUDA IPC handle was sent but this server has no CUDA device")
    want = device_uuid.lower().removeprefix("gpu-")
    for i in range(torch.cuda.device_count()):
        uuid = str(torch.cuda.get_device_properties(i).uuid).lower().removeprefix("gpu-")
        if uuid == want:
            return i
    raise RuntimeError(f"no local GPU has UUID {device_uuid}")
