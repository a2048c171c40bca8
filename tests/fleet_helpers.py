"""Test helpers for the fleet: a ServerControl that records calls, and a coordinator app over the
in-memory store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask

from lmcache_adapters.fleet.memory import MemoryFleetStore
from lmcache_core.clock import ManualClock
from lmcache_core.fleet.model import InstanceInfo, KeyPage
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.fleet.service import FleetService
from lmcache_frontends.coordinator.app import create_coordinator_app
from lmcache_frontends.coordinator.common import CoordinatorContext
from lmcache_frontends.coordinator.config import CoordinatorConfig
from lmcache_frontends.coordinator.runtime import settings_from


class RecordedServers:
    """ServerControl that records deletes and calls and serves canned listings and replies."""

    def __init__(self) -> None:
        self.deletes: list[tuple[str, list[Any]]] = []
        self.calls: list[tuple[str, str, str, Any]] = []
        self.replies: dict[tuple[str, str], tuple[int, Any]] = {}
        self.pages: dict[str, list[KeyPage]] = {}
        self.down: set[str] = set()

    def delete_l2(self, target: InstanceInfo, keys: Sequence[Any]) -> int:
        if target.instance_id in self.down:
            raise ServerUnreachable("down")
        self.deletes.append((target.instance_id, list(keys)))
        return len(keys)

    def list_l2(self, target: InstanceInfo, page_token: str | None, page_size: int) -> KeyPage:
        if target.instance_id in self.down:
            raise ServerUnreachable("down")
        pages = self.pages.get(target.instance_id, [])
        index = int(page_token or 0)
        return pages[index] if index < len(pages) else KeyPage((), None, "fs", False)

    def call(self, target: InstanceInfo, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        if target.instance_id in self.down:
            raise ServerUnreachable("connection refused")
        self.calls.append((target.instance_id, method, path, body))
        return self.replies.get((method, path), (200, {}))


def coordinator_app(config: CoordinatorConfig | None = None) -> tuple[Flask, FleetService, RecordedServers]:
    config = config or CoordinatorConfig(chunk_size=4)
    servers = RecordedServers()
    service = FleetService(MemoryFleetStore(), servers, settings_from(config), clock=ManualClock(wall_start=1_800_000_000.0))
    app = create_coordinator_app(CoordinatorContext(config, service))
    return app, service, servers
