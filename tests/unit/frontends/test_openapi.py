"""GET /openapi.json: collected from the blueprints' declarations, valid OpenAPI 3."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask.testing import FlaskClient

from lmcache_adapters.plugin import hookimpl
from lmcache_core.plugin import FrontendRegistry
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.openapi import json_response, rule_to_openapi_path
from lmcache_frontends.testing import builtin_plugins, in_memory_stack


def test_document_is_valid_and_describes_the_builtin_routes(client: FlaskClient) -> None:
    from openapi_spec_validator import validate

    response = client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    put = doc["paths"]["/quota/{cache_salt}"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"]["required"] == ["limit_gb"]
    assert set(put["responses"]) >= {"200", "400", "503"}
    delete = doc["paths"]["/l2"]["delete"]
    assert delete["requestBody"]["content"]["application/json"]["schema"]["properties"]["keys"]["maxItems"] == 10_000


def test_rule_syntax_becomes_openapi_templates() -> None:
    assert rule_to_openapi_path("/quota/<cache_salt>") == "/quota/{cache_salt}"
    assert rule_to_openapi_path("/x/<path:rest>/<int(min=1):n>") == "/x/{rest}/{n}"
    assert rule_to_openapi_path("/plain") == "/plain"


class ExtraRoutes:
    """A third-party plugin whose blueprint declares its route."""

    @hookimpl
    def lmcache_register_frontends(self, registry: FrontendRegistry) -> None:
        def factory(services: Any) -> Blueprint:
            bp = Blueprint("extra", __name__)
            bp.add_url_rule("/extra/<name>", "extra", lambda name: name)
            bp.openapi = {  # type: ignore[attr-defined]
                "/extra/{name}": {"get": {"responses": {"200": json_response("x", {"type": "string"})}}},
                "/": {"get": {"summary": "shadow attempt", "responses": {"200": json_response("x", {"type": "string"})}}},
            }
            return bp

        registry.add_http_routes("extra", factory)


def test_a_plugin_blueprint_declaration_is_collected_and_cannot_shadow_a_builtin() -> None:
    stack = in_memory_stack(plugins=builtin_plugins(ExtraRoutes()))
    try:
        doc = create_app(stack).test_client().get("/openapi.json").get_json()
    finally:
        stack.close()
    assert "/extra/{name}" in doc["paths"]
    assert doc["paths"]["/"]["get"]["summary"] != "shadow attempt"
