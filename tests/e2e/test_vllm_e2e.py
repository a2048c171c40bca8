"""A real CPU vLLM with LMCache's own connector (0.5.0 and 0.5.6 clients) against our server.

Builds (or reuses) the cached vLLM venvs with `scripts/vllm-e2e.sh install` (outside the clone);
it never skips. One vLLM start per client version:
0.5.0 over ipc, 0.5.6 over tcp (LMCACHE_VLLM_E2E_MATRIX=full runs both transports for both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import vllm_harness as vh
from serverproc import READY_RE, ServerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ZMQ_RE = re.compile(r"zmq (tcp://\S+)")
PROMPT_TOKENS = 300
SEEDS = (0, 1, 2)

CASES = [("0.5.0", "ipc"), ("0.5.6", "tcp")]
if os.environ.get("LMCACHE_VLLM_E2E_MATRIX") == "full":
    CASES = [(c, t) for c in vh.CLIENT_VERSIONS for t in ("tcp", "ipc")]

def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus family's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def our_server(start_server: Callable[..., ServerProcess]) -> Iterator[tuple[ServerProcess, str, str]]:
    """Our server with the documented flags, on a free tcp port and an ipc socket."""
    sock_dir = Path(tempfile.mkdtemp(prefix="lmc-vllm-", dir="/tmp"))  # short: a socket path is <= 107 bytes
    try:
        ipc = f"ipc://{sock_dir}/zmq.sock"
        server = start_server("--l1-size-gb", "0.25", "--ipc-path", ipc[len("ipc://"):], *vh.server_flags())
        ready = next(ln for ln in server.stderr_lines if READY_RE.search(ln))
        tcp = ZMQ_RE.search(ready)
        assert tcp is not None, ready
        yield server, tcp.group(1), ipc
        server.stop()
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("client", "transport"), CASES, ids=[f"{c}-{t}" for c, t in CASES])
def test_vllm_hits_our_server_with_identical_outputs(
    client: str, transport: str, our_server: tuple[ServerProcess, str, str], tmp_path: Path
) -> None:
    # The cached venv (a second or so when present; ~100 s to build on a first run).
    installed = subprocess.run(["bash", str(vh.ROOT / "scripts" / "vllm-e2e.sh"), "install", client],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, f"installing vLLM + lmcache {client} failed:\n{installed.stdout}{installed.stderr}"
    server, tcp, ipc = our_server
    endpoint = tcp if transport == "tcp" else ipc
    model = vh.write_tiny_llama(tmp_path / "model", client)
    vllm = vh.VllmProcess(client, endpoint, model, tmp_path / "vllm.log")
    try:
        vllm.wait_ready()
        chunk = int(vh.server_flags()[vh.server_flags().index("--chunk-size") + 1])
        expected_hit = (PROMPT_TOKENS - 1) // chunk * chunk  # whole chunks; the last token is recomputed
        cold, warm = {}, {}
        for seed in SEEDS:
            cold[seed] = vllm.complete(vh.prompt(seed, PROMPT_TOKENS))
            warm[seed] = vllm.complete(vh.prompt(seed, PROMPT_TOKENS))
        # A prompt that differs from seed 0's in its first token only: a miss, and other logprobs
        # (the comparison below can tell KV apart: one changed token early on shows in the output).
        other = vh.prompt(0, PROMPT_TOKENS)
        other[0] = other[0] % 997 + 4
        miss = vllm.complete(other)
        metrics = urllib.request.urlopen(server.url + "/metrics", timeout=10).read().decode()
        status = _get_json(server.url + "/status")
        # The log up to here: what vLLM prints while shutting down (its engine process may end
        # before the API server and log EngineDeadError) says nothing about our server.
        log = vllm.log()
    finally:
        vllm.stop()

    for seed in SEEDS:
        assert cold[seed].cached_tokens == 0, (seed, cold[seed])
        assert warm[seed].cached_tokens == expected_hit, (seed, warm[seed])
        assert warm[seed].tokens == cold[seed].tokens
        assert warm[seed].logprobs == cold[seed].logprobs, (cold[seed].logprobs, warm[seed].logprobs)
    assert miss.cached_tokens == 0
    assert miss.logprobs != cold[0].logprobs

    # Our server saw what vLLM reported: hits, stores and retrieves, token for token.
    hit_tokens = _metric(metrics, "lmcache_mp_lookup_hit_tokens_total")
    assert hit_tokens == sum(w.cached_tokens for w in warm.values()) == expected_hit * len(SEEDS)
    stored = _metric(metrics, "lmcache_mp_stored_tokens_total")
    assert stored == expected_hit * (len(SEEDS) + 1)  # every cold prompt and the miss
    assert _metric(metrics, "lmcache_mp_retrieved_tokens_total") == expected_hit * len(SEEDS)
    l1 = status["storage_manager"]["l1_manager"]
    assert l1["total_object_count"] == (len(SEEDS) + 1) * expected_hit // chunk

    assert server.proc.poll() is None, server.stderr
    assert vh.error_lines(log) == [], "\n".join(vh.error_lines(log))
    assert vh.error_lines(server.stderr) == [], server.stderr
    assert not [ln for ln in server.stderr.splitlines() if " WARNING " in ln], server.stderr
