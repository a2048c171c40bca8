"""LMCache 0.5.6's admin routes over the real app: what they do to the cache (one delete across
L1 and L2, clear, warm prefetch), their audit records and scopes, and their answers while the
engine starts. (Status codes and body shapes against the 0.5.6 reference: tests/compat.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient

from lmcache_core.hashing import TokenHasher
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.l1.results import OpResult
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.kv_caches import DataPathKVCaches

ADMIN_SECRET = "adm-0123456789abcdef-secret"
READ_SECRET = "rd-0123456789abcdef-secret"
OBJ = 4096
CHUNK = 256


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key(i: int) -> ObjectKey:
    return ObjectKey(i.to_bytes(16, "big"), "m", kv_rank_for(1, 0))



@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Services]:
    config = ServerConfig(
        l2_adapters=('{"type": "mock"}',),
        admin_token=ADMIN_SECRET,
        read_token=READ_SECRET,
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    services = in_memory_stack(config)
    yield services
    services.close()


@pytest.fixture
def client(stack: Services) -> FlaskClient:
    return create_app(stack).test_client()


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def put(stack: Services, keys: list[ObjectKey]) -> None:
    """In L1 and, once written back, in L2 (the write-back unlocks them when done)."""
    assert stack.storage is not None
    l1, l2 = stack.storage.l1, stack.storage.l2_adapters[0].adapter
    assert all(r is OpResult.SUCCESS for r, _ in l1.reserve_write(keys, [OBJ] * len(keys)))
    l1.finish_write(keys)
    poll_until(lambda: all(l2.list_keys(100).keys.count(k) for k in keys))
    poll_until(lambda: not any(i is not None and i.locked for i in l1.inspect(keys)))


def register_model(stack: Services) -> None:
    server = SimpleNamespace(
        data_path=SimpleNamespace(object_size=lambda m, ws: OBJ if (m, ws) == ("m", 1) else None),
        instances=lambda: {},
    )
    assert stack.engine is not None
    stack.engine.kv_caches.add_source(DataPathKVCaches(server))


# --------------------------------------------------------------------------- what they do


def test_delete_cache_objects_spans_l1_and_l2_and_is_audited(stack: Services, client: FlaskClient, tmp_path: Path) -> None:
    keys = [key(1), key(2)]
    put(stack, keys)
    assert stack.storage is not None
    locked = stack.storage.l1.reserve_read([key(1)])  # an engine reads key 1 from L1
    assert locked[0][0] is OpResult.SUCCESS
    body = {"keys": [k.to_json() for k in keys], "tier": "all"}
    reply = client.delete("/cache/objects", json=body, headers=bearer(ADMIN_SECRET))
    # key 1 stays in L1 (locked, not forced), both go from L2, key 2 from L1
    assert (reply.status_code, reply.get_json()) == (200, {"deleted": 3, "skipped": 1, "ok": True})
    assert stack.storage.l1.contains(key(1)) and not stack.storage.l1.contains(key(2))
    forced = client.delete("/cache/objects", json={**body, "force": True}, headers=bearer(ADMIN_SECRET))
    assert forced.get_json() == {"deleted": 1, "skipped": 0, "ok": True}
    assert stack.storage.l1.object_count() == 0
    record = audit_records(tmp_path)[-1]
    assert (record["action"], record["outcome"], record["who"]) == ("cache-objects-delete", "ok", "admin-token")
    assert record["details"]["l1_deleted"] == 1 and record["details"]["force"] is True and record["details"]["tier"] == "all"


def test_seed_and_0_5_6_deletes_are_one_operation(stack: Services, client: FlaskClient) -> None:
    put(stack, [key(1)])
    seed = client.delete("/l2", json={"keys": [key(1).to_json()]}, headers=bearer(ADMIN_SECRET))
    assert seed.get_json() == {"requested": 1, "adapter": "MockL2Adapter", "ok": True, "deleted": 1}
    again = client.delete("/cache/objects", json={"keys": [key(1).to_json()]}, headers=bearer(ADMIN_SECRET))
    assert again.get_json() == {"deleted": 0, "skipped": 0, "ok": True}  # gone from L2 already
    assert stack.storage is not None and stack.storage.l1.contains(key(1))  # L1 untouched by tier l2


def test_cache_clear_keeps_locked_objects_unless_forced(stack: Services, client: FlaskClient, tmp_path: Path) -> None:
    put(stack, [key(1), key(2)])
    assert stack.storage is not None
    stack.storage.l1.reserve_read([key(1)])
    reply = client.post("/cache/clear", headers=bearer(ADMIN_SECRET))
    assert (reply.status_code, reply.get_json()) == (200, {"status": "ok", "cleared": {"tier": "l1"}})
    assert stack.storage.l1.contains(key(1)) and not stack.storage.l1.contains(key(2))
    assert audit_records(tmp_path)[-1]["details"]["removed_objects"] == 1
    client.post("/cache/clear", json={"force": True}, headers=bearer(ADMIN_SECRET))
    assert stack.storage.l1.object_count() == 0
    # The seed route is the same clear, always forced.
    put(stack, [key(3)])
    stack.storage.l1.reserve_read([key(3)])
    assert client.post("/clear-cache", headers=bearer(ADMIN_SECRET)).status_code == 200
    assert stack.storage.l1.object_count() == 0


def test_warm_prefetch_through_the_routes(stack: Services, client: FlaskClient, tmp_path: Path) -> None:
    register_model(stack)
    tokens = list(range(2 * CHUNK))
    hashes = TokenHasher("blake3", CHUNK).chunk_hashes(tokens)
    keys = [ObjectKey(h, "m", kv_rank_for(1, 0)) for h in hashes]
    assert stack.storage is not None
    l2 = stack.storage.l2_adapters[0].adapter
    l2.submit_store(keys, [memoryview(b"k" * OBJ)] * 2).result(timeout=5)
    reply = client.post("/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": tokens}, headers=bearer(ADMIN_SECRET))
    assert reply.status_code == 202
    request_id = reply.get_json()["request_id"]

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/cache/prefetches/{request_id}", headers=bearer(READ_SECRET)).get_json()
        return None if body["status"] == "pending" else body

    poll = poll_until(finished, what="the warm prefetch to finish")
    assert poll == {"request_id": request_id, "status": "completed", "found_keys": 2, "total_keys": 2}
    assert all(stack.storage.l1.is_readable(k) for k in keys)
    assert client.get(f"/cache/prefetches/{request_id}", headers=bearer(READ_SECRET)).status_code == 404
    record = audit_records(tmp_path)[-1]
    assert (record["action"], record["outcome"], record["details"]["request_id"]) == ("cache-prefetch", "submitted", request_id)


# --------------------------------------------------------------------------- scopes and audit


def test_reads_need_read_state_changes_need_admin(client: FlaskClient) -> None:
    reads = [("GET", "/cache/objects", None), ("GET", "/config", None), ("GET", "/config/adapters", None),
             ("POST", "/cache/checksums", {"block_ids": [1], "chunk_size": 1}),
             ("GET", "/reconfigure/dax/l2/status", None), ("GET", "/cache/prefetches/x", None)]
    for method, path, body in reads:
        assert client.open(path, method=method, json=body).status_code == 401, path
        assert client.open(path, method=method, json=body, headers=bearer(READ_SECRET)).status_code not in (401, 403), path
    changes = [("DELETE", "/cache/objects", {"keys": []}), ("POST", "/cache/clear", None),
               ("POST", "/cache/prefetches", {"model_name": "m", "world_size": 1, "token_ids": []}),
               ("POST", "/reconfigure/dax/l2/add", {}), ("POST", "/reconfigure/dax/l1/add", {})]
    for method, path, body in changes:
        assert client.open(path, method=method, json=body, headers=bearer(READ_SECRET)).status_code == 403, path


def test_checksums_are_a_read_and_not_audited(client: FlaskClient, tmp_path: Path) -> None:
    reply = client.post("/cache/checksums", json={"block_ids": [1], "chunk_size": 1}, headers=bearer(READ_SECRET))
    assert reply.status_code == 404  # nothing registered
    assert audit_records(tmp_path) == []


def test_refusals_of_state_changing_routes_are_audited(client: FlaskClient, tmp_path: Path) -> None:
    client.delete("/cache/objects", json={}, headers=bearer(ADMIN_SECRET))
    client.post("/reconfigure/dax/l1/add", json={"device_path": "/dev/dax0.0", "size": "1GiB"}, headers=bearer(ADMIN_SECRET))
    client.post("/cache/clear", json={"tier": "l2"}, headers=bearer(ADMIN_SECRET))
    outcome = [(r["action"], r["outcome"], r["status"]) for r in audit_records(tmp_path)]
    assert outcome == [
        ("cache-objects-delete", "rejected", 422),
        ("reconfigure-l1", "refused: L1 is not on Device-DAX", 409),
        ("cache-clear", "rejected", 400),
    ]


# --------------------------------------------------------------------------- while starting


def test_every_0_5_6_route_answers_503_while_the_engine_starts(stack: Services) -> None:
    starting = AdminContext(stack.config, stack.plugins, stack.frontends)
    client = create_app(starting).test_client()
    auth = bearer(ADMIN_SECRET)
    detail = {"detail": "server not initialized", "error": "server not initialized"}
    engine = {"error": "engine not initialized"}
    expected = [
        ("GET", "/cache/objects", None, detail),
        ("DELETE", "/cache/objects", {"keys": []}, detail),
        ("POST", "/cache/clear", None, detail),
        ("POST", "/cache/checksums", {}, detail),
        ("POST", "/cache/prefetches", {"model_name": "m", "world_size": 1, "token_ids": []}, detail),
        ("GET", "/cache/prefetches/x", None, detail),
        ("GET", "/config/adapters", None, detail),
        ("GET", "/reconfigure/dax/l2/status", None, engine),
        ("POST", "/reconfigure/dax/l2/add", {}, engine),
        ("GET", "/reconfigure/dax/l1/status", None, engine),
        ("POST", "/reconfigure/dax/l1/remove", {"device_path": "/x"}, engine),
        ("GET", "/kvcache/check?block_ids=1&chunk_size=1", None, engine),
    ]
    for method, path, body, answer in expected:
        reply = client.open(path, method=method, json=body, headers=auth)
        assert (reply.status_code, reply.get_json()) == (503, answer), path
    # The configuration is known before the engine: /config answers.
    assert client.get("/config", headers=auth).get_json()["http"] == {"http_host": "127.0.0.1", "http_port": 8080}
