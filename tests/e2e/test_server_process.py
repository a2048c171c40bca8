"""The real `lmcache-server` process: admin routes over real HTTP, clean shutdown, bad flags."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
from collections.abc import Callable

import pytest
import requests
from serverproc import ServerProcess, server_command

pytestmark = pytest.mark.e2e

SHUTDOWN_BUDGET_S = 5.0


def test_serves_the_admin_api_and_stops_cleanly_on_sigterm(server_process: ServerProcess) -> None:
    url = server_process.url
    assert re.search(r"ready: admin http://127\.0\.0\.1:\d+ \(status: http://127\.0\.0\.1:\d+/status\) "
                     r"zmq(: not enabled| tcp://127\.0\.0\.1:\d+) l1 0\.031 GiB", server_process.stderr)

    assert requests.get(f"{url}/healthcheck", timeout=5).json() == {"status": "healthy"}

    status = requests.get(f"{url}/status", timeout=5)
    assert status.status_code == 200
    tree = status.json()
    assert tree["is_healthy"] is True and tree["engine_type"] == "MPCacheServer"
    l1 = tree["storage_manager"]["l1_manager"]
    assert l1["memory_total_bytes"] == 32 << 20 and l1["total_object_count"] == 0 and l1["is_healthy"] is True
    assert tree["storage_manager"]["eviction_controller"]["thread_alive"] is True
    assert tree["storage_manager"]["l2_adapter_count"] == 1

    conf = requests.get(f"{url}/conf", timeout=5).json()
    assert conf["mp"]["http_port"] == 0 and conf["storage_manager"]["l1_size_gb"] == 0.03125
    assert conf["storage_manager"]["l2_adapters"] == [{"type": "mock"}]

    cleared = requests.post(f"{url}/clear-cache", timeout=5)
    assert (cleared.status_code, cleared.json()) == (200, {"status": "ok"})
    bad = requests.post(f"{url}/clear-cache", params={"cache_salt": "a/b"}, timeout=5)
    assert bad.status_code == 400 and "cache_salt" in bad.json()["reason"]
    missing = requests.get(f"{url}/nope", timeout=5)
    assert missing.status_code == 404 and missing.headers["Content-Type"] == "application/json"

    # Exits within SHUTDOWN_BUDGET_S: stop() waits that long and raises TimeoutExpired after.
    assert server_process.stop(signal.SIGTERM, timeout=SHUTDOWN_BUDGET_S) == 0
    assert "Traceback" not in server_process.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthcheck", timeout=2)


def test_sigint_also_shuts_down_with_exit_code_zero(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(script="lmcache")  # `lmcache server` is the same server
    assert requests.get(f"{server.url}/", timeout=5).json()["status"] == "ok"
    assert server.stop(signal.SIGINT, timeout=SHUTDOWN_BUDGET_S) == 0
    assert "Traceback" not in server.stderr and "KeyboardInterrupt" not in server.stderr


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--http-port", "70000"], "--http-port"),
        (["--eviction-ratio", "0"], "--eviction-ratio"),
        (["--no-such-flag"], "--no-such-flag"),
        (["--l2-adapter", '{"type": "nosuch"}'], "nosuch"),
    ],
)
def test_a_bad_flag_exits_1_with_one_message_naming_it(flags: list[str], named: str) -> None:
    done = subprocess.run([*server_command(), *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert named in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0  # one line


def test_an_admin_port_in_use_exits_1_naming_the_flag() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = subprocess.run(
            [*server_command(), "--http-port", port, "--l1-size-gb", "0.03125"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert "--http-port" in done.stderr and "Traceback" not in done.stderr


def test_lmcache_version() -> None:
    done = subprocess.run([*server_command("lmcache"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and re.fullmatch(r"lmcache \S+-\S+\n", done.stdout)
