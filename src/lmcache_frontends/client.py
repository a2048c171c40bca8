"""Engine client library: speaks LMCache 0.5.0's multiprocess protocol to an lmcache server."""

from __future__ import annotations

import math
import mmap
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import torch
import zmq

from lmcache_core.hashing import TokenBytes
from lmcache_core.lookup import RequestKey
from lmcache_frontends.zmq.protocol import (
    EXT_DEVICE_IPC_WRAPPER,
    NO_RESPONSE,
    PreEncoded,
    RequestType,
    decode,
    encode,
    encode_key,
    key_frame_buffer,
)

__all__ = [
    "EngineDrivenContext", "LMCacheClient", "RequestKey", "Transfer", "record_cuda_event", "make_key",
    "share_cpu_tensor", "share_cuda_tensor", "wait_cuda_event",
]

CPU_STUB_EVENT = b"stub_ipc_handle"
_TOKEN_ARRAY_CACHE = 16
_FRAMES_PER_TOKENS = 4  # frames of one token object kept (lookup and free, store, retrieve)
_SHM_DIR = "/dev/shm"


def make_key(
    model_name: str,
    token_ids: Sequence[int],
    request_id: str,
    *,
    start: int = 0,
    end: int | None = None,
    world_size: int = 1,
    worker_id: int | None = None,
    cache_salt: str = "",
) -> RequestKey:
    """A key over `[start, end)` of `token_ids` (the whole sequence from token 0: a list, a
    numpy array or a tensor of ids in [0, 2^32)). `end` defaults to the number of tokens (it must
    be a chunk multiple). The ids are validated and encoded once here (ValueError for a bad
    one); every request that sends the key reuses them."""
    tokens = TokenBytes.from_tokens(token_ids)
    return RequestKey(
        model_name=model_name,
        world_size=world_size,
        worker_id=worker_id,
        token_ids=tokens,
        start=start,
        end=len(tokens) // 4 if end is None else end,
        request_id=request_id,
        cache_salt=cache_salt,
    )


def _with_worker(key: RequestKey, worker_id: int | None) -> RequestKey:
    if key.worker_id == worker_id:
        return key
    return RequestKey(key.model_name, key.world_size, worker_id, key.token_ids, key.start, key.end,
                      key.request_id, key.cache_salt)


@dataclass
class EngineDrivenContext:
    """An engine-driven registration: the server's L1 pool mapped into this process."""

    instance_id: int
    shm_name: str
    pool_size: int
    pool: torch.Tensor | None
    object_shape: list[int]
    dtype: torch.dtype

    @property
    def pickle_mode(self) -> bool:
        return self.pool is None

    def raw_slot(self, slot: dict[str, Any]) -> torch.Tensor:
        """The slot's bytes as a uint8 tensor over the pool (zero copy)."""
        assert self.pool is not None
        return self.pool[slot["offset"] : slot["offset"] + slot["length"]]

    def slot_tensor(self, slot: dict[str, Any]) -> torch.Tensor:
        """A zero-copy tensor over one slot of the pool."""
        assert self.pool is not None
        raw = self.pool[slot["offset"] : slot["offset"] + slot["length"]]
        return raw.view(getattr(torch, slot["dtype"])).view(slot["shape"])


