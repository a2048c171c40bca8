"""The ZeroMQ data path with CURVE: authorized engines are answered, other clients are not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.auth

from lmcache_frontends.bootstrap import Services
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.curve import load_curve_config
from lmcache_frontends.zmq.protocol import RequestType, decode, encode
from lmcache_frontends.zmq.server import ZmqDataPathServer


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    server_public, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    allowed = tmp_path / "authorized"
    allowed.mkdir()
    zmq.auth.create_certificates(str(allowed), "engine")
    stranger_dir = tmp_path / "stranger"
    stranger_dir.mkdir()
    _, stranger_secret = zmq.auth.create_certificates(str(stranger_dir), "stranger")
    return {
        "server_secret": server_secret,
        "server_public": zmq.auth.load_certificate(server_public)[0],
        "allowed_dir": str(allowed),
        "engine": zmq.auth.load_certificate(str(allowed / "engine.key_secret")),
        "stranger": zmq.auth.load_certificate(stranger_secret),
    }


@pytest.fixture
def curve_server(keys: dict[str, Any]) -> Iterator[ZmqDataPathServer]:
    config = ServerConfig(zmq_curve_secret_key_file=keys["server_secret"], zmq_curve_authorized_keys=keys["allowed_dir"])
    stack: Services = in_memory_stack(config)
    server = ZmqDataPathServer(
        stack.engine, stack.memory_pool, clock=stack.clock, host="127.0.0.1", port=0, max_workers=1,  # type: ignore[arg-type]
        curve=load_curve_config(config),
    )
    server.start()
    yield server
    server.stop()
    stack.close()


def _chunk_size(url: str, server_public: bytes, client: tuple[bytes, bytes] | None, timeout_ms: int) -> Any:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if client is not None:
            sock.curve_serverkey = server_public
            sock.curve_publickey, sock.curve_secretkey = client
        sock.connect(url)
        sock.send_multipart([encode(7), encode(int(RequestType.GET_CHUNK_SIZE))])
        if not sock.poll(timeout_ms):
            return None
        return decode(sock.recv_multipart()[-1])
    finally:
        sock.close()
        ctx.term()


def test_an_authorized_engine_is_answered_and_others_are_not(curve_server: ZmqDataPathServer, keys: dict[str, Any]) -> None:
    assert _chunk_size(curve_server.url, keys["server_public"], keys["engine"], 5000) == curve_server.chunk_size
    # Refused in the CURVE handshake: nothing ever comes back (bounded wait).
    assert _chunk_size(curve_server.url, keys["server_public"], keys["stranger"], 300) is None
    assert _chunk_size(curve_server.url, keys["server_public"], None, 300) is None  # plain-text client
    assert curve_server.report_status()["is_healthy"] is True
    assert curve_server.loop_heartbeat > 0
