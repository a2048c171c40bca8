"""The coordinator's Flask app: the admin app factory (JSON errors, body limit, bearer tokens and
audit) with the coordinator's route groups."""

from __future__ import annotations

from flask import Flask
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_frontends.admin.app import create_route_app
from lmcache_frontends.admin.audit import create_audit_blueprint
from lmcache_frontends.admin.auth import ScopePolicy, create_auth_blueprint
from lmcache_frontends.console.routes import create_fleet_console_blueprint
from lmcache_frontends.coordinator.cache import create_cache_blueprint
from lmcache_frontends.coordinator.common import CONTEXT_KEY, CoordinatorContext
from lmcache_frontends.coordinator.directory import create_directory_blueprint
from lmcache_frontends.coordinator.events import create_events_blueprint
from lmcache_frontends.coordinator.membership import create_membership_blueprint
from lmcache_frontends.coordinator.ops import create_ops_blueprint
from lmcache_frontends.coordinator.quota import create_quota_blueprint

MAX_BODY_BYTES = 64 << 20
"""Largest request body (an event flush of 200,000 entries is about 50 MiB of JSON)."""

POLICY = ScopePolicy(
    probe_rules=frozenset({"/healthz"}),
    unaudited_rules=frozenset({"/instances/<instance_id>/heartbeat", "/events", "/l2/events"}),
)
"""The coordinator's probe and its high-rate machine traffic (audited only when refused); the
directory group declares its lookups readable with a read token, and everything else that
changes state needs the admin scope."""

ROUTE_GROUPS = {
    "auth": create_auth_blueprint,
    "membership": create_membership_blueprint,
    "events": create_events_blueprint,
    "directory": create_directory_blueprint,
    "quota": create_quota_blueprint,
    "cache": create_cache_blueprint,
    "ops": create_ops_blueprint,
    "audit": create_audit_blueprint,
    "console": create_fleet_console_blueprint,
}


def create_coordinator_app(ctx: CoordinatorContext) -> Flask:
    """Build the app over `ctx`: the coordinator's route groups, read through `context()`."""
    app = create_route_app(ctx, ctx.config, ROUTE_GROUPS, max_content_length=MAX_BODY_BYTES, policy=POLICY)
    app.extensions[CONTEXT_KEY] = ctx

    @app.after_request
    def _detail(response: WerkzeugResponse) -> WerkzeugResponse:
        # LMCache's coordinator clients read FastAPI's `detail`; ours always carry `error`.
        if response.status_code >= 400 and response.is_json:
            body = response.get_json(silent=True)
            if isinstance(body, dict) and "error" in body and "detail" not in body:
                body["detail"] = body["error"]
                response.set_data(app.json.dumps(body))
        return response

    return app
