"""Helpers to run the real `lmcache-server` console script as a subprocess and read its stderr."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lmcache_adapters.memory import SHM_NAME_PREFIX, remove_dead_segment
from lmcache_core.testing import poll_until
from lmcache_frontends.testing import free_port

READY_RE = re.compile(r"ready: admin (http://\S+) ")

# LMCache 0.5.0 in its own virtualenv (absent in CI): python -m venv DIR && DIR/bin/pip install lmcache==0.5.0.
REFERENCE_VENV = Path(os.environ.get("LMCACHE_REFERENCE_VENV", Path.home() / ".cache" / "lmcache-reference" / "venv"))
REFERENCE_LMCACHE = REFERENCE_VENV / "bin" / "lmcache"
requires_reference = pytest.mark.skipif(
    not REFERENCE_LMCACHE.exists(),
    reason=f"the reference LMCache 0.5.0 is not installed in {REFERENCE_VENV} (pip install lmcache==0.5.0 into a "
    "virtualenv there, or set LMCACHE_REFERENCE_VENV)",
)
# LMCache 0.5.6 (REF_VERSION=0.5.6 ../shared/peer/reference.sh install; absent in CI).
REFERENCE_056_VENV = Path(
    os.environ.get("LMCACHE_REFERENCE_056_VENV", Path.home() / ".cache" / "lmcache-reference-056" / "venv")
)
REFERENCE_056_LMCACHE = REFERENCE_056_VENV / "bin" / "lmcache"
requires_reference_056 = pytest.mark.skipif(
    not REFERENCE_056_LMCACHE.exists(),
    reason=f"the reference LMCache 0.5.6 is not installed in {REFERENCE_056_VENV}; "
    "run REF_VERSION=0.5.6 ../shared/peer/reference.sh install",
)
START_TIMEOUT_S = 60.0


def server_command(script: str = "lmcache-server") -> list[str]:
    """The installed console script (next to this interpreter), else the same entry point via -c."""
    found = shutil.which(script) or str(Path(sys.executable).with_name(script))
    if os.path.exists(found):
        return [found]
    module = "lmcache_frontends.server" if script == "lmcache-server" else "lmcache_frontends.cli.main"
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())"]


@dataclass
class ServerProcess:
    """A running server: its process, admin URL and everything it wrote to stderr so far."""

    proc: subprocess.Popen[str]
    url: str = ""
    shm_name: str | None = None
    """The --shm-name suffix it was started with: stop() removes the segment if the server
    could not (killed with SIGKILL), so tests leave /dev/shm as they found it."""
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stderr_lines: list[str] = field(default_factory=list)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        # Not poll_until: it blocks on the stderr queue, so each line (or the exit) wakes it at once.
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r} within {timeout}s:\n{self.stderr}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited ({self.proc.poll()}) before {pattern.pattern!r}:\n{self.stderr}")
            match = pattern.search(line)
            if match:
                return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` and wait for the exit code; a server still running after `timeout`
        raises TimeoutExpired (the teardown kills it)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self.remove_orphaned_segment()
            self._drain_reader(timeout=5)

    def terminate(self, timeout: float = 10.0) -> None:
        """Teardown: SIGTERM, and SIGKILL if it has not exited within `timeout`."""
        if self.proc.poll() is None:
            try:
                self.stop(signal.SIGTERM, timeout)
            except subprocess.TimeoutExpired:
                self.stop(signal.SIGKILL, timeout)
        self.remove_orphaned_segment()

    def remove_orphaned_segment(self) -> None:
        """Unlink this server's L1 segment once nobody holds it (what its next start would do)."""
        if self.shm_name is not None:
            remove_dead_segment(f"/dev/shm/{SHM_NAME_PREFIX}{self.shm_name}")

    def _drain_reader(self, timeout: float) -> None:
        # Best effort, not a check: waits on the queue for the reader's end marker, gives up quietly.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._lines.get(timeout=0.1) is None:
                    return
            except queue.Empty:
                if self.proc.poll() is not None and self._lines.empty():
                    return

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)


def pump_stderr(proc: subprocess.Popen[str], server: ServerProcess) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        server.stderr_lines.append(line)
        server._lines.put(line)
    server._lines.put(None)


def launch(
    flags: Sequence[str] = (),
    *,
    script: str = "lmcache-server",
    shm_prefix: str = "e2e",
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
) -> ServerProcess:
    """Start lmcache-server on free ports with a small, uniquely named L1 (no LMCACHE_*
    variables from the caller's environment unless `env` gives them) and wait for its ready
    line. Stop it with `stop()` or `terminate()`."""
    shm_name = f"{shm_prefix}_{uuid.uuid4().hex[:12]}"
    args = [*server_command(script)]
    if script == "lmcache":
        args.append("server")
    args += ["--http-port", "0", "--port", "0", "--l1-size-gb", "0.03125", "--shm-name", shm_name, *flags]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    full_env.update(env or {})
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env)
    server = ServerProcess(proc, shm_name=shm_name)
    threading.Thread(target=pump_stderr, args=(proc, server), daemon=True).start()
    if wait_ready:
        try:
            server.url = server.wait_for_line(READY_RE, START_TIMEOUT_S).group(1)
        except BaseException:
            server.terminate()
            raise
    return server


def stop_process_group(proc: subprocess.Popen[Any], grace: float) -> None:
    """Stop a process started with `start_new_session=True` and everything it started: SIGTERM
    to its process group, `grace` seconds to exit, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextlib.contextmanager
def reference_server(l1_gb: float = 1.0, log_dir: Path | None = None) -> Iterator[str]:
    """LMCache 0.5.0's `lmcache server` on free loopback ports; yields its ZeroMQ URL and stops
    its whole process group afterwards."""
    zmq_port, http_port, prom_port = free_port(), free_port(), free_port()
    env = {**os.environ, "LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}
    log = tempfile.NamedTemporaryFile("w+", prefix="reference-", suffix=".log", dir=log_dir)  # noqa: SIM115
    proc = subprocess.Popen(
        [str(REFERENCE_LMCACHE), "server", "--host", "127.0.0.1", "--port", str(zmq_port),
         "--http-host", "127.0.0.1", "--http-port", str(http_port), "--prometheus-port", str(prom_port),
         "--l1-size-gb", str(int(max(1, l1_gb))), "--eviction-policy", "LRU"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )

    def log_tail() -> str:
        log.seek(0)
        return log.read()[-3000:]

    def healthy() -> bool:
        if proc.poll() is not None:  # fails at once, with its log
            raise RuntimeError(f"the reference server exited with {proc.returncode}:\n{log_tail()}")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthcheck", timeout=2):
            return True

    try:
        poll_until(healthy, timeout=180, interval=0.5, ignore=(OSError,), what="the reference server's /healthcheck",
                   detail=log_tail)
        yield f"tcp://127.0.0.1:{zmq_port}"
    finally:
        stop_process_group(proc, grace=30)
        log.close()
