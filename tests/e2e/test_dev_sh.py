"""`bash scripts/dev.sh start|stop` as an operator uses it: Ctrl-C stops the server cleanly, the
probes read the port the server really serves, a taken port is named, `stop` works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lmcache_adapters.memory import SHM_NAME_PREFIX, remove_dead_segment

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEV_SH = REPO / "scripts" / "dev.sh"


class DevStart:
    """`bash scripts/dev.sh start ...` in its own session, as a terminal would run it."""

    def __init__(self, run_dir: Path, http_port: int, *flags: str) -> None:
        self.shm_name = f"devsh_{uuid.uuid4().hex[:10]}"
        self.http_port = http_port
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
        # This interpreter's virtualenv, installed already: no pip run.
        env.update(VENV=sys.prefix, DEV_RUN_DIR=str(run_dir), LMCACHE_HTTP_PORT=str(self.http_port))
        self.proc = subprocess.Popen(
            ["bash", str(DEV_SH), "start", "--port", "0", "--l1-size-gb", "0.03125", "--shm-name", self.shm_name, *flags],
            cwd=REPO, env=env, start_new_session=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def read_until(self, text: str, timeout: float = 120.0) -> None:
        assert self.proc.stdout is not None
        # Not poll_until: a blocking readline of dev.sh's output, woken by each line or the exit.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"dev.sh ended ({self.proc.wait()}) before {text!r}:\n{self.output}")
            self.lines.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout}s:\n{self.output}")

    def finish(self, timeout: float = 30.0) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines.append(out)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        remove_dead_segment(f"/dev/shm/{SHM_NAME_PREFIX}{self.shm_name}")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def started(run_dir: Path) -> Iterator[list[DevStart]]:
    runs: list[DevStart] = []
    yield runs
    for run in runs:
        run.kill()


def test_ctrl_c_stops_the_server_cleanly_and_the_probe_used_its_real_port(
    run_dir: Path, started: list[DevStart], free_port: int
) -> None:
    run = DevStart(run_dir, free_port)
    started.append(run)
    run.read_until("server running")
    # The port came from LMCACHE_HTTP_PORT, not 8080: the probe lines name it.
    assert f"GET http://127.0.0.1:{run.http_port}/healthcheck -> " in run.output
    assert f"GET http://127.0.0.1:{run.http_port}/status -> is_healthy=True" in run.output
    assert (run_dir / "lmcache-server.pid").exists()
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert run.finish() == 0, run.output
    assert "shutting down (SIGINT)" in run.output and "stopped" in run.output
    assert "again" not in run.output and "exiting now" not in run.output
    assert not os.path.exists(f"/dev/shm/{SHM_NAME_PREFIX}{run.shm_name}")
    assert not (run_dir / "lmcache-server.pid").exists()


def test_stop_from_another_shell_and_a_second_start_while_running(
    run_dir: Path, started: list[DevStart], free_port: int
) -> None:
    run = DevStart(run_dir, free_port)
    started.append(run)
    run.read_until("server running")
    env = dict(os.environ, VENV=sys.prefix, DEV_RUN_DIR=str(run_dir))
    again = subprocess.run(["bash", str(DEV_SH), "start"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already running" in again.stderr and "dev.sh stop" in again.stderr
    stop = subprocess.run(["bash", str(DEV_SH), "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert stop.returncode == 0 and "stopped" in stop.stdout, stop.stdout + stop.stderr
    assert run.finish() == 0, run.output
    nothing = subprocess.run(["bash", str(DEV_SH), "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 0 and "no dev server is running" in nothing.stdout


def test_a_taken_port_is_named_and_nothing_else_is_probed(run_dir: Path, started: list[DevStart]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = DevStart(run_dir, port)
        started.append(run)
        assert run.finish(timeout=120) == 1
    # The port came from LMCACHE_HTTP_PORT: the message still names the flag to change.
    assert f"127.0.0.1:{port} (the admin API, --http-port) is in use" in run.output
    assert "bash scripts/dev.sh start --http-port <port>" in run.output
    assert "GET http" not in run.output  # it never reports another server's health as its own
    assert not os.path.exists(f"/dev/shm/{SHM_NAME_PREFIX}{run.shm_name}")
