"""docs/fleet.md and /openapi.json describe the coordinator exactly: every route has a
`### METHOD /path` section with a curl example, every flag is in the table, the OpenAPI document
covers the served routes both ways, and every example response is what the app answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from test_doc_examples import conforms, examples

from fleet_helpers import coordinator_app
from lmcache_frontends.admin.openapi import rule_to_openapi_path
from lmcache_frontends.coordinator.config import OPTIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "fleet.md"
TEXT = DOC.read_text(encoding="utf-8")
HEADING_RE = re.compile(r"^### (GET|POST|PUT|DELETE|PATCH) (/\S*)$", re.M)
KEY = {"chunk_hash_hex": "ab" * 32, "model_name": "meta-llama/Llama-3.1-8B", "kv_rank": 16777472, "object_group_id": 0, "cache_salt": ""}


@pytest.fixture(scope="module")
def app() -> Flask:
    return coordinator_app()[0]


def routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (m, rule_to_openapi_path(rule.rule))
        for rule in app.url_map.iter_rules()
        for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}
    }


def sections() -> dict[tuple[str, str], str]:
    found = {}
    matches = list(HEADING_RE.finditer(TEXT))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(TEXT)
        found[(m.group(1), m.group(2))] = TEXT[m.end() : end]
    return found


def test_every_route_has_a_section_with_a_curl_example_and_no_section_is_stale(app: Flask) -> None:
    documented = sections()
    assert sorted(routes(app) - set(documented)) == []
    assert sorted(set(documented) - routes(app)) == []
    assert [f"{m} {p}" for (m, p), body in documented.items() if "curl " not in body] == []


def test_every_flag_is_in_the_table() -> None:
    table = set(re.findall(r"^\| `(--[a-z0-9-]+)` \|", TEXT, re.M))
    assert table == {spec.flag for spec in OPTIONS}


def test_the_openapi_document_covers_the_routes_both_ways(app: Flask) -> None:
    from openapi_spec_validator import validate

    doc = app.test_client().get("/openapi.json").get_json()
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == routes(app)
    validate(doc)


def _scenario() -> FlaskClient:
    client = coordinator_app()[0].test_client()
    client.post("/instances", json={"instance_id": "srv-a", "ip": "10.0.0.5", "http_port": 8080})
    batch = {"instance_id": "srv-a", "incarnation": 1796378311, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
             "entries": [{"key": KEY, "size_bytes": 262144}]}
    client.post("/events", json={"batches": [batch]})
    return client


def _events(c: FlaskClient) -> Any:
    batch = {"instance_id": "srv-b", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
             "entries": [{"key": KEY, "size_bytes": 1}]}
    return c.post("/events", json={"batches": [batch]})


PRODUCERS: dict[tuple[str, int], Callable[[FlaskClient], Any]] = {
    ("POST /instances", 200): lambda c: c.post("/instances", json={"instance_id": "srv-n", "ip": "10.0.0.6", "http_port": 8080}),
    ("PUT /instances/{instance_id}/heartbeat", 200): lambda c: c.put("/instances/srv-a/heartbeat"),
    ("GET /instances", 200): lambda c: c.get("/instances"),
    ("GET /instances/usage", 200): lambda c: c.get("/instances/usage"),
    ("POST /events", 200): _events,
    ("POST /l2/events", 200): lambda c: c.post(
        "/l2/events", json={"instance_id": "srv-old", "seq": 1, "events": [{"type": "store", "key": KEY, "bytes": 262144}]}
    ),
    ("POST /directory/lookup", 200): lambda c: c.post("/directory/lookup", json={"keys": [KEY]}),
    ("POST /directory/score", 200): lambda c: c.post("/directory/score", json={"model_name": "m", "token_ids": list(range(600))}),
    ("GET /directory/keys", 200): lambda c: c.get("/directory/keys?limit=1"),
    ("GET /directory/stats", 200): lambda c: c.get("/directory/stats"),
    ("PUT /quota/{cache_salt}", 200): lambda c: c.put("/quota/alice", json={"limit_gb": 100}),
    ("GET /quota/{cache_salt}", 200): lambda c: (c.put("/quota/alice", json={"limit_gb": 100}), c.get("/quota/alice"))[1],
    ("DELETE /quota/{cache_salt}", 200): lambda c: (c.put("/quota/alice", json={"limit_gb": 1}), c.delete("/quota/alice"))[1],
    ("GET /quota", 200): lambda c: (c.put("/quota/alice", json={"limit_gb": 100}), c.get("/quota"))[1],
    ("PUT /quota/config", 200): lambda c: c.put("/quota/config", json={"default_limit_gb": 10}),
    ("POST /cache/pins", 200): lambda c: c.post("/cache/pins", json={"model_name": "m", "world_size": 1, "token_ids": [1, 2, 3]}),
    ("GET /healthz", 200): lambda c: c.get("/healthz"),
}
EXAMPLES = examples(TEXT)


def test_every_example_has_a_producer() -> None:
    assert len(EXAMPLES) >= 15
    assert sorted({f"{h} -> {s}" for h, s, _ in EXAMPLES if (h, s) not in PRODUCERS}) == []


@pytest.mark.parametrize(("heading", "status", "example"), EXAMPLES, ids=[f"{h} {s}" for h, s, _ in EXAMPLES])
def test_the_example_is_what_the_coordinator_answers(heading: str, status: int, example: Any) -> None:
    response = PRODUCERS[(heading, status)](_scenario())
    assert response.status_code == status, response.get_data(as_text=True)
    assert conforms(example, json.loads(response.get_data())) == []
