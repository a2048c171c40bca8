"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from lmcache_frontends.testing import free_port as free_port_now

# Fails the run when it leaves new lmcache_* segments in /dev/shm (see tests/shm_guard.py).
pytest_plugins = ["shm_guard"]


@pytest.fixture
def free_port() -> int:
    return free_port_now()
