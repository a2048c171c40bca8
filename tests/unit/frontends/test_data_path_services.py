"""The ZeroMQ data path built by its plugin over the Application: it serves the composition
root's data path and reports into request inspection and readiness only while it runs."""

from __future__ import annotations

import pytest

from lmcache_core.errors import NotFoundError
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.plugin import create_zmq_server


def test_the_data_path_reports_into_inspection_and_readiness_while_it_runs() -> None:
    app = in_memory_stack(ServerConfig(port=0, chunk_size=16))
    try:
        server = create_zmq_server(app)
        assert server.data_path is app.data_path and server.sessions is app.sessions
        assert not app.inspector.attached and "zmq" not in app.readiness.checks()
        server.start()
        try:
            assert app.inspector.attached
            assert app.readiness.checks()["zmq"]()["ok"] is True
            app.sessions.chunk_hashes("req", list(range(32)), model_name="m", world_size=1)
            assert app.inspector.find("req").total_chunks == 2
        finally:
            server.stop()
        assert not app.inspector.attached and "zmq" not in app.readiness.checks()
        with pytest.raises(NotFoundError, match="not running"):
            app.inspector.find("req")
    finally:
        app.close()
