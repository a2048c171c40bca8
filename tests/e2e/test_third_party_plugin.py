"""A separately packaged adapter, installed with pip, is found by the server and passes the contract suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.testing import poll_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "lmcache-adapter-sqlite"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install the example distribution into a private target directory (no global change)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=build,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(target.glob("lmcache_adapter_sqlite-*.dist-info")), "no dist-info: entry point would be invisible"
    yield target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_the_installed_adapter_passes_the_contract_suite(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), "--rootdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(installed),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout


def test_the_server_uses_the_installed_adapter(installed: Path, tmp_path: Path, free_port: int) -> None:
    db = tmp_path / "l2.sqlite3"
    http_port = free_port
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmcache_frontends.server",
            "--http-port",
            str(http_port),
            "--port",
            "0",
            "--l1-size-gb",
            "0.0625",
            "--l2-adapter",
            json.dumps({"type": "sqlite", "path": str(db)}),
        ],
        env=_env(installed),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def answered() -> Any:
            if proc.poll() is not None:  # fails at once, with what the server said
                raise AssertionError(f"server exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/status", timeout=2) as resp:
                return json.load(resp)

        status = poll_until(answered, timeout=60, interval=0.2, ignore=(OSError,), what="the server to answer /status")
        adapters = status["storage_manager"]["l2_adapters"]
        (report,) = adapters
        assert report["kind"] == "sqlite" and report["is_healthy"] is True
        assert report["path"] == str(db)
        assert db.exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_an_unknown_adapter_type_names_the_registered_ones(installed: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lmcache_frontends.server", "--http-port", "0", "--l2-adapter", '{"type": "sqlitee"}'],
        env=_env(installed),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "sqlitee" in result.stderr and "sqlite" in result.stderr.replace("sqlitee", "")
