"""Quota routes: set/get/delete/list, the `_default` alias, live usage and every 400 of the seed."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from lmcache_core.keys import ObjectKey
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services

GIB = 1 << 30


def test_put_get_list_delete_round_trip(services: Services, client: FlaskClient) -> None:
    response = client.put("/quota/alice", json={"limit_gb": 10.0})
    assert response.status_code == 200
    assert response.get_json() == {"cache_salt": "alice", "limit_gb": 10.0, "status": "ok"}
    assert services.storage.quotas.get("alice") == 10 * GIB
    assert client.get("/quota/alice").get_json() == {"cache_salt": "alice", "limit_gb": 10.0, "current_usage_gb": 0.0, "exists": True}
    client.put("/quota/bob", json={"limit_gb": 4})
    assert client.get("/quota").get_json() == {
        "users": {"alice": {"limit_gb": 10.0, "current_usage_gb": 0.0}, "bob": {"limit_gb": 4.0, "current_usage_gb": 0.0}}
    }
    assert client.delete("/quota/alice").get_json() == {"cache_salt": "alice", "status": "removed"}
    assert client.delete("/quota/alice").get_json() == {"cache_salt": "alice", "status": "not_found"}
    assert services.storage.quotas.get("alice") is None


def test_default_addresses_the_empty_salt_and_is_echoed(services: Services, client: FlaskClient) -> None:
    assert client.put("/quota/_default", json={"limit_gb": 0.5}).get_json()["cache_salt"] == "_default"
    assert services.storage.quotas.get("") == GIB // 2
    assert client.get("/quota").get_json() == {"users": {"_default": {"limit_gb": 0.5, "current_usage_gb": 0.0}}}


def test_unknown_salt_is_200_with_exists_false_and_live_usage(services: Services, client: FlaskClient) -> None:
    key = ObjectKey(chunk_hash=b"\x01" * 16, model_name="m", kv_rank=0, cache_salt="carol")
    l1 = services.storage.l1
    [(_, handle)] = l1.reserve_write([key], [1 << 20])
    assert handle is not None
    l1.finish_write([key])
    body = client.get("/quota/carol").get_json()
    assert body["exists"] is False and body["limit_gb"] == 0.0
    assert body["current_usage_gb"] == pytest.approx(l1.bytes_by_salt()["carol"] / GIB)
    assert body["current_usage_gb"] > 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "invalid JSON body"),
        ('{"limit": 1}', "body must be {'limit_gb': <float>}"),
        ("[1]", "body must be {'limit_gb': <float>}"),
        ('{"limit_gb": "10"}', "limit_gb must be numeric"),
        ('{"limit_gb": true}', "limit_gb must be numeric"),
        ('{"limit_gb": NaN}', "limit_gb must be finite"),
        ('{"limit_gb": Infinity}', "limit_gb must be finite"),
        ('{"limit_gb": -1}', "limit_gb must be non-negative"),
        ('{"limit_gb": 2.9e307}', "limit_gb must be at most 8589934592"),
        ('{"limit_gb": 1' + '0' * 400 + '}', "limit_gb must be finite"),
    ],
)
def test_put_rejects_bad_bodies_with_the_seed_messages(services: Services, client: FlaskClient, data: str, message: str) -> None:
    response = client.put("/quota/alice", data=data, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    assert services.storage.quotas.get("alice") is None


def test_invalid_salt_in_the_path_is_400(client: FlaskClient) -> None:
    long_salt = "s" * 200
    for response in (client.get(f"/quota/{long_salt}"), client.put(f"/quota/{long_salt}", json={"limit_gb": 1}), client.delete(f"/quota/{long_salt}")):
        assert response.status_code == 400 and "cache_salt" in response.get_json()["error"]


def test_every_route_is_503_while_starting(services: Services) -> None:
    client = create_app(AdminContext(services.config, services.plugins, services.frontends)).test_client()
    for response in (client.get("/quota"), client.get("/quota/a"), client.put("/quota/a", json={"limit_gb": 1}), client.delete("/quota/a")):
        assert response.status_code == 503 and response.get_json()["error"] == "engine not initialized"
