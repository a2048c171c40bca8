"""Every example response in docs/http-api.md is produced by a real request against a running app.

Convention: a JSON block (```json) that follows a line starting with "Response (`NNN" inside a
`### METHOD /path` section is an example response of that route and status. PRODUCERS below
holds, for each (section heading, status), the request that produces it; an example without a
producer fails the test, so a new example comes with its check. The real response must have the
example's shape: every key of an example object is present with a value of the same JSON type
(recursively; list items against the example's first item); an object without a "..." key may
not have extra keys; the string "..." stands for any value."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flask.testing import FlaskClient

from lmcache_adapters.l2.dax import SUPERBLOCK_BYTES
from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
SLOT = 8192


def examples(text: str) -> list[tuple[str, int, Any]]:
    out: list[tuple[str, int, Any]] = []
    heading = ""
    pending: int | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading, pending = line.lstrip("#").strip(), None
        elif m := re.match(r"Response \(`(\d{3})", line):
            pending = int(m.group(1))
        elif line.strip() == "```json" and pending is not None:
            j = lines.index("```", i + 1)
            out.append((heading, pending, json.loads("\n".join(lines[i + 1 : j]))))
            pending, i = None, j
        i += 1
    return out


def conforms(example: Any, real: Any, where: str = "$") -> list[str]:
    if example == "...":
        return []
    if isinstance(example, dict):
        if not isinstance(real, dict):
            return [f"{where}: expected an object, got {real!r}"]
        problems = [f"{where}.{k}: missing" for k in example if k != "..." and k not in real]
        if "..." not in example:
            problems += [f"{where}.{k}: not in the example" for k in real if k not in example]
        for k, v in example.items():
            if k != "..." and k in real:
                problems += conforms(v, real[k], f"{where}.{k}")
        return problems
    if isinstance(example, list):
        if not isinstance(real, list):
            return [f"{where}: expected a list, got {real!r}"]
        if example and example[0] != "...":
            return [p for n, item in enumerate(real) for p in conforms(example[0], item, f"{where}[{n}]")]
        return []
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", type(None): "null"}
    if kinds[type(example)] != kinds.get(type(real)):
        return [f"{where}: expected a {kinds[type(example)]} like {example!r}, got {real!r}"]
    return []


class Server:
    """The app over a full in-process stack with a mock and a dax L2 adapter."""

    def __init__(self, tmp: Path) -> None:
        dax = {"type": "dax", "devices": [{"path": str(tmp / "d0"), "size": SUPERBLOCK_BYTES + 8 * SLOT}], "slot_bytes": SLOT, "preallocate": False}
        self.tmp = tmp
        self.services: Services = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}', json.dumps(dax))))
        self.client: FlaskClient = create_app(self.services).test_client()
        self.layout: Any = None
        self._dax: Services | None = None

    def dax(self) -> FlaskClient:
        """The app over a second stack whose L1 is on a Device-DAX stand-in (a 4 MiB file)."""
        from lmcache_adapters.memory.dax_pool import DaxMemoryPool

        if self._dax is None:
            for name in ("l1-a.img", "l1-b.img"):
                with open(self.tmp / name, "wb") as f:
                    f.truncate(4 << 20)
            self._dax = in_memory_stack(memory_pool=DaxMemoryPool(str(self.tmp / "l1-a.img"), 4 << 20))
        return create_app(self._dax).test_client()

    def dax_add(self) -> Any:
        return self.dax().post("/reconfigure/dax/l1/add", json={"device_path": str(self.tmp / "l1-b.img"), "size": "1MiB"})

    def close(self) -> None:
        self.services.close()
        if self._dax is not None:
            self._dax.close()

    def register_kv_cache(self) -> None:
        """A server-driven registration (instance 0, model `m`, world size 1) as the data path
        makes one: CPU tensors [2, blocks, block size, heads, head size] per layer."""
        import torch

        from lmcache_adapters.transfer.layout import KVCacheLayout
        from lmcache_frontends.zmq.kv_caches import DataPathKVCaches

        tensors = [torch.arange(2 * 8 * 4 * 2 * 4, dtype=torch.float16).reshape(2, 8, 4, 2, 4) + i for i in range(2)]
        self.layout = KVCacheLayout(tensors, chunk_size=256)
        object_size = self.layout.object_size
        registration = SimpleNamespace(instance_id=0, layout=self.layout)
        server = SimpleNamespace(
            data_path=SimpleNamespace(object_size=lambda m, ws: object_size if (m, ws) == ("m", 1) else None),
            registrations=lambda iid: [registration] if iid == 0 else [],
            kv_checksums=lambda inst, ids, chunk, layerwise: inst.layout.checksums(ids, chunk, layerwise=layerwise),
        )
        assert self.services.engine is not None
        self.services.engine.kv_caches.add_source(DataPathKVCaches(server))

    def without(self, attr: str) -> FlaskClient:
        """The app as it answers before the engine runs (`engine`), or also without a
        configuration (`config`)."""
        config = None if attr == "config" else self.services.config
        return create_app(AdminContext(config, self.services.plugins, self.services.frontends)).test_client()

    def stored_key(self) -> ObjectKey:
        key = ObjectKey(chunk_hash=b"\xab" * 16, model_name="org/model", kv_rank=0, cache_salt="user-a")
        adapter = self.services.storage.l2_adapters[0].adapter
        assert adapter.submit_store([key], [memoryview(b"x" * 64)]).result(timeout=10) == [True]
        return key


Producer = Callable[[Server], Any]


def _delete_l2(s: Server) -> Any:
    key = s.stored_key()
    return s.client.delete("/l2", json={"keys": [key.to_json()]})


def _l2_keys(s: Server) -> Any:
    s.stored_key()
    return s.client.get("/l2/keys")


def _cache_objects(s: Server) -> Any:
    s.stored_key()
    return s.client.get("/cache/objects")


def _delete_objects(s: Server) -> Any:
    key = s.stored_key()
    # In L1 too: one delete removes both copies.
    l1 = s.services.storage.l1
    l1.reserve_write([key], [64])
    l1.finish_write([key])
    return s.client.delete("/cache/objects", json={"keys": [key.to_json()], "tier": "all"})


def _kvcache_check(s: Server) -> Any:
    s.register_kv_cache()
    return s.client.get("/kvcache/check?block_ids=[0,3]&chunk_size=2")


def _submit_prefetch(s: Server) -> Any:
    s.register_kv_cache()
    return s.client.post("/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": list(range(512))})


def _poll_prefetch(s: Server) -> Any:
    request_id = _submit_prefetch(s).get_json()["request_id"]

    def finished() -> Any:
        response = s.client.get(f"/cache/prefetches/{request_id}")
        return None if response.get_json()["status"] == "pending" else response

    return poll_until(finished, timeout=10, interval=0.01, what="the documented prefetch to finish")


def _audit_events(s: Server) -> Any:
    s.client.put("/quota/alice", json={"limit_gb": 1})
    return s.client.get("/audit/events?limit=2")


def _whoami(s: Server) -> Any:
    secured = in_memory_stack(ServerConfig(admin_token="adm-0123456789abcdef-secret", read_token="rd-0123456789abcdef-secret"))
    try:
        return create_app(secured).test_client().get("/auth/whoami", headers={"Authorization": "Bearer rd-0123456789abcdef-secret"})
    finally:
        secured.close()


PRODUCERS: dict[tuple[str, int], Producer] = {
    ("GET /audit/events", 200): _audit_events,
    ("GET /auth/whoami", 200): _whoami,
    ("GET /", 200): lambda s: s.client.get("/"),
    ("GET /healthcheck", 200): lambda s: s.client.get("/healthcheck"),
    ("GET /healthcheck", 503): lambda s: s.without("engine").get("/healthcheck"),
    ("GET /status", 200): lambda s: s.client.get("/status"),
    ("GET /status", 503): lambda s: s.without("engine").get("/status"),
    ("GET /conf", 200): lambda s: s.client.get("/conf"),
    ("GET /conf", 503): lambda s: s.without("config").get("/conf"),
    ("POST /clear-cache", 200): lambda s: s.client.post("/clear-cache"),
    ("POST /clear-cache", 400): lambda s: s.client.post("/clear-cache?cache_salt=a/b"),
    ("POST /clear-cache", 503): lambda s: s.without("engine").post("/clear-cache"),
    ("GET /l2/adapters", 200): lambda s: s.client.get("/l2/adapters"),
    ("GET /l2/adapters", 503): lambda s: s.without("engine").get("/l2/adapters"),
    ("DELETE /l2", 200): _delete_l2,
    ("GET /l2/keys", 200): _l2_keys,
    ("PUT /quota/{cache_salt}", 200): lambda s: s.client.put("/quota/alice", json={"limit_gb": 10.0}),
    ("PUT /quota/{cache_salt}", 400): lambda s: s.client.put("/quota/alice", json={"limit_gb": -1}),
    ("GET /quota/{cache_salt}", 200): lambda s: s.client.get("/quota/alice"),
    ("DELETE /quota/{cache_salt}", 200): lambda s: s.client.delete("/quota/alice"),
    ("GET /quota", 200): lambda s: (
        s.client.put("/quota/alice", json={"limit_gb": 10}),
        s.client.put("/quota/bob", json={"limit_gb": 4}),
        s.client.get("/quota"),
    )[2],
    ("GET /reconfigure/backends", 200): lambda s: s.client.get("/reconfigure/backends"),
    ("GET /reconfigure/{backend}/status", 200): lambda s: s.client.get("/reconfigure/dax/status"),
    ("POST /reconfigure/{backend}/{operation}", 200): lambda s: s.client.post(
        "/reconfigure/dax/add", json={"device_path": str(s.tmp / "d1"), "size": SUPERBLOCK_BYTES + 4 * SLOT}
    ),
    ("POST /reconfigure/{backend}/{operation}", 422): lambda s: s.client.post(
        "/reconfigure/dax/add", json={"device_path": "/x", "size": 1, "colour": "red"}
    ),
    ("POST /cache/clear", 200): lambda s: s.client.post("/cache/clear"),
    ("POST /cache/clear", 400): lambda s: s.client.post("/cache/clear", json={"tier": "l2"}),
    ("GET /kvcache/check", 200): _kvcache_check,
    ("GET /kvcache/check", 404): lambda s: s.client.get("/kvcache/check?block_ids=0&chunk_size=1"),
    ("POST /cache/checksums", 404): lambda s: s.client.post("/cache/checksums", json={"block_ids": [0], "chunk_size": 1}),
    ("GET /cache/objects", 200): _cache_objects,
    ("GET /cache/objects", 422): lambda s: s.client.get("/cache/objects?page_size=0"),
    ("DELETE /cache/objects", 200): _delete_objects,
    ("DELETE /cache/objects", 400): lambda s: s.client.delete(
        "/cache/objects", json={"keys": [{"chunk_hash_hex": "ab", "model_name": "m", "kv_rank": 0}] * 10001}
    ),
    ("POST /cache/prefetches", 202): _submit_prefetch,
    ("POST /cache/prefetches", 503): lambda s: s.client.post(
        "/cache/prefetches", json={"model_name": "m", "world_size": 1, "token_ids": [1, 2, 3]}
    ),
    ("GET /cache/prefetches/{request_id}", 200): _poll_prefetch,
    ("GET /cache/prefetches/{request_id}", 404): lambda s: s.client.get("/cache/prefetches/abc"),
    ("GET /config/adapters", 200): lambda s: s.client.get("/config/adapters"),
    ("GET /config", 200): lambda s: s.client.get("/config"),
    ("GET /reconfigure/{backend}/l2/status", 200): lambda s: s.client.get("/reconfigure/fs/l2/status"),
    ("POST /reconfigure/{backend}/l2/{operation}", 404): lambda s: s.client.post(
        "/reconfigure/dax/l2/add", json={"adapter_index": 3, "device_path": "/x", "size": 4096}
    ),
    ("GET /reconfigure/dax/l1/status", 200): lambda s: s.dax().get("/reconfigure/dax/l1/status"),
    ("GET /reconfigure/dax/l1/status", 409): lambda s: s.client.get("/reconfigure/dax/l1/status"),
    ("POST /reconfigure/dax/l1/add", 200): lambda s: s.dax_add(),
    ("POST /reconfigure/dax/l1/add", 409): lambda s: (s.dax_add(), s.dax_add())[1],
    ("POST /reconfigure/dax/l1/remove", 200): lambda s: (s.dax_add(), s.dax().post(
        "/reconfigure/dax/l1/remove", json={"device_path": str(s.tmp / "l1-b.img")}
    ))[1],
    ("POST /reconfigure/dax/l1/remove", 404): lambda s: s.dax().post(
        "/reconfigure/dax/l1/remove", json={"device_path": "/dev/dax9.0"}
    ),
    ("POST /reconfigure/dax/l1/remove", 422): lambda s: s.client.post(
        "/reconfigure/dax/l1/remove", json={"device_path": "/dev/dax0.0", "mode": "evict"}
    ),
}

EXAMPLES = examples(DOC.read_text(encoding="utf-8"))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.close()


def test_the_doc_has_examples_and_every_one_has_a_producer() -> None:
    assert len(EXAMPLES) >= 20
    unchecked = sorted({f"{h} -> {st}" for h, st, _ in EXAMPLES if (h, st) not in PRODUCERS})
    assert unchecked == []


@pytest.mark.parametrize(("heading", "status", "example"), EXAMPLES, ids=[f"{h} {s}" for h, s, _ in EXAMPLES])
def test_the_example_response_is_what_the_server_answers(server: Server, heading: str, status: int, example: Any) -> None:
    producer = PRODUCERS.get((heading, status))
    if producer is None:
        pytest.fail(f"no producer for the example of {heading} -> {status}")
    response = producer(server)
    assert response.status_code == status, response.get_data(as_text=True)
    assert conforms(example, json.loads(response.get_data())) == []


def test_the_shape_check_catches_drift() -> None:
    assert conforms({"a": 1, "b": "x"}, {"a": 2, "b": "y"}) == []
    assert conforms({"a": 1}, {"a": "1"}) != []
    assert conforms({"a": 1}, {"a": 1, "b": 2}) != []
    assert conforms({"a": 1, "...": "..."}, {"a": 1, "b": 2}) == []
    assert conforms({"a": [{"k": True}]}, {"a": [{"k": 1}]}) != []
    assert conforms({"a": 1, "b": 2}, {"a": 1}) != []
