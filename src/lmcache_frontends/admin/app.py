"""The admin app factory: mounts every route group registered through the frontend hook and
applies authentication and audit to all of them from their declarations."""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_core.errors import LMCacheError, PluginError
from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.auth import DEFAULT_POLICY, ScopePolicy, install_auth
from lmcache_frontends.admin.errors import INTERNAL_ERROR, json_error, status_for
from lmcache_frontends.admin.groups import ROUTE_GROUPS_KEY, as_route_group
from lmcache_frontends.bootstrap import AdminContext, Application

log = logging.getLogger(__name__)

C = TypeVar("C")

DEFAULT_MAX_CONTENT_LENGTH = 8 << 20
"""Largest request body the admin API accepts (8 MiB: a `DELETE /l2` of the documented 10000
full-width keys with long model names and salts fits); larger ones get a JSON 413."""


def _json_default(obj: Any) -> Any:
    # Status reports come from plugins too; an odd value must not turn /status into a 500.
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    try:
        return DefaultJSONProvider.default(obj)
    except TypeError:
        return repr(obj)


class AdminJSONProvider(DefaultJSONProvider):
    """Flask's JSON with insertion order kept (status trees read top-down) and lenient values."""

    sort_keys = False
    default = staticmethod(_json_default)


def create_app(
    context: RouteContext | Application,
    *,
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    policy: ScopePolicy = DEFAULT_POLICY,
) -> Flask:
    """Build the admin Flask app over `context`: the server's RouteContext (`serve()` builds it
    before the engine exists and attaches the Application later), or an Application already
    running (tests, embedders). Mounts every route group in `context.frontends.http_routes`, in
    registration order, each factory called with the RouteContext."""
    if isinstance(context, Application):
        context = AdminContext.running(context)
    return create_route_app(
        context, context.config, context.frontends.http_routes, max_content_length=max_content_length, policy=policy
    )


def create_route_app(
    context: C,
    config: Any,
    route_groups: Mapping[str, Callable[[C], object]],
    *,
    max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
    policy: ScopePolicy = DEFAULT_POLICY,
) -> Flask:
    """A Flask app mounting `route_groups` (name -> factory, called with `context`) in order, with
    JSON errors, the body limit, bearer authentication (by `policy` and each group's declared
    scopes) and the audit trail of state-changing calls (`config`: tokens, `--audit-log`) applied
    to all of them. The admin API's app and the coordinator's are both built by it."""
    app = Flask("lmcache_frontends.admin", static_folder=None)  # no /static route on an API server
    app.json = AdminJSONProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = max_content_length
    _install_error_handlers(app)
    groups: dict[str, RouteGroup] = {}
    app.extensions[ROUTE_GROUPS_KEY] = groups
    # Auth first: an unauthenticated caller learns nothing but 401 (not even a 413).
    install_auth(app, config, policy)

    @app.before_request
    def _limit_body() -> None:
        # Werkzeug enforces MAX_CONTENT_LENGTH only when a body is read; routes that ignore
        # their body (clear-cache) must refuse an oversized one too.
        length = request.content_length
        if length is not None and length > max_content_length:
            raise RequestEntityTooLarge()

    for name, factory in route_groups.items():
        group = as_route_group(name, factory(context))
        try:
            app.register_blueprint(group.blueprint)
        except ValueError as exc:  # two blueprints with one name
            raise PluginError(f"route group {name!r}: {exc}") from exc
        groups[group.blueprint.name] = group
    _refuse_duplicate_routes(app)
    return app


def _refuse_duplicate_routes(app: Flask) -> None:
    # Werkzeug would silently serve the first of two identical rules; a plugin shadowing a
    # built-in route (or another plugin's) must fail at start instead.
    seen: dict[tuple[str, str], str] = {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods or ():
            if method in ("HEAD", "OPTIONS"):
                continue
            key = (rule.rule, method)
            if key in seen and seen[key] != rule.endpoint:
                raise PluginError(
                    f"route {method} {rule.rule} is defined twice (endpoints {seen[key]!r} and {rule.endpoint!r})"
                )
            seen[key] = rule.endpoint


def _http_message(exc: HTTPException) -> str:
    if isinstance(exc, NotFound):
        return f"not found: {request.method} {request.path}"
    if isinstance(exc, MethodNotAllowed):
        allowed = ", ".join(sorted(m for m in exc.valid_methods or () if m not in ("HEAD", "OPTIONS")))
        return f"method {request.method} not allowed on {request.path}" + (f" (allowed: {allowed})" if allowed else "")
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length
        return f"request body too large (limit {limit} bytes)" if limit else "request body too large"
    return f"{(exc.name or 'error').lower()}: {exc.description}" if exc.description else (exc.name or "error").lower()


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> WerkzeugResponse:
        response = exc.get_response()  # keeps headers such as Allow on a 405
        message = _http_message(exc)
        # `detail` as FastAPI (LMCache's own servers, both generations) words it, for its clients.
        body = json_error(exc.code or 500, message, detail=exc.name)
        response.set_data(body.get_data())
        response.content_type = "application/json"
        return response

    @app.errorhandler(LMCacheError)
    def _domain_error(exc: LMCacheError) -> Response:
        status = status_for(exc) or 500
        if status == 500:
            log.exception("admin request %s %s failed", request.method, request.path, exc_info=exc)
            return json_error(status, INTERNAL_ERROR)
        return json_error(status, str(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> WerkzeugResponse:
        if isinstance(exc, HTTPException):
            return _http_error(exc)
        mapped = status_for(exc)
        if mapped is not None and mapped < 500:
            return json_error(mapped, str(exc))
        # Never a traceback in the body: log it, answer a fixed message.
        log.error("admin request %s %s failed", request.method, request.path, exc_info=exc)
        return json_error(500, INTERNAL_ERROR)

