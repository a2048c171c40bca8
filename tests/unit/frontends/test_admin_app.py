"""The admin app over a bootstrapped stack: every route's body and status code, as the seed documents."""

from __future__ import annotations

import dataclasses
import logging
from importlib import metadata

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient

from lmcache_adapters.plugin import hookimpl
from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_core.errors import ConfigError, NotFoundError, PluginError
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_core.l1.results import OpResult
from lmcache_core.plugin import FrontendRegistry
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import AdminContext, Lifecycle, Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import DEFAULT_POOL_BYTES as POOL_BYTES
from lmcache_frontends.testing import builtin_plugins, in_memory_stack

VERSION = metadata.version("lmcache-server")


def _put(services: Services, *keys: ObjectKey, size: int = 1000) -> None:
    l1 = services.storage.l1
    results = l1.reserve_write(list(keys), [size] * len(keys))
    assert [r for r, _ in results] == [OpResult.SUCCESS] * len(keys)
    assert l1.finish_write(list(keys)) == [OpResult.SUCCESS] * len(keys)


def _key(i: int, *, salt: str = "", model: str = "org/model-a") -> ObjectKey:
    return ObjectKey(i.to_bytes(32, "big"), model, kv_rank_for(1, 0), cache_salt=salt)


def _not_started(services: Services) -> AdminContext:
    """The same server as seen by an app created before the engine finished starting."""
    return AdminContext(services.config, services.plugins, services.frontends)


# --------------------------------------------------------------------------- liveness


def test_root_is_a_static_liveness_ping(client: FlaskClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "service": "LMCache HTTP API"}


