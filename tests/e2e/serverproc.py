"""Helpers to run the real `lmcache-server` console script as a subprocess and read its stderr."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY_RE = re.compile(r"ready: admin (http://\S+) ")

# LMCache 0.5.0, installed by ../shared/peer/reference.sh install (absent in CI).
REFERENCE_VENV = Path(os.environ.get("LMCACHE_REFERENCE_VENV", Path.home() / ".cache" / "lmcache-reference" / "venv"))
REFERENCE_LMCACHE = REFERENCE_VENV / "bin" / "lmcache"
requires_reference = pytest.mark.skipif(
    not REFERENCE_LMCACHE.exists(),
    reason=f"the reference LMCache 0.5.0 is not installed in {REFERENCE_VENV}; run ../shared/peer/reference.sh install",
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
    _lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    stderr_lines: list[str] = field(default_factory=list)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
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
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._drain_reader(timeout=5)

    def _drain_reader(self, timeout: float) -> None:
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
