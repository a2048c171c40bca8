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
