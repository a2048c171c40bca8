"""Bearer-token authentication of the admin API: tokens, scopes, the route policy, the hook the
app factory installs."""

from __future__ import annotations

import hmac
import logging
import os
import re
import stat
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_core.errors import ConfigError
from lmcache_core.plugin import RouteGroup
from lmcache_core.plugin.routes import ADMIN, READ
from lmcache_frontends.admin import audit as audit_mod
from lmcache_frontends.admin.errors import json_error
from lmcache_frontends.admin.groups import route_groups
from lmcache_frontends.admin.openapi import json_response, obj
from lmcache_frontends.options import MIN_TOKEN_LENGTH

log = logging.getLogger(__name__)

SCOPES = (READ, ADMIN)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

PROBE_RULES = frozenset({"/", "/healthcheck", "/api/healthcheck", "/readyz"})
"""Routes that stay open for load balancers and kubelet probes."""
# Reads of process internals (`/env`, `/threads`: admin) and POSTs that only read
# (`/cache/checksums`: read) are declared by their route groups (`RouteGroup.scopes`).


@dataclass(frozen=True)
class ScopePolicy:
    """An app's defaults beyond its route groups' declarations (`RouteGroup.scopes`: reads of
    process internals, POSTs that only read): which routes it leaves open for probes and which
    it audits only when refused. Another app (the coordinator) passes its own."""

    probe_rules: frozenset[str] = PROBE_RULES
    unaudited_rules: frozenset[str] = frozenset()
    """High-rate machine traffic (heartbeats, event reports): audited only when refused."""


DEFAULT_POLICY = ScopePolicy()

EXTENSION_KEY = "lmcache.auth"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class Token:
    """One bearer token: a name for the audit log, a scope, and the secret (never in repr)."""

    name: str
    scope: str
    secret: str = field(repr=False)

    def allows(self, scope: str) -> bool:
        """Admin implies read."""
        return self.scope == ADMIN or scope == READ


def parse_token_file(text: str, *, source: str = "token file") -> list[Token]:
    """Tokens from `name:scope:token` lines (blank lines and `#` comments skipped). Errors name
    the line number and never echo a secret."""
    tokens: list[Token] = []
    names: set[str] = set()
    secrets: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source} line {number}"
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ConfigError(f"{where}: expected name:scope:token")
        name, scope, secret = (p.strip() for p in parts)
        if not _NAME_RE.match(name):
            raise ConfigError(f"{where}: token name must be 1-64 of A-Z a-z 0-9 _ . @ -")
        if scope not in SCOPES:
            raise ConfigError(f"{where}: scope must be read or admin, got {scope[:16]!r}")
        if len(secret) < MIN_TOKEN_LENGTH or any(c.isspace() for c in secret):
            raise ConfigError(f"{where}: token must be at least {MIN_TOKEN_LENGTH} characters without whitespace")
        if name in names:
            raise ConfigError(f"{where}: token name {name!r} appears twice")
        if secret in secrets:
            raise ConfigError(f"{where}: this token is already listed under another name")
        names.add(name)
        secrets.add(secret)
        tokens.append(Token(name, scope, secret))
    return tokens


