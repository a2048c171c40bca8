"""Tensor-handle wrappers engines send in REGISTER_KV_CACHE, and how the server maps them."""

from __future__ import annotations

import logging
import mmap
import os
import stat
import weakref
from collections.abc import Callable, Collection
from typing import Any, ClassVar

import torch

from lmcache_adapters.memory.faultguard import GuardedRange, native_guard

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_MAX_DIMS = 8
_MAX_NAME_BYTES = 255
# dtypes a KV tensor may have (what the allow-list unpickler resolves, too).
ALLOWED_DTYPES = ("float16", "bfloat16", "float32", "float64", "uint8", "int8", "float8_e4m3fn", "float8_e5m2")


class WrapperStateError(ValueError):
    """A tensor-handle wrapper's pickled state is not one we accept (unknown key, wrong type)."""


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


# ---------------------------------------------------------------------------- state values
# Each takes a value from the wire and returns it normalised, or raises WrapperStateError.


def _dtype(value: Any) -> torch.dtype:
    if not isinstance(value, torch.dtype) or str(value).removeprefix("torch.") not in ALLOWED_DTYPES:
        raise WrapperStateError(f"dtype must be one of {', '.join(ALLOWED_DTYPES)}")
    return value


def _dims(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or len(value) > _MAX_DIMS:
        raise WrapperStateError(f"shape and stride must be sequences of at most {_MAX_DIMS} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 48 for v in value):
        raise WrapperStateError("shape and stride must hold non-negative integers")
    return tuple(value)


def _offset(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 48:
        raise WrapperStateError("storage_offset must be a non-negative integer")
    return value


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 48:
        raise WrapperStateError("nbytes must be a positive integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise WrapperStateError("device_uuid must be a short string")
    return value


def _nothing(value: Any) -> None:
    if value is not None:
        raise WrapperStateError("handle must be nil for this wrapper")
    return None


def shm_segment_name(value: Any) -> str:
    """A POSIX shared-memory name from the wire as the one path component it names under
    /dev/shm (`/lmcache_kv_1_0_0` -> `lmcache_kv_1_0_0`). Anything that would name another
    directory, climb out (`..`), or hide a NUL is refused."""
    if not isinstance(value, str):
        raise WrapperStateError("shm_name must be a string")
    name = value[1:] if value.startswith("/") else value
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES
        or not name.isprintable()
    ):
        raise WrapperStateError(f"shm_name {value!r} is not one name under {SHM_DIR}")
    return name


def _cuda_handle(value: Any) -> tuple[Any, ...]:
    """`storage._share_cuda_()`: (device, memory handle, size, offset, ref-counter segment name,
    its offset, event handle, event sync). torch opens the ref-counter segment by name (under
    /dev/shm): it must be one name there, like any shared-memory name from the wire."""
    if not isinstance(value, tuple) or len(value) != 8:
        raise WrapperStateError("CUDA IPC handle must be the 8-tuple of storage._share_cuda_()")
    device, mem, size, offset, ref_file, ref_offset, event, sync = value
    ints = (device, size, offset, ref_offset)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise WrapperStateError("CUDA IPC handle: device, sizes and offsets must be non-negative integers")
    if not all(v is None or (isinstance(v, bytes) and len(v) <= 256) for v in (mem, event)):
        raise WrapperStateError("CUDA IPC handle: memory and event handles must be short bytes or nil")
    if not isinstance(ref_file, bytes) or not isinstance(sync, bool):
        raise WrapperStateError("CUDA IPC handle: the ref-counter name must be bytes, sync a bool")
    try:
        shm_segment_name(ref_file.decode())
    except UnicodeDecodeError:
        raise WrapperStateError("CUDA IPC handle: the ref-counter name is not text") from None
    return value


def _reserved64(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != 64:
        raise WrapperStateError("_ipc_handle_reserved must be 64 bytes")
    return value


StateSchema = dict[str, tuple[Callable[[Any], Any], bool]]
"""Per accepted state key: (its check, whether it is required)."""

_GEOMETRY: StateSchema = {
    "dtype": (_dtype, True),
    "shape": (_dims, True),
    "stride": (_dims, True),
    "storage_offset": (_offset, True),
    "device_uuid": (_text, False),
}


class _SharedTensorWrapper:
    """What every wrapper pickle carries: tensor geometry restored from a plain state dict.

    The state is checked against the class's own schema (known keys, known types) before
    anything is set, through the class (`type(self)`), never through the instance; there is
    no instance `__dict__` (slots), so nothing in the state can shadow a method or the class's
    checks. An instance is usable only once a valid state was applied (`complete`)."""

    __slots__ = ("_complete", "device_uuid", "dtype", "shape", "storage_offset", "stride")
    SCHEMA: ClassVar[StateSchema] = _GEOMETRY

    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int
    device_uuid: str

    def __setstate__(self, state: Any) -> None:
        values = type(self).validated_state(state)
        for name in type(self).all_slots():
            object.__setattr__(self, name, values.get(name))
        _check_geometry(self.shape, self.stride, self.storage_offset, self.dtype)
        type(self).check_extent(self)
        object.__setattr__(self, "_complete", True)

    @classmethod
    def validated_state(cls, state: Any) -> dict[str, Any]:
        """The state's values, each checked by the class's schema; WrapperStateError for an
        unknown or missing key or a value of the wrong type."""
        if not isinstance(state, dict):
            raise WrapperStateError(f"{cls.__name__} state must be a dict")
        unknown = [k for k in state if k not in cls.SCHEMA]
        if unknown:
            raise WrapperStateError(f"{cls.__name__} state has unknown keys {sorted(map(str, unknown))}")
        out: dict[str, Any] = {}
        for name, (check, required) in cls.SCHEMA.items():
            if name in state:
                out[name] = check(state[name])
            elif required:
                raise WrapperStateError(f"{cls.__name__} state lacks {name!r}")
        return out

    @classmethod
    def all_slots(cls) -> list[str]:
        return [n for k in cls.__mro__ for n in getattr(k, "__slots__", ()) if n != "_complete"]

    @classmethod
    def check_extent(cls, obj: _SharedTensorWrapper) -> None:
        """Class-specific checks across fields (none by default)."""

    @property
    def complete(self) -> bool:
        """Whether a valid state was applied (a bare instance from the unpickler is not)."""
        return getattr(self, "_complete", False) is True

    def validate(self) -> None:
        """Raises unless this wrapper went through a valid state (kept for callers)."""
        if not _SharedTensorWrapper.complete.__get__(self):
            raise WrapperStateError(f"{type(self).__name__} has no valid state")

    def _check_geometry(self) -> None:
        _check_geometry(self.shape, self.stride, self.storage_offset, self.dtype)


def open_shm_segment(name: str) -> int:
    """An O_RDWR descriptor of the regular file `name` directly under /dev/shm: opened through a
    descriptor of the directory with O_NOFOLLOW, so no path and no symbolic link can lead
    anywhere else; anything but a regular file is refused."""
    name = shm_segment_name(name)
    dir_fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{SHM_DIR}/{name} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_segment_allowed(name: str, refuse: Collection[tuple[int, int]]) -> None:
    """ValueError when the /dev/shm segment `name` is one of `refuse` (st_dev, st_ino); a name
    that does not exist yet is allowed (torch creates nothing here: it then fails to open it)."""
    if not refuse:
        return
    try:
        fd = open_shm_segment(name)
    except FileNotFoundError:
        return
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if (st.st_dev, st.st_ino) in refuse:
        raise ValueError(f"shm name {name!r} names a segment of the server itself")


class CpuShmTensorWrapper(_SharedTensorWrapper):
    """A CPU tensor in a client-created POSIX shm segment (`--mode cpu --transfer-mode
    lmcache_driven`). Mapped read-write and zero-copy over the client's pages."""

    __slots__ = ("handle", "nbytes", "shm_name")
    SCHEMA: ClassVar[StateSchema] = {
        **_GEOMETRY,
        "shm_name": (shm_segment_name, True),
        "nbytes": (_positive, True),
        "handle": (_nothing, False),
    }

    shm_name: str
    nbytes: int

    @classmethod
    def check_extent(cls, obj: _SharedTensorWrapper) -> None:
        assert isinstance(obj, CpuShmTensorWrapper)
        itemsize = torch.empty((), dtype=obj.dtype).element_size()
        if _span_elements(obj.shape, obj.stride, obj.storage_offset) * itemsize > obj.nbytes:
            raise WrapperStateError("tensor geometry exceeds the shared segment")

    def to_tensor(self, device: Any = None) -> torch.Tensor:
        """shm_open + mmap(nbytes) + as_strided; the mapping lives as long as the tensor."""
        return self.map_segment()[0]

    def map_segment(self, refuse: Collection[tuple[int, int]] = ()) -> tuple[torch.Tensor, GuardedRange]:
        """Map the segment (read-write, zero-copy) and watch it for truncation. `refuse`:
        (st_dev, st_ino) of files that must never be mapped this way (the server's own L1
        segment: a client naming it would have the server copy into other clients' objects)."""
        self.validate()
        fd = open_shm_segment(self.shm_name)
        keep_fd = False
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in refuse:
                raise ValueError(f"shm_name {self.shm_name!r} names a segment of the server itself")
            if st.st_size < self.nbytes:
                raise ValueError(f"shared segment {self.shm_name} is smaller than {self.nbytes} bytes")
            mapping = mmap.mmap(fd, self.nbytes)
            flat = torch.frombuffer(mapping, dtype=torch.uint8)
            guard = GuardedRange(
                flat.data_ptr(), self.nbytes, fd=None if native_guard() else fd, name=f"{SHM_DIR}/{self.shm_name}",
                owner=mapping,
            )
            if not native_guard():
                # The fallback's size checks need the descriptor as long as the mapping lives.
                weakref.finalize(mapping, os.close, fd)
                keep_fd = True
        finally:
            if not keep_fd:
                os.close(fd)
        typed = flat.view(self.dtype)
        return typed.as_strided(self.shape, self.stride, self.storage_offset), guard


class CudaIPCWrapper(_SharedTensorWrapper):
    """A CUDA tensor shared with `storage._share_cuda_()` (vLLM on GPU, `bench --mode gpu`)."""

    __slots__ = ("handle",)
    SCHEMA: ClassVar[StateSchema] = {**_GEOMETRY, "device_uuid": (_text, True), "handle": (_cuda_handle, True)}

    handle: Any

    def to_tensor(self, device: Any = None, refuse: Collection[tuple[int, int]] = ()) -> torch.Tensor:
        """Open the IPC memory on the local GPU whose UUID matches `device_uuid`. `refuse`:
        (st_dev, st_ino) of segments torch must not open as the ref-counter file (the server's
        own L1 segment: torch writes its counters there)."""
        self.validate()
        check_segment_allowed(self.handle[4].decode(), refuse)
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

    __slots__ = ("_ipc_handle_reserved", "_nbytes")
    SCHEMA: ClassVar[StateSchema] = {
        **_GEOMETRY,
        "device_uuid": (_text, True),
        "handle": (_nothing, False),
        "_ipc_handle_reserved": (_reserved64, True),
        "_nbytes": (_positive, True),
    }

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


# ---------------------------------------------------------------------------- 0.5.6 descriptors

DESCRIPTOR_WRAPPERS: dict[str, type[_SharedTensorWrapper]] = {
    "cpu_shm": CpuShmTensorWrapper,
    "cuda": CudaIPCWrapper,
    "cuda_raw": RawCudaIPCWrapper,
}
"""LMCache 0.5.6's tensor-descriptor tags -> the wrapper whose checks and mapping they get."""


def wrapper_from_descriptor(
    kind: str,
    *,
    dtype: str,
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    storage_offset: int,
    device_uuid: str,
    shm_name: str = "",
    nbytes: int = 0,
    cuda_handle: tuple[Any, ...] | None = None,
    ipc_handle: bytes = b"",
) -> CpuShmTensorWrapper | CudaIPCWrapper:
    """The wrapper of a data-only tensor descriptor (LMCache 0.5.6 sends msgpack, no pickle),
    built through the same state schema as an unpickled 0.5.0 wrapper, so it passes exactly the
    same checks (one name under /dev/shm, geometry inside the segment, a well-formed CUDA
    handle). WrapperStateError for a descriptor it does not accept; ValueError for a tag this
    server cannot open (`cuda_vmm`, `musa`, `npu`)."""
    cls = DESCRIPTOR_WRAPPERS.get(kind)
    if cls is None:
        raise ValueError(f"tensor descriptor type {kind!r} is not supported by this server")
    if dtype not in ALLOWED_DTYPES:
        raise WrapperStateError(f"dtype must be one of {', '.join(ALLOWED_DTYPES)}, got {dtype!r}")
    state: dict[str, Any] = {
        "dtype": getattr(torch, dtype), "shape": tuple(shape), "stride": tuple(stride),
        "storage_offset": storage_offset, "device_uuid": device_uuid,
    }
    if cls is CpuShmTensorWrapper:
        state.update(shm_name=shm_name, nbytes=nbytes)
    elif cls is RawCudaIPCWrapper:
        state.update(_ipc_handle_reserved=ipc_handle, _nbytes=nbytes)
    else:
        state["handle"] = cuda_handle
    wrapper = cls.__new__(cls)
    wrapper.__setstate__(state)
    assert isinstance(wrapper, CpuShmTensorWrapper | CudaIPCWrapper)
    return wrapper


def open_shared_tensor(
    wrapper: CpuShmTensorWrapper | CudaIPCWrapper, refuse: Collection[tuple[int, int]] = ()
) -> tuple[torch.Tensor, GuardedRange | None]:
    """Map an engine's shared KV tensor (CPU: its /dev/shm segment, watched for truncation;
    CUDA: the IPC memory on the GPU it names). `refuse`: (st_dev, st_ino) of segments that must
    never be opened this way (the server's own L1 segment)."""
    if isinstance(wrapper, CpuShmTensorWrapper):
        return wrapper.map_segment(refuse)
    if isinstance(wrapper, RawCudaIPCWrapper):
        return wrapper.to_tensor(), None
    return wrapper.to_tensor(refuse=refuse), None
