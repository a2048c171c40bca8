"""`lmcache bench server` edges against a real server: a second run, tokens, --mode, --help."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable

import pytest
from serverproc import ServerProcess, server_command

from lmcache_frontends.cli.main import main as lmcache_main

pytestmark = pytest.mark.e2e

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
READ_TOKEN = "bench-read-token-0123456789abcdef"
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef"
SMALL = ["--num-tokens", "512", "--kvcache-shape-spec", "(2,128,16,2,32):float16:2", "--end", "3", "--format", "json"]


def rpc_url(server: ServerProcess) -> str:
    match = ZMQ_RE.search(server.stderr)
    assert match is not None, server.stderr
    return match.group(1)


def bench(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict, str]:
    rc = lmcache_main(["bench", "server", *argv])
    out, err = capsys.readouterr()
    return rc, (json.loads(out) if out.strip().startswith("{") else {}), out + err


@pytest.mark.timeout(120)
def test_a_second_run_checks_what_the_first_stored(
    start_server: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    server = start_server()
    args = ["--rpc-url", rpc_url(server), "--url", server.url, "--mode", "cpu", *SMALL]
    rc, first, text = bench(capsys, *args)
    assert rc == 0 and first["checksum_pass"] == 3 and first["reused"] == 0, text
    rc, second, text = bench(capsys, *args)
    assert rc == 0, text
    assert second["checksum_pass"] == 3 and second["reused"] == 3 and second["pass_rate_percent"] == 100.0
    assert second["latency_ms"]["retrieve"]["count"] == 3 and second["latency_ms"]["store"]["count"] == 0
    rc = lmcache_main(["bench", "server", *args[:-2]])  # terminal output explains it
    out = capsys.readouterr().out
    assert rc == 0 and "3 sequence(s) were already cached by an earlier run" in out


@pytest.mark.timeout(120)
def test_lmcache_driven_authenticates_with_token_or_env(
    start_server: Callable[..., ServerProcess], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server("--admin-token", ADMIN_TOKEN, "--read-token", READ_TOKEN)
    args = ["--rpc-url", rpc_url(server), "--url", server.url, "--transfer-mode", "lmcache_driven", *SMALL]
    monkeypatch.delenv("LMCACHE_TOKEN", raising=False)
    rc, report, text = bench(capsys, *args, "--start", "10", "--end", "11")
    assert rc == 1 and report["errors"] == 1
    assert "HTTP 401" in text and "--token" in text and "LMCACHE_TOKEN" in text
    rc, report, text = bench(capsys, *args, "--token", READ_TOKEN)
    assert rc == 0 and report["checksum_pass"] == 3, text
    monkeypatch.setenv("LMCACHE_TOKEN", READ_TOKEN)
    rc, report, text = bench(capsys, *args, "--start", "20", "--end", "22")
    assert rc == 0 and report["checksum_pass"] == 2, text


def test_mode_gpu_is_refused_with_what_to_use_instead(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, text = bench(capsys, "--mode", "gpu")
    assert rc == 1 and "--mode cpu" in text and "--mode gpu" in text


def test_help_shows_every_default() -> None:
    done = subprocess.run([*server_command("lmcache"), "bench", "server", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for default in ("(default: tcp://127.0.0.1:5555)", "(default: http://127.0.0.1:8080)", "(default: cpu)",
                    "(default: auto)", "(default: 1024)", "(default: 10)", "(default: terminal)"):
        assert default in text, default
