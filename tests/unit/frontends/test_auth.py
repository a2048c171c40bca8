"""Admin-API authentication: route policy over the whole URL map, token files, audit records,
and the start-up exposure checks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from lmcache_core.errors import ConfigError
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.auth import (
    ADMIN,
    READ,
    TokenStore,
    parse_token_file,
    reload_token_files,
    required_scope,
)
from lmcache_frontends.admin.groups import route_groups
from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig, load_config
from lmcache_frontends.safety import check_exposure, is_loopback
from lmcache_frontends.testing import in_memory_stack

ADMIN_SECRET = "adm-0123456789abcdef-secret"
READ_SECRET = "rd-0123456789abcdef-secret"
FILE_SECRET = "file-ops-0123456789abcdef"
PROBES = {("GET", "/"), ("GET", "/healthcheck"), ("GET", "/api/healthcheck"), ("GET", "/readyz"), ("GET", "/metrics")}
# The console's static page and assets: open (a browser cannot send a bearer header when it
# navigates; the page holds no data and asks for a token).
STATIC = {("GET", "/ui"), ("GET", "/ui/assets/<path:name>")}
ADMIN_GETS = {"/env", "/threads"}
READ_POSTS = {"/cache/checksums"}  # 0.5.6's body form of GET /kvcache/check: a read


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# operators\nops:admin:{FILE_SECRET}\n\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def secured(token_file: Path, tmp_path: Path) -> Iterator[Services]:
    config = ServerConfig(
        l2_adapters=('{"type": "mock"}',),
        admin_token=ADMIN_SECRET,
        read_token=READ_SECRET,
        token_file=str(token_file),
        audit_log=str(tmp_path / "audit.jsonl"),
    )
    stack = in_memory_stack(config)
    yield stack
    stack.close()


@pytest.fixture
def secured_app(secured: Services) -> Flask:
    return create_app(secured)


@pytest.fixture
def sclient(secured_app: Flask) -> FlaskClient:
    return secured_app.test_client()


def _requests(app: Flask) -> list[tuple[str, str, str]]:
    """(method, rule, concrete path) for every rule and method of the URL map."""
    out = []
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "x", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, path))
    assert len(out) > 30  # the whole admin API, not an empty map
    return sorted(out)


def _state_changing(method: str, rule: str) -> bool:
    return (method != "GET" and rule not in READ_POSTS) or rule in ADMIN_GETS


# --------------------------------------------------------------------------- route policy


def test_every_non_probe_route_needs_a_token(secured_app: Flask, sclient: FlaskClient) -> None:
    for method, rule, path in _requests(secured_app):
        response = sclient.open(path, method=method)
        if (method, rule) in PROBES | STATIC:
            assert response.status_code != 401, (method, rule)
            continue
        assert response.status_code == 401, (method, rule, response.status_code)
        assert response.is_json and "error" in response.get_json(), (method, rule)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), (method, rule)


def test_an_unknown_token_and_a_malformed_header_are_401(sclient: FlaskClient) -> None:
    bad = sclient.get("/status", headers=_bearer("not-a-real-token-at-all"))
    assert bad.status_code == 401 and bad.get_json()["error"] == "invalid token"
    assert 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    assert sclient.get("/status", headers={"Authorization": f"Basic {ADMIN_SECRET}"}).status_code == 401
    # Unknown paths answer 401 too: a caller without a token cannot map the API.
    assert sclient.get("/no/such/route").status_code == 401
    assert sclient.get("/no/such/route", headers=_bearer(READ_SECRET)).status_code == 404


def test_a_read_token_is_refused_on_every_state_changing_route(secured_app: Flask, sclient: FlaskClient) -> None:
    refused = []
    for method, rule, path in _requests(secured_app):
        if not _state_changing(method, rule):
            continue
        response = sclient.open(path, method=method, headers=_bearer(READ_SECRET))
        assert response.status_code == 403, (method, rule, response.status_code)
        body = response.get_json()
        assert body["required_scope"] == ADMIN and "read-token" in body["error"], (method, rule)
        refused.append((method, rule))
    assert ("POST", "/clear-cache") in refused and ("DELETE", "/l2") in refused and ("PUT", "/quota/<cache_salt>") in refused
    # Setting a log level through GET needs admin; reading levels does not.
    assert sclient.get("/loglevel?logger_name=x&level=DEBUG", headers=_bearer(READ_SECRET)).status_code == 403
    assert sclient.get("/loglevel?logger_name=x", headers=_bearer(READ_SECRET)).status_code == 200
    assert logging.getLogger("x").level == logging.NOTSET


def test_a_read_token_reads_and_an_admin_token_does_everything(secured_app: Flask, sclient: FlaskClient) -> None:
    for method, rule, path in _requests(secured_app):
        if not _state_changing(method, rule):
            response = sclient.open(path, method=method, headers=_bearer(READ_SECRET))
            assert response.status_code not in (401, 403), (method, rule, response.status_code)
        for secret in (ADMIN_SECRET, FILE_SECRET):
            response = sclient.open(path, method=method, headers=_bearer(secret))
            assert response.status_code != 401, (method, rule)
            if response.status_code == 403:  # only the route's own refusal, never a scope one
                assert rule == "/run_script" and "--enable-run-script" in response.get_json()["error"]
    assert sclient.post("/clear-cache", headers=_bearer(ADMIN_SECRET)).get_json() == {"status": "ok"}


def test_metrics_can_require_a_read_token() -> None:
    stack = in_memory_stack(ServerConfig(read_token=READ_SECRET, metrics_require_token=True))
    try:
        client = create_app(stack).test_client()
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_bearer(READ_SECRET)).status_code == 200
        assert client.get("/healthcheck").status_code == 200
    finally:
        stack.close()


def test_without_tokens_everything_stays_open(client: FlaskClient) -> None:
    assert client.get("/status").status_code == 200
    assert client.get("/env").status_code == 200
    assert client.post("/clear-cache").status_code == 200


@pytest.mark.parametrize(
    ("method", "rule", "args", "scope"),
    [
        ("GET", "/", {}, None),
        ("GET", "/readyz", {}, None),
        ("POST", "/healthcheck", {}, ADMIN),
        ("GET", "/metrics", {}, None),
        ("GET", "/status", {}, READ),
        ("GET", "/quota/<cache_salt>", {}, READ),
        ("DELETE", "/quota/<cache_salt>", {}, ADMIN),
        ("GET", "/env", {}, ADMIN),
        ("GET", "/threads", {}, ADMIN),
        ("GET", "/loglevel", {"level": "INFO"}, ADMIN),
        ("GET", "/loglevel", {}, READ),
        ("GET", None, {}, READ),
        ("PATCH", None, {}, ADMIN),
    ],
)
def test_required_scope(
    method: str, rule: str | None, args: dict[str, str], scope: str | None, builtin_declarations: dict[str, dict[str, str | None]]
) -> None:
    # `/env` and `/threads` are declared admin by their own route groups (RouteGroup.scopes),
    # no longer by a hard-coded list: pass the declaration of the group that serves the rule.
    assert required_scope(rule, method, args, declared=builtin_declarations.get(rule or "")) == scope


@pytest.fixture(scope="module")
def builtin_declarations() -> Iterator[dict[str, dict[str, str | None]]]:
    """rule -> the scopes declared by the built-in route group that serves it."""
    stack = in_memory_stack()
    try:
        app = create_app(stack)
        groups = route_groups(app)
        yield {
            rule.rule: dict(groups[rule.endpoint.split(".")[0]].scopes)
            for rule in app.url_map.iter_rules()
            if "." in rule.endpoint
        }
    finally:
        stack.close()


def test_route_groups_declare_the_scopes_that_differ_from_the_defaults(
    builtin_declarations: dict[str, dict[str, str | None]],
) -> None:
    assert builtin_declarations["/env"] == {"/env": ADMIN}
    assert builtin_declarations["/threads"] == {"/threads": ADMIN}
    assert builtin_declarations["/cache/checksums"] == {"/cache/checksums": READ}
    assert required_scope("/env", "GET", {}) == READ  # the app's default alone: a read


# --------------------------------------------------------------------------- tokens


def test_token_file_errors_name_the_line_and_never_the_secret() -> None:
    good = "a:read:" + "r" * 16
    cases = {
        f"{good}\nbroken-line": "line 2: expected name:scope:token",
        f"{good}\n\nb:write:{'w' * 16}": "line 3: scope must be read or admin",
        "c:admin:tooshortsecret": "line 1: token must be at least 16",
        f"{good}\na:admin:{'s' * 16}": "line 2: token name 'a' appears twice",
        f"{good}\nb:admin:{'r' * 16}": "line 2: this token is already listed",
        "bad name:read:" + "x" * 16: "line 1: token name must be",
    }
    for text, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            parse_token_file(text, source="tokens")
        assert "rrrrrrrrrrrrrrrr" not in str(info.value) and "tooshortsecret" not in str(info.value)
    tokens = parse_token_file(f"# comment\n\n  {good}  \nops:admin:with:colons:{'z' * 16}\n")
    assert [(t.name, t.scope) for t in tokens] == [("a", "read"), ("ops", "admin")]
    assert tokens[1].secret == f"with:colons:{'z' * 16}"
    assert "secret" not in repr(tokens[0]).replace("secret=", "") and "r" * 16 not in repr(tokens[0])


def test_store_authenticates_by_secret_and_reload_swaps_tokens(token_file: Path) -> None:
    store = TokenStore.from_config(ServerConfig(admin_token=ADMIN_SECRET, token_file=str(token_file)))
    assert store.authenticate(ADMIN_SECRET).name == "admin-token"  # type: ignore[union-attr]
    assert store.authenticate(FILE_SECRET).name == "ops"  # type: ignore[union-attr]
    assert store.authenticate(FILE_SECRET[:-1]) is None and store.authenticate("") is None

    new_secret = "rotated-0123456789abcdef"
    token_file.write_text(f"ops2:read:{new_secret}\n")
    assert any("reloaded" in line for line in reload_token_files())
    assert store.authenticate(FILE_SECRET) is None
    assert store.authenticate(new_secret).scope == READ  # type: ignore[union-attr]
    assert store.authenticate(ADMIN_SECRET) is not None  # flag tokens survive a reload

    token_file.write_text("garbage\n")
    with pytest.raises(ConfigError, match="line 1"):
        store.reload()
    assert store.authenticate(new_secret) is not None  # a bad file keeps the previous tokens


def test_a_bad_token_file_stops_the_app_from_building(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("x:root:" + "y" * 20 + "\n")
    stack = in_memory_stack(ServerConfig(token_file=str(path)))
    try:
        with pytest.raises(ConfigError, match="line 1: scope must be read or admin"):
            create_app(stack)
    finally:
        stack.close()


def test_flag_tokens_must_be_long_and_distinct() -> None:
    with pytest.raises(ConfigError, match="LMCACHE_ADMIN_TOKEN .*at least 16"):
        load_config([], env={"LMCACHE_ADMIN_TOKEN": "short"})
    with pytest.raises(ConfigError, match="must differ"):
        TokenStore.from_config(ServerConfig(admin_token=ADMIN_SECRET, read_token=ADMIN_SECRET))


# --------------------------------------------------------------------------- audit and secrecy


def test_every_state_changing_call_writes_one_audit_record(
    secured: Services, sclient: FlaskClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = [
        ("POST", "/clear-cache?cache_salt=a", ADMIN_SECRET, None),
        ("PUT", "/quota/tenant-a", FILE_SECRET, {"limit_gb": 0.5}),
        ("DELETE", "/quota/tenant-a", ADMIN_SECRET, None),
        ("DELETE", "/l2", ADMIN_SECRET, {"keys": []}),
        ("POST", "/metrics/reset", ADMIN_SECRET, None),
        ("GET", "/loglevel?logger_name=lmcache.test&level=WARNING", ADMIN_SECRET, None),
        ("GET", "/env", ADMIN_SECRET, None),
        ("POST", "/clear-cache", READ_SECRET, None),  # refused: audited as a denial
        ("POST", "/run_script", ADMIN_SECRET, None),  # refused by the route: audited too
    ]
    with caplog.at_level(logging.DEBUG):
        for method, path, secret, body in calls:
            sclient.open(path, method=method, headers=_bearer(secret), json=body)
        sclient.get("/status", headers=_bearer(READ_SECRET))  # a read: no record
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["method"], r["path"]) for r in records] == [(m, p.split("?")[0]) for m, p, _, _ in calls]
    clear = records[0]
    assert clear["who"] == "admin-token" and clear["status"] == 200 and clear["action"] == "clear-cache"
    assert clear["params"] == {"cache_salt": "a"} and clear["details"]["removed_objects"] == 0
    assert clear["duration_ms"] >= 0 and clear["ts"].endswith("Z")
    quota = records[1]
    assert quota["who"] == "ops" and quota["params"]["body"] == {"limit_gb": 0.5} and quota["outcome"] == "ok"
    denied = records[-2]
    assert denied["who"] == "read-token" and denied["status"] == 403 and denied["outcome"] == "denied: insufficient scope"
    assert records[-1]["status"] == 403 and records[-1]["action"] == "run-script"
    log_lines = [r.getMessage() for r in caplog.records if r.name == "lmcache.audit"]
    assert len(log_lines) == len(calls)
    assert "action=clear-cache outcome=ok who=admin-token route=POST /clear-cache status=200" in log_lines[0]


def test_tokens_never_reach_logs_conf_or_repr(
    secured: Services, sclient: FlaskClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        create_app(secured)  # the "authentication on" line
        for secret in (ADMIN_SECRET, READ_SECRET, FILE_SECRET, "wrong-token-0123456789"):
            sclient.get("/status", headers=_bearer(secret))
            sclient.post("/clear-cache?token=" + secret, headers=_bearer(secret))
        conf = sclient.get("/conf", headers=_bearer(READ_SECRET))
    assert conf.status_code == 200
    assert conf.get_json()["mp"]["admin_token"] == "***" and conf.get_json()["mp"]["read_token"] == "***"
    logged = "\n".join(r.getMessage() + repr(getattr(r, "audit", "")) for r in caplog.records)
    assert "authentication on: admin-token:admin, read-token:read, ops:admin" in logged
    audit_file = (tmp_path / "audit.jsonl").read_text()
    assert "***" in audit_file  # the pasted query token was redacted
    for secret in (ADMIN_SECRET, READ_SECRET, FILE_SECRET, "wrong-token-0123456789"):
        assert secret not in conf.get_data(as_text=True)
        assert secret not in logged
        assert secret not in audit_file
        assert secret not in repr(secured.config)


# --------------------------------------------------------------------------- exposure checks


def test_loopback_detection() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "example.com", "192.168.1.1"))


def test_a_non_loopback_admin_needs_a_token_or_the_explicit_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--allow-unauthenticated-admin"):
        check_exposure(ServerConfig(http_host="0.0.0.0"))
    empty = tmp_path / "tokens"
    empty.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="--allow-unauthenticated-admin"):
        check_exposure(ServerConfig(http_host="10.1.2.3", token_file=str(empty)))
    assert check_exposure(ServerConfig(http_host="0.0.0.0", read_token=READ_SECRET)) == []
    assert check_exposure(ServerConfig()) == []
    warnings = check_exposure(ServerConfig(http_host="0.0.0.0", allow_unauthenticated_admin=True))
    assert len(warnings) == 1 and "unauthenticated" in warnings[0]


def test_a_non_loopback_data_path_needs_curve_or_the_explicit_flag(tmp_path: Path) -> None:
    import zmq.auth

    with pytest.raises(ConfigError, match="--zmq-curve-secret-key-file and --zmq-curve-authorized-keys.*--allow-unauthenticated-data-path"):
        check_exposure(ServerConfig(host="0.0.0.0"))
    public, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    with pytest.raises(ConfigError, match="set --zmq-curve-authorized-keys"):
        check_exposure(ServerConfig(host="0.0.0.0", zmq_curve_secret_key_file=secret))
    with pytest.raises(ConfigError, match="holds no secret key"):
        check_exposure(ServerConfig(zmq_curve_secret_key_file=public))
    clients = tmp_path / "clients"
    clients.mkdir()
    with pytest.raises(ConfigError, match="holds no \\*.key"):
        check_exposure(ServerConfig(zmq_curve_secret_key_file=secret, zmq_curve_authorized_keys=str(clients)))
    zmq.auth.create_certificates(str(clients), "engine-1")
    assert check_exposure(ServerConfig(host="0.0.0.0", zmq_curve_secret_key_file=secret, zmq_curve_authorized_keys=str(clients))) == []
    warnings = check_exposure(ServerConfig(host="0.0.0.0", allow_unauthenticated_data_path=True))
    assert len(warnings) == 1 and "every tenant" in warnings[0]
