"""The reference's own clients (LMCache 0.5.0 `lmcache` CLI, mp_status_viewer) against our server.

They live in the reference venv installed by `shared/peer/reference.sh install`; the module is
skipped where that venv is absent (CI). Each client run imports the whole reference package
(~10 s), so independent commands run concurrently."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tests.e2e.serverproc import (
    REFERENCE_LMCACHE,
    REFERENCE_VENV,
    ServerProcess,
    requires_reference,
)

LMCACHE = REFERENCE_LMCACHE
PYTHON = REFERENCE_VENV / "bin" / "python"
CLIENT_TIMEOUT_S = 120

pytestmark = requires_reference


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("LMCACHE_") or k in ("LMCACHE_DISABLE_BANNER", "LMCACHE_TRACK_USAGE")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, env=env, check=False)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(LMCACHE, *args, "--url", url)


def metrics(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)["metrics"]


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server("--l2-adapter", '{"type": "mock"}', "--eviction-policy", "IsolatedLRU")


def test_ping_clear_status_viewer_and_quota_commands_work(server: ServerProcess) -> None:
    url = server.url
    with ThreadPoolExecutor(4) as pool:
        ping = pool.submit(cli, url, "ping", "kvcache")
        clear = pool.submit(cli, url, "kvcache", "clear")
        viewer = pool.submit(run, PYTHON, "-m", "lmcache.tools.mp_status_viewer", "--url", f"{url}/status")
        quota_set = pool.submit(cli, url, "quota", "set", "alice", "--limit-gb", "2.5", "--format", "json")
        assert ping.result().returncode == 0 and "OK" in ping.result().stdout
        assert clear.result().returncode == 0 and "OK" in clear.result().stdout
        assert viewer.result().returncode == 0, viewer.result().stderr[-2000:]
        assert "storage_manager" in viewer.result().stdout and "HEALTHY" in viewer.result().stdout
        assert metrics(quota_set.result()) == {"cache_salt": "alice", "limit_gb": 2.5, "status": "ok"}
        got = pool.submit(cli, url, "quota", "get", "alice", "--format", "json")
        listed = pool.submit(cli, url, "quota", "list", "--format", "json")
        assert metrics(got.result()) == {"cache_salt": "alice", "limit_gb": 2.5, "current_usage_gb": 0.0, "exists": True}
        assert metrics(listed.result()) == {"quotas": [{"cache_salt": "alice", "limit_gb": 2.5, "current_usage_gb": 0.0}]}
    # after the listing: the two must not race
    default = cli(url, "quota", "set", "_default", "--limit-gb", "1", "--format", "json")
    assert metrics(default)["cache_salt"] == "_default"
    assert metrics(cli(url, "quota", "delete", "alice", "--format", "json")) == {"cache_salt": "alice", "status": "removed"}
    assert metrics(cli(url, "quota", "delete", "alice", "--format", "json"))["status"] == "not_found"


def test_describe_kvcache_renders_our_status(server: ServerProcess) -> None:
    result = cli(server.url, "describe", "kvcache", "--format", "json")
    assert result.returncode == 0, result.stderr[-2000:]
    described = json.loads(result.stdout)["metrics"]
    assert described["health"] and described["chunk_size"] == 256
