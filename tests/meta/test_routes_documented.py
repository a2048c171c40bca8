"""Every route of a full app (all built-in plugins) is in /openapi.json and in docs/http-api.md."""

from __future__ import annotations

import re
import shlex
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.exceptions import HTTPException

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


# --------------------------------------------------------------------------- endpoint table

_TABLE_ROW_RE = re.compile(r"^\|\s*(GET|POST|PUT|DELETE|PATCH)\s*\|([^|]*)\|")


def table_routes(text: str) -> set[tuple[str, str]]:
    """(method, path) of every row of the "Endpoint overview" table; a row may name aliases in
    its path cell (`/healthcheck` (also `/api/healthcheck`))."""
    section = text.split("## Endpoint overview", 1)[1].split("\n## ", 1)[0]
    found: set[tuple[str, str]] = set()
    for line in section.splitlines():
        m = _TABLE_ROW_RE.match(line)
        if m:
            found.update((m.group(1), path) for path in re.findall(r"`(/[^`\s]*)`", m.group(2)))
    return found


def test_the_endpoint_table_lists_every_route_and_nothing_else(app: Flask) -> None:
    table = table_routes(DOC.read_text(encoding="utf-8"))
    served = set(routes(app))
    assert sorted(served - table) == []  # a route the table forgets
    assert sorted(table - served) == []  # a row for a route nobody serves


def test_every_documented_route_is_served(app: Flask) -> None:
    """Section headings and `METHOD /path` mentions name served routes only (docs -> app)."""
    served = set(routes(app))
    text = DOC.read_text(encoding="utf-8")
    headings = {r for line in text.splitlines() if line.startswith("### ") for r in _HEADING_ROUTE_RE.findall(line)}
    assert sorted(headings - served) == []


def test_the_table_check_would_catch_a_missing_or_stale_row() -> None:
    doc = "## Endpoint overview\n\n| method | path | purpose |\n|---|---|---|\n| GET | `/a` (also `/b`) | x |\n\n## Next\n| GET | `/c` | y |\n"
    assert table_routes(doc) == {("GET", "/a"), ("GET", "/b")}


# --------------------------------------------------------------------------- curl examples


def _sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of every `### ` section (a section ends at the next heading)."""
    out: list[tuple[str, str]] = []
    heading, body = "", []
    for line in text.splitlines():
        if line.startswith("#"):
            if heading:
                out.append((heading, "\n".join(body)))
            heading, body = (line[4:].strip() if line.startswith("### ") else ""), []
        else:
            body.append(line)
    if heading:
        out.append((heading, "\n".join(body)))
    return out


def curl_calls(body: str) -> list[tuple[str, str]]:
    """(method, path) of every curl command in a section's code blocks (backslash-continued
    lines joined; -X names the method, else a body (-d, -F) means POST unless -G)."""
    calls = []
    lines = body.replace("\\\n", " ").splitlines()
    for line in lines:
        start = line.find("curl ")
        if start < 0:
            continue
        tokens = shlex.split(line[start:].split("|")[0].split(")")[0])
        method = None
        url = None
        has_body = get = False
        for i, tok in enumerate(tokens):
            if tok == "-X":
                method = tokens[i + 1]
            elif tok in ("-d", "--data", "-F", "--data-binary"):
                has_body = True
            elif tok == "-G":
                get = True
            elif tok.startswith(("http://", "https://")):
                url = tok
        if url is None:
            continue
        if method is None:
            method = "POST" if has_body and not get else "GET"
        calls.append((method, urllib.parse.urlsplit(url).path))
    return calls


def test_every_route_section_has_a_curl_example_the_app_routes(app: Flask) -> None:
    adapter = app.url_map.bind("localhost")
    text = DOC.read_text(encoding="utf-8")
    unrouted, missing = [], []
    for heading, body in _sections(text):
        named = _HEADING_ROUTE_RE.findall(heading)
        if not named:
            continue
        reached: set[tuple[str, str]] = set()
        for method, path in curl_calls(body):
            try:
                rule, _ = adapter.match(path, method=method, return_rule=True)
            except HTTPException:
                unrouted.append(f"{heading}: curl {method} {path}")
                continue
            reached.add((method, rule_to_openapi_path(rule.rule)))
        missing += [f"{m} {p}" for m, p in named if (m, p) not in reached]
    assert unrouted == []
    assert missing == []


def test_the_curl_parser_reads_methods_and_paths() -> None:
    body = (
        "```console\ncurl -s -X DELETE http://localhost:8080/l2 \\\n  -H 'Content-Type: application/json' -d '{}'\n"
        "curl -s \"http://localhost:8080/kvcache/check?block_ids=0,[2,5]&chunk_size=2\"\n"
        "curl -s -X POST http://localhost:8080/run_script -F 'script=@x.py'\n"
        "curl -s -G http://localhost:8080/l2/keys --data-urlencode page_size=5 | jq\n```"
    )
    assert curl_calls(body) == [("DELETE", "/l2"), ("GET", "/kvcache/check"), ("POST", "/run_script"), ("GET", "/l2/keys")]
