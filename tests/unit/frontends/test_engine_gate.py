"""The 503 gate a route group that needs a started engine declares once: every route answers
503 while the engine starts, refused changes are audited with their path parameters."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

SECRET = "gate-admin-secret-0123456789"
AUTH = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Services]:
    services = in_memory_stack(ServerConfig(admin_token=SECRET, audit_log=str(tmp_path / "audit.jsonl")))
    yield services
    services.close()


@pytest.fixture
def live(stack: Services) -> AdminContext:
    return AdminContext(stack.config, stack.plugins, stack.frontends)


@pytest.fixture
def client(live: AdminContext) -> FlaskClient:
    return create_app(live).test_client()


def audit_records(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/kvcache/requests/r1"),
        ("POST", "/kvcache/requests/r1/pin"),
        ("POST", "/kvcache/requests/r1/unpin"),
        ("POST", "/kvcache/requests/r1/compress"),
        ("GET", "/quota"),
        ("GET", "/quota/tenant"),
        ("PUT", "/quota/tenant"),
        ("DELETE", "/quota/tenant"),
    ],
)
def test_every_route_of_a_gated_group_answers_503_while_the_engine_starts(client: FlaskClient, method: str, path: str) -> None:
    response = client.open(path, method=method, headers=AUTH, data=b"1.0")
    assert response.status_code == 503
    assert response.get_json()["error"] == "engine not initialized"


def test_refused_changes_are_audited_with_their_path_parameters(client: FlaskClient, tmp_path: Path) -> None:
    client.put("/quota/tenant", headers=AUTH, data=b"1.0")
    client.post("/kvcache/requests/r1/pin", headers=AUTH)
    client.get("/kvcache/requests/r1", headers=AUTH)  # a read: not audited
    records = audit_records(tmp_path)
    assert [(r["action"], r["outcome"], r.get("details")) for r in records] == [
        ("quota-set", "refused: engine not initialized", {"cache_salt": "tenant"}),
        ("kvcache-pin", "refused: engine not initialized", {"request_id": "r1"}),
    ]


def test_the_gate_opens_once_the_engine_is_attached(client: FlaskClient, live: AdminContext, stack: Services) -> None:
    assert client.get("/quota", headers=AUTH).status_code == 503
    live.attach(stack)
    assert client.get("/quota", headers=AUTH).get_json() == {"users": {}}
    assert client.get("/kvcache/requests/r1", headers=AUTH).status_code == 404  # no data path runs


def test_authentication_still_comes_before_the_gate(client: FlaskClient) -> None:
    assert client.put("/quota/tenant", data=b"1.0").status_code == 401