@pytest.mark.parametrize("path", ["/healthcheck", "/api/healthcheck"])
def test_healthcheck_is_healthy_once_the_engine_is_up(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {"status": "healthy"}


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize("path", ["/status", "/api/status"])
def test_status_returns_the_engine_tree(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    body = response.get_json()
    assert body["is_healthy"] is True
    assert body["engine_type"] == "MPCacheServer"
    assert (body["chunk_size"], body["hash_algorithm"]) == (256, "blake3")
    for field in ("active_sessions", "registered_gpu_ids", "cache_context_meta", "active_prefetch_jobs"):
        assert field in body
    l1 = body["storage_manager"]["l1_manager"]
    assert l1["memory_total_bytes"] == POOL_BYTES and l1["total_object_count"] == 0
    assert body["storage_manager"]["is_healthy"] is True
    assert body["storage_manager"]["l2_adapter_count"] == 1
    # Keys keep the engine's order (is_healthy first), not Flask's default sorting.
    assert next(iter(body)) == "is_healthy" and response.get_data(as_text=True).startswith('{"is_healthy"')


def test_status_counts_objects_put_into_l1(client: FlaskClient, services: Services) -> None:
    _put(services, _key(1), _key(2))
    l1 = client.get("/status").get_json()["storage_manager"]["l1_manager"]
    assert l1["total_object_count"] == 2 and l1["memory_used_bytes"] > 0


def test_conf_dumps_the_effective_configuration(client: FlaskClient, services: Services) -> None:
    response = client.get("/conf")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.get_json() == services.config.to_public_dict()
    assert response.get_json()["storage_manager"]["l2_adapters"] == [{"type": "mock"}]
    assert "\n  " in response.get_data(as_text=True)  # one indented document, like the reference


def test_version_routes_without_a_commit_id(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LMCACHE_COMMIT_ID", raising=False)
    assert client.get("/version").get_json() == f"{VERSION}-NA"
    assert client.get("/lmc_version").get_json() == VERSION
    assert client.get("/commit_id").get_json() == ""


def test_version_routes_with_a_commit_id(client: FlaskClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_COMMIT_ID", "ca79ea33")
    for path, expected in [("/version", f"{VERSION}-ca79ea33"), ("/lmc_version", VERSION), ("/commit_id", "ca79ea33")]:
        response = client.get(path)
        assert response.status_code == 200
        assert response.get_data(as_text=True).strip() == f'"{expected}"'  # a bare JSON string


# --------------------------------------------------------------------------- clear-cache


@pytest.mark.parametrize("path", ["/clear-cache", "/api/clear-cache"])
def test_clear_cache_empties_l1(client: FlaskClient, services: Services, path: str) -> None:
    _put(services, _key(1), _key(2, salt="tenant-a"), _key(3, model="org/model-b"))
    response = client.post(path, data=b"ignored body")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert services.storage.l1.object_count() == 0


def test_clear_cache_also_drops_locked_objects(client: FlaskClient, services: Services) -> None:
    _put(services, _key(1))
    assert services.storage.l1.reserve_read([_key(1)])[0][0] is OpResult.SUCCESS
    assert client.post("/clear-cache").status_code == 200
    assert not services.storage.l1.contains(_key(1))


def test_clear_cache_scoped_to_one_salt_keeps_the_others(client: FlaskClient, services: Services) -> None:
    a1, a2, b1, default = _key(1, salt="a"), _key(2, salt="a"), _key(3, salt="b"), _key(4)
    _put(services, a1, a2, b1, default)
    response = client.post("/clear-cache?cache_salt=a")
    assert (response.status_code, response.get_json()) == (200, {"status": "ok"})
    assert set(services.storage.l1.keys()) == {b1, default}

    # The empty (default) salt is `_default` in URLs.
    assert client.post("/api/clear-cache?cache_salt=_default").status_code == 200
    assert set(services.storage.l1.keys()) == {b1}


def test_clear_cache_scoped_to_one_model(client: FlaskClient, services: Services) -> None:
    a, b, b_salted = _key(1, model="org/a"), _key(2, model="org/b"), _key(3, model="org/b", salt="t")
    _put(services, a, b, b_salted)
    assert client.post("/clear-cache", query_string={"model_name": "org/b"}).status_code == 200
    assert services.storage.l1.keys() == [a]


def test_clear_cache_scoped_to_salt_and_model(client: FlaskClient, services: Services) -> None:
    keep1, keep2, drop = _key(1, model="m", salt="x"), _key(2, model="n", salt="t"), _key(3, model="m", salt="t")
    _put(services, keep1, keep2, drop)
    assert client.post("/clear-cache", query_string={"model_name": "m", "cache_salt": "t"}).status_code == 200
    assert set(services.storage.l1.keys()) == {keep1, keep2}


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"cache_salt": "a/b"}, "cache_salt"),
        ({"cache_salt": "x" * 129}, "cache_salt"),
        ({"cache_salt": "a@b"}, "cache_salt"),
        ({"model_name": "m@1"}, "model_name"),
        ([("cache_salt", "a"), ("cache_salt", "b")], "cache_salt"),
    ],
)
def test_clear_cache_with_a_bad_parameter_is_400_and_clears_nothing(
    client: FlaskClient, services: Services, query: object, param: str
) -> None:
    _put(services, _key(1, salt="a"))
    response = client.post("/clear-cache", query_string=query)
    assert response.status_code == 400
    body = response.get_json()
    assert body["status"] == "error" and param in body["reason"] and body["error"] == body["reason"]
    assert services.storage.l1.object_count() == 1


def test_clear_cache_is_audited(client: FlaskClient, services: Services, caplog: pytest.LogCaptureFixture) -> None:
    _put(services, _key(1, salt="a"))
    with caplog.at_level(logging.INFO, logger="lmcache.audit"):
        client.post("/clear-cache?cache_salt=a")
    lines = [r.getMessage() for r in caplog.records if r.name == "lmcache.audit"]
    assert len(lines) == 1
    assert "action=clear-cache" in lines[0] and "outcome=ok" in lines[0] and "removed_objects=1" in lines[0]


