"""The operator console's route group: static pages and assets served open with a strict CSP,
names looked up in a table (never on disk), the page weight, no inline code, labelled controls,
vendored libraries with their licences; and the routes it reads that it added (`/audit/events`,
`/auth/whoami`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fleet_helpers import coordinator_app
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.audit import RECENT_EVENTS, AuditTrail
from lmcache_frontends.admin.auth import ADMIN, READ, required_scope
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.console.routes import CONTENT_SECURITY_POLICY, compose_page, load_assets
from lmcache_frontends.testing import in_memory_stack

REPO = Path(__file__).resolve().parents[3]
STATIC = REPO / "src" / "lmcache_frontends" / "console" / "static"
ADMIN_SECRET = "adm-0123456789abcdef-secret"
READ_SECRET = "rd-0123456789abcdef-secret"
MAX_PAGE_BYTES = 200 * 1024


@pytest.fixture
def app() -> Iterator[Flask]:
    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}',), admin_token=ADMIN_SECRET, read_token=READ_SECRET))
    yield create_app(stack)
    stack.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# --------------------------------------------------------------------------- serving


def test_the_page_is_served_without_a_token_with_a_strict_policy(client: FlaskClient) -> None:
    page = client.get("/ui")
    assert page.status_code == 200
    assert page.content_type == "text/html; charset=utf-8"
    assert b"<title>lmcache-server console</title>" in page.data
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    # The data it shows is not open: the page's reads need the token.
    assert client.get("/status").status_code == 401
    assert client.get("/audit/events").status_code == 401


def test_assets_come_from_the_table_with_their_types(client: FlaskClient) -> None:
    for name, content_type in (
        ("console.js", "text/javascript; charset=utf-8"),
        ("server.js", "text/javascript; charset=utf-8"),
        ("console.css", "text/css; charset=utf-8"),
        ("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
        ("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
    ):
        response = client.get(f"/ui/assets/{name}")
        assert response.status_code == 200, name
        assert response.content_type == content_type
        assert response.data == (STATIC / name).read_bytes()
        assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "name", ["nope.js", "server.html", "fleet.html", "shell.html", "server.page.html", "../routes.py", "..%2Froutes.py", "/etc/passwd", "vendor", "vendor/uplot/"]
)
def test_anything_else_is_a_json_404(client: FlaskClient, name: str) -> None:
    response = client.get(f"/ui/assets/{name}")
    assert response.status_code in (404, 401)  # 401: a path the asset rule does not match at all
    assert response.is_json


def test_a_repeated_load_is_answered_304(client: FlaskClient) -> None:
    first = client.get("/ui/assets/console.js")
    again = client.get("/ui/assets/console.js", headers={"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


def test_the_coordinator_serves_the_fleet_page() -> None:
    client = coordinator_app()[0].test_client()
    page = client.get("/ui")
    assert page.status_code == 200 and b"<title>lmcache fleet console</title>" in page.data
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert client.get("/ui/assets/fleet.js").status_code == 200


def test_a_declaration_opens_reads_only() -> None:
    declared = {"/ui": None, "/x": READ}
    assert required_scope("/ui", "GET", {}, declared=declared) is None
    assert required_scope("/ui", "POST", {}, declared=declared) == ADMIN
    assert required_scope("/x", "POST", {}, declared=declared) == READ
    assert required_scope("/ui", "GET", {}) == READ  # undeclared: as any read


# --------------------------------------------------------------------------- the pages' files


class _Page(HTMLParser):
    """What a page references and how its markup is written."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.inline_styles: list[str] = []
        self.handlers: list[str] = []
        self.controls: list[tuple[str, dict[str, str | None]]] = []
        self.label_for: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "style" or "style" in a:
            self.inline_styles.append(tag)
        self.handlers += [k for k in a if k.startswith("on")]
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.refs.append(str(a["src"]))
            else:
                self.inline_scripts += 1
        if tag == "link" and a.get("rel") == "stylesheet":
            self.refs.append(str(a["href"]))
        if tag in ("input", "select", "textarea"):
            self.controls.append((tag, a))
        if tag == "label" and a.get("for"):
            self.label_for.add(str(a["for"]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def _parse(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(load_assets()[page].body.decode("utf-8"))
    return parsed


def _loaded_files(page: str) -> set[str]:
    """Every asset a browser loads for `page`: its links and scripts, and the modules they import."""
    names = {ref.removeprefix("ui/assets/") for ref in _parse(page).refs}
    pending = [n for n in names if n.endswith(".js")]
    while pending:
        for imported in re.findall(r'from\s+"\./([\w./-]+)"', (STATIC / pending.pop()).read_text(encoding="utf-8")):
            if imported not in names:
                names.add(imported)
                pending.append(imported)
    return names


@pytest.mark.parametrize("page", ["server.html", "fleet.html"])
def test_the_page_loads_under_200_kb(page: str) -> None:
    files = _loaded_files(page)
    assert {"console.js", "console.css", "vendor/uplot/uPlot.iife.min.js"} <= files
    assets = load_assets()
    assert files <= set(assets), "a page references a file the console does not serve"
    weight = len(assets[page].body) + sum(len(assets[name].body) for name in files)
    assert weight < MAX_PAGE_BYTES, f"{page} loads {weight} bytes"


@pytest.mark.parametrize("page", ["server.html", "fleet.html"])
def test_no_inline_code_and_every_control_labelled(page: str) -> None:
    parsed = _parse(page)
    assert parsed.inline_scripts == 0 and parsed.inline_styles == [] and parsed.handlers == []
    unlabelled = [
        (tag, a.get("id")) for tag, a in parsed.controls
        if a.get("id") not in parsed.label_for and not a.get("aria-label")
        and a.get("type") != "checkbox"  # the one checkbox sits inside its label
    ]
    assert unlabelled == []


def test_the_scripts_never_parse_server_text_as_html() -> None:
    for script in STATIC.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert banned not in text, f"{script.name} uses {banned}"
        assert "localStorage" not in text, f"{script.name}: a token may live in this tab only"


def test_every_vendored_library_has_its_licence_and_a_pinned_source() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text(encoding="utf-8")
    script = (REPO / "scripts" / "console-vendor.sh").read_text(encoding="utf-8")
    for folder in (STATIC / "vendor").iterdir():
        if folder.is_dir():
            assert (folder / "LICENSE").is_file(), folder.name
    pinned = re.search(r"UPLOT_VERSION:-([\d.]+)", script)
    assert pinned is not None and f"| {pinned.group(1)} |" in readme


def test_a_page_is_the_shell_with_every_slot_filled() -> None:
    assert compose_page("<t><!--title--></t>\n<!--body-->\n", "<!--title-->T\n<!--body-->\n<p>x</p>\n") == "<t>T</t>\n<p>x</p>\n"
    with pytest.raises(ValueError, match="body"):
        compose_page("<!--title--><!--body-->", "<!--title-->T\n")
    for page in ("server.html", "fleet.html"):
        assert "<!--" not in load_assets()[page].body.decode("utf-8")


# --------------------------------------------------------------------------- audit and whoami


def test_the_audit_ring_keeps_the_newest_records() -> None:
    trail = AuditTrail(keep=3)
    for n in range(5):
        trail.emit({"action": f"a{n}", "outcome": "ok"})
    events, recorded = trail.recent(10)
    assert [e["action"] for e in events] == ["a4", "a3", "a2"] and recorded == 5
    assert [e["action"] for e in trail.recent(1)[0]] == ["a4"]


def test_audit_events_shows_state_changes_newest_first(client: FlaskClient) -> None:
    client.put("/quota/alice", json={"limit_gb": 1}, headers=_bearer(ADMIN_SECRET))
    client.post("/clear-cache?cache_salt=alice", headers=_bearer(ADMIN_SECRET))
    client.post("/clear-cache", headers=_bearer(READ_SECRET))  # refused: 403, audited
    body = client.get("/audit/events", headers=_bearer(READ_SECRET)).get_json()
    assert [(e["action"], e["outcome"], e["who"]) for e in body["events"]] == [
        ("auth", "denied: insufficient scope", "read-token"),
        ("clear-cache", "ok", "admin-token"),
        ("quota-set", "ok", "admin-token"),
    ]
    assert body["capacity"] == RECENT_EVENTS and body["recorded_total"] == 3
    assert ADMIN_SECRET not in str(body) and READ_SECRET not in str(body)
    assert len(client.get("/audit/events?limit=1", headers=_bearer(READ_SECRET)).get_json()["events"]) == 1


@pytest.mark.parametrize("limit", ["0", str(RECENT_EVENTS + 1), "x", "-1"])
def test_audit_events_refuses_a_bad_limit(client: FlaskClient, limit: str) -> None:
    response = client.get(f"/audit/events?limit={limit}", headers=_bearer(READ_SECRET))
    assert response.status_code == 422 and "limit" in response.get_json()["error"]


def test_whoami_names_the_token_and_its_scope(client: FlaskClient) -> None:
    assert client.get("/auth/whoami", headers=_bearer(READ_SECRET)).get_json() == {"tokens_required": True, "token": "read-token", "scope": READ}
    assert client.get("/auth/whoami", headers=_bearer(ADMIN_SECRET)).get_json()["scope"] == ADMIN
    assert client.get("/auth/whoami").status_code == 401
    assert client.get("/auth/whoami", headers=_bearer("wrong-0123456789abcdef")).status_code == 401


def test_whoami_without_tokens_says_everything_is_open() -> None:
    stack = in_memory_stack(ServerConfig())
    try:
        body = create_app(stack).test_client().get("/auth/whoami").get_json()
    finally:
        stack.close()
    assert body == {"tokens_required": False, "token": None, "scope": ADMIN}
