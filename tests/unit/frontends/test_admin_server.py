"""AdminServer: Waitress on a real loopback socket, a free port picked by the OS, a clean stop."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest
from flask import Flask

from lmcache_frontends.admin.server import AdminServer


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_serves_the_app_on_the_port_it_reports_and_stops(app: Flask) -> None:
    # A drain timeout far above the bound below: an idle connection that held the shutdown up
    # would cost the whole 30 s, where a bound equal to the 3 s default would flake.
    server = AdminServer(app, "127.0.0.1", 0, drain_timeout_s=30.0)
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
    server.start()
    try:
        assert _get(f"{server.url}/healthcheck") == (200, {"status": "healthy"})
        assert _get(f"{server.url}/nope")[0] == 404
        # A kept-alive idle connection must not hold the shutdown up.
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 10.0
    assert not server.running
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_port_in_use_fails_in_the_constructor(app: Flask) -> None:
    first = AdminServer(app, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            AdminServer(app, "127.0.0.1", first.port)
    finally:
        first.stop()


def test_stop_without_start_releases_the_port(app: Flask) -> None:
    server = AdminServer(app, "127.0.0.1", 0)
    port = server.port
    server.stop()
    again = AdminServer(app, "127.0.0.1", port)
    again.stop()