# --------------------------------------------------------------------------- engine not started


def test_routes_answer_503_while_the_engine_is_not_initialized(services: Services) -> None:
    client = create_app(_not_started(services)).test_client()
    assert client.get("/").status_code == 200  # never touches the engine
    unhealthy = {"status": "unhealthy", "reason": "engine not initialized", "error": "engine not initialized"}
    for path in ("/healthcheck", "/api/healthcheck"):
        response = client.get(path)
        assert (response.status_code, response.get_json()) == (503, unhealthy)
    for path in ("/status", "/api/status"):
        response = client.get(path)
        assert (response.status_code, response.get_json()) == (503, {"error": "engine not initialized"})
    refused = {"status": "error", "reason": "engine not initialized", "error": "engine not initialized"}
    for path in ("/clear-cache", "/api/clear-cache"):
        response = client.post(path)
        assert (response.status_code, response.get_json()) == (503, refused)
    assert client.get("/conf").status_code == 200  # the configuration is known before the engine


def test_an_app_created_while_starting_serves_the_engine_once_attached(services: Services) -> None:
    live = _not_started(services)
    client = create_app(live).test_client()
    assert client.get("/healthcheck").status_code == 503
    assert client.get("/conf").get_json() == services.config.to_public_dict()
    live.attach(services)
    assert client.get("/healthcheck").get_json() == {"status": "healthy"}
    assert client.get("/status").get_json()["storage_manager"]["l1_manager"]["memory_total_bytes"] == POOL_BYTES


def test_conf_answers_503_without_a_configuration(services: Services) -> None:
    client = create_app(AdminContext(None, services.plugins, services.frontends)).test_client()
    response = client.get("/conf")
    assert (response.status_code, response.get_json()) == (503, {"error": "configs not initialized"})


# --------------------------------------------------------------------------- errors


def test_unknown_route_is_a_json_404(client: FlaskClient) -> None:
    response = client.get("/no/such/route")
    assert response.status_code == 404 and response.mimetype == "application/json"
    # `detail` as FastAPI words it (LMCache's servers, both generations), for their clients.
    assert response.get_json() == {"error": "not found: GET /no/such/route", "detail": "Not Found"}


def test_wrong_method_is_a_json_405_with_allow_header(client: FlaskClient) -> None:
    response = client.get("/clear-cache")
    assert response.status_code == 405 and response.mimetype == "application/json"
    assert "POST" in response.headers["Allow"]
    assert response.get_json() == {
        "error": "method GET not allowed on /clear-cache (allowed: POST)",
        "detail": "Method Not Allowed",
    }
    assert client.delete("/status").status_code == 405


def test_oversized_body_is_a_json_413_and_clears_nothing(client: FlaskClient, services: Services) -> None:
    _put(services, _key(1))
    response = client.post("/clear-cache", data=b"x" * ((8 << 20) + 1))
    assert response.status_code == 413 and response.mimetype == "application/json"
    assert "too large" in response.get_json()["error"]
    assert services.storage.l1.object_count() == 1


class _RoutesPlugin:
    """A third-party style plugin adding routes through the same hook as the built-ins."""

    def __init__(self, routes: dict[str, object]) -> None:
        self.routes = routes

    @hookimpl
    def lmcache_register_frontends(self, registry: FrontendRegistry) -> None:
        for name, factory in self.routes.items():
            registry.add_http_routes(name, factory)


def _failing_routes(services: object) -> Blueprint:
    bp = Blueprint("failing", __name__)

    @bp.get("/boom")
    def boom() -> str:
        raise RuntimeError("secret internals /etc/passwd")

    @bp.get("/missing")
    def missing() -> str:
        raise NotFoundError("no quota for salt 'x'")

    @bp.post("/json")
    def needs_json() -> dict[str, object]:
        from flask import request

        return {"got": request.get_json()}

    return bp