def load_token_file(path: str) -> list[Token]:
    """Read and parse a token file; warn when other users may read it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
            mode = os.fstat(f.fileno()).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"--token-file cannot read {path!r}: {reason}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("token file %s is readable by other users (mode %o); chmod 600 it", path, mode & 0o777)
    return parse_token_file(text, source=f"token file {path!r}")


def static_tokens(config: Any) -> list[Token]:
    """The tokens of --admin-token / --read-token (their env vars land in the same fields)."""
    out = []
    if getattr(config, "admin_token", None):
        out.append(Token("admin-token", ADMIN, config.admin_token))
    if getattr(config, "read_token", None):
        out.append(Token("read-token", READ, config.read_token))
    if len(out) == 2 and out[0].secret == out[1].secret:
        raise ConfigError("--admin-token and --read-token must differ")
    return out


class TokenStore:
    """The tokens one admin app accepts. Lookups compare against every token in constant time;
    `reload()` swaps in the token file's current contents atomically (SIGHUP)."""

    def __init__(self, tokens: Iterable[Token] = (), *, token_file: str | None = None) -> None:
        self._static = tuple(tokens)
        self.token_file = token_file
        self._reload_lock = threading.Lock()
        self._tokens: tuple[Token, ...] = self._static
        if token_file is not None:
            self._tokens = self._merge(load_token_file(token_file))
        _STORES.add(self)

    @classmethod
    def from_config(cls, config: Any) -> TokenStore:
        return cls(static_tokens(config), token_file=getattr(config, "token_file", None))

    def _merge(self, from_file: list[Token]) -> tuple[Token, ...]:
        names = {t.name for t in self._static}
        for token in from_file:
            if token.name in names:
                raise ConfigError(f"token file {self.token_file!r}: name {token.name!r} is reserved for a flag token")
        return self._static + tuple(from_file)

    @property
    def enabled(self) -> bool:
        """True when any token is configured (otherwise every route is open)."""
        return bool(self._tokens)

    def names(self) -> list[tuple[str, str]]:
        """(name, scope) of every token, for logs and tests; never the secrets."""
        return [(t.name, t.scope) for t in self._tokens]

    def authenticate(self, presented: str) -> Token | None:
        """The token whose secret equals `presented`, compared in constant time against all."""
        candidate = presented.encode("utf-8", "surrogateescape")
        found: Token | None = None
        for token in self._tokens:  # no early exit: timing does not tell which one matched
            if hmac.compare_digest(candidate, token.secret.encode("utf-8")):
                found = token
        return found

    def reload(self) -> int:
        """Re-read the token file; on an error the current tokens stay (and ConfigError is raised).
        Returns how many tokens are active afterwards."""
        if self.token_file is None:
            return len(self._tokens)
        with self._reload_lock:
            tokens = self._merge(load_token_file(self.token_file))
            self._tokens = tokens
        return len(tokens)


_STORES: weakref.WeakSet[TokenStore] = weakref.WeakSet()


def reload_token_files() -> list[str]:
    """Reload every live token store that reads a file (the SIGHUP handler's work); returns
    one line per store for the log. A bad file keeps the previous tokens."""
    lines = []
    for store in list(_STORES):
        if store.token_file is None:
            continue
        try:
            count = store.reload()
        except ConfigError as exc:
            log.error("token file not reloaded, previous tokens stay active: %s", exc)
            lines.append(f"failed: {exc}")
            continue
        log.info("token file %s reloaded: %d tokens (%s)", store.token_file, count,
                 ", ".join(f"{n}:{s}" for n, s in store.names()))
        lines.append(f"reloaded {store.token_file}: {count} tokens")
    return lines


def required_scope(
    rule: str | None,
    method: str,
    args: Mapping[str, Any],
    *,
    metrics_require_token: bool = False,
    policy: ScopePolicy = DEFAULT_POLICY,
    declared: Mapping[str, str | None] | None = None,
) -> str | None:
    """The scope a request needs: None for the open probes, `read` for reads, `admin` for
    everything that changes state and for reads of process internals. Unknown paths need
    `read` (GET) or `admin`, so a token-less caller cannot map the API by 404 vs 401.
    `declared` is the matched route group's own declaration (`RouteGroup.scopes`): None leaves
    a read open, `read` or `admin` as for any route; it never opens a state-changing method."""
    safe = method in SAFE_METHODS
    if declared is not None and rule is not None and rule in declared:
        scope = declared[rule]
        if safe:
            return scope
        return READ if scope == READ else ADMIN
    if safe and rule in policy.probe_rules:
        return None
    if safe and rule == "/metrics":
        return READ if metrics_require_token else None
    if not safe:
        return ADMIN
    if rule == "/loglevel" and "level" in args:  # GET /loglevel?level=... sets a level
        return ADMIN
    return READ


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _unauthorized(message: str, error_code: str | None) -> WerkzeugResponse:
    response = json_error(401, message)
    challenge = 'Bearer realm="lmcache"'
    if error_code:
        challenge += f', error="{error_code}"'
    response.headers["WWW-Authenticate"] = challenge
    return response


