"""Route group `console`: `GET /ui` and its assets, static files from package data.

The pages hold no data: their scripts read everything from the authenticated API routes with the
operator's bearer token, so `/ui` itself stays open (a browser cannot send a bearer header when
it navigates) and answers the same bytes to everyone. Every response carries a strict
Content-Security-Policy: scripts and styles from this origin only, no inline code, no other
origin to talk to."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as WerkzeugResponse

from lmcache_core.plugin import RouteContext, RouteGroup
from lmcache_frontends.admin.openapi import error_responses, path_param

UI_RULE = "/ui"
ASSET_RULE = "/ui/assets/<path:name>"

SERVER_PAGE = "server.html"
FLEET_PAGE = "fleet.html"
SHELL = "shell.html"
"""What both pages share (head, header, sign-in and confirmation dialogs, audit and status tree);
each page's `<name>.page.html` fills its `<!--slot-->`s. Composed once, when the group is built."""
_SLOT_RE = re.compile(r"<!--([a-z]+)-->")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""No inline script or style, no eval, no third-party origin, never framed."""
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    "LICENSE": "text/plain; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One static file, read once: its bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


def _content_type(name: str) -> str | None:
    base = name.rsplit("/", 1)[-1]
    if base in _TYPES:
        return _TYPES[base]
    dot = base.rfind(".")
    return _TYPES.get(base[dot:]) if dot > 0 else None


def compose_page(shell: str, fragment: str) -> str:
    """`shell` with each `<!--slot-->` replaced by the part of `fragment` that follows a line
    `<!--slot-->` (up to the next such line); ValueError when a slot has no part."""
    pieces = re.split(r"^<!--([a-z]+)-->", fragment, flags=re.M)
    parts = {name: text.strip("\n") for name, text in zip(pieces[1::2], pieces[2::2], strict=True)}
    missing = sorted(set(_SLOT_RE.findall(shell)) - set(parts))
    if missing:
        raise ValueError(f"the page fragment has no part for {', '.join(missing)}")
    return _SLOT_RE.sub(lambda m: parts[m.group(1)], shell)


def _asset(body: bytes, content_type: str) -> Asset:
    return Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:20] + '"')


def load_assets() -> dict[str, Asset]:
    """Every servable file under the package's `static/` folder, by its path there, and the two
    pages composed from the shell. Requests look names up in this table only: a URL never names
    a file on disk."""
    root = resources.files("lmcache_frontends.console") / "static"
    assets: dict[str, Asset] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                pending.append((entry, name + "/"))
                continue
            content_type = _content_type(name)
            if content_type is None:
                continue
            assets[name] = _asset(entry.read_bytes(), content_type)
    shell = assets.pop(SHELL).body.decode("utf-8")
    for page in (SERVER_PAGE, FLEET_PAGE):
        fragment = assets.pop(page.replace(".html", ".page.html")).body.decode("utf-8")
        assets[page] = _asset(compose_page(shell, fragment).encode("utf-8"), _TYPES[".html"])
    return assets


def _serve(asset: Asset) -> Response:
    if request.if_none_match.contains(asset.etag.strip('"')):
        response = Response(status=304)
    else:
        response = Response(asset.body, content_type=asset.content_type)
    response.headers["ETag"] = asset.etag
    # Revalidate on every load (a 304 costs a few bytes): an upgrade shows at once.
    response.headers["Cache-Control"] = "no-cache"
    return response


def _console_blueprint(page: str, summary: str) -> RouteGroup:
    assets = load_assets()
    html = assets[page]
    bp = Blueprint("console", __name__)

    @bp.get(UI_RULE)
    def ui_page() -> Response:
        return _serve(html)

    @bp.get(ASSET_RULE)
    def ui_asset(name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name.endswith(".html"):
            raise NotFound()
        return _serve(asset)

    @bp.after_request
    def _secure(response: WerkzeugResponse) -> WerkzeugResponse:
        for header, value in SECURITY_HEADERS.items():
            response.headers[header] = value
        return response

    # Static content only: open like the probes, so a browser can load the page that then
    # asks for a token.
    return RouteGroup(bp, openapi=_openapi(summary), scopes={UI_RULE: None, ASSET_RULE: None})


def create_console_blueprint(context: RouteContext) -> RouteGroup:
    """The server page: health, L1, L2, traffic, tenants, engines, audit, actions."""
    return _console_blueprint(SERVER_PAGE, "The operator console (an HTML page; static, open)")


def create_fleet_console_blueprint(ctx: Any) -> RouteGroup:
    """The coordinator's fleet page: instances, usage by salt, directory, routing scores."""
    return _console_blueprint(FLEET_PAGE, "The fleet console (an HTML page; static, open)")


def _text(description: str, *types: str) -> dict[str, Any]:
    return {"description": description, "content": {t: {"schema": {"type": "string"}} for t in types}}


def _openapi(summary: str) -> dict[str, Any]:
    return {
        "/ui": {
            "get": {
                "summary": summary,
                "tags": ["console"],
                "responses": {"200": _text("The page", "text/html"), "304": _text("Unchanged (If-None-Match)", "text/html")},
            }
        },
        "/ui/assets/{name}": {
            "get": {
                "summary": "A script, style sheet or licence file of the console (static, open)",
                "tags": ["console"],
                "parameters": [path_param("name", "The asset's path, e.g. `console.js` or `vendor/uplot/LICENSE`")],
                "responses": {
                    "200": _text("The file", "text/javascript", "text/css", "text/plain"),
                    "304": _text("Unchanged (If-None-Match)", "text/plain"),
                    **error_responses(404),
                },
            }
        },
    }
