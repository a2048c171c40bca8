"""The typed context a long-running frontend's factory receives (`registry.add_server`): what a
data path needs of the server, as one Protocol a plugin types its factory against; and the
`ServerFrontend` the factory returns, which reports the endpoints it bound."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from lmcache_core.clients import ClientLimits
from lmcache_core.engine import CacheEngine
from lmcache_core.inspection import RequestInspector
from lmcache_core.lookup import DataPath
from lmcache_core.periodic import PeriodicThread, Summary
from lmcache_core.ports import Clock, MemoryPool, MetricsSink
from lmcache_core.readiness import ReadinessRegistry


@runtime_checkable
class ServerContext(Protocol):
    """What the server hands a frontend it starts, all built and non-optional: the engine, its L1
    pool, the data path (sessions, lookups, leases) and its client caps, the clock and metrics,
    the inspection and readiness services it reports into, and supervised periodic threads.
    `config` is the server's configuration (the frontends ring's `ServerConfig`)."""

    config: Any
    clock: Clock
    metrics: MetricsSink
    engine: CacheEngine
    memory_pool: MemoryPool
    limits: ClientLimits
    data_path: DataPath
    inspector: RequestInspector
    readiness: ReadinessRegistry

    def run_periodic(
        self, name: str, target: Callable[[], Summary], *, interval_seconds: float, level: str = "high"
    ) -> PeriodicThread:
        """Run `target` every `interval_seconds`, supervised, stopped when the server stops."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """One address a server frontend serves on: its URL as clients dial it (None: the frontend
    has this kind of endpoint but did not bind it, e.g. no `--ipc-path`) and the TCP port it
    really bound (port 0 resolved; None for a non-TCP endpoint)."""

    url: str | None
    port: int | None = None


@runtime_checkable
class ServerFrontend(Protocol):
    """What a server frontend's factory returns: the server starts it after the engine and
    stops it first, shows `report_status()` in `/status`, and reports `endpoints()` where an
    operator or a script finds it (the ready line, `--ready-file`, the fleet registration)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def report_status(self) -> dict[str, Any]: ...

    def endpoints(self) -> Mapping[str, Endpoint]:
        """The endpoints by label, in the order they are shown (`{"zmq": Endpoint("tcp://...",
        5555)}`); valid once started. The ready file has `<label>_url` for each (`-` -> `_`),
        the fleet registration `<label>_port` for each with a port."""
        ...
