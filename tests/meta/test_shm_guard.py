"""The session-level /dev/shm check (tests/shm_guard.py) fails a run that leaks, and only then."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


def _run_inner(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "shm_guard", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_a_run_that_leaves_an_orphan_segment_fails_and_the_segment_is_removed(tmp_path: Path) -> None:
    name = f"lmcache_l1_pool_guard_{uuid.uuid4().hex[:10]}"
    done = _run_inner(
        tmp_path,
        f"""
        def test_leaks():
            with open("/dev/shm/{name}", "wb") as f:
                f.truncate(1 << 20)
        """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 passed" in done.stdout and "shared-memory leak" in done.stdout
    assert f"{name} (1.0 MiB): nobody holds it (removed now)" in done.stdout
    assert not os.path.exists(f"/dev/shm/{name}")


def test_a_server_left_running_is_reported_with_its_pid(tmp_path: Path) -> None:
    name = f"lmcache_l1_pool_guard_{uuid.uuid4().hex[:10]}"
    pid_file = tmp_path / "pid"
    done = _run_inner(
        tmp_path,
        f"""
        import subprocess, sys, time
        def test_leaves_a_holder_running():
            code = "import sys; f = open('/dev/shm/{name}', 'wb'); print(1, flush=True); sys.stdin.read()"
            proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            proc.stdout.readline()
            open({str(pid_file)!r}, "w").write(str(proc.pid))
        """,
    )
    try:
        pid = int(pid_file.read_text())
        assert done.returncode == 1, done.stdout + done.stderr
        assert f"still held by pid(s) {pid} of this run" in done.stdout
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), 9)
        if os.path.exists(f"/dev/shm/{name}"):
            os.unlink(f"/dev/shm/{name}")


def test_a_clean_run_passes_and_a_run_with_no_tests_still_fails(tmp_path: Path) -> None:
    done = _run_inner(
        tmp_path,
        """
        def test_clean():
            assert True
        """,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shared-memory leak" not in done.stdout
    (tmp_path / "test_inner.py").write_text("")
    empty = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "shm_guard", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(TESTS)),
    )
    assert empty.returncode == 5  # untouched: dev.sh turns it into a failure


def test_a_segment_first_seen_held_by_another_process_tree_is_not_this_runs_leak() -> None:
    import shm_guard

    other_run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    name = f"lmcache_l1_pool_guard_{uuid.uuid4().hex[:10]}"
    try:
        # A watcher for a run rooted at `other_run`: this test process is outside its tree.
        watcher = shm_guard.Watcher(shm_guard.snapshot(), me=other_run.pid)
        with open(f"/dev/shm/{name}", "wb") as held:
            held.truncate(4096)
            watcher.poll()  # seen while we hold it
        # Its holder is gone now, but it was never the other run's.
        assert name not in {leak.name for leak in shm_guard.find_leaks(watcher, remove=False)}
        fresh = shm_guard.Watcher(shm_guard.snapshot(), me=other_run.pid)
        fresh.before.pop(name)  # a watcher that never saw it held counts it
        assert name in {leak.name for leak in shm_guard.find_leaks(fresh, remove=False)}
    finally:
        other_run.kill()
        other_run.wait()
        os.unlink(f"/dev/shm/{name}")
