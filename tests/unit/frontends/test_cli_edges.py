"""The CLI's edges an operator meets first: usage errors, a missing token, a wrong port."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.server import AdminServer
from lmcache_frontends.cli.main import main
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack

ADMIN = "edges-admin-token-0123456789"
READ = "edges-read-token-0123456789ab"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "usage", "choices"),
    [
        (["quota"], "usage: lmcache quota [-h] ACTION ...", "(choose from set, get, delete, list)"),
        (["kvcache"], "usage: lmcache kvcache [-h] ACTION ...", "(choose from clear, info, pin, unpin, compress)"),
        ([], "usage: lmcache [-h] [--version] COMMAND ...", "required: COMMAND (choose from server, "),
        (["status", "--format", "yaml"], "usage: lmcache status", "invalid choice: 'yaml' (choose from 'terminal', 'json')"),
    ],
)
def test_usage_errors_show_the_usage_line_and_the_choices(
    capsys: pytest.CaptureFixture[str], argv: list[str], usage: str, choices: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    first, second = err.strip().splitlines()[0], err.strip().splitlines()[-1]
    assert first.startswith(usage)
    assert second.startswith("lmcache: error: ") and choices in second


@pytest.fixture
def secured_url() -> Iterator[str]:
    stack = in_memory_stack(ServerConfig(admin_token=ADMIN, read_token=READ), pool_bytes=4 << 20)
    server = AdminServer(create_app(stack), port=0)
    server.start()
    yield server.url
    server.stop()
    stack.close()


def test_a_401_says_which_flag_or_variable_carries_the_token(
    secured_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LMCACHE_TOKEN", raising=False)
    code, _, err = run(capsys, "status", "--url", secured_url)
    assert code == 1 and "HTTP 401" in err
    assert "pass --token TOKEN or set LMCACHE_TOKEN" in err
    code, _, err = run(capsys, "status", "--url", secured_url, "--token", "wrong-token-0123456789abcdef")
    assert code == 1 and "was not accepted" in err
    code, _, err = run(capsys, "kvcache", "clear", "--url", secured_url, "--token", READ)
    assert code == 1 and "HTTP 403" in err and "lacks the scope" in err
    monkeypatch.setenv("LMCACHE_TOKEN", READ)
    code, out, _ = run(capsys, "status", "--url", secured_url, "--format", "json")
    assert code == 0 and '"is_healthy"' in out


def test_a_url_pointing_at_a_zeromq_port_fails_at_once_with_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        started = time.monotonic()
        code, _, err = run(capsys, "status", "--url", f"http://127.0.0.1:{port}")
        assert time.monotonic() - started < 5  # not the 30 s timeout
        assert code == 1
        assert "ZeroMQ greeting, not HTTP" in err and "--http-port" in err
    finally:
        router.close()
        ctx.term()
