"""Every route of a full app (all built-in plugins) is in /openapi.json and in docs/http-api.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.openapi import rule_to_openapi_path
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
_HEADING_ROUTE_RE = re.compile(r"\b(GET|POST|PUT|DELETE|PATCH) (/[^\s,`]*)")


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}',)))
    yield create_app(stack)
    stack.close()


def routes(app: Flask) -> list[tuple[str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule_to_openapi_path(rule.rule)))
    return sorted(out)


def documented(text: str) -> set[tuple[str, str]]:
    """(method, path) named by a `### ...` heading, or as `METHOD /path` in backticks (aliases)."""
    found: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if line.startswith("### "):
            found.update(_HEADING_ROUTE_RE.findall(line))
    found.update(re.findall(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`\s]*)`", text))
    return found


def test_the_full_app_has_the_routes_of_every_builtin_group(app: Flask) -> None:
    have = set(routes(app))
    for expected in [("DELETE", "/l2"), ("PUT", "/quota/{cache_salt}"), ("POST", "/reconfigure/{backend}/{operation}"), ("GET", "/openapi.json"), ("GET", "/env")]:
        assert expected in have


def test_every_route_is_in_the_openapi_document(app: Flask) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    missing = [f"{m} {p}" for m, p in routes(app) if m.lower() not in doc["paths"].get(p, {})]
    assert missing == []
    # And nothing is described that the app does not serve.
    served = set(routes(app))
    stale = [f"{m.upper()} {p}" for p, ops in doc["paths"].items() for m in ops if (m.upper(), p) not in served]
    assert stale == []


def test_the_openapi_document_is_valid_openapi_3(app: Flask) -> None:
    from openapi_spec_validator import validate

    validate(app.test_client().get("/openapi.json").get_json())


def test_every_operation_declares_responses_with_schemas(app: Flask) -> None:
    doc = app.test_client().get("/openapi.json").get_json()
    bare = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if not op.get("responses") or any("content" not in r for r in op["responses"].values()):
                bare.append(f"{method.upper()} {path}")
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), f"{method} {path}: path parameters"
    assert bare == []


def test_every_route_has_a_section_in_the_http_api_doc(app: Flask) -> None:
    text = DOC.read_text(encoding="utf-8")
    missing = [f"{m} {p}" for m, p in routes(app) if (m, p) not in documented(text)]
    assert missing == []


def test_the_documented_check_would_catch_a_missing_route() -> None:
    assert ("GET", "/quota/{cache_salt}") in documented("### GET /quota/{cache_salt}\n")
    assert ("GET", "/api/status") in documented("`GET /api/status` is the same route")
    assert ("GET", "/nowhere") not in documented("### GET /quota\nmentions /nowhere in prose")
