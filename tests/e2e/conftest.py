"""Fixtures that start the real `lmcache-server` console script as a subprocess."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from serverproc import READY_RE, START_TIMEOUT_S, ServerProcess, pump_stderr, server_command


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(*flags)`: run lmcache-server on free ports with a small L1 and wait for
    its ready line. Every server started is killed at teardown if a test left it running."""
    started: list[ServerProcess] = []

    def start(*flags: str, script: str = "lmcache-server", wait_ready: bool = True) -> ServerProcess:
        args = [*server_command(script)]
        if script == "lmcache":
            args.append("server")
        args += ["--http-port", "0", "--port", "0", "--l1-size-gb", "0.03125", "--shm-name", f"e2e_{uuid.uuid4().hex[:12]}"]
        args += list(flags)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        server = ServerProcess(proc)
        started.append(server)
        threading.Thread(target=pump_stderr, args=(proc, server), daemon=True).start()
        if wait_ready:
            server.url = server.wait_for_line(READY_RE, START_TIMEOUT_S).group(1)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


@pytest.fixture
def server_process(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One running lmcache-server with a mock L2 adapter."""
    return start_server("--l2-adapter", '{"type": "mock"}')
