"""The coordinator's routes over the in-memory store: the 0.5.0 and 0.5.6 shapes, validation,
forwarding to servers, tokens and scopes, the status and metrics."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from fleet_helpers import RecordedServers, coordinator_app
from lmcache_core.fleet.service import FleetService
from lmcache_frontends.coordinator.config import CoordinatorConfig

KEY = {"chunk_hash_hex": "ab" * 32, "model_name": "test-model", "kv_rank": 16777472, "object_group_id": 0, "cache_salt": ""}
TOKENS = list(range(12))  # chunk size 4: three chunks


@pytest.fixture
def env() -> tuple[FlaskClient, FleetService, RecordedServers]:
    app, service, servers = coordinator_app()
    return app.test_client(), service, servers


def register(client: FlaskClient, inst: str = "srv-1", port: int = 8081) -> None:
    assert client.post("/instances", json={"instance_id": inst, "ip": "127.0.0.1", "http_port": port}).status_code == 200


def events(client: FlaskClient, *batches: dict[str, Any]) -> dict[str, Any]:
    reply = client.post("/events", json={"batches": list(batches)})
    assert reply.status_code == 200, reply.get_json()
    return dict(reply.get_json())


def store_batch(inst: str, seq: int, keys: list[dict[str, Any]], *, tier: str = "l2", backend: str = "fs", size: int = 1024, inc: int = 1) -> dict[str, Any]:
    return {
        "instance_id": inst,
        "incarnation": inc,
        "seq": seq,
        "event_type": "store",
        "tier": tier,
        "backend": backend,
        "entries": [{"key": k, "size_bytes": size} for k in keys],
    }


def prompt_keys(client: FlaskClient, tokens: list[int] = TOKENS) -> list[dict[str, Any]]:
    reply = client.post("/directory/lookup", json={"model_name": "test-model", "token_ids": tokens})
    return [r["key"] for r in reply.get_json()["results"]]


def test_membership(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    reply = client.post("/instances", json={"ip": "10.1.1.1", "http_port": 8080})
    generated = reply.get_json()["instance_id"]
    assert generated.startswith("mp-") and reply.get_json()["re_registered"] is False
    register(client, "srv-1")
    assert client.post("/instances", json={"instance_id": "srv-1", "ip": "127.0.0.1", "http_port": 1}).get_json()["re_registered"] is True
    assert client.put("/instances/srv-1/heartbeat").get_json() == {"instance_id": "srv-1"}
    missing = client.put("/instances/nope/heartbeat")
    assert missing.status_code == 404 and missing.get_json()["error"] == "unknown instance nope; re-register"
    listed = client.get("/instances").get_json()["instances"]
    assert sorted(i["instance_id"] for i in listed) == sorted([generated, "srv-1"])
    assert set(listed[0]) == {"instance_id", "ip", "http_port", "registration_time", "metadata", "p2p_advertised_url", "mq_port"}
    assert client.delete("/instances/srv-1").status_code == 204
    assert client.delete("/instances/srv-1").status_code == 204
    bad = client.post("/instances", json={"ip": " ", "http_port": 1})
    assert bad.status_code == 422 and "ip" in bad.get_json()["detail"]


def test_events_are_applied_once_and_counted(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    register(client)
    batch = store_batch("srv-1", 1, [KEY], tier="l1", backend="dram")
    assert events(client, batch) == {"applied": 1, "duplicates": 0, "stale": 0}
    assert events(client, batch, {**batch, "incarnation": 0, "seq": 7}) == {"applied": 0, "duplicates": 1, "stale": 1}
    stats = client.get("/directory/stats").get_json()
    assert stats["num_keys"] == 1 and stats["l1_count"] == 1 and stats["l1_keys_by_instance"] == {"srv-1": 1}
    assert client.post("/events", json={"batches": [{**batch, "backend": ""}]}).status_code == 422
    assert client.post("/events", data="not json", content_type="application/json").status_code == 422
    legacy = client.post(
        "/l2/events", json={"instance_id": "old", "seq": 1, "events": [{"type": "store", "key": KEY, "bytes": 10}, {"type": "lookup", "key": KEY, "bytes": 0}]}
    )
    assert legacy.get_json() == {"recorded": 2}
    status = client.get("/fleet/status").get_json()
    assert status["ingest"]["batches_applied"] == 2 and status["instances"]["srv-1"]["events_applied"] == 1


def test_quota_routes_of_both_generations(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    register(client)
    events(client, store_batch("srv-1", 1, [KEY], size=1 << 30))
    assert client.put("/quota/_default", json={"limit_gb": 2}).get_json() == {"cache_salt": "", "limit_gb": 2.0, "status": "ok"}
    assert client.get("/quota/_default").get_json() == {"cache_salt": "", "quota_limit_gb": 2.0, "quota_exists": True, "usage_gb": 1.0}
    assert client.get("/quota").get_json() == {
        "total_gb": 1.0,
        "by_cache_salt": [{"cache_salt": "", "quota_limit_gb": 2.0, "quota_exists": True, "usage_gb": 1.0}],
    }
    assert client.get("/quota?tier=l1").get_json() == {"total_gb": 0.0, "by_cache_salt": []}
    assert client.get("/quota?tier=all").status_code == 400
    assert client.get("/quota?tier=l3").status_code == 422
    assert client.put("/quota/alice", json={"limit_gb": 1, "tier": "l1"}).status_code == 400
    assert client.put("/quota/alice", json={"limit_gb": -1}).status_code == 422
    assert client.put("/quota/a%2Fb", json={"limit_gb": 1}).status_code in (400, 404)
    assert client.put("/l2/quota/alice", json={"limit_gb": 0.5}).status_code == 200
    assert client.get("/l2/status/alice").get_json()["quota_limit_gb"] == 0.5
    assert [r["cache_salt"] for r in client.get("/l2/status").get_json()["by_cache_salt"]] == ["", "alice"]
    assert client.delete("/quota/alice").get_json() == {"cache_salt": "alice", "limit_gb": 0.0, "status": "removed"}
    assert client.delete("/l2/quota/alice").get_json()["status"] == "not_found"
    assert client.get("/quota/config").get_json() == {"default_limit_gb": None}
    assert client.put("/quota/config", json={"default_limit_gb": 3}).get_json() == {"default_limit_gb": 3.0}
    assert client.get("/quota/config").get_json() == {"default_limit_gb": 3.0}
    assert client.put("/quota/config", json={}).get_json() == {"default_limit_gb": None}


def test_directory_lookup_score_and_listing(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    register(client, "a")
    register(client, "b", 8082)
    keys = prompt_keys(client)
    assert len(keys) == 3
    events(client, store_batch("a", 1, keys[:2], tier="l1", backend="dram"), store_batch("b", 1, keys))
    by_keys = client.post("/directory/lookup", json={"keys": [keys[0]]}).get_json()
    assert by_keys["chunks"] == 1 and [p["instance_id"] for p in by_keys["results"][0]["placements"]] == ["a", "b"]
    assert client.post("/directory/lookup", json={"model_name": "test-model", "token_ids": TOKENS, "world_size": 2}).get_json()["chunks"] == 3
    for bad in ({}, {"keys": [KEY], "token_ids": [1]}, {"token_ids": [1, 2, 3, 4]}):
        assert client.post("/directory/lookup", json=bad).status_code == 422
    score = client.post("/directory/score", json={"model_name": "test-model", "token_ids": TOKENS + [99]}).get_json()
    assert (score["chunks"], score["tokens"], score["chunk_size"]) == (3, 12, 4)
    assert [(i["instance_id"], i["l1_tokens"], i["l2_tokens"], i["prefix_tokens"], i["score"]) for i in score["instances"]] == [
        ("a", 8, 0, 8, 8.0),
        ("b", 0, 12, 12, 6.0),
    ]
    weighted = client.post("/directory/score", json={"model_name": "test-model", "token_ids": TOKENS, "l2_weight": 1.0}).get_json()
    assert weighted["instances"][0]["instance_id"] == "b"
    hashes = [k["chunk_hash_hex"] for k in keys]
    by_hash = client.post("/directory/score", json={"model_name": "test-model", "chunk_hashes": hashes, "instance_ids": ["a"]}).get_json()
    assert [i["instance_id"] for i in by_hash["instances"]] == ["a"]
    assert client.post("/directory/score", json={"model_name": "test-model", "token_ids": TOKENS, "l2_weight": 2}).status_code == 422
    page = client.get("/directory/keys?tier=l1&limit=1").get_json()
    assert page["total"] == 2 and len(page["keys"]) == 1 and {p["tier"] for p in page["keys"][0]["placements"]} == {"l1"}
    assert client.get("/directory/keys?limit=0").status_code == 422
    assert client.post("/directory/blend-lookup", json={"model_name": "m", "tokens_b64": ""}).get_json() == {"matches": []}


def test_pins_delete_and_prefetch(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, service, servers = env
    register(client, "a")
    body = {"model_name": "test-model", "world_size": 1, "token_ids": TOKENS}
    assert client.post("/cache/pins", json=body).get_json() == {"requested": 3, "affected": 3, "status": "pinned"}
    assert client.get("/cache/pins?limit=2").get_json()["total"] == 3
    assert client.get("/cache/pins?cache_salt=other").get_json()["total"] == 0
    assert client.post("/cache/pins", json={**body, "world_size": 0}).status_code == 422
    assert client.post("/cache/pins", json={"model_name": "test-model", "token_ids": TOKENS}).status_code == 422
    servers.replies[("DELETE", "/cache/objects")] = (200, {"deleted": 0, "skipped": 0, "ok": True})
    reply = client.post("/cache/delete", json={**body, "instance_id": "a", "tier": "l2"}).get_json()
    assert reply == {"instance_id": "a", "requested": 3, "affected": 0, "skipped": 3, "status": "deleted"}
    assert servers.calls == []  # every key was pinned: nothing to send
    servers.replies[("DELETE", "/cache/objects")] = (200, {"deleted": 3, "skipped": 0, "ok": True})
    forced = client.post("/cache/delete", json={**body, "instance_id": "a", "force": True}).get_json()
    assert forced["affected"] == 3 and servers.calls[-1][3]["tier"] == "all" and servers.calls[-1][3]["force"] is True
    assert client.get("/cache/pins").get_json()["total"] == 0
    assert client.post("/cache/delete", json={**body, "instance_id": "a", "token_ids": [1]}).get_json()["status"] == "noop"
    assert client.post("/cache/delete", json={**body, "instance_id": "zz"}).status_code == 404
    servers.replies[("POST", "/cache/prefetches")] = (202, {"request_id": "r1", "chunks": 3, "status": "submitted"})
    assert client.post("/cache/prefetches", json={**body, "instance_id": "a"}).get_json() == {
        "instance_id": "a", "request_id": "r1", "chunks": 3, "status": "submitted"
    }
    assert servers.calls[-1][3]["token_ids"] == TOKENS
    servers.replies[("GET", "/cache/prefetches/r1")] = (200, {"status": "completed"})
    assert client.get("/cache/prefetches/a/r1").get_json() == {"status": "completed"}
    servers.down.add("a")
    down = client.post("/cache/prefetches", json={**body, "instance_id": "a"})
    assert down.status_code == 502 and "prefetch submit" in down.get_json()["error"]
    assert client.get("/cache/prefetches/zz/r1").status_code == 404


def test_instance_usage(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    register(client, "a")
    config = {"instance_id": "a", "incarnation": 1, "seq": 1, "event_type": "config", "tier": "l1", "backend": "dram", "entries": [], "capacity_bytes": 4096, "capacity_revision": 1}
    events(client, config, store_batch("a", 2, [KEY], tier="l1", backend="dram", size=1024), store_batch("b", 1, [KEY], backend="s3", size=10) | {"shared": True})
    fleet = client.get("/instances/usage").get_json()
    a = next(i for i in fleet["instances"] if i["instance_id"] == "a")
    assert a["declared_capacity"] and a["modules"] == [
        {"tier": "l1", "backend": "dram", "shared": False, "used_bytes": 1024, "capacity_bytes": 4096, "usage_ratio": 0.25}
    ]
    assert fleet["shared_modules"][0]["backend"] == "s3" and fleet["shared_modules"][0]["usage_ratio"] is None
    assert client.get("/instances/a/usage").get_json()["modules"][0]["used_bytes"] == 1024
    assert client.get("/instances/nope/usage").status_code == 404


def test_ops_routes(env: tuple[FlaskClient, FleetService, RecordedServers]) -> None:
    client, _, _ = env
    assert client.get("/healthz").get_json() == {"status": "healthy"}
    register(client)
    events(client, store_batch("srv-1", 1, [KEY]))
    metrics = client.get("/metrics").get_data(as_text=True)
    for name in ("lmcache_coordinator_instances 1.0", 'lmcache_coordinator_key_directory_placements{tier="l2"} 1.0', 'lmcache_coordinator_event_batches_total{outcome="applied"} 1.0'):
        assert name in metrics
    status = client.get("/fleet/status").get_json()
    assert status["is_healthy"] and status["store"]["kind"] == "memory" and status["coordinator"]["config"]["redis_url"] is None
    doc = client.get("/openapi.json").get_json()
    assert doc["info"]["title"] == "LMCache fleet coordinator API" and "/directory/score" in doc["paths"]
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.get_json()["error"].startswith("not found") and "detail" in missing.get_json()


def test_tokens_and_scopes() -> None:
    app, _, _ = coordinator_app(CoordinatorConfig(chunk_size=4, admin_token="a" * 20, read_token="r" * 20))
    client = app.test_client()
    admin, read = {"Authorization": "Bearer " + "a" * 20}, {"Authorization": "Bearer " + "r" * 20}
    assert client.get("/healthz").status_code == 200
    assert client.get("/instances").status_code == 401
    assert client.get("/instances", headers=read).status_code == 200
    assert client.post("/directory/score", json={"model_name": "m", "token_ids": TOKENS}, headers=read).status_code == 200
    assert client.post("/events", json={"batches": []}, headers=read).status_code == 403
    assert client.put("/quota/x", json={"limit_gb": 1}, headers=read).status_code == 403
    assert client.post("/events", json={"batches": []}, headers=admin).status_code == 200
    assert client.post("/instances", json={"ip": "h", "http_port": 1}, headers=admin).status_code == 200


def test_heartbeats_and_events_are_not_audited(caplog: pytest.LogCaptureFixture) -> None:
    app, _, _ = coordinator_app()
    client = app.test_client()
    with caplog.at_level("INFO", logger="lmcache.audit"):
        register(client)
        client.put("/instances/srv-1/heartbeat")
        events(client, store_batch("srv-1", 1, [KEY]))
        client.put("/quota/x", json={"limit_gb": 1})
    actions = [r.getMessage().split()[1] for r in caplog.records if r.name == "lmcache.audit"]
    assert actions == ["action=register", "action=set_quota"]
