"""The ready line, the ready file and the fleet registration list what each server frontend
reports in `endpoints()`, without the server naming any frontend."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from lmcache_core.plugin import Endpoint, ServerFrontend
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.server import _endpoints, _ready_line, _write_ready_file
from lmcache_frontends.testing import in_memory_stack


class _Frontend:
    def __init__(self, endpoints: Mapping[str, Endpoint]) -> None:
        self._endpoints = endpoints

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def report_status(self) -> dict[str, Any]:
        return {"is_healthy": True}

    def endpoints(self) -> Mapping[str, Endpoint]:
        return self._endpoints


class _Legacy:
    """A plugin's frontend written before endpoints(): start, stop and report_status only."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def report_status(self) -> dict[str, Any]:
        return {"is_healthy": True}


ADMIN: Any = SimpleNamespace(url="http://127.0.0.1:8000")


@pytest.fixture
def stack() -> Iterator[Services]:
    services = in_memory_stack()
    yield services
    services.close()


def test_every_bound_endpoint_shows_in_the_ready_line_in_order(stack: Services) -> None:
    stack.server_frontends["wire"] = _Frontend({"wire": Endpoint("tcp://127.0.0.1:7000", 7000), "wire-ipc": Endpoint(None)})
    stack.server_frontends["legacy"] = _Legacy()  # type: ignore[assignment]
    line = _ready_line("lmcache-server", stack, ADMIN)
    assert line.startswith("lmcache-server ready: admin http://127.0.0.1:8000 (status: http://127.0.0.1:8000/status) "
                           "wire tcp://127.0.0.1:7000 legacy started l1 ")
    assert "wire-ipc" not in line  # not bound: not shown
    assert isinstance(stack.server_frontends["wire"], ServerFrontend)


def test_a_server_without_a_data_path_says_so(stack: Services) -> None:
    assert " data path: not enabled l1 " in _ready_line("lmcache-server", stack, ADMIN)


def test_the_ready_file_has_a_url_per_endpoint_and_the_fleet_a_port_per_tcp_one(stack: Services, tmp_path: Path) -> None:
    stack.server_frontends["wire"] = _Frontend({"wire": Endpoint("tcp://127.0.0.1:7000", 7000), "wire-ipc": Endpoint(None)})
    path = tmp_path / "ready.json"
    _write_ready_file(str(path), stack, ADMIN)
    info = json.loads(path.read_text())
    assert list(info)[:4] == ["pid", "admin_url", "wire_url", "wire_ipc_url"]
    assert (info["wire_url"], info["wire_ipc_url"]) == ("tcp://127.0.0.1:7000", None)
    assert info["l1_capacity_bytes"] == stack.memory_pool.capacity_bytes
    assert {label: e.port for label, e in _endpoints(stack).items()} == {"wire": 7000, "wire-ipc": None}
