"""Clean stops of the real server: SIGINT, SIGTERM and any mix of repeated signals end with
exit 0, the L1 segment unlinked, and the L2 write-back drained or its loss counted."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import torch
from serverproc import ServerProcess

from lmcache_adapters.memory import SHM_NAME_PREFIX
from lmcache_core.testing import poll_until
from lmcache_frontends.client import LMCacheClient, make_key

pytestmark = pytest.mark.e2e

CHUNK = 64
MODEL = "e2e-shutdown"
TOKENS = list(range(100, 100 + 4 * CHUNK))
ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
BUDGET_S = 15.0


def segment(server: ServerProcess) -> str:
    return f"/dev/shm/{SHM_NAME_PREFIX}{server.shm_name}"


def store_four_chunks(server: ServerProcess) -> None:
    url = ZMQ_RE.search(server.stderr)
    assert url is not None, server.stderr
    gen = torch.Generator().manual_seed(7)
    data = [torch.randn(2, 2, CHUNK, 32, generator=gen).half() for _ in range(4)]
    with LMCacheClient(url.group(1)) as client:
        ctx = client.register_engine_driven(1, model_name=MODEL, num_layers=2, hidden_dim_size=32)
        assert client.store_engine_driven(ctx, make_key(MODEL, TOKENS, "r", end=4 * CHUNK, worker_id=0), data)
        client.end_session("r")


def assert_clean_exit(server: ServerProcess, rc: int) -> None:
    assert rc == 0, server.stderr
    assert "exiting now" not in server.stderr and "Traceback" not in server.stderr
    assert "stopped" in server.stderr
    assert not os.path.exists(segment(server)), "the L1 segment was left in /dev/shm"
    # stop() would remove an orphan itself: check before it could have.
    assert server.shm_name is not None


def send_and_wait(server: ServerProcess, *signals: signal.Signals, gap_s: float = 0.0) -> int:
    for sig in signals:
        server.proc.send_signal(sig)
        if gap_s:
            time.sleep(gap_s)
    return server.proc.wait(BUDGET_S)


@pytest.mark.parametrize(
    "signals",
    [
        (signal.SIGINT, signal.SIGTERM),  # Ctrl-C, then a supervisor's (or dev.sh's) SIGTERM
        (signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM),
        (signal.SIGINT, signal.SIGINT, signal.SIGINT),
    ],
    ids=["int-term", "storm", "int-int-int"],
)
def test_repeated_signals_still_stop_cleanly(start_server: Callable[..., ServerProcess], signals: tuple[signal.Signals, ...]) -> None:
    server = start_server("--l2-adapter", '{"type": "mock"}')
    assert os.path.exists(segment(server))
    rc = send_and_wait(server, *signals)
    assert_clean_exit(server, rc)


def test_one_signal_waits_for_the_l2_write_back(start_server: Callable[..., ServerProcess]) -> None:
    # 64 KiB at 40 KB/s: the write-back is still running when SIGTERM arrives.
    server = start_server("--chunk-size", str(CHUNK), "--l2-adapter", '{"type": "mock", "bandwidth_gbps": 0.00004}')
    store_four_chunks(server)
    rc = send_and_wait(server, signal.SIGTERM)
    assert_clean_exit(server, rc)
    assert "writing 4 object(s) back to L2 first" in server.stderr
    assert "not written to L2" not in server.stderr


def test_a_second_signal_stops_waiting_and_counts_what_was_not_written(start_server: Callable[..., ServerProcess]) -> None:
    # 64 KiB at 1 KB/s: the write-back would take a minute.
    server = start_server("--chunk-size", str(CHUNK), "--l2-adapter", '{"type": "mock", "bandwidth_gbps": 0.000001}')
    store_four_chunks(server)
    server.proc.send_signal(signal.SIGTERM)
    server.wait_for_line(re.compile(r"writing 4 object\(s\) back to L2 first"), BUDGET_S)
    # Exits within BUDGET_S (the wait's own timeout), where the write-back would take a minute.
    rc = send_and_wait(server, signal.SIGINT)
    assert_clean_exit(server, rc)
    assert "SIGINT again: already shutting down" in server.stderr
    assert "4 object(s) were not written to L2" in server.stderr


def test_the_ready_file_names_this_server_and_goes_away_at_shutdown(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    server = start_server("--ready-file", str(ready))
    # Written just after the ready line, by the server process.
    poll_until(ready.exists, timeout=10, interval=0.05, what="the ready file", detail=lambda: server.stderr)
    info = json.loads(ready.read_text())
    assert info["pid"] == server.proc.pid and info["admin_url"] == server.url
    assert info["zmq_url"].startswith("tcp://127.0.0.1:")
    assert info["l1_shm_name"] == f"{SHM_NAME_PREFIX}{server.shm_name}" and info["l1_capacity_bytes"] == 32 << 20
    assert requests.get(f"{info['admin_url']}/healthcheck", timeout=5).status_code == 200
    assert server.stop() == 0
    assert not ready.exists()


def test_an_unwritable_ready_file_fails_the_start_naming_the_flag(start_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    server = start_server("--ready-file", str(tmp_path / "missing-dir" / "ready.json"), wait_ready=False)
    assert server.proc.wait(60) == 1
    server.wait_for_line(re.compile("cannot write --ready-file"), 5)
    server.terminate()
    assert not os.path.exists(segment(server))
