"""The operator console in a real browser: headless Chromium against a real `lmcache-server` under
real traffic from `lmcache bench server`, and against a real `lmcache coordinator`. The numbers on
the page equal `/status`, the charts draw after traffic, actions change the server after a
confirmation, a wrong token is refused, read scope cannot act, keyboard users reach every
control, no CSP violation, under 200 KB, and the page fits 1280 and 800 pixels."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import (
    chromium,
    csp_violations,
    data_value,
    no_horizontal_overflow,
    open_page,
    sign_in,
    wait_refreshed,
)
from fleetproc import start_coordinator
from serverproc import ServerProcess, launch, server_command

from lmcache_core.testing import poll_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ADMIN = "console-admin-0123456789abcdef"
READ = "console-read-0123456789abcdef"
GIB = 1 << 30
BENCH_SHAPE = ["--num-tokens", "1024", "--kvcache-shape-spec", "(2,128,16,2,32):float16:2"]
# The one console error every sign-in causes: the first /auth/whoami goes without a token.
EXPECTED_ERRORS = ("401",)


def call(url: str, method: str = "GET", token: str | None = ADMIN, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = launch(
        ["--l1-size-gb", "0.0625", "--l2-adapter", '{"type": "mock"}', "--eviction-policy", "IsolatedLRU",
         "--admin-token", ADMIN, "--read-token", READ],
        shm_prefix="console",
    )
    try:
        # The default tenant needs a quota to stay in L1 under IsolatedLRU (allow-list semantics).
        assert call(f"{proc.url}/quota/_default", "PUT", body={"limit_gb": 1})[0] == 200
        yield proc
    finally:
        proc.terminate()


def zmq_url(server: ServerProcess) -> str:
    match = re.search(r" zmq (tcp://\S+)", server.stderr)
    assert match is not None, server.stderr
    return match.group(1)


def bench(server: ServerProcess, start: int, end: int, interval: float = 0.0) -> subprocess.Popen[str]:
    """`lmcache bench server` as its own process: real engine traffic over ZeroMQ."""
    return subprocess.Popen(
        [*server_command("lmcache"), "bench", "server", "--rpc-url", zmq_url(server), "--url", server.url,
         "--token", ADMIN, *BENCH_SHAPE, "--start", str(start), "--end", str(end), "--interval", str(interval),
         "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    report: dict[str, Any] = json.loads(out[out.index("{"):])
    assert report["pass_rate_percent"] == 100.0, out
    return report


def cells(page: Any, table: str) -> list[list[str]]:
    """Each row's data-values of a console table (a cell without one gives its text)."""
    return page.eval_on_selector_all(
        f"#{table} tbody tr",
        "rows => rows.map(r => [...r.children].map(c => c.dataset.value ?? c.textContent))",
    )


def signed_in(context: Any, url: str, token: str, refresh: str) -> tuple[Any, Any]:
    """The page at `url`, signed in with `token` and refreshing every `refresh` seconds."""
    page, log = open_page(context, url)
    sign_in(page, token)
    page.wait_for_selector(f"#who[data-value='{'admin' if token == ADMIN else 'read'}']")
    page.select_option("#refresh", refresh)
    return page, log


def confirm(page: Any, expect_text: str, ok: bool = True) -> None:
    page.wait_for_selector("#confirm-dialog[open]")
    assert expect_text in page.inner_text("#confirm-text")
    page.click("#confirm-ok" if ok else "#confirm-cancel")
    page.wait_for_selector("#confirm-dialog:not([open])", state="attached")


