"""The real `lmcache-server` secured: refuses exposed starts, rotates tokens on SIGHUP, audits."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import requests
from serverproc import ServerProcess, server_command

from lmcache_core.testing import poll_until

ADMIN_SECRET = "e2e-admin-0123456789abcdef"
OLD_SECRET = "e2e-old-token-0123456789"
NEW_SECRET = "e2e-new-token-0123456789"


def _run_refused(*flags: str) -> subprocess.CompletedProcess[str]:
    # The refusal happens before anything binds, so 0.0.0.0 is never actually listened on.
    return subprocess.run(
        [*server_command(), "--http-port", "0", "--port", "0", "--l1-size-gb", "0.03125", *flags],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )


def test_a_non_loopback_admin_without_a_token_refuses_to_start() -> None:
    result = _run_refused("--http-host", "0.0.0.0")
    assert result.returncode == 1
    assert "--allow-unauthenticated-admin" in result.stderr and "ready:" not in result.stderr


def test_a_non_loopback_data_path_without_curve_refuses_to_start() -> None:
    result = _run_refused("--host", "0.0.0.0", "--admin-token", ADMIN_SECRET)
    assert result.returncode == 1
    assert "--allow-unauthenticated-data-path" in result.stderr and "--zmq-curve-secret-key-file" in result.stderr
    assert ADMIN_SECRET not in result.stderr


def _status(url: str, secret: str) -> int:
    return requests.get(f"{url}/status", headers={"Authorization": f"Bearer {secret}"}, timeout=10).status_code


def test_sighup_rotates_tokens_and_calls_are_audited(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"old:read:{OLD_SECRET}\n")
    tokens.chmod(0o600)
    audit_file = tmp_path / "audit.jsonl"
    server = start_server("--token-file", str(tokens), "--admin-token", ADMIN_SECRET, "--audit-log", str(audit_file))
    url = server.url
    assert requests.get(f"{url}/status", timeout=10).status_code == 401
    assert requests.get(f"{url}/healthcheck", timeout=10).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=10).json()["ready"] is True
    assert _status(url, OLD_SECRET) == 200

    tokens.write_text(f"new:admin:{NEW_SECRET}\n")
    server.proc.send_signal(signal.SIGHUP)
    poll_until(lambda: _status(url, NEW_SECRET) == 200, timeout=10.0, interval=0.05,
               what="the new token after SIGHUP", detail=lambda: server.stderr)
    assert _status(url, OLD_SECRET) == 401
    assert _status(url, ADMIN_SECRET) == 200

    cleared = requests.post(f"{url}/clear-cache", headers={"Authorization": f"Bearer {NEW_SECRET}"}, timeout=10)
    assert cleared.status_code == 200
    status = requests.get(f"{url}/status", headers={"Authorization": f"Bearer {NEW_SECRET}"}, timeout=10).json()
    assert status["security"]["admin_authentication"] is True and status["security"]["warnings"] == []
    assert server.stop() == 0
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [(r["who"], r["action"], r["status"]) for r in records if r["method"] == "POST"] == [("new", "clear-cache", 200)]
    for secret in (ADMIN_SECRET, OLD_SECRET, NEW_SECRET):
        assert secret not in server.stderr and secret not in audit_file.read_text()
