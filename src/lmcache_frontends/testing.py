"""Helpers for tests of frontends and route plugins: a full in-process stack in one call."""

from __future__ import annotations

from typing import Any

from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_core.clock import ManualClock
from lmcache_core.testing.memory import BytearrayMemoryPool
from lmcache_frontends.bootstrap import Services, bootstrap
from lmcache_frontends.config import ServerConfig

DEFAULT_POOL_BYTES = 16 << 20


def builtin_plugins(*extra: object) -> LMCachePluginManager:
    """A plugin manager with the built-in plugins registered explicitly (no entry-point scan),
    then each of `extra` (plugin objects with hookimpls) in order."""
    import lmcache_adapters.plugin as builtin_adapters
    import lmcache_frontends.plugin as builtin_frontends

    plugins = LMCachePluginManager(load_entrypoints=False)
    plugins.register(builtin_adapters, "builtin_l2_adapters")
    plugins.register(builtin_frontends, "builtin_frontends")
    for i, plugin in enumerate(extra):
        plugins.register(plugin, f"extra_plugin_{i}")
    return plugins


def in_memory_stack(
    config: ServerConfig | None = None, *, pool_bytes: int = DEFAULT_POOL_BYTES, **overrides: Any
) -> Services:
    """`bootstrap()` with a BytearrayMemoryPool, a ManualClock and the built-in plugins unless
    `overrides` says otherwise. The caller closes the returned Services."""
    overrides.setdefault("plugins", builtin_plugins())
    overrides.setdefault("clock", ManualClock())
    overrides.setdefault("memory_pool", BytearrayMemoryPool(pool_bytes))
    return bootstrap(config or ServerConfig(), **overrides)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a test or benchmark that starts a
    process on a port of its own choosing)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_request(url: str, frames: list[bytes], timeout_ms: int = 300) -> list[bytes] | None:
    """Send `frames` on a fresh DEALER connection to a data-path server (a client of its own,
    as an engine would connect) and return the reply's frames, or None when none came within
    `timeout_ms` (the server dropped the request, or the connection)."""
    with RawClient(url) as client:
        return client.request(frames, timeout_ms)


class RawClient:
    """One DEALER connection to a data-path server sending hand-made frames: the server sees
    one client (one identity) across requests, so it recognises the client's protocol from its
    first messages as it would an engine's. A context manager; `close()` ends the connection."""

    def __init__(self, url: str) -> None:
        import zmq

        self._zmq = zmq
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(url)

    def request(self, frames: list[bytes], timeout_ms: int = 300) -> list[bytes] | None:
        """The first reply to `frames` (late replies to earlier requests are dropped first), or
        None when none came within `timeout_ms`."""
        while self._sock.poll(0):
            self._sock.recv_multipart()
        self._sock.send_multipart(frames)
        if not self._sock.poll(timeout_ms):
            return None
        reply: list[bytes] = self._sock.recv_multipart()
        return reply

    def replies(self, timeout_ms: int = 300) -> list[list[bytes]]:
        """Every further reply that arrives within `timeout_ms` of the previous one."""
        out = []
        while self._sock.poll(timeout_ms):
            out.append(self._sock.recv_multipart())
        return out

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- an LMCache 0.5.6 client, frame by frame (docs/protocol.md section 3) -------------------------


def pack(value: Any) -> bytes:
    """One msgpack frame as LMCache 0.5.6 writes it (bytes as bin)."""
    import msgpack

    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def key056(tokens: list[int], request_id: str, *, chunk_size: int, end: int | None = None,
           worker_id: int | None = None, readers: int = 1, model: str = "m") -> bytes:
    """A 0.5.6 key frame (10 fields) over `tokens`, ending at the last whole chunk by default."""
    return pack({
        "model_name": model, "world_size": 1, "worker_id": worker_id, "token_ids": tokens, "start": 0,
        "end": len(tokens) // chunk_size * chunk_size if end is None else end, "request_id": request_id,
        "cache_salt": "", "request_configs": None, "num_kv_readers": readers,
    })


def _descriptor(body: dict[str, Any]) -> Any:
    import msgpack

    return msgpack.ExtType(1, pack(body))


def cpu_shm_descriptor(shm_name: str, nbytes: int, shape: list[int], dtype: str = "float16") -> Any:
    """A 0.5.6 `cpu_shm` tensor descriptor (Ext1) for a C-contiguous tensor at the start of the
    POSIX shared-memory segment `shm_name`."""
    stride = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        stride[i] = stride[i + 1] * shape[i + 1]
    return _descriptor({"type": "cpu_shm", "shm_name": shm_name, "nbytes": nbytes, "version": 1, "metadata": {
        "dtype": dtype, "shape": shape, "stride": stride, "storage_offset": 0, "device_uuid": "cpu"}})


def cuda_descriptor(tensor: Any) -> Any:
    """A 0.5.6 `cuda` tensor descriptor (Ext1) for a CUDA tensor: torch's IPC handle of its
    storage, its view's geometry and its GPU's UUID, as 0.5.6's vLLM connector sends them."""
    from lmcache_frontends.client import cuda_tensor_state

    state = cuda_tensor_state(tensor)
    return _descriptor({"type": "cuda", "version": 1, "handle": list(state.pop("handle")), "metadata": {
        **state, "dtype": str(state["dtype"]).removeprefix("torch."), "shape": list(state["shape"]),
        "stride": list(state["stride"])}})


class Client056:
    """Speaks LMCache 0.5.6 over one DEALER (its own identity), opening as 0.5.6 clients do:
    `get_chunk_size` (ambiguous until the next message, answered as a string), then
    `get_experimental` (decides 0.5.6)."""

    def __init__(self, url: str) -> None:
        self.raw = RawClient(url)
        self.uid = 0
        self._pool: Any = None
        self.chunk_size = int(self.value(21))
        experiments = self.value(32)
        if experiments != []:
            raise AssertionError(f"get_experimental answered {experiments!r}, expected []")

    def key(self, tokens: list[int], request_id: str, **fields: Any) -> bytes:
        return key056(tokens, request_id, chunk_size=self.chunk_size, **fields)

    def pool(self, shm_name: str) -> Any:
        """The shared L1 pool mapped as the engine maps it (/dev/shm/<name>, read-write)."""
        if self._pool is None:
            import mmap
            import os

            fd = os.open(f"/dev/shm/{shm_name}", os.O_RDWR)
            try:
                self._pool = mmap.mmap(fd, os.fstat(fd).st_size)
            finally:
                os.close(fd)
        return self._pool

    def call(self, op: int | str, *payloads: bytes, timeout_ms: int = 5000) -> bytes | None:
        """The response frame (None when the reply has none); AssertionError on no reply or an
        error reply."""
        import msgpack

        self.uid += 1
        reply = self.raw.request([pack(self.uid), pack(op), *payloads], timeout_ms)
        if reply is None:
            raise AssertionError(f"no reply to {op}")
        if reply[0] != pack(self.uid):
            raise AssertionError(f"reply to another request: {reply[0]!r}")
        if reply[1] != pack(op):
            raise AssertionError(f"error reply to {op}: {msgpack.unpackb(reply[1])}")
        return reply[2] if len(reply) > 2 else None

    def value(self, op: int | str, *payloads: bytes) -> Any:
        import msgpack

        frame = self.call(op, *payloads)
        return None if frame is None else msgpack.unpackb(frame)

    def close(self) -> None:
        self.raw.close()
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> Client056:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
