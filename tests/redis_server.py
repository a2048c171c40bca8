"""Start and stop a real `redis-server` on a free loopback port (no persistence), for the fleet's
tests. Tests fail with a clear reason when the binary is missing (`bash scripts/dev.sh test` installs it)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lmcache_core.testing import poll_until
from lmcache_frontends.testing import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
START_TIMEOUT_S = 10.0


def require_redis() -> None:
    if not Path(REDIS_SERVER).exists():
        pytest.fail(
            f"redis-server is not installed at {REDIS_SERVER}: the fleet's tests need a real one "
            "(apt-get install redis-server; `bash scripts/dev.sh test` installs it when run as root)"
        )


class RedisProcess:
    """One redis-server on 127.0.0.1:`port`; `restart()` brings it back empty on the same port."""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.workdir = workdir
        self.extra: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.workdir is not None:
            args += ["--dir", str(self.workdir)]
        args += self.extra
        proc = self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return self.answers()

        try:
            poll_until(up, timeout=START_TIMEOUT_S, interval=0.02, what=f"redis-server on port {self.port} to answer PING")
        except AssertionError:
            self.stop()
            raise

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def redis_server(workdir: Path | None = None) -> Iterator[RedisProcess]:
    require_redis()
    server = RedisProcess(workdir=workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster-bus port (+10000) is free and valid too."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port + 10000 > 65535 or port in taken or port + 10000 in taken:
                continue
            try:
                b.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            taken.update((port, port + 10000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Three cluster-enabled redis-servers joined by `redis-cli --cluster create` (no replicas)."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        taken: set[int] = set()
        self.nodes = [RedisProcess(free_cluster_port(taken), workdir=workdir / f"node{i}") for i in range(nodes)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            assert node.workdir is not None
            node.workdir.mkdir(parents=True, exist_ok=True)
            node.extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(node.workdir / "nodes.conf")]
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )

        def cluster_ok() -> bool:
            info = subprocess.run([REDIS_CLI, "-p", str(self.nodes[0].port), "cluster", "info"], capture_output=True, text=True, timeout=10)
            return "cluster_state:ok" in info.stdout

        poll_until(cluster_ok, timeout=START_TIMEOUT_S, interval=0.1, what="the Redis Cluster to come up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def redis_cluster(workdir: Path) -> Iterator[RedisCluster]:
    require_redis()
    if not Path(REDIS_CLI).exists():
        pytest.skip("redis-cli is not installed (it creates the cluster)")
    cluster = RedisCluster(workdir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