def share_cpu_tensor(shape: Sequence[int], dtype: torch.dtype, shm_name: str) -> tuple[torch.Tensor, bytes]:
    """Create a CPU tensor in a new POSIX shm segment and the Ext1 body that registers it
    (a `CpuShmTensorWrapper` pickle). The caller unlinks `/dev/shm/<shm_name>` when done."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = max(1, math.prod(shape) * itemsize)
    path = os.path.join(_SHM_DIR, shm_name.strip("/"))
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        mapping = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    tensor = torch.frombuffer(mapping, dtype=torch.uint8).view(dtype).view(tuple(shape))
    stride = list(tensor.stride())
    state = {
        "shm_name": "/" + shm_name.strip("/"),
        "nbytes": nbytes,
        "handle": None,
        "dtype": dtype,
        "shape": list(shape),
        "stride": stride,
        "storage_offset": 0,
        "device_uuid": "cpu",
    }
    return tensor, _wrapper_pickle("lmcache.v1.platform.cpu.shm", "CpuShmTensorWrapper", state)


def share_cuda_tensor(tensor: torch.Tensor) -> bytes:
    """The Ext1 body that registers a CUDA tensor as LMCache 0.5.0's engines do (a
    `CudaIPCWrapper` pickle around `storage._share_cuda_()`). The server opens it in its own
    process (CUDA IPC cannot open memory in the process that exported it)."""
    return _wrapper_pickle("lmcache.v1.multiprocess.custom_types", "CudaIPCWrapper", cuda_tensor_state(tensor))


def cuda_tensor_state(tensor: torch.Tensor) -> dict[str, Any]:
    """What a CUDA tensor handle carries on either wire: torch's 8-tuple IPC handle of the
    tensor's storage, the view's geometry, and the UUID of its GPU."""
    if tensor.device.type != "cuda":
        raise ValueError(f"a CUDA IPC handle needs a CUDA tensor, not one on {tensor.device}")
    return {
        "handle": tensor.untyped_storage()._share_cuda_(),
        "dtype": tensor.dtype,
        "shape": tuple(tensor.shape),
        "stride": tuple(tensor.stride()),
        "storage_offset": int(tensor.storage_offset()),
        "device_uuid": str(torch.cuda.get_device_properties(tensor.device).uuid),
    }


def record_cuda_event(device: torch.device | int | None = None) -> torch.cuda.Event:
    """An interprocess CUDA event recorded on `device`'s current stream: what an engine passes
    to `store_transfer`/`retrieve_transfer` so the server's copies wait for the engine's own
    work on the blocks. The client sends its IPC handle and keeps the event alive until the
    reply (CUDA leaves an imported event undefined once its exporter destroyed it)."""
    event = torch.cuda.Event(interprocess=True)
    event.record(torch.cuda.current_stream(_cuda_device(device)))
    return event


def wait_cuda_event(handle: bytes, device: torch.device | int | None = None) -> None:
    """Make `device`'s current stream wait for the server's event (a STORE/RETRIEVE reply's
    handle), then wait for that stream: the server's copies of the blocks are done."""
    dev = _cuda_device(device)
    torch.cuda.Event.from_ipc_handle(dev, handle).wait(torch.cuda.current_stream(dev))
    torch.cuda.current_stream(dev).synchronize()


def _event_handle(event: bytes | torch.cuda.Event) -> bytes:
    return event if isinstance(event, bytes) else bytes(event.ipc_handle())


def _cuda_device(device: torch.device | int | None) -> torch.device:
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", device) if isinstance(device, int) else device


@dataclass(frozen=True)
class Transfer:
    """A server-driven STORE/RETRIEVE reply: the server's event handle (the client's stub echoed
    on CPU) and whether every chunk was transferred."""

    event: bytes
    ok: bool


def _wrapper_pickle(module: str, name: str, state: dict[str, Any]) -> bytes:
    # NEWOBJ(class) + BUILD(state), naming the class by its 0.5.0 path without importing it.
    body = pickle.dumps(state, protocol=4)
    assert body[:2] == b"\x80\x04" and body[-1:] == b"."
    body = body[2:-1]
    if body[:1] == b"\x95":  # FRAME opcode + 8-byte length: optional, dropped
        body = body[9:]

    def short_unicode(s: str) -> bytes:
        raw = s.encode()
        return b"\x8c" + bytes([len(raw)]) + raw

    head = b"\x80\x04" + short_unicode(module) + short_unicode(name) + b"\x93" + b")" + b"\x81"
    return head + body + b"b."


class _KeyFrame(PreEncoded):
    """A cached key frame (sent as it is) and where its token array lies in it."""

    __slots__ = ("array",)

    def __init__(self, buffer: np.ndarray[Any, Any], array: slice) -> None:
        super().__init__(memoryview(buffer))  # type: ignore[arg-type]  # numpy arrays are buffers
        self.array = self.buffer[array]


