"""The typed context a plugin's L2 adapter factory receives from the server."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from lmcache_core.ports import Clock, MetricsSink


@runtime_checkable
class AdapterContext(Protocol):
    """What `factory(config, context)` may rely on for one configured `--l2-adapter`: its
    configured name, its position, the server's clock, metrics sink and state directory.

    The server builds it (a frozen dataclass in the composition root); a test passes any object
    with these members. Read-only: a factory never changes the server through it."""

    @property
    def name(self) -> str:
        """The adapter's configured name (`"name"` field, else its kind): the `adapter` label."""
        ...

    @property
    def index(self) -> int:
        """Its position among the `--l2-adapter` flags, from 0."""
        ...

    @property
    def clock(self) -> Clock:
        """The server's clock (a manual one in tests): TTLs and back-offs read it, not `time`."""
        ...

    @property
    def metrics(self) -> MetricsSink:
        """The server's metrics sink (the standard stack already records every L2 metric)."""
        ...

    @property
    def state_dir(self) -> Path | None:
        """`--state-dir`, where a backend may keep small files that survive a restart."""
        ...
