"""Fixtures that start the real `lmcache-server` console script as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from serverproc import READY_RE, START_TIMEOUT_S, ServerProcess, launch


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerProcess]]:
    """`start_server(*flags)`: run lmcache-server on free ports with a small L1 and wait for
    its ready line. Every server started is stopped at teardown (SIGTERM, then SIGKILL) and
    its L1 segment removed if it could not remove it itself."""
    started: list[ServerProcess] = []

    def start(*flags: str, script: str = "lmcache-server", wait_ready: bool = True) -> ServerProcess:
        server = launch(flags, script=script, wait_ready=False)
        started.append(server)
        if wait_ready:
            server.url = server.wait_for_line(READY_RE, START_TIMEOUT_S).group(1)
        return server

    yield start
    for server in started:
        server.terminate()


@pytest.fixture
def server_process(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    """One running lmcache-server with a mock L2 adapter."""
    return start_server("--l2-adapter", '{"type": "mock"}')
