"""--ipc-path: the data path on a Unix-domain socket beside tcp (real ZeroMQ sockets, real files)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lmcache_adapters.memory.shm_pool import SharedMemoryPool
from lmcache_frontends.bootstrap import Services, bootstrap
from lmcache_frontends.client import LMCacheClient, make_key
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.zmq.server import ZmqDataPathServer


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # Short on purpose: a Unix socket path holds at most 107 bytes, pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="lmc-ipc-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def services() -> Iterator[Services]:
    pool = SharedMemoryPool(16 << 20, shm_suffix=f"test_{uuid.uuid4().hex[:8]}", prefault="none", pin_memory=False)
    svc = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=16), memory_pool=pool)
    try:
        yield svc
    finally:
        svc.close()


def make_server(services: Services, path: Path, mode: int = 0o600) -> ZmqDataPathServer:
    assert services.engine is not None and services.memory_pool is not None
    return ZmqDataPathServer(
        services.engine, services.memory_pool, clock=services.clock, port=0, ipc_path=str(path), ipc_mode=mode
    )


def test_engines_use_the_ipc_endpoint_like_the_tcp_one(services: Services, sock_dir: Path) -> None:
    path = sock_dir / "lmcache.sock"
    server = make_server(services, path)
    server.start()
    try:
        assert server.ipc_url == f"ipc://{path}" and [e.url for e in server.endpoints().values()] == [server.url, server.ipc_url]
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert server.report_status()["ipc_endpoint"] == f"ipc://{path}"
        tokens = list(range(1, 16 * 6 + 1))
        with LMCacheClient(f"ipc://{path}", timeout=5.0) as over_ipc, LMCacheClient(server.url, timeout=5.0) as over_tcp:
            ctx = over_ipc.register_engine_driven(1, model_name="m", num_layers=1, hidden_dim_size=4)
            chunks = [torch.full(ctx.object_shape, float(i)).half() for i in range(6)]
            assert over_ipc.store_engine_driven(ctx, make_key("m", tokens, "w", worker_id=0), chunks)
            # What one endpoint stored, the other finds: one server, one L1.
            over_tcp.lookup(make_key("m", tokens, "r"))
            assert over_tcp.wait_for_lookup("r") == 6
            over_ipc.lookup(make_key("m", tokens, "r2"))
            assert over_ipc.wait_for_lookup("r2") == 6
            got = over_ipc.retrieve_engine_driven(ctx, make_key("m", tokens, "r2", worker_id=0))
            assert got is not None and [float(t.flatten()[0]) for t in got] == [float(i) for i in range(6)]
    finally:
        server.stop()
    assert not path.exists()  # removed at shutdown


def test_ipc_mode_sets_the_socket_file_permissions(services: Services, sock_dir: Path) -> None:
    path = sock_dir / "group.sock"
    server = make_server(services, path, 0o660)
    server.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
    finally:
        server.stop()


def test_a_stale_socket_file_is_replaced(services: Services, sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, then closed: what a killed server leaves
    dead.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server = make_server(services, path)
    server.start()
    try:
        with LMCacheClient(f"ipc://{path}", timeout=5.0) as client:
            assert client.noop() == "OK"
    finally:
        server.stop()


def test_a_path_another_server_listens_on_is_refused(services: Services, sock_dir: Path) -> None:
    path = sock_dir / "taken.sock"
    first = make_server(services, path)
    first.start()
    try:
        inode = os.lstat(path).st_ino
        second = make_server(services, path)
        with pytest.raises(RuntimeError, match="another server is listening"):
            second.start()
        # The first server keeps its endpoint and its file.
        assert os.lstat(path).st_ino == inode
        with LMCacheClient(f"ipc://{path}", timeout=5.0) as client:
            assert client.noop() == "OK"
    finally:
        first.stop()


def test_a_file_that_is_not_a_socket_is_never_replaced(services: Services, sock_dir: Path) -> None:
    path = sock_dir / "precious.txt"
    path.write_text("operator data")
    server = make_server(services, path)
    with pytest.raises(RuntimeError, match="not a socket"):
        server.start()
    assert path.read_text() == "operator data"


def test_a_missing_directory_is_a_clear_error(services: Services, sock_dir: Path) -> None:
    server = make_server(services, sock_dir / "no" / "such" / "dir.sock")
    with pytest.raises(RuntimeError, match="cannot bind ipc://"):
        server.start()


def test_a_busy_tcp_port_is_a_clear_error(services: Services) -> None:
    assert services.engine is not None and services.memory_pool is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = ZmqDataPathServer(services.engine, services.memory_pool, clock=services.clock, port=port)
        with pytest.raises(RuntimeError, match=f"cannot bind tcp://127.0.0.1:{port}"):
            server.start()
