"""Runtime L2 reconfiguration routes over a real dax adapter backed by files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from lmcache_adapters.l2.dax import SUPERBLOCK_BYTES
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

SLOT = 8192


def size(slots: int) -> int:
    return SUPERBLOCK_BYTES + slots * SLOT


@pytest.fixture
def dax(tmp_path: Path) -> Iterator[tuple[Services, FlaskClient, Path]]:
    adapter = {"type": "dax", "devices": [{"path": str(tmp_path / "d0"), "size": size(8)}], "slot_bytes": SLOT, "preallocate": False}
    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}', json.dumps(adapter))))
    yield stack, create_app(stack).test_client(), tmp_path
    stack.close()


def test_backends_lists_dax_only_when_a_dax_adapter_exists(dax: Any, client: FlaskClient) -> None:
    _, dax_client, _ = dax
    assert dax_client.get("/reconfigure/backends").get_json() == {"enabled": True, "num_backends": 1, "backends": ["dax"]}
    assert client.get("/reconfigure/backends").get_json() == {"enabled": False, "num_backends": 0, "backends": []}


def test_status_reports_backend_local_indexes_and_devices(dax: Any) -> None:
    _, client, tmp = dax
    body = client.get("/reconfigure/DAX/status").get_json()
    assert (body["enabled"], body["backend"], body["num_adapters"]) == (True, "dax", 1)
    [adapter] = body["adapters"]
    # The dax adapter is the engine's second L2 adapter but the first dax one.
    assert adapter["adapter_index"] == 0 and adapter["l2_index"] == 1
    [device] = adapter["status"]["devices"]
    assert device["device_path"] == str(tmp / "d0") and device["size_bytes"] == size(8)
    unknown = client.get("/reconfigure/nvme/status").get_json()
    assert unknown == {"enabled": False, "backend": "nvme", "num_adapters": 0, "adapters": []}
    assert client.get("/reconfigure/%20/status").status_code == 400


def test_add_resize_remove_change_the_devices(dax: Any) -> None:
    _, client, tmp = dax
    added = client.post("/reconfigure/dax/add", json={"device_path": str(tmp / "d1"), "size": f"{size(4)}b"})
    assert added.status_code == 200, added.get_json()
    assert added.get_json()["operation"] == "add"
    resized = client.post("/reconfigure/dax/Resize", json={"device_path": str(tmp / "d1"), "size": size(6)})
    assert resized.status_code == 200 and resized.get_json()["new_size_bytes"] == size(6)
    removed = client.post("/reconfigure/dax/remove", json={"adapter_index": 0, "device_path": str(tmp / "d0"), "mode": "evict"})
    assert removed.status_code == 200 and removed.get_json()["operation"] == "remove"
    devices = client.get("/reconfigure/dax/status").get_json()["adapters"][0]["status"]["devices"]
    active = [d["device_path"] for d in devices if d["state"] == "active"]
    assert active == [str(tmp / "d1")]


@pytest.mark.parametrize(
    ("operation", "body", "status"),
    [
        ("add", {"device_path": "/x", "size": 1, "colour": "red"}, 422),  # extra field
        ("add", {"device_path": "/x"}, 422),  # missing size
        ("add", {"device_path": "/x", "size": "lots"}, 400),  # invalid size
        ("add", {"device_path": "/x", "size": -4}, 400),
        ("defrag", {}, 400),  # unsupported operation
        ("add", {"adapter_index": 1, "device_path": "/x", "size": 1}, 404),
        ("add", {"adapter_index": "0"}, 422),
    ],
)
def test_bad_requests_get_the_documented_codes(dax: Any, operation: str, body: dict[str, Any], status: int) -> None:
    _, client, _ = dax
    response = client.post(f"/reconfigure/dax/{operation}", json=body)
    assert response.status_code == status, response.get_json()
    assert response.get_json()["error"]


def test_conflict_forbidden_and_not_found_come_from_the_adapter(dax: Any) -> None:
    _, client, tmp = dax
    d0 = str(tmp / "d0")
    assert client.post("/reconfigure/dax/add", json={"device_path": d0, "size": size(8)}).status_code == 409
    assert client.post("/reconfigure/dax/remove", json={"device_path": d0}).status_code == 403  # the last active device
    assert client.post("/reconfigure/dax/remove", json={"device_path": str(tmp / "nope")}).status_code == 404
    assert client.post("/reconfigure/dax/add", data="{", content_type="application/json").status_code == 422
    assert client.post("/reconfigure/dax/add", json=[1]).status_code == 422


def test_routes_are_503_while_starting(dax: Any) -> None:
    services, _, _ = dax
    client = create_app(AdminContext(services.config, services.plugins, services.frontends)).test_client()
    for response in (client.get("/reconfigure/backends"), client.get("/reconfigure/dax/status"), client.post("/reconfigure/dax/add", json={})):
        assert response.status_code == 503


# --------------------------------------------------------------------------- LMCache 0.5.6's routes


def test_the_0_5_6_routes_reconfigure_the_same_adapters(dax: Any) -> None:
    _, client, tmp = dax
    assert client.get("/reconfigure/dax/l2/status").get_json() == client.get("/reconfigure/dax/status").get_json()
    inventory = client.get("/config/adapters").get_json()["adapters"]
    assert [(a["type_name"], a["reconfigurable"]) for a in inventory] == [("mock", False), ("dax", True)]
    path = str(tmp / "d1")
    added = client.post("/reconfigure/dax/l2/add", json={"adapter_index": 0, "device_path": path, "size": f"{size(4)}b"})
    assert added.status_code == 200 and added.get_json()["operation"] == "add", added.get_json()
    resized = client.post("/reconfigure/DAX/l2/resize", json={"device_path": path, "size": size(6)})
    assert resized.status_code == 200 and resized.get_json()["new_size_bytes"] == size(6)
    removed = client.post("/reconfigure/dax/l2/remove", json={"device_path": path, "mode": "evict"})
    assert removed.status_code == 200 and removed.get_json()["state"] == "removed"
    # The adapter's own refusals come through unchanged (here: its last active device).
    last = client.post("/reconfigure/dax/l2/remove", json={"device_path": str(tmp / "d0")})
    assert last.status_code == 403 and "last active device" in last.get_json()["error"]


@pytest.mark.parametrize(
    ("operation", "body", "status", "error"),
    [
        ("add", {"device_path": "/x"}, 422, None),  # size missing: 0.5.6's problem list
        ("add", {"device_path": "/x", "size": 1, "path": "/y"}, 422, None),  # `path` is not 0.5.6's
        ("add", {"device_path": "/x", "size": "lots"}, 400, "size must be a positive integer byte count or a string like '100GiB'"),
        ("status", {}, 400, "unsupported dax reconfigure operation: status"),
        ("add", {"adapter_index": 1, "device_path": "/x", "size": 4096}, 404, "dax adapter not found"),
    ],
)
def test_the_0_5_6_routes_check_bodies_as_0_5_6(dax: Any, operation: str, body: dict[str, Any], status: int, error: str | None) -> None:
    _, client, _ = dax
    reply = client.post(f"/reconfigure/dax/l2/{operation}", json=body)
    assert reply.status_code == status, reply.get_json()
    if error is None:
        assert isinstance(reply.get_json()["detail"], list)
    else:
        assert reply.get_json() == {"error": error}
