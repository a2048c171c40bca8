"""Our server answers LMCache 0.5.6's admin routes as the 0.5.6 reference did (recorded in
`admin056_vectors.json` by `record_admin056.py`): the same status code, a body of the same shape
(the same keys, values of the same JSON types, recursively), and for a body that fails
validation the same problems (`type`, `loc`, `msg`, `input`). Error bodies may carry `error`
beside 0.5.6's fields (every error body of this server does). A case with a `deviation` gets
the status it names, on purpose (see admin056_cases.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from admin056_cases import CASES, Case
from flask.testing import FlaskClient

from lmcache_adapters.transfer.layout import KVCacheLayout
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.kv_caches import DataPathKVCaches

VECTORS = json.loads(Path(__file__).with_name("admin056_vectors.json").read_text())["cases"]
EXTRA_ERROR_FIELD = "error"


def register_bench_model(services: Services) -> None:
    """What the reference bench registers: instance 1000, model test-model, world size 1, two
    layers of [2, 256 blocks, 16 tokens, 2 heads, 64] float16, server-driven."""
    layout = KVCacheLayout([torch.randn(2, 256, 16, 2, 64).to(torch.float16) for _ in range(2)], chunk_size=256)
    registration = SimpleNamespace(instance_id=1000, layout=layout)
    server = SimpleNamespace(
        data_path=SimpleNamespace(
            object_size=lambda m, ws: layout.object_size if (m, ws) == ("test-model", 1) else None
        ),
        instances=lambda: {1000: registration},
        registrations=lambda iid: [registration] if iid == 1000 else [],
        kv_checksums=lambda inst, block_ids, chunk_size, *, layerwise: inst.layout.checksums(
            block_ids, chunk_size, layerwise=layerwise
        ),
    )
    assert services.engine is not None
    services.engine.kv_caches.add_source(DataPathKVCaches(server))


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FlaskClient]]:
    base = tmp_path_factory.mktemp("l2")
    fs = json.dumps({"type": "fs", "base_path": str(base)})
    with_fs = in_memory_stack(ServerConfig(l2_adapters=(fs,)), pool_bytes=64 << 20)
    registered = in_memory_stack(ServerConfig(l2_adapters=(fs.replace(str(base), str(base / "r")),)), pool_bytes=64 << 20)
    register_bench_model(registered)
    no_l2 = in_memory_stack(ServerConfig())
    stacks = {"bare": with_fs, "registered": registered, "no_l2": no_l2}
    yield {state: create_app(stack).test_client() for state, stack in stacks.items()}
    for stack in stacks.values():
        stack.close()


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "list" if isinstance(value, list) else "object"


def differences(expected: Any, actual: Any, where: str = "$", *, error_body: bool = False) -> list[str]:
    """How `actual` differs in shape from `expected` (empty when it conforms)."""
    if kind(expected) != kind(actual):
        return [f"{where}: expected a {kind(expected)}, got {actual!r:.120}"]
    if isinstance(expected, dict):
        problems = [f"{where}.{k}: missing" for k in expected if k not in actual]
        allowed = {EXTRA_ERROR_FIELD} if error_body and where == "$" else set()
        problems += [f"{where}.{k}: not in 0.5.6's answer" for k in actual if k not in expected and k not in allowed]
        for k in expected:
            if k not in actual:
                continue
            if where == "$" and k == "detail" and isinstance(expected[k], list):
                problems += _detail_differences(expected[k], actual[k])
            else:
                problems += differences(expected[k], actual[k], f"{where}.{k}")
        return problems
    if isinstance(expected, list) and expected and actual:
        return differences(expected[0], actual[0], f"{where}[0]")
    return []


def _detail_differences(expected: list[dict[str, Any]], actual: Any) -> list[str]:
    if not isinstance(actual, list) or len(actual) != len(expected):
        return [f"$.detail: expected {len(expected)} problem(s) {expected!r:.300}, got {actual!r:.300}"]
    out = []
    for i, (want, got) in enumerate(zip(expected, actual, strict=True)):
        for field in ("type", "loc", "msg", "input", "ctx"):
            if want.get(field) != got.get(field):
                out.append(f"$.detail[{i}].{field}: expected {want.get(field)!r:.120}, got {got.get(field)!r:.120}")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_answer_is_0_5_6s(clients: dict[str, FlaskClient], case: Case) -> None:
    recorded = VECTORS.get(case.name)
    assert recorded is not None, f"{case.name}: not recorded; run tests/compat/record_admin056.py"
    response = clients[case.state].open(case.path, method=case.method, **case.request_kwargs())
    body = response.get_json(silent=True)
    want_status = case.deviation.get("status", recorded["status"])
    assert response.status_code == want_status, (case.name, recorded, body)
    if case.deviation or recorded["status"] >= 500:
        return  # different on purpose (see the case's `why`), or 0.5.6 failed outright
    assert differences(recorded["body"], body, error_body=recorded["status"] >= 400) == [], (case.name, recorded["body"], body)


def test_every_case_is_recorded_and_every_recording_is_a_case() -> None:
    names = {c.name for c in CASES}
    assert sorted(names - set(VECTORS)) == []
    assert sorted(set(VECTORS) - names) == []


def test_deviations_say_why() -> None:
    for case in CASES:
        if case.deviation:
            assert set(case.deviation) == {"status", "why"} and len(case.deviation["why"]) > 20, case.name


def test_the_shape_comparison_catches_drift() -> None:
    assert differences({"a": 1, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": "y"}]}) == []
    assert differences({"a": 1}, {"a": 1, "b": 2}) != []
    assert differences({"a": 1}, {"a": 1, "error": "x"}, error_body=True) == []
    assert differences({"a": 1}, {"a": "1"}) != []
    assert differences({"detail": [{"type": "missing", "loc": ["body"]}]}, {"detail": [{"type": "missing", "loc": ["query"]}]}) != []
