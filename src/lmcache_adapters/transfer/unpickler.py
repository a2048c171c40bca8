"""The allow-list unpickler: the only way anything from the wire is unpickled."""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch

from lmcache_adapters.transfer.tensors import (
    ALLOWED_DTYPES,
    CpuShmTensorWrapper,
    CudaIPCWrapper,
    RawCudaIPCWrapper,
    WrapperStateError,
)

# Wire names (LMCache 0.5.0 module paths) -> our classes with the same pickled state.
WRAPPER_CLASSES: dict[tuple[str, str], type] = {
    ("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper"): CudaIPCWrapper,
    ("lmcache.v1.multiprocess.custom_types", "RawCudaIPCWrapper"): RawCudaIPCWrapper,
    ("lmcache.v1.platform.cpu.shm", "CpuShmTensorWrapper"): CpuShmTensorWrapper,
}



class UnpicklingRejectedError(pickle.UnpicklingError):
    """A pickle named something outside the allow-list."""


def _load_storage_from_bytes(data: bytes) -> Any:
    # The nested legacy torch.save stream goes through torch's own weights-only unpickler,
    # never through plain pickle.
    if not isinstance(data, bytes | bytearray):
        raise UnpicklingRejectedError("storage payload must be bytes")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the three tensor-handle wrapper classes and a few torch dtypes; with
    `allow_tensors`, also the names pickle-mode CPU tensors need. Everything else is rejected."""

    def __init__(self, file: io.BytesIO, *, allow_tensors: bool = False) -> None:
        super().__init__(file)
        self._allow_tensors = allow_tensors

    def find_class(self, module: str, name: str) -> Any:
        cls = WRAPPER_CLASSES.get((module, name))
        if cls is not None:
            return cls
        if module == "torch" and name in ALLOWED_DTYPES:
            return getattr(torch, name)
        if self._allow_tensors:
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return torch._utils._rebuild_tensor_v2
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return _load_storage_from_bytes
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
        raise UnpicklingRejectedError(f"refusing to unpickle {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnpicklingRejectedError("persistent ids are not accepted here")


def restricted_loads(data: bytes, *, allow_tensors: bool = False) -> Any:
    """Unpickle `data` through the allow-list (raises UnpicklingRejectedError otherwise)."""
    return RestrictedUnpickler(io.BytesIO(data), allow_tensors=allow_tensors).load()


def load_wrapper(data: bytes) -> CpuShmTensorWrapper | CudaIPCWrapper | RawCudaIPCWrapper:
    """One Ext1 body of REGISTER_KV_CACHE: a pickled tensor-handle wrapper. Its state went
    through its class's schema while unpickling (`__setstate__`); an instance that never got
    a valid state (no BUILD, a REDUCE of the class) is refused here. The type is checked
    exactly: the allow-list resolves only these classes, and nothing else may pass."""
    try:
        obj = restricted_loads(data)
    except (WrapperStateError, ValueError, TypeError) as exc:
        if isinstance(exc, UnpicklingRejectedError):
            raise
        raise UnpicklingRejectedError(f"bad tensor-handle wrapper: {exc}") from None
    if type(obj) not in (CpuShmTensorWrapper, CudaIPCWrapper, RawCudaIPCWrapper):
        raise UnpicklingRejectedError(f"expected a tensor-handle wrapper, got {type(obj).__name__}")
    if not obj.complete:
        raise UnpicklingRejectedError(f"{type(obj).__name__} arrived without a valid state")
    return obj


def load_cpu_tensors(data: bytes) -> list[torch.Tensor]:
    """Pickle-mode payload: a list of CPU tensors."""
    obj = restricted_loads(data, allow_tensors=True)
    if not isinstance(obj, list) or not all(isinstance(t, torch.Tensor) for t in obj):
        raise UnpicklingRejectedError("expected a list of tensors")
    return obj


def dumps_cpu_tensors(tensors: list[torch.Tensor]) -> bytes:
    """Pickle-mode payload as 0.5.0 clients send and expect it."""
    return pickle.dumps([t.detach().cpu().contiguous() for t in tensors])
