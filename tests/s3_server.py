"""Start and stop moto's S3 server as a separate process on loopback, for the s3 adapter's tests."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from lmcache_core.testing import poll_until
from lmcache_frontends.testing import free_port

# Fake credentials: the tests must never reach real AWS, and boto3 must not look for real ones.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

START_TIMEOUT_S = 20.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=0.5) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_moto(port: int | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """Start `python -m moto.server` on 127.0.0.1:`port` (a free one when None) and wait until it
    answers. Returns `(endpoint_url, process)`."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **FAKE_CREDENTIALS}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode} before answering on {url}")
        return _answers(url)

    try:
        poll_until(up, timeout=START_TIMEOUT_S, interval=0.05, what=f"moto server to answer on {url}")
    except AssertionError:
        stop_moto(proc)
        raise
    return url, proc


def stop_moto(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server process (terminate, then kill if it lingers); its state is lost."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def restart_moto(url: str) -> subprocess.Popen[bytes]:
    """Start a fresh moto server on the same port as `url` (after `stop_moto`)."""
    port = int(url.rsplit(":", 1)[1])
    # The old socket may linger for a moment: a server that exits on it is started again.
    return poll_until(lambda: start_moto(port)[1], timeout=START_TIMEOUT_S, ignore=(RuntimeError,),
                      what=f"a fresh moto server on port {port}")


@dataclass
class MotoServer:
    """A running moto server: its endpoint URL and process (replaced by `restart`)."""

    url: str
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_moto(self.proc)

    def restart(self) -> None:
        self.stop()
        self.proc = restart_moto(self.url)

    def client(self):  # type: ignore[no-untyped-def]
        """A plain boto3 S3 client for the server (fake credentials)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    """Context manager for fixtures: fake AWS environment, a moto process, stopped afterwards."""
    saved = {name: os.environ.get(name) for name in FAKE_CREDENTIALS}
    os.environ.update(FAKE_CREDENTIALS)
    url, proc = start_moto()
    server = MotoServer(url, proc)
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
