"""CoordinatorClient over real HTTP: against our coordinator app (registration, heartbeats,
re-registration after the coordinator forgot it, events applied once, deregistration), against a
0.5.0-style coordinator (L2 events on /l2/events), and with no coordinator at all (bounded buffer,
counted drops, never an exception)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response, jsonify, request

from lmcache_adapters.fleet.client import CoordinatorClient
from lmcache_adapters.fleet.servers import HttpServerControl
from lmcache_core.fleet.model import CapacityDecl, InstanceInfo, Tier
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.fleet.service import FleetService
from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.server import AdminServer


def key(i: int) -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, "m", 0x01000100)




def client_for(url: str, **kw: Any) -> CoordinatorClient:
    return CoordinatorClient(url, instance_id="srv", advertise_ip="127.0.0.1", http_port=8123, heartbeat_interval=0.05, flush_interval=0.02, **kw)


def test_register_report_and_leave(coordinator: tuple[str, FleetService]) -> None:
    url, service = coordinator
    client = client_for(url, incarnation=7)
    client.events.declare([CapacityDecl(Tier.L1, "dram", False, 1 << 30, 0)])
    client.events.store(Tier.L1, "dram", [key(1), key(2)], [100, 100])
    client.events.store(Tier.L2, "s3", [key(1)], [100], shared=True)
    client.events.access(Tier.L1, [key(1)])
    client.start()
    try:
        poll_until(lambda: service.usage().placements[Tier.L1] == 2 and service.usage().placements[Tier.L2] == 1, interval=0.02)
        assert service.store.capacities()["srv"][0].capacity_bytes == 1 << 30
        record = service.lookup([key(1)])[0]
        assert record is not None and record.access_count == 1 and {p.incarnation for p in record.placements} == {7}
        # The coordinator forgets the server (its store was wiped, say): the next heartbeat
        # gets a 404 and the client registers again.
        service.store.deregister("srv")
        poll_until(lambda: service.store.instance("srv") is not None and client.registrations >= 2, interval=0.02)
        assert client.status()["registered"] and client.status()["dropped_events"] == 0
    finally:
        client.stop()
    assert service.store.instance("srv") is None
    assert service.usage().placements[Tier.L1] == 0  # leaving takes its L1 with it


def test_a_down_coordinator_costs_drops_not_errors() -> None:
    client = client_for("http://127.0.0.1:9", max_buffered_events=3, timeout_s=0.2)
    client.events.store(Tier.L1, "dram", [key(i) for i in range(5)], [1] * 5)
    assert client.register() is False and client.flush() == 0
    status = client.status()
    assert status["dropped_events"] == 2 and status["buffered_events"] == 3 and status["failed_calls"] >= 1
    assert status["last_error"] and status["is_healthy"]
    client.stop()


def test_a_050_coordinator_gets_l2_events_on_its_route() -> None:
    received: list[dict[str, Any]] = []
    app = Flask("coordinator-050")

    @app.post("/instances")
    def register() -> Response:
        return jsonify({"instance_id": request.get_json()["instance_id"], "re_registered": False})

    @app.post("/l2/events")
    def l2_events() -> Response:
        received.append(request.get_json())
        return jsonify({"recorded": len(request.get_json()["events"])})

    server = AdminServer(app, "127.0.0.1", 0, threads=1)
    server.start()
    client = client_for(server.url)
    try:
        assert client.register()
        client.events.store(Tier.L1, "dram", [key(1)], [10])
        client.events.store(Tier.L2, "fs", [key(1), key(2)], [10, 20])
        client.events.access(Tier.L2, [key(1)])
        client.events.delete(Tier.L2, "fs", [key(2)])
        assert client.flush() == 4
        assert client.legacy and client.status()["unreported_events"] == 1
        assert [e["type"] for r in received for e in r["events"]] == ["store", "store", "lookup", "delete"]
        assert received[0]["events"][1]["bytes"] == 20 and received[0]["seq"] == 1
    finally:
        client.stop()
        server.stop()


def test_server_control_falls_back_to_050_routes() -> None:
    calls: list[str] = []
    app = Flask("server-050")

    @app.delete("/l2")
    def delete_l2() -> Response:
        calls.append("DELETE /l2")
        return jsonify({"requested": len(request.get_json()["keys"]), "ok": True, "deleted": 1})

    @app.get("/l2/keys")
    def l2_keys() -> Response:
        calls.append("GET /l2/keys")
        return jsonify({"adapter": "FS", "entries": [{"key": key(3).to_json(), "size_bytes": 5}, {"key": {"bad": 1}}], "next_page_token": None})

    server = AdminServer(app, "127.0.0.1", 0, threads=1)
    server.start()
    control = HttpServerControl(timeout_s=2)
    target = InstanceInfo("old", "127.0.0.1", server.port)
    try:
        assert control.delete_l2(target, [key(1), key(2)]) == 1
        page = control.list_l2(target, None, 100)
        assert page.entries == ((key(3), 5),) and page.backend == "l2" and page.shared
        assert calls == ["DELETE /l2", "GET /l2/keys"]
        with pytest.raises(ServerUnreachable):
            control.delete_l2(InstanceInfo("gone", "127.0.0.1", 9), [key(1)])
    finally:
        server.stop()
