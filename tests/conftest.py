"""Fixtures shared by every test directory."""

from __future__ import annotations

import socket

import pytest

# Fails the run when it leaves new lmcache_* segments in /dev/shm (see tests/shm_guard.py).
pytest_plugins = ["shm_guard"]


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> int:
    return pick_free_port()