def _app_with(services: Services, routes: dict[str, object]) -> Flask:
    registry = builtin_plugins(_RoutesPlugin(routes)).frontend_registry()
    return create_app(dataclasses.replace(services, frontends=registry, lifecycle=Lifecycle()))


def test_an_unexpected_exception_is_a_json_500_without_details(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    client = _app_with(services, {"failing": _failing_routes}).test_client()
    with caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    assert response.status_code == 500 and response.mimetype == "application/json"
    assert response.get_json() == {"error": "internal error"}
    assert "secret" not in response.get_data(as_text=True) and "Traceback" not in response.get_data(as_text=True)
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_core_errors_map_to_their_status_and_bad_json_is_a_json_400(services: Services) -> None:
    client = _app_with(services, {"failing": _failing_routes}).test_client()
    response = client.get("/missing")
    assert (response.status_code, response.get_json()) == (404, {"error": "no quota for salt 'x'"})
    response = client.post("/json", data="{nope", content_type="application/json")
    assert response.status_code == 400 and response.mimetype == "application/json"
    assert "error" in response.get_json()


def test_plugin_routes_are_mounted_beside_the_builtin_ones(services: Services) -> None:
    client = _app_with(services, {"failing": _failing_routes}).test_client()
    assert client.get("/missing").status_code == 404
    assert client.get("/healthcheck").get_json() == {"status": "healthy"}


def test_a_plugin_shadowing_a_builtin_route_fails_at_start(services: Services) -> None:
    def shadow(services: object) -> Blueprint:
        bp = Blueprint("shadow", __name__)
        bp.add_url_rule("/status", "status", lambda: "mine")
        return bp

    with pytest.raises(PluginError, match="GET /status is defined twice"):
        _app_with(services, {"shadow": shadow})


def test_a_route_factory_must_return_a_blueprint(services: Services) -> None:
    with pytest.raises(PluginError, match="'bad' returned dict"):
        _app_with(services, {"bad": lambda services: {}})


def test_builtin_route_groups_come_from_the_entry_point() -> None:
    plugins = LMCachePluginManager(load_entrypoints=True)
    assert "builtin_frontends" in plugins.entry_points()
    registry = plugins.frontend_registry()
    for group in ("health", "status", "cache", "l2", "quota", "observability", "openapi"):
        assert registry.sources[f"http:{group}"] == "builtin_frontends", group
    assert "http:kvcache_check" not in registry.sources  # GET /kvcache/check is in the cache group
    assert registry.sources["server:zmq"] == "builtin_data_path"


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_refuses_an_unknown_adapter_type_naming_it() -> None:
    config = ServerConfig(l2_adapters=('{"type": "mock"}', '{"type": "nosuch"}'))
    with pytest.raises(ConfigError, match=r"--l2-adapter #2: unknown L2 adapter type 'nosuch'"):
        in_memory_stack(config)


def test_bootstrap_refuses_a_bad_adapter_field_naming_it() -> None:
    config = ServerConfig(l2_adapters=('{"type": "mock", "capacity_bytes": "lots"}',))
    with pytest.raises(ConfigError, match=r"--l2-adapter #1: .*'capacity_bytes'"):
        in_memory_stack(config)
    config = ServerConfig(l2_adapters=('{"type": "mock", "bogus": 1}',))
    with pytest.raises(ConfigError, match=r"--l2-adapter #1: .*'bogus'"):
        in_memory_stack(config)


def test_services_close_stops_everything_once() -> None:
    services = in_memory_stack()
    pool = services.memory_pool
    order: list[str] = []
    services.on_close("frontend", lambda: order.append("frontend"))
    assert services.engine.report_status()["storage_manager"]["eviction_controller"]["thread_alive"] is True
    services.close()
    services.close()
    assert order == ["frontend"]
    assert services.closed
    assert pool.report_status()["closed"] is True
    assert services.engine.storage.report_status()["eviction_controller"]["thread_alive"] is False
