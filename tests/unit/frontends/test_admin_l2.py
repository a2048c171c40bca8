"""L2 routes: /l2/adapters, DELETE /l2 (caps, locks, failures, selector) and /l2/keys (paging, filters)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from lmcache_core.keys import ObjectKey
from lmcache_core.ports import ListingNotSupportedError
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

TIMEOUT = 10.0


def key(i: int, *, model: str = "org/model", salt: str = "") -> ObjectKey:
    return ObjectKey(chunk_hash=i.to_bytes(4, "big") * 4, model_name=model, kv_rank=0, cache_salt=salt)


def put(services: Services, keys: list[ObjectKey], index: int = 0) -> None:
    adapter = services.storage.l2_adapters[index].adapter
    assert adapter.submit_store(keys, [memoryview(b"x" * 64)] * len(keys)).result(timeout=TIMEOUT) == [True] * len(keys)


def present(services: Services, keys: list[ObjectKey], index: int = 0) -> list[bool]:
    adapter = services.storage.l2_adapters[index].adapter
    hits = adapter.submit_lookup_and_lock(keys).result(timeout=TIMEOUT)
    adapter.unlock([k for k, h in zip(keys, hits, strict=True) if h])
    return hits


@pytest.fixture
def two() -> Any:
    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock", "name": "hot"}', '{"type": "mock", "name": "cold"}')))
    yield stack, create_app(stack).test_client()
    stack.close()


def test_adapters_lists_every_adapter_in_order_with_the_first_primary(two: Any) -> None:
    _, client = two
    body = client.get("/l2/adapters").get_json()
    assert body == {
        "adapters": [
            {"index": 0, "type_name": "MockL2Adapter", "primary": True, "name": "hot"},
            {"index": 1, "type_name": "MockL2Adapter", "primary": False, "name": "cold"},
        ]
    }


def test_adapters_is_an_empty_list_without_l2_and_503_while_starting() -> None:
    stack = in_memory_stack()
    try:
        client = create_app(stack).test_client()
        assert client.get("/l2/adapters").get_json() == {"adapters": []}
        assert client.delete("/l2", json={"keys": []}).status_code == 503
        assert client.get("/l2/keys").status_code == 503
        starting = create_app(AdminContext(stack.config, stack.plugins, stack.frontends)).test_client()
        response = starting.get("/l2/adapters")
        assert response.status_code == 503 and response.get_json()["error"] == "engine not initialized"
    finally:
        stack.close()


def test_delete_removes_the_keys_from_the_selected_adapter_only(two: Any) -> None:
    services, client = two
    keys = [key(1), key(2)]
    put(services, keys, 0)
    put(services, keys, 1)
    response = client.delete("/l2?adapter=cold", json={"keys": [k.to_json() for k in keys] + [key(3).to_json()]})
    assert response.status_code == 200
    assert response.get_json() == {"requested": 3, "adapter": "MockL2Adapter", "ok": True, "deleted": 2}
    assert present(services, keys, 1) == [False, False]
    assert present(services, keys, 0) == [True, True]
    # No selector: the primary.
    assert client.delete("/l2", json={"keys": [keys[0].to_json()]}).get_json()["deleted"] == 1
    assert present(services, keys, 0) == [False, True]


def test_delete_skips_locked_keys(services: Services, client: FlaskClient) -> None:
    k1, k2 = key(1), key(2)
    put(services, [k1, k2])
    adapter = services.storage.l2_adapters[0].adapter
    assert adapter.submit_lookup_and_lock([k1]).result(timeout=TIMEOUT) == [True]
    body = client.delete("/l2", json={"keys": [k1.to_json(), k2.to_json()]}).get_json()
    assert body["ok"] is True and body["deleted"] == 1
    adapter.unlock([k1])
    assert present(services, [k1, k2]) == [True, False]


def test_delete_reports_an_adapter_failure_as_200_ok_false(services: Services, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(keys: Any) -> list[bool]:
        raise OSError("bucket unreachable")

    monkeypatch.setattr(services.storage.l2_adapters[0].adapter, "delete", broken)
    response = client.delete("/l2", json={"keys": [key(1).to_json()]})
    assert response.status_code == 200
    assert response.get_json() == {"requested": 1, "adapter": "MockL2Adapter", "ok": False, "error": "bucket unreachable"}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"keys": [{"chunk_hash_hex": "zz", "model_name": "m", "kv_rank": 0}]}, 400, "keys[0]: chunk_hash_hex"),
        ({"keys": [{"chunk_hash_hex": "aa", "model_name": "a@b", "kv_rank": 0}]}, 400, "'@'"),
        ({"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": 0, "cache_salt": "a/b"}]}, 400, "cache_salt"),
        ({"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": 0}] * 10_001}, 400, "limit=10000"),
        ({}, 422, "'keys' is required"),
        ({"keys": "aa"}, 422, "must be a list"),
        ({"keys": [{"chunk_hash_hex": "aa", "model_name": "m"}]}, 422, "missing field kv_rank"),
        ({"keys": [{"chunk_hash_hex": "aa", "model_name": "m", "kv_rank": "0"}]}, 422, "kv_rank must be an integer"),
        ([1, 2], 422, "JSON object"),
    ],
)
def test_delete_rejects_bad_bodies_with_the_documented_codes(client: FlaskClient, body: Any, status: int, fragment: str) -> None:
    response = client.delete("/l2", json=body)
    assert response.status_code == status
    assert fragment in response.get_json()["error"]


def test_delete_of_exactly_the_cap_is_accepted_and_bad_json_is_422(client: FlaskClient) -> None:
    # Full-width keys with a long model name and salt (~3.5 MB) fit the body limit.
    keys = [
        {"chunk_hash_hex": f"{i:064x}", "model_name": "org/" + "m" * 120, "kv_rank": 16777472, "cache_salt": "s" * 128}
        for i in range(10_000)
    ]
    assert client.delete("/l2", json={"keys": keys}).get_json()["requested"] == 10_000
    response = client.delete("/l2", data="{nope", content_type="application/json")
    assert response.status_code == 422 and "error" in response.get_json()


def test_unknown_selector_is_404_naming_the_valid_ones(client: FlaskClient) -> None:
    for response in (client.delete("/l2?adapter=S3L2Adapter", json={"keys": []}), client.get("/l2/keys?adapter=S3L2Adapter")):
        assert response.status_code == 404
        assert "MockL2Adapter" in response.get_json()["error"]


def test_keys_pages_through_everything_with_the_token(services: Services, client: FlaskClient) -> None:
    keys = [key(i) for i in range(7)]
    put(services, keys)
    seen: list[dict[str, Any]] = []
    token = ""
    for _ in range(10):
        body = client.get("/l2/keys", query_string={"page_size": 3, "page_token": token}).get_json()
        assert body["adapter"] == "MockL2Adapter" and len(body["entries"]) <= 3
        seen += [e["key"] for e in body["entries"]]
        token = body["next_page_token"]
        if token is None:
            break
    assert sorted(k["chunk_hash_hex"] for k in seen) == sorted(k.chunk_hash.hex() for k in keys)
    assert all(set(e) == {"chunk_hash_hex", "model_name", "kv_rank", "object_group_id", "cache_salt"} for e in seen)


def test_keys_filters_by_model_and_by_salt(services: Services, client: FlaskClient) -> None:
    put(services, [key(1, model="a/m"), key(2, model="b/m"), key(3, model="a/m", salt="t1")])
    by_model = client.get("/l2/keys?model_name=a/m").get_json()["entries"]
    assert sorted(e["key"]["chunk_hash_hex"] for e in by_model) == sorted([key(1).chunk_hash.hex(), key(3).chunk_hash.hex()])
    by_salt = client.get("/l2/keys?cache_salt=t1").get_json()["entries"]
    assert [e["key"]["cache_salt"] for e in by_salt] == ["t1"]
    default_salt = client.get("/l2/keys?cache_salt=_default").get_json()["entries"]
    assert len(default_salt) == 2 and all(e["key"]["cache_salt"] == "" for e in default_salt)


@pytest.mark.parametrize(("query", "status"), [("page_size=0", 422), ("page_size=5001", 422), ("page_size=x", 422), ("page_token=garbage", 400), ("model_name=a@b", 400)])
def test_keys_rejects_bad_parameters(client: FlaskClient, query: str, status: int) -> None:
    response = client.get(f"/l2/keys?{query}")
    assert response.status_code == status and response.get_json()["error"]


def test_keys_is_501_for_an_adapter_that_cannot_list(services: Services, client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_listing(*args: Any, **kwargs: Any) -> Any:
        raise ListingNotSupportedError("no index")

    monkeypatch.setattr(services.storage.l2_adapters[0].adapter, "list_keys", no_listing)
    response = client.get("/l2/keys")
    assert response.status_code == 501
    assert "does not support listing" in response.get_json()["error"]
