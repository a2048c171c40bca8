"""Diagnostics routes: `GET /env` (secrets redacted) and `POST /run_script` (off unless enabled)."""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
from typing import Any

from flask import Blueprint, Response, current_app, request

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_core.plugin.routes import ADMIN
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import json_error
from lmcache_frontends.admin.openapi import error_responses, obj, text_response

log = logging.getLogger(__name__)

REDACTED = "***"
SECRET_NAME_RE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
RUN_SCRIPT_DISABLED = "POST /run_script is disabled; start the server with --enable-run-script to serve it"
NO_SCRIPT = "no script file provided (multipart form field 'script')"
SCRIPT_OK = "Script executed successfully"

# The reference's restricted builtins. They are NOT a sandbox (the script gets the app object);
# the route is off unless the operator turns it on.
_SAFE_BUILTINS = ("print", "str", "int", "float", "list", "dict", "tuple", "set")
ALLOWED_IMPORTS: frozenset[str] = frozenset()
"""Modules a script may import (none: the reference's `--script-allowed-imports` is not offered)."""


def redacted_environ(environ: dict[str, str] | os._Environ[str], *, unredacted: bool = False) -> dict[str, str]:
    """The environment sorted by name, values of secret-looking names replaced by "***"."""
    return {
        name: (REDACTED if not unredacted and SECRET_NAME_RE.search(name) and value else value)
        for name, value in sorted(environ.items())
    }


def _guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
    if name.split(".")[0] not in ALLOWED_IMPORTS:
        raise ImportError(f"import of {name!r} is not allowed in /run_script")
    return builtins.__import__(name, *args, **kwargs)


def _text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def create_diagnostics_blueprint(context: RouteContext) -> RouteGroup:
    """Process-level debugging routes."""
    bp = Blueprint("diagnostics", __name__)
    config = context.config

    @bp.get("/env")
    def env() -> Response:
        unredacted = bool(getattr(config, "env_unredacted", False))
        doc = redacted_environ(os.environ, unredacted=unredacted)
        return _text(json.dumps(doc, indent=2, sort_keys=True) + "\n")

    @bp.post("/run_script")
    def run_script() -> Response:
        if not getattr(config, "enable_run_script", False):
            audit("run-script", "refused: disabled")
            return json_error(403, RUN_SCRIPT_DISABLED)
        upload = request.files.get("script")
        if upload is None:
            audit("run-script", "rejected: no script")
            return json_error(400, NO_SCRIPT)
        try:
            source = upload.read().decode("utf-8")
        except UnicodeDecodeError:
            audit("run-script", "rejected: not UTF-8", filename=upload.filename)
            return json_error(400, "script is not UTF-8 text")
        safe = {name: getattr(builtins, name) for name in _SAFE_BUILTINS}
        safe["__import__"] = _guarded_import
        scope: dict[str, Any] = {"__builtins__": safe, "app": current_app._get_current_object()}  # type: ignore[attr-defined]
        try:
            exec(compile(source, upload.filename or "<script>", "exec"), scope)  # noqa: S102 - the route's purpose
        except Exception as exc:
            # The reference's documented answer; the message only, never a traceback.
            audit("run-script", "failed", filename=upload.filename, reason=str(exc))
            return _text(f"Error executing script: {exc}", 500)
        audit("run-script", "ok", filename=upload.filename)
        return _text(str(scope["result"]) if "result" in scope else SCRIPT_OK)

    return RouteGroup(bp, openapi=_OPENAPI, scopes={"/env": ADMIN})


_OPENAPI: dict[str, Any] = {
    "/env": {
        "get": {
            "summary": "The process environment as sorted JSON (text/plain); secret-looking values redacted",
            "tags": ["diagnostics"],
            "responses": {"200": text_response("Pretty-printed JSON object of name -> value")},
        }
    },
    "/run_script": {
        "post": {
            "summary": "Run an uploaded Python script in the server process (off unless --enable-run-script)",
            "tags": ["diagnostics"],
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": obj({"script": {"type": "string", "format": "binary"}}),
                    }
                },
            },
            "responses": {
                "200": text_response("`str(result)`, or `Script executed successfully`"),
                **error_responses(400, 403, 413),
                "500": text_response("`Error executing script: <reason>`"),
            },
        }
    },
}
