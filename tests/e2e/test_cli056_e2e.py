"""LMCache 0.5.6's own CLI (`lmcache describe|ping|kvcache|quota` of the 0.5.6 install) against our
real server process prints what it prints against the 0.5.6 reference (recorded in
tests/compat/cli056_outputs.json): the same exit codes, titles and values where they are
deterministic, and every field the reference filled filled here too. Skipped without the 0.5.6
install."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from serverproc import REFERENCE_056_LMCACHE, ServerProcess, requires_reference_056

from lmcache_frontends.client import LMCacheClient, share_cpu_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compat"))
from cli056_cases import CLI_CASES, CLICase, fields, filled  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires_reference_056]

RECORDED = json.loads((Path(__file__).resolve().parents[1] / "compat" / "cli056_outputs.json").read_text())["outputs"]
QUIET_ENV = {"LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}
# The reference bench's registration: model test-model, world size 1, instance 1000, two layers
# of [2, 256 blocks, 16 tokens, 2 heads, 64] float16, server-driven.
KV_SHAPE = (2, 256, 16, 2, 64)


@pytest.fixture
def server(start_server: Callable[..., ServerProcess], tmp_path: Path) -> tuple[str, str]:
    """Our server with an fs L2 adapter (the reference's was fs too): (admin URL, ZeroMQ URL)."""
    sp = start_server("--l2-adapter", json.dumps({"type": "fs", "base_path": str(tmp_path / "l2")}))
    zmq_url = re.search(r" zmq (tcp://\S+)", sp.stderr)
    assert zmq_url is not None, sp.stderr
    return sp.url, zmq_url.group(1)


def run_056(case: CLICase, url: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}, **QUIET_ENV}
    return subprocess.run([str(REFERENCE_056_LMCACHE), *case.command(url)], capture_output=True, text=True, timeout=120, env=env)


def compare(case: CLICase, ours: subprocess.CompletedProcess[str]) -> list[str]:
    recorded = RECORDED[case.name]
    problems = []
    if ours.returncode != recorded["rc"]:
        problems.append(f"exit code {ours.returncode}, 0.5.6 gave {recorded['rc']}: {ours.stderr[-400:]}")
    if case.down:
        return problems
    want, got = fields(case, recorded["stdout"]), fields(case, ours.stdout)
    if want.get("title") != got.get("title"):
        problems.append(f"title {got.get('title')!r}, 0.5.6 printed {want.get('title')!r}")
    unfilled = sorted(filled(want) - filled(got))
    if unfilled:
        problems.append(f"fields 0.5.6 fills and we do not: {unfilled}")
    if case.json_output:
        for key, value in want.items():
            if any(key == e or key.startswith(e + "[") for e in case.exact) and got.get(key) != value:
                problems.append(f"{key}: {got.get(key)!r}, 0.5.6 printed {value!r}")
    return problems


@pytest.mark.timeout(600)
def test_the_0_5_6_cli_works_against_our_server_as_against_its_own(server: tuple[str, str]) -> None:
    url, zmq_url = server
    names = [f"lmcache_e2e056_{uuid.uuid4().hex[:8]}_{i}" for i in range(2)]
    client = LMCacheClient(zmq_url)
    problems: dict[str, list[str]] = {}
    try:
        registered = False
        for case in CLI_CASES:
            if case.needs_registration and not registered:
                shared = [share_cpu_tensor(KV_SHAPE, torch.float16, n) for n in names]
                client.register_kv_cache(
                    1000, [w for _, w in shared], model_name="test-model", layout_hints={"kv_layout": "NHD"},
                    engine_group_infos=[{"engine_group_id": 0, "layer_indices": [0, 1], "tokens_per_block": 16, "sw_size_tokens": -1}],
                )
                registered = True
            found = compare(case, run_056(case, url))
            if found:
                problems[case.name] = found
        if registered:
            client.unregister_kv_cache(1000)
    finally:
        client.close()
        for n in names:
            if os.path.exists(f"/dev/shm/{n}"):
                os.unlink(f"/dev/shm/{n}")
    assert problems == {}


def test_every_case_was_recorded() -> None:
    assert sorted(c.name for c in CLI_CASES) == sorted(RECORDED)
