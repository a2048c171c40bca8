"""Fixtures shared by unit tests of more than one ring."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def coordinator() -> Iterator[tuple[str, Any]]:
    """Our coordinator app (in-memory store, recorded server calls) served over real HTTP on a
    free loopback port: `(url, FleetService)`."""
    from fleet_helpers import coordinator_app
    from lmcache_frontends.admin.server import AdminServer

    app, service, _ = coordinator_app()
    server = AdminServer(app, "127.0.0.1", 0, threads=2)
    server.start()
    yield server.url, service
    server.stop()