def _declared_scopes() -> Mapping[str, str | None] | None:
    # The matched endpoint's route group: the scopes it declared for its rules.
    group = route_groups(current_app).get(request.blueprint) if request.blueprint else None
    return group.scopes if group is not None else None


def install_auth(app: Flask, config: Any, policy: ScopePolicy = DEFAULT_POLICY) -> TokenStore:
    """Authenticate every request of `app` against the configured tokens (none configured = all
    open) and write one audit record per state-changing call. Call before any other
    before-request hook: an unauthenticated caller learns nothing but 401."""
    store = TokenStore.from_config(config)
    trail = audit_mod.AuditTrail(getattr(config, "audit_log", None))
    metrics_require_token = bool(getattr(config, "metrics_require_token", False))

    def authenticate() -> WerkzeugResponse | None:
        audit_mod.begin_request()
        rule = request.url_rule.rule if request.url_rule is not None else None
        scope = required_scope(
            rule, request.method, request.args, metrics_require_token=metrics_require_token, policy=policy,
            declared=_declared_scopes(),
        )
        g.lmcache_required_scope = scope
        header = request.headers.get("Authorization")
        presented = _bearer(header)
        token = store.authenticate(presented) if presented is not None and store.enabled else None
        if token is not None:
            g.lmcache_principal = token.name
            g.lmcache_token_scope = token.scope
        if scope is None or not store.enabled:
            return None
        if presented is None:
            g.lmcache_auth_denied = True
            return _unauthorized("authentication required: send Authorization: Bearer <token>", None)
        if token is None:
            g.lmcache_auth_denied = True
            return _unauthorized("invalid token", "invalid_token")
        if not token.allows(scope):
            g.lmcache_auth_denied = True
            response = json_error(
                403,
                f"token {token.name!r} has the {token.scope} scope; {request.method} {request.path} needs {scope}",
                required_scope=scope,
            )
            response.headers["WWW-Authenticate"] = f'Bearer realm="lmcache", error="insufficient_scope", scope="{scope}"'
            return response
        return None

    def record(response: WerkzeugResponse) -> WerkzeugResponse:
        rule = request.url_rule.rule if request.url_rule is not None else None
        if rule in policy.unaudited_rules and not getattr(g, "lmcache_auth_denied", False):
            return response
        audit_mod.finish_request(trail, response, required_scope=getattr(g, "lmcache_required_scope", None))
        return response

    app.before_request(authenticate)
    app.after_request(record)
    app.extensions[EXTENSION_KEY] = store
    app.extensions[audit_mod.TRAIL_KEY] = trail
    if store.enabled:
        log.info("admin API authentication on: %s", ", ".join(f"{n}:{s}" for n, s in store.names()))
    return store


def create_auth_blueprint(context: object) -> RouteGroup:
    """`GET /auth/whoami`: the caller's token name and scope (the app factory authenticates).
    Mounted by the admin and the coordinator apps alike: it reads nothing of `context`."""
    bp = Blueprint("auth", __name__)

    @bp.get("/auth/whoami")
    def whoami() -> Response:
        store = current_app.extensions[EXTENSION_KEY]
        # Without tokens every route is open: the caller may do everything.
        if not store.enabled:
            return jsonify(tokens_required=False, token=None, scope=ADMIN)
        return jsonify(tokens_required=True, token=g.get("lmcache_principal"), scope=g.get("lmcache_token_scope"))

    return RouteGroup(bp, openapi=WHOAMI_OPENAPI)


WHOAMI_OPENAPI: dict[str, Any] = {
    "/auth/whoami": {
        "get": {
            "summary": "The caller's token name and scope (what a console shows and enables)",
            "tags": ["auth"],
            "responses": {
                "200": json_response(
                    "`scope` is `admin` when no tokens are configured (every route is open)",
                    obj(
                        {
                            "tokens_required": {"type": "boolean"},
                            "token": {"type": "string", "nullable": True},
                            "scope": {"type": "string", "enum": list(SCOPES)},
                        }
                    ),
                )
            },
        }
    }
}