def test_the_server_page_shows_what_status_says_under_bench_traffic(server: ServerProcess) -> None:
    with chromium(1280, 900) as context:
        page, log = signed_in(context, f"{server.url}/ui", ADMIN, "2")

        traffic = bench(server, 0, 12, interval=0.1)
        finish(traffic)
        # The charts draw from /metrics samples the page took while the bench ran and after.
        # A chart's first nonzero rate can come from its first two scrapes while `data-samples`
        # (points drawn) still lags by a refresh: wait for both rather than read one after the other.
        page.wait_for_function(
            "() => ['chart-lookups', 'chart-tokens', 'chart-gbps'].every("
            "id => Number(document.getElementById(id).dataset.max0) > 0"
            " && Number(document.getElementById(id).dataset.samples) >= 2)",
            timeout=30_000,
        )
        assert "lookups/s" in page.inner_text("#chart-lookups figcaption")
        assert page.eval_on_selector("#chart-lookups canvas", "c => c.width > 0 && c.height > 0")

        page.select_option("#refresh", "0")  # paused: the comparison reads one refresh
        wait_refreshed(page)
        status = call(f"{server.url}/status", token=READ)[1]
        l1 = status["storage_manager"]["l1_manager"]
        for selector, value in (
            ("#l1-used", l1["memory_used_bytes"]),
            ("#l1-capacity", l1["memory_total_bytes"]),
            ("#l1-objects", l1["total_object_count"]),
            ("#l1-write-locked", l1["write_locked_count"]),
            ("#l1-read-locked", l1["read_locked_count"]),
            ("#l1-pinned", l1["pinned_count"]),
            ("#l1-pinned-bytes", l1["pinned_bytes"]),
            ("#sessions-active", status["active_sessions"]),
            ("#chunk-size", status["chunk_size"]),
            ("#l1-policy", "IsolatedLRU"),
        ):
            assert data_value(page, selector) == str(value), selector
        assert l1["total_object_count"] == 48  # 12 requests x 4 chunks, all held under the quota
        assert page.inner_text("#l1-objects") == "48"
        assert int(data_value(page, "#l1-eviction-runs")) <= status["storage_manager"]["eviction_controller"]["cycles"]
        adapter = status["storage_manager"]["l2_adapters"][0]
        [row] = cells(page, "l2-table")
        assert row[2:4] == [str(adapter["stored_object_count"]), str(adapter["used_bytes"])]
        assert data_value(page, "#ready") == "true"
        assert {r[0] for r in cells(page, "readyz-table")} >= {"engine", "l1", "l2:0:mock", "controllers", "zmq"}
        assert {r[0] for r in cells(page, "threads-table")} >= {"l1-eviction", "l2-store"}
        quota = call(f"{server.url}/quota", token=READ)[1]["users"]["_default"]
        tenants = {r[0]: r for r in cells(page, "tenants-table")}
        assert tenants["_default"][1] == str(round(quota["current_usage_gb"] * GIB))
        assert tenants["_default"][2] == str(GIB)
        page.click("#status-tree summary")  # collapse the root
        assert page.eval_on_selector("#status-tree details", "d => !d.open")

        # Actions, each after a confirmation: a cancelled one changes nothing.
        page.fill("#clear-salt", "")
        page.click("#form-clear button[type=submit]")
        confirm(page, "every tenant", ok=False)
        page.wait_for_selector("#action-result:has-text('cancelled')")
        assert call(f"{server.url}/status", token=READ)[1]["storage_manager"]["l1_manager"]["total_object_count"] == 48

        page.fill("#pin-request", "req-3-warm")
        page.click("#form-pin button[type=submit]")
        confirm(page, "req-3-warm")
        page.wait_for_selector("#action-result:has-text('Pin request: done')")
        wait_refreshed(page)
        pinned = call(f"{server.url}/status", token=READ)[1]["storage_manager"]["l1_manager"]
        assert pinned["pinned_count"] == 4 and data_value(page, "#l1-pinned") == "4"
        assert data_value(page, "#l1-pinned-bytes") == str(pinned["pinned_bytes"])

        page.fill("#quota-salt", "alice")
        page.fill("#quota-gb", "0.5")
        page.click("#quota-set")
        confirm(page, "alice to 0.5 GB")
        page.wait_for_selector("#action-result:has-text('Set quota: done')")
        assert call(f"{server.url}/quota/alice", token=READ)[1]["limit_gb"] == 0.5
        wait_refreshed(page)
        assert {r[0]: r[2] for r in cells(page, "tenants-table")}["alice"] == str(GIB // 2)
        audit = cells(page, "audit-table")
        assert [r[2:4] for r in audit[:2]] == [["quota-set", "ok"], ["kvcache-pin", "ok"]]

        page.click("#quota-delete")
        confirm(page, "Delete the quota of tenant alice")
        page.wait_for_selector("#action-result:has-text('Delete quota: done')")
        assert call(f"{server.url}/quota/alice", token=READ)[1]["exists"] is False

        page.fill("#clear-salt", "_default")
        page.click("#form-clear button[type=submit]")
        confirm(page, "tenant _default")
        page.wait_for_selector("#action-result:has-text('Clear L1: done')")
        wait_refreshed(page)
        assert data_value(page, "#l1-objects") == "0"
        assert call(f"{server.url}/status", token=READ)[1]["storage_manager"]["l1_manager"]["total_object_count"] == 0

        # 800 pixels wide: one column, nothing wider than the window.
        assert no_horizontal_overflow(page)
        page.set_viewport_size({"width": 800, "height": 900})
        page.wait_for_function("() => document.documentElement.scrollWidth <= 800")
        lefts = page.eval_on_selector_all("main > section", "s => s.map(e => Math.round(e.getBoundingClientRect().left))")
        assert len(set(lefts)) == 1
        chart_width = page.eval_on_selector("#chart-tokens canvas", "c => c.getBoundingClientRect().width")
        assert 200 <= chart_width <= 800

        assert csp_violations(page) == []
        assert log.unexpected_errors(*EXPECTED_ERRORS) == []
        console_bytes = sum(n for url, n in log.responses.items() if "/ui" in url)
        assert 0 < console_bytes < 200 * 1024


def test_keyboard_alone_reaches_every_control_and_acts(server: ServerProcess) -> None:
    with chromium(1280, 900) as context:
        page, _ = signed_in(context, f"{server.url}/ui", ADMIN, "0")
        reached: list[str] = []
        page.focus("body")
        for _ in range(80):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        wanted = {"refresh", "refresh-now", "sign-out", "clear-salt", "quota-salt", "quota-gb", "quota-set",
                  "quota-delete", "pin-request", "pin-ttl"}
        assert wanted <= set(reached), wanted - set(reached)

        page.focus("#quota-salt")
        page.keyboard.type("kbd")
        page.keyboard.press("Tab")
        page.keyboard.type("2")
        page.keyboard.press("Enter")  # submits the quota form
        page.wait_for_selector("#confirm-dialog[open]")
        assert page.evaluate("document.activeElement.id") == "confirm-cancel"  # the safe default
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "confirm-ok"
        page.keyboard.press("Enter")
        page.wait_for_selector("#action-result:has-text('Set quota: done')")
        assert call(f"{server.url}/quota/kbd", token=READ)[1]["limit_gb"] == 2.0
        call(f"{server.url}/quota/kbd", "DELETE")


def test_a_wrong_token_is_refused_and_read_scope_cannot_act(server: ServerProcess) -> None:
    with chromium(1280, 900) as context:
        page, log = open_page(context, f"{server.url}/ui")
        sign_in(page, "not-the-token-0123456789")
        page.wait_for_selector("#token-message:has-text('Token refused: invalid token')")
        assert page.is_visible("#token-dialog")
        assert page.get_attribute("#l1-capacity", "data-value") is None  # nothing shown without a token

        page.fill("#token-input", READ)
        page.press("#token-input", "Enter")
        page.wait_for_selector("#who[data-value='read']")
        page.wait_for_selector("#l1-capacity[data-value]")
        assert page.is_disabled("#form-clear button[type=submit]") and page.is_disabled("#quota-set")
        assert "read scope" in page.inner_text("#actions-note")
        # The token was never put in a URL, and nothing outside this tab keeps it.
        assert all("console-read" not in url for url in log.responses)
        assert page.evaluate("window.localStorage.length") == 0
        assert page.evaluate("sessionStorage.getItem('lmcache.console.token')") is None

        page.click("#sign-out")
        page.wait_for_selector("#token-dialog[open]")
        assert "forgotten" in page.inner_text("#token-message")


def test_an_action_refused_with_403_disables_the_actions(tmp_path: Path) -> None:
    """The token's scope drops while the page is open (token file edited, SIGHUP): the next
    action is refused, and the page disables the actions with the server's reason; revoked, the
    page stops refreshing and asks for a token."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops:admin:{ADMIN}\n")
    tokens.chmod(0o600)
    proc = launch(["--token-file", str(tokens)], shm_prefix="console403")
    try:
        with chromium(1280, 900) as context:
            page, _ = open_page(context, f"{proc.url}/ui")
            sign_in(page, ADMIN)
            page.wait_for_selector("#who[data-value='admin']")
            assert page.is_enabled("#quota-set")
            tokens.write_text(f"ops:read:{ADMIN}\n")
            proc.proc.send_signal(signal.SIGHUP)
            poll_until(lambda: call(f"{proc.url}/auth/whoami")[1]["scope"] == "read", timeout=20, interval=0.1,
                       what="the token file to be reloaded", detail=lambda: proc.stderr)
            page.fill("#quota-salt", "bob")
            page.fill("#quota-gb", "1")
            page.click("#quota-set")
            confirm(page, "bob")
            page.wait_for_selector("#action-result:has-text('refused (403)')")
            assert page.is_disabled("#quota-set") and page.is_disabled("#form-clear button[type=submit]")
            assert "needs admin" in page.inner_text("#actions-note")

            # Revoked altogether: the next refresh stops the polling and asks for a token.
            tokens.write_text("other:read:another-token-0123456789\n")
            proc.proc.send_signal(signal.SIGHUP)
            page.select_option("#refresh", "2")
            page.wait_for_selector("#token-dialog[open]", timeout=20_000)
            assert "refused the token" in page.inner_text("#token-message")
            assert "token was refused" in page.inner_text("#status-line")
        assert call(f"{proc.url}/quota/bob", token="another-token-0123456789")[1]["exists"] is False
    finally:
        proc.terminate()


def test_the_fleet_page_against_a_real_coordinator() -> None:
    coordinator = start_coordinator("--read-token", READ, "--admin-token", ADMIN)
    try:
        base = coordinator.url
        hashes = [f"{n:02x}" * 32 for n in range(1, 4)]
        for instance, port in (("srv-a", 8080), ("srv-b", 8081)):
            assert call(f"{base}/instances", "POST", body={"instance_id": instance, "ip": "10.0.0.5", "http_port": port})[0] == 200
        keys = [{"chunk_hash_hex": h, "model_name": "m", "kv_rank": 16777472, "cache_salt": ""} for h in hashes]
        batches = [
            {"instance_id": "srv-a", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l1", "backend": "dram",
             "entries": [{"key": k, "size_bytes": 262144} for k in keys]},
            {"instance_id": "srv-b", "incarnation": 1, "seq": 1, "event_type": "store", "tier": "l2", "backend": "fs",
             "entries": [{"key": {**keys[0], "cache_salt": "alice"}, "size_bytes": 524288}]},
        ]
        assert call(f"{base}/events", "POST", body={"batches": batches})[0] == 200
        assert call(f"{base}/quota/alice", "PUT", body={"limit_gb": 1})[0] == 200

        with chromium(1280, 900) as context:
            page, log = signed_in(context, f"{base}/ui", READ, "0")
            wait_refreshed(page)
            stats = call(f"{base}/directory/stats", token=READ)[1]
            assert data_value(page, "#dir-keys") == str(stats["num_keys"]) == "4"
            assert data_value(page, "#dir-l1-bytes") == str(stats["l1_size_bytes"])
            rows = {r[0]: r for r in cells(page, "instances-table")}
            assert set(rows) == {"srv-a", "srv-b"}
            assert rows["srv-a"][2] == "true" and rows["srv-a"][5] == "3" and rows["srv-a"][6] == str(3 * 262144)
            assert rows["srv-b"][7] == "524288"
            salts = {r[0]: r for r in cells(page, "salts-table")}
            assert salts["_default"][1] == str(3 * 262144) and salts["alice"][2] == "524288"
            assert salts["alice"][3] == str(GIB)

            page.fill("#score-model", "m")
            page.select_option("#score-kind", "hashes")
            page.fill("#score-prompt", "\n".join(hashes))
            page.click("#score-submit")
            page.wait_for_selector("#score-summary[data-value='3']")
            want = call(f"{base}/directory/score", "POST", token=READ, body={"model_name": "m", "chunk_hashes": hashes})[1]
            shown = cells(page, "score-table")
            assert [[r[0], int(r[1]), int(r[2]), int(r[3]), float(r[4])] for r in shown] == [
                [s["instance_id"], s["l1_tokens"], s["l2_tokens"], s["prefix_tokens"], s["score"]] for s in want["instances"]
            ]
            assert shown[0][0] == "srv-a" and int(shown[0][1]) == 3 * 256

            page.fill("#score-prompt", "1, 2, x")
            page.select_option("#score-kind", "tokens")
            page.click("#score-submit")
            page.wait_for_selector("#score-summary.error")

            page.set_viewport_size({"width": 800, "height": 900})
            page.wait_for_function("() => document.documentElement.scrollWidth <= 800")
            assert csp_violations(page) == []
            assert log.unexpected_errors(*EXPECTED_ERRORS) == []
    finally:
        coordinator.terminate()
