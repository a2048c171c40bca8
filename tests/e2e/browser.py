"""Headless Chromium for the console's browser tests: Debian's `/usr/bin/chromium` driven by
Playwright (never a browser Playwright downloads), a fresh user-data directory per context, and
the page's CSP violations, script errors and responses recorded for the assertions.

A missing browser or Playwright FAILS the test with what to install: these tests must not skip
quietly in CI (`bash scripts/dev.sh test` installs Chromium with apt when it can)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

CHROMIUM = os.environ.get("LMCACHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MISSING_BROWSER = (
    f"no Chromium at {CHROMIUM}: the console's browser tests drive the system's Chromium. Install it "
    "(`apt-get install chromium`; `bash scripts/dev.sh test` does this when run as root) or point "
    "LMCACHE_CHROMIUM at one."
)

# Runs before the page's own scripts (injected by the driver, so the page's CSP does not apply
# to it): collects every CSP violation the page causes.
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@dataclass
class PageLog:
    """What a page did: console errors, uncaught exceptions, and the bytes of each response."""

    errors: list[str] = field(default_factory=list)
    responses: dict[str, int] = field(default_factory=dict)
    """Bytes of the last response of each URL."""
    counts: dict[str, int] = field(default_factory=dict)
    """Responses per URL."""

    def unexpected_errors(self, *allowed: str) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in allowed)]


def _playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[test]' (scripts/dev.sh test does)")
    return sync_playwright


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A persistent browser context on a fresh profile; closed (and the profile removed) after."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(MISSING_BROWSER)
    sync_playwright = _playwright()
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="lmcache-chromium-") as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        try:
            context.set_default_timeout(30_000)
            yield context
        finally:
            context.close()


def open_page(context: Any, url: str) -> tuple[Any, PageLog]:
    """A new page at `url`, its errors and responses logged."""
    page = context.new_page()
    log = PageLog()
    page.add_init_script(_WATCH_CSP)
    page.on("console", lambda m: log.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: log.errors.append(f"uncaught: {e}"))

    def record(response: Any) -> None:
        log.counts[response.url] = log.counts.get(response.url, 0) + 1
        with contextlib.suppress(Exception):  # a response the page navigated away from
            log.responses[response.url] = len(response.body())

    page.on("response", record)
    page.goto(url)
    return page, log


def csp_violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__cspViolations"))


def data_value(page: Any, selector: str) -> str:
    """The raw value a console element shows (its data-value)."""
    value = page.get_attribute(selector, "data-value")
    assert value is not None, f"{selector} has no data-value"
    return str(value)


def sign_in(page: Any, token: str) -> None:
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", token)
    page.press("#token-input", "Enter")


def wait_refreshed(page: Any) -> None:
    """Click "Refresh now" and wait until the page has rendered the answers."""
    idle = "() => document.body.dataset.busy !== '1'"
    page.wait_for_function(idle)
    before = page.get_attribute("#last-updated", "data-value") or ""
    page.click("#refresh-now")
    page.wait_for_function(
        "(before) => (document.getElementById('last-updated').dataset.value || '') !== before", arg=before
    )
    page.wait_for_function(idle)


def no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))
