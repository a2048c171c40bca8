"""A route group declares its blueprint, auth scopes and OpenAPI together; the app factory mounts
it and applies authentication and audit from the declaration."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, jsonify

from lmcache_core.errors import PluginError
from lmcache_core.plugin import FrontendRegistry, RouteGroup
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.openapi import json_response
from lmcache_frontends.bootstrap import Lifecycle, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import builtin_plugins, in_memory_stack
from lmcache_sdk import hookimpl

ADMIN_SECRET = "adm-0123456789abcdef-secret"
READ_SECRET = "rd-0123456789abcdef-secret"


def _group(services: object) -> RouteGroup:
    bp = Blueprint("inventory", __name__)

    @bp.get("/inventory/internals")
    def internals() -> Any:
        return jsonify(secret="stacks")

    @bp.post("/inventory/search")
    def search() -> Any:
        return jsonify(found=[])

    @bp.post("/inventory/rebuild")
    def rebuild() -> Any:
        return jsonify(rebuilt=True)

    ok = {"200": json_response("ok", {"type": "object"})}
    return RouteGroup(
        bp,
        openapi={"/inventory/internals": {"get": {"summary": "internals", "responses": ok}}},
        scopes={"/inventory/internals": "admin", "/inventory/search": "read", "/inventory/rebuild": None},
    )


class _Plugin:
    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes

    @hookimpl
    def lmcache_register_frontends(self, registry: FrontendRegistry) -> None:
        for name, factory in self.routes.items():
            registry.add_http_routes(name, factory)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Services]:
    config = ServerConfig(admin_token=ADMIN_SECRET, read_token=READ_SECRET, audit_log=str(tmp_path / "audit.jsonl"))
    stack = in_memory_stack(config)
    yield stack
    stack.close()


def _app(services: Services, routes: dict[str, Any], *, only: bool = False) -> Flask:
    registry = builtin_plugins(_Plugin(routes)).frontend_registry()
    if only:  # no built-in group at all, not even "auth": the factory still authenticates
        registry = FrontendRegistry(http_routes=dict(routes))
    return create_app(dataclasses.replace(services, frontends=registry, lifecycle=Lifecycle()))


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_the_declared_scopes_are_enforced(secured: Services) -> None:
    client = _app(secured, {"inventory": _group}).test_client()
    assert client.get("/inventory/internals").status_code == 401
    assert client.get("/inventory/internals", headers=_bearer(READ_SECRET)).status_code == 403
    assert client.get("/inventory/internals", headers=_bearer(ADMIN_SECRET)).status_code == 200
    assert client.post("/inventory/search", headers=_bearer(READ_SECRET)).status_code == 200
    # A declaration never opens a state-changing method: None on a POST still needs admin.
    assert client.post("/inventory/rebuild").status_code == 401
    assert client.post("/inventory/rebuild", headers=_bearer(READ_SECRET)).status_code == 403
    assert client.post("/inventory/rebuild", headers=_bearer(ADMIN_SECRET)).status_code == 200


def test_auth_and_audit_belong_to_the_app_factory(secured: Services, tmp_path: Path) -> None:
    client = _app(secured, {"inventory": _group}, only=True).test_client()
    assert client.post("/inventory/rebuild").status_code == 401
    assert client.post("/inventory/rebuild", headers=_bearer(ADMIN_SECRET)).status_code == 200
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["path"], r["status"]) for r in records] == [("/inventory/rebuild", 401), ("/inventory/rebuild", 200)]


def test_the_declared_openapi_is_published(secured: Services) -> None:
    doc = _app(secured, {"inventory": _group}).test_client().get("/openapi.json", headers=_bearer(READ_SECRET)).get_json()
    assert doc["paths"]["/inventory/internals"]["get"]["summary"] == "internals"


def test_a_bare_blueprint_is_still_read_the_old_way(secured: Services) -> None:
    def legacy(services: object) -> Blueprint:
        bp = Blueprint("legacy", __name__)
        bp.add_url_rule("/legacy/page", "page", lambda: "page")
        bp.openapi = {"/legacy/page": {"get": {"summary": "legacy", "responses": {}}}}  # type: ignore[attr-defined]
        bp.scopes = {"/legacy/page": None}  # type: ignore[attr-defined]
        return bp

    client = _app(secured, {"legacy": legacy}).test_client()
    assert client.get("/legacy/page").status_code == 200  # declared open
    assert "/legacy/page" in client.get("/openapi.json", headers=_bearer(READ_SECRET)).get_json()["paths"]


def test_a_factory_returning_something_else_fails_naming_the_group(secured: Services) -> None:
    with pytest.raises(PluginError, match="route group 'odd' returned str"):
        _app(secured, {"odd": lambda services: "a blueprint, honest"})
    with pytest.raises(PluginError, match="route group 'odd' declared dict"):
        _app(secured, {"odd": lambda services: RouteGroup({})})


def test_a_scope_that_is_not_one_is_refused() -> None:
    with pytest.raises(PluginError, match="must be None, 'read' or 'admin'"):
        RouteGroup(Blueprint("x", __name__), scopes={"/x": "root"})
