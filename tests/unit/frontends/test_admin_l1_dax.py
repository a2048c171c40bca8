"""The /reconfigure/dax/l1/* routes over an L1 on a Device-DAX stand-in: what they do to L1,
their scopes, their audit records, and /status and /openapi.json around them. (Status codes and
body shapes against the 0.5.6 reference: tests/compat; a real server process: tests/e2e.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from test_admin_056_routes import audit_records

from lmcache_adapters.memory.dax_pool import DaxMemoryPool
from lmcache_adapters.testing.memory_contract import device_file
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

ADMIN = {"Authorization": "Bearer adm-0123456789abcdef-secret"}
READ = {"Authorization": "Bearer rd-0123456789abcdef-secret"}
MiB = 1 << 20


def device(path: Path, size: int = 4 * MiB) -> str:
    return device_file(path, size)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Services]:
    config = ServerConfig(
        admin_token=ADMIN["Authorization"][7:], read_token=READ["Authorization"][7:], audit_log=str(tmp_path / "audit.jsonl")
    )
    services = in_memory_stack(config, memory_pool=DaxMemoryPool(device(tmp_path / "a.img"), 4 * MiB))
    yield services
    services.close()


@pytest.fixture
def client(stack: Services) -> FlaskClient:
    return create_app(stack).test_client()


def store(stack: Services, n: int, start: int = 0) -> list[ObjectKey]:
    assert stack.storage is not None
    l1 = stack.storage.l1
    keys = [ObjectKey(i.to_bytes(16, "big"), "m", kv_rank_for(1, 0)) for i in range(start, start + n)]
    assert all(h is not None for _, h in l1.reserve_write(keys, [MiB] * n))
    l1.finish_write(keys)
    return keys


def test_add_grows_l1_status_lists_it_remove_drains_its_objects(client: FlaskClient, stack: Services, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    added = client.post("/reconfigure/dax/l1/add", json={"device_path": b, "size": "4MiB"}, headers=ADMIN)
    assert added.status_code == 200 and added.get_json()["added"]["device_path"] == b
    assert stack.storage is not None and stack.storage.l1.usage_bytes()[1] == 8 * MiB
    primary = store(stack, 4)
    in_b = store(stack, 2, start=100)
    arenas = client.get("/reconfigure/dax/l1/status", headers=READ).get_json()["arenas"]
    assert [(a["device_path"], a["active_allocations"], a["is_primary"]) for a in arenas] == [
        (str(tmp_path / "a.img"), 4, True), (b, 2, False)
    ]
    status = client.get("/status", headers=READ).get_json()["storage_manager"]
    assert status["l1_capacity_bytes_by_backend"] == {"devdax": 8 * MiB}
    assert [a["device_path"] for a in status["l1_manager"]["pool"]["arenas"]] == [str(tmp_path / "a.img"), b]

    removed = client.post("/reconfigure/dax/l1/remove", json={"device_path": b}, headers=ADMIN)
    assert removed.status_code == 200
    assert removed.get_json()["removed"]["arenas"][0]["state"] == "removed"
    l1 = stack.storage.l1
    assert not any(l1.contains(k) for k in in_b) and all(l1.contains(k) for k in primary)
    assert l1.usage_bytes() == (4 * MiB, 4 * MiB)
    assert len(client.get("/reconfigure/dax/l1/status", headers=READ).get_json()["arenas"]) == 1


def test_remove_waits_for_locked_objects_then_force_drops_them(client: FlaskClient, stack: Services, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    client.post("/reconfigure/dax/l1/add", json={"device_path": b, "size": 4 * MiB}, headers=ADMIN)
    store(stack, 4)
    locked = store(stack, 1, start=100)
    assert stack.storage is not None
    stack.storage.l1.reserve_read(locked, promise=True)
    body = {"device_path": b, "timeout_seconds": 0}
    draining = client.post("/reconfigure/dax/l1/remove", json=body, headers=ADMIN).get_json()["removed"]["arenas"][0]
    assert draining["state"] == "draining" and draining["active_allocations"] == 1
    assert stack.storage.l1.contains(locked[0])
    forced = client.post("/reconfigure/dax/l1/remove", json={**body, "force": True}, headers=ADMIN)
    assert forced.get_json()["removed"]["arenas"][0]["state"] == "removed"
    assert not stack.storage.l1.contains(locked[0])


def test_scopes_and_audit(client: FlaskClient, tmp_path: Path) -> None:
    b = device(tmp_path / "b.img")
    assert client.get("/reconfigure/dax/l1/status").status_code == 401
    assert client.post("/reconfigure/dax/l1/add", json={"device_path": b, "size": 4096}, headers=READ).status_code == 403
    assert client.post("/reconfigure/dax/l1/add", json={"device_path": b, "size": 4096}, headers=ADMIN).status_code == 200
    assert client.post("/reconfigure/dax/l1/add", json={"device_path": b, "size": 4096}, headers=ADMIN).status_code == 409
    assert client.post("/reconfigure/dax/l1/remove", json={"device_path": "/nope"}, headers=ADMIN).status_code == 404
    assert client.post("/reconfigure/dax/l1/remove", json={"device_path": b}, headers=ADMIN).status_code == 200
    client.get("/reconfigure/dax/l1/status", headers=READ)
    records = [(r["action"], r["outcome"], r["status"]) for r in audit_records(tmp_path)]
    assert records == [
        ("auth", "denied: unauthenticated", 401),
        ("auth", "denied: insufficient scope", 403),
        ("reconfigure-l1", "ok", 200),
        ("reconfigure-l1", "failed: 409", 409),
        ("reconfigure-l1", "failed: 404", 404),
        ("reconfigure-l1", "ok", 200),
    ]
    assert audit_records(tmp_path)[2]["details"]["device_path"] == b


@pytest.mark.parametrize(
    ("body", "status", "problem"),
    [
        ({"device_path": "x", "force": "maybe"}, 422, "bool_parsing"),
        ({"device_path": "x", "timeout_seconds": 301}, 422, "less_than_equal"),
        ({"device_path": "x", "timeout_seconds": -1}, 422, "greater_than_equal"),
        ({"device_path": "x", "mode": "evict"}, 422, "enum"),
    ],
)
def test_our_remove_fields_are_validated_as_0_5_6_validates_its_own(
    client: FlaskClient, body: dict[str, Any], status: int, problem: str
) -> None:
    reply = client.post("/reconfigure/dax/l1/remove", json=body, headers=ADMIN)
    assert reply.status_code == status and reply.get_json()["detail"][0]["type"] == problem


def test_the_openapi_document_describes_the_l1_routes(client: FlaskClient) -> None:
    paths = client.get("/openapi.json", headers=READ).get_json()["paths"]
    assert set(paths["/reconfigure/dax/l1/status"]["get"]["responses"]) >= {"200", "409", "503"}
    remove = paths["/reconfigure/dax/l1/remove"]["post"]
    assert {"force", "timeout_seconds"} <= set(remove["requestBody"]["content"]["application/json"]["schema"]["properties"])
    assert set(remove["responses"]) >= {"200", "404", "409", "422", "503"}
