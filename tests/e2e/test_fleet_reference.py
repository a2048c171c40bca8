"""Fleet interop with LMCache's own binaries: reference servers (0.5.0 and 0.5.6) registered to
our coordinator are seen and their events counted; our CoordinatorClient reports to the
reference coordinators. Skipped when the reference installs are absent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleetproc import NOT_YET, get_json, reference_coordinator, start_coordinator
from fleetproc import REFERENCE_VENVS as VENVS

from lmcache_adapters.fleet.client import CoordinatorClient
from lmcache_core.fleet.model import Tier
from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from redis_server import RedisProcess, free_port, redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SHAPE = ["--kvcache-shape-spec", "(2,256,16,2,64):float16:2", "--num-blocks", "256"]
QUIET = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"}


def requires(version: str) -> pytest.MarkDecorator:
    venv = VENVS[version]
    return pytest.mark.skipif(
        not (venv / "bin" / "lmcache").exists(), reason=f"the reference LMCache {version} is not installed in {venv}"
    )


class Reference:
    """One reference server (`lmcache server` of its venv) on free loopback ports, registered
    to `coordinator` with its own generation's flags."""

    def __init__(self, version: str, coordinator: str) -> None:
        self.version = version
        self.lmcache = str(VENVS[version] / "bin" / "lmcache")
        self.http_port, self.zmq_port = free_port(), free_port()
        events = (
            ["--coordinator-l2-event-reporting", "--coordinator-l2-event-flush-interval", "0.3"]
            if version == "0.5.0"
            else ["--coordinator-event-reporting", "--coordinator-event-flush-interval", "0.3", "--supported-transfer-mode", "auto"]
        )
        self.cmd = [
            self.lmcache, "server", "--host", "127.0.0.1", "--port", str(self.zmq_port), "--http-host", "127.0.0.1",
            "--http-port", str(self.http_port), "--prometheus-port", str(free_port()), "--l1-size-gb", "1",
            "--eviction-policy", "LRU", "--l2-adapter", '{"type":"mock","max_size_gb":1,"mock_bandwidth_gb":10}',
            "--coordinator-url", coordinator, "--coordinator-advertise-ip", "127.0.0.1",
            "--coordinator-heartbeat-interval", "1", *events,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=QUIET, start_new_session=True)

    def wait_ready(self) -> None:
        poll_until(
            lambda: get_json(f"http://127.0.0.1:{self.http_port}/healthcheck", timeout=1)[0] == 200,
            timeout=240, what=f"reference {self.version}", interval=0.1, ignore=NOT_YET,
        )

    def bench(self) -> None:
        result = subprocess.run(
            [self.lmcache, "bench", "server", "--mode", "cpu", "--rpc-url", f"tcp://127.0.0.1:{self.zmq_port}",
             "--url", f"http://127.0.0.1:{self.http_port}", "--num-tokens", "512", "--start", "0", "--end", "2",
             "--interval", "0.1", *SHAPE],
            capture_output=True, text=True, timeout=300, env=QUIET,
        )
        assert result.returncode == 0 and "Checksum FAIL" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    with redis_server(tmp_path) as server:
        yield server


@requires("0.5.0")
@requires("0.5.6")
def test_reference_servers_register_and_report_to_our_coordinator(redis_proc: RedisProcess, tmp_path: Path) -> None:
    coord = start_coordinator("--redis-url", redis_proc.url, "--disable-startup-resync")
    refs = [Reference(v, coord.url) for v in ("0.5.0", "0.5.6")]
    try:
        for ref in refs:
            ref.start()
        for ref in refs:
            ref.wait_ready()
        ports = poll_until(
            lambda: (lambda got: got if len(got) == 2 else None)({i["http_port"]: i["instance_id"] for i in get_json(f"{coord.url}/instances")[1]["instances"]}),
            timeout=30, what="both reference servers registered", interval=0.1, ignore=NOT_YET,
        )
        for ref in refs:
            ref.bench()
        by_version = {r.version: ports[r.http_port] for r in refs}

        def counted() -> dict[str, int] | None:
            inst = get_json(f"{coord.url}/fleet/status")[1]["instances"]
            got = {v: inst[i]["events_applied"] for v, i in by_version.items()}
            return got if all(got.values()) else None

        counts = poll_until(counted, timeout=30, what="events of both servers counted", interval=0.1, ignore=NOT_YET)
        assert counts["0.5.0"] > 0 and counts["0.5.6"] > 0
        stats = get_json(f"{coord.url}/directory/stats")[1]
        assert stats["l1_keys_by_instance"].get(by_version["0.5.6"], 0) > 0  # 0.5.6 reports L1
        usage = get_json(f"{coord.url}/instances/usage")[1]
        assert any(m["backend"] == "l2" and m["shared"] for m in usage["shared_modules"])  # 0.5.0's pool
        declared = next(i for i in usage["instances"] if i["instance_id"] == by_version["0.5.6"])
        assert declared["declared_capacity"] is True
        # A fleet quota of zero on the default salt: both servers get deletes they act on.
        assert get_json(f"{coord.url}/quota/_default", "PUT", {"limit_gb": 0})[0] == 200
        poll_until(
            lambda: get_json(f"{coord.url}/quota/_default")[1]["usage_gb"] == 0,
            timeout=30, what="the reference servers' L2 emptied", interval=0.1, ignore=NOT_YET,
        )
    finally:
        for ref in refs:
            ref.stop()
        coord.stop()


@pytest.mark.parametrize("version", ["0.5.0", "0.5.6"])
def test_our_client_reports_to_the_reference_coordinator(version: str) -> None:
    venv = VENVS[version]
    if not (venv / "bin" / "lmcache").exists():
        pytest.skip(f"the reference LMCache {version} is not installed in {venv}")
    with reference_coordinator(version, free_port()) as url:
        client = CoordinatorClient(url, instance_id="ours", advertise_ip="127.0.0.1", http_port=8080, heartbeat_interval=0.2, flush_interval=0.1)
        try:
            key = ObjectKey(b"\x11" * 32, "test-model", 0x01000100)
            client.events.store(Tier.L1, "dram", [key], [4096])
            client.events.store(Tier.L2, "fs", [key], [4096])
            client.start()
            poll_until(
                lambda: [i["instance_id"] for i in get_json(f"{url}/instances")[1]["instances"]] == ["ours"],
                timeout=10, what="registration", interval=0.1, ignore=NOT_YET,
            )
            if version == "0.5.6":
                poll_until(
                    lambda: get_json(f"{url}/directory/stats")[1]["num_placements"] == 2,
                    timeout=10, what="L1 and L2 placements", interval=0.1, ignore=NOT_YET,
                )
            else:
                poll_until(
                    lambda: get_json(f"{url}/l2/status")[1]["total_gb"] > 0,
                    timeout=10, what="L2 usage", interval=0.1, ignore=NOT_YET,
                )
                assert client.legacy
            client.stop()
            poll_until(
                lambda: get_json(f"{url}/instances")[1]["instances"] == [],
                timeout=10, what="deregistration", interval=0.1, ignore=NOT_YET,
            )
        finally:
            client.stop()