class LMCacheClient:
    """One DEALER connection. Calls are synchronous and thread-safe (one in flight at a time).

    Typical engine-driven use: `register_engine_driven(...)`, then per request `lookup` →
    `wait_for_lookup` → `retrieve_engine_driven` (hits) → `store_engine_driven` (misses) →
    `end_session`. See docs/data-path.md for a runnable example."""

    def __init__(self, url: str = "tcp://127.0.0.1:5555", *, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(url)
        # Opens as LMCache 0.5.0's own clients do, with GET_CHUNK_SIZE (not waited for: its
        # reply is dropped as a late one): the server recognises this client's protocol from
        # its first message, so even a first NOOP is answered as 0.5.0's (docs/protocol.md).
        self._sock.send_multipart([encode(0), encode(int(RequestType.GET_CHUNK_SIZE))])
        self._uid = 1
        self._lock = threading.Lock()
        self._chunk_size: int | None = None
        self._mappings: list[mmap.mmap] = []
        self._token_arrays: OrderedDict[int, tuple[TokenBytes, dict[tuple[Any, ...], _KeyFrame]]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LMCacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw calls ---------------------------------------------------------------------

    def _key_frame(self, key: RequestKey, worker_id: int | None) -> Any:
        """The key's frame for `worker_id`. A request sends the same key several times (lookup,
        free, retrieve, store): for the last few token objects, found by identity (hashing
        128 KB of tokens would cost more than encoding them), the last few frames are kept, and
        a new frame of known tokens copies their encoded array from one of them. Each frame is
        one numpy buffer sent as it is: a 32k-token key is 160 KB, and every bytes copy or
        fresh allocation of that size showed in the round trip."""
        key = _with_worker(key, worker_id)
        tokens = key.token_ids
        if not isinstance(tokens, TokenBytes):
            return encode_key(key)
        fields = (key.model_name, key.world_size, key.worker_id, key.start, key.end, key.request_id, key.cache_salt)
        array_from: memoryview | None = None
        with self._cache_lock:
            # The entry holds the token object itself, so its id cannot be reused while cached.
            entry = self._token_arrays.get(id(tokens))
            if entry is not None and entry[0] is tokens:
                self._token_arrays.move_to_end(id(tokens))
                frame = entry[1].get(fields)
                if frame is not None:
                    return frame
                earlier = next(iter(entry[1].values()), None)
                array_from = earlier.array if earlier is not None else None
            else:
                entry = None
        frame = _KeyFrame(*key_frame_buffer(key, tokens, array_from))
        with self._cache_lock:
            if entry is None or self._token_arrays.get(id(tokens)) is not entry:
                entry = (tokens, {})
                self._token_arrays[id(tokens)] = entry
            entry[1][fields] = frame
            while len(entry[1]) > _FRAMES_PER_TOKENS:
                del entry[1][next(iter(entry[1]))]
            self._token_arrays.move_to_end(id(tokens))
            while len(self._token_arrays) > _TOKEN_ARRAY_CACHE:
                self._token_arrays.popitem(last=False)
        return frame

    def call(self, rtype: RequestType, *payloads: Any, timeout: float | None = None) -> Any:
        """Send one request and return its decoded response (None for types without one).
        Raises TimeoutError when no reply arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self._lock:
            uid = self._uid
            self._uid += 1
            uid_frame = encode(uid)
            self._sock.send_multipart([uid_frame, encode(int(rtype)), *[encode(p) for p in payloads]])
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._sock.poll(max(1, int(remaining * 1000))):
                    raise TimeoutError(f"{rtype.name}: no reply from {self.url} in time")
                frames = self._sock.recv_multipart()
                if len(frames) < 2 or frames[0] != uid_frame:
                    continue  # a late reply to an earlier, timed-out call
                if rtype in NO_RESPONSE or len(frames) < 3:
                    return None
                return decode(frames[2])

    # -- control -----------------------------------------------------------------------

    def get_chunk_size(self) -> int:
        if self._chunk_size is None:
            self._chunk_size = int(self.call(RequestType.GET_CHUNK_SIZE))
        return self._chunk_size

    def ping(self, instance_id: int | None = None) -> bool:
        return bool(self.call(RequestType.PING, instance_id))

    def noop(self) -> str:
        return str(self.call(RequestType.NOOP))

    def clear(self) -> None:
        self.call(RequestType.CLEAR)

    # -- lookup & sessions -------------------------------------------------------------

    def lookup(self, key: RequestKey, tp_size: int = 1) -> None:
        """Start a lookup (and L2 prefetch) job under `key.request_id`."""
        self.call(RequestType.LOOKUP, self._key_frame(key, None), tp_size)

    def query_prefetch_status(self, request_id: str) -> int | None:
        return self.call(RequestType.QUERY_PREFETCH_STATUS, request_id)

    def wait_prefetch_status(self, request_id: str, timeout: float = 5.0) -> int | None:
        return self.call(RequestType.WAIT_PREFETCH_STATUS, request_id, float(timeout), timeout=timeout + self.timeout)

    def wait_for_lookup(self, request_id: str, timeout: float = 5.0) -> int:
        """Hit chunks of the lookup job (blocks until its prefetch finished, or 0 on timeout)."""
        hits = self.wait_prefetch_status(request_id, timeout)
        return 0 if hits is None else int(hits)

    def lookup_hits(self, request_id: str) -> int | None:
        return self.call(RequestType.QUERY_PREFETCH_LOOKUP_HITS, request_id)

    def free_lookup_locks(self, key: RequestKey, tp_size: int = 1) -> None:
        self.call(RequestType.FREE_LOOKUP_LOCKS, self._key_frame(key, key.worker_id), tp_size)

    def end_session(self, request_id: str) -> None:
        self.call(RequestType.END_SESSION, request_id)

    # -- engine-driven -----------------------------------------------------------------

    def register_engine_driven(
        self,
        instance_id: int,
        *,
        model_name: str,
        num_layers: int,
        hidden_dim_size: int,
        dtype: torch.dtype = torch.float16,
        world_size: int = 1,
        block_size: int = 16,
        use_mla: bool = False,
    ) -> EngineDrivenContext:
        """Register a CPU engine; maps the server's L1 pool (empty name = pickle mode)."""
        dtype_str = str(dtype).removeprefix("torch.")
        reply = self.call(
            RequestType.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT,
            {
                "instance_id": instance_id,
                "model_name": model_name,
                "world_size": world_size,
                "block_size": block_size,
                "num_layers": num_layers,
                "hidden_dim_size": hidden_dim_size,
                "dtype_str": dtype_str,
                "use_mla": use_mla,
            },
        )
        chunk = self.get_chunk_size()
        shape = [num_layers, chunk, hidden_dim_size] if use_mla else [2, num_layers, chunk, hidden_dim_size]
        pool = None
        if reply["shm_name"]:
            fd = os.open(os.path.join(_SHM_DIR, reply["shm_name"]), os.O_RDWR)
            try:
                mapping = mmap.mmap(fd, reply["pool_size"])
            finally:
                os.close(fd)
            self._mappings.append(mapping)
            pool = torch.frombuffer(mapping, dtype=torch.uint8)
        return EngineDrivenContext(instance_id, reply["shm_name"], reply["pool_size"], pool, shape, dtype)

    def unregister_engine_driven(self, instance_id: int) -> None:
        self.call(RequestType.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, instance_id)

    def store_engine_driven(self, ctx: EngineDrivenContext, key: RequestKey, chunks: Sequence[torch.Tensor]) -> bool:
        """Store one tensor per chunk of `[key.start, key.end)` (each of `ctx.object_shape`);
        chunks the server already holds are skipped. True when the commit succeeded."""
        wire = self._key_frame(key, key.worker_id or 0)
        iid = ctx.instance_id
        if ctx.pickle_mode:
            data = pickle.dumps([c.detach().cpu().contiguous() for c in chunks])
            return bool(self.call(RequestType.COMMIT_STORE, wire, iid, data))
        reply = self.call(RequestType.PREPARE_STORE, wire, iid)
        context = reply.get("context", {})
        for slot, index in zip(context.get("slots", []), context.get("chunk_indices", []), strict=True):
            ctx.slot_tensor(slot).copy_(chunks[index].view(slot["shape"]))
        return bool(self.call(RequestType.COMMIT_STORE, wire, iid, b""))

    def store_engine_driven_with(
        self, ctx: EngineDrivenContext, key: RequestKey, fill: Callable[[int, torch.Tensor], None]
    ) -> bool:
        """Zero-copy store: `fill(chunk_index, slot)` writes chunk `chunk_index` (relative to
        `key.start`) into `slot`, a uint8 tensor over the server's L1 object. Shared-memory mode only."""
        if ctx.pickle_mode:
            raise RuntimeError("the server chose pickle mode; use store_engine_driven")
        wire = self._key_frame(key, key.worker_id or 0)
        reply = self.call(RequestType.PREPARE_STORE, wire, ctx.instance_id)
        context = reply.get("context", {})
        try:
            for slot, index in zip(context.get("slots", []), context.get("chunk_indices", []), strict=True):
                fill(index, ctx.raw_slot(slot))
        finally:
            # Always commit (an empty commit is harmless) so the reservation never waits for its TTL.
            committed = bool(self.call(RequestType.COMMIT_STORE, wire, ctx.instance_id, b""))
        return committed or not context.get("slots")

    def retrieve_engine_driven_with(
        self, ctx: EngineDrivenContext, key: RequestKey, drain: Callable[[int, torch.Tensor], None]
    ) -> bool:
        """Zero-copy retrieve: `drain(chunk_index, slot)` reads each chunk from the server's L1
        object. False when the chunks are not (all) in L1."""
        if ctx.pickle_mode:
            raise RuntimeError("the server chose pickle mode; use retrieve_engine_driven")
        wire = self._key_frame(key, key.worker_id or 0)
        reply = self.call(RequestType.PREPARE_RETRIEVE, wire, ctx.instance_id)
        try:
            if not reply.get("success"):
                return False
            for index, slot in enumerate(reply["context"]["slots"]):
                drain(index, ctx.raw_slot(slot))
            return True
        finally:
            self.call(RequestType.COMMIT_RETRIEVE, wire, ctx.instance_id)

    def retrieve_engine_driven(self, ctx: EngineDrivenContext, key: RequestKey) -> list[torch.Tensor] | None:
        """The chunks of `[key.start, key.end)` (a LOOKUP must have locked them); None on a miss."""
        wire = self._key_frame(key, key.worker_id or 0)
        reply = self.call(RequestType.PREPARE_RETRIEVE, wire, ctx.instance_id)
        try:
            if not reply.get("success"):
                return None
            if ctx.pickle_mode:
                from lmcache_adapters.transfer.unpickler import load_cpu_tensors

                return load_cpu_tensors(reply["data"])
            return [ctx.slot_tensor(slot).clone() for slot in reply["context"]["slots"]]
        finally:
            if not ctx.pickle_mode:
                self.call(RequestType.COMMIT_RETRIEVE, wire, ctx.instance_id)

    # -- server-driven -----------------------------------------------------------------

    def register_kv_cache(
        self,
        instance_id: int,
        wrappers: Sequence[bytes],
        *,
        model_name: str,
        world_size: int = 1,
        engine_type: str = "vllm",
        layout_hints: dict[str, Any] | None = None,
        engine_group_infos: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Share per-layer KV tensors (Ext1 bodies from `share_cpu_tensor` or CUDA IPC wrappers)."""
        self.call(
            RequestType.REGISTER_KV_CACHE,
            instance_id,
            [msgpack.ExtType(EXT_DEVICE_IPC_WRAPPER, w) for w in wrappers],
            model_name,
            world_size,
            engine_type,
            dict(layout_hints or {}),
            list(engine_group_infos),
        )

    def unregister_kv_cache(self, instance_id: int) -> None:
        self.call(RequestType.UNREGISTER_KV_CACHE, instance_id)

    def store(self, key: RequestKey, instance_id: int, block_ids: Sequence[Sequence[int]],
              event: bytes = CPU_STUB_EVENT) -> bool:
        """Server-driven store: the server gathers `block_ids` (one list per group) into L1."""
        return self.store_transfer(key, instance_id, block_ids, event).ok

    def retrieve(self, key: RequestKey, instance_id: int, block_ids: Sequence[Sequence[int]],
                 skip_first_n_tokens: int = 0, event: bytes = CPU_STUB_EVENT) -> bool:
        """Server-driven retrieve: the server scatters the chunks into `block_ids`."""
        return self.retrieve_transfer(key, instance_id, block_ids, skip_first_n_tokens, event).ok

    def store_transfer(self, key: RequestKey, instance_id: int, block_ids: Sequence[Sequence[int]],
                       event: bytes | torch.cuda.Event = CPU_STUB_EVENT) -> Transfer:
        """`store`, with the server's event handle: on CUDA, `event` is an interprocess event
        recorded after the blocks were written (`record_cuda_event()`), and the blocks may be
        overwritten once the returned event completed (`wait_cuda_event()`)."""
        wire = self._key_frame(key, key.worker_id or 0)
        reply = self.call(RequestType.STORE, wire, instance_id, [list(b) for b in block_ids], _event_handle(event))
        return Transfer(bytes(reply[0]), bool(reply[1]))

    def retrieve_transfer(self, key: RequestKey, instance_id: int, block_ids: Sequence[Sequence[int]],
                          skip_first_n_tokens: int = 0, event: bytes | torch.cuda.Event = CPU_STUB_EVENT) -> Transfer:
        """`retrieve`, with the server's event handle: on CUDA the blocks hold the chunks once
        the returned event completed (`wait_cuda_event()`)."""
        wire = self._key_frame(key, key.worker_id or 0)
        reply = self.call(RequestType.RETRIEVE, wire, instance_id, [list(b) for b in block_ids],
                          _event_handle(event), skip_first_n_tokens)
        return Transfer(bytes(reply[0]), bool(reply[1]))
