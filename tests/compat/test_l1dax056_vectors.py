"""Our server with L1 on a Device-DAX stand-in answers LMCache 0.5.6's L1 DAX routes, step by step,
as the 0.5.6 reference did (recorded in `l1dax056_vectors.json` by `record_l1dax056.py`): the same
status code and a body of the same shape (`test_admin056_vectors.differences`), except the steps
marked `deviation` (see l1dax056_cases.py). Engine-driven engines are told to use pickle mode at
registration, as 0.5.6 tells them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from l1dax056_cases import OBJECT_BYTES, PRIMARY_BYTES, STEPS, STORE, prepare_devices
from test_admin056_vectors import differences

from lmcache_adapters.memory.dax_pool import DaxMemoryPool
from lmcache_core.keys import ObjectKey, kv_rank_for
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services, bootstrap
from lmcache_frontends.client import LMCacheClient
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import in_memory_stack
from lmcache_frontends.zmq.protocol import RequestType
from lmcache_frontends.zmq.server import ZmqDataPathServer

VECTORS = json.loads(Path(__file__).with_name("l1dax056_vectors.json").read_text())


@pytest.fixture(scope="module")
def dax_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("l1dax"))
    prepare_devices(directory)
    return directory


@pytest.fixture(scope="module")
def stack(dax_dir: str) -> Iterator[Services]:
    services = in_memory_stack(memory_pool=DaxMemoryPool(f"{dax_dir}/primary.img", PRIMARY_BYTES))
    yield services
    services.close()


@pytest.fixture(scope="module")
def client(stack: Services) -> FlaskClient:
    return create_app(stack).test_client()


def store_objects(stack: Services) -> None:
    """What the reference bench's two requests leave in L1: four 32 MiB objects."""
    assert stack.storage is not None
    l1 = stack.storage.l1
    keys = [ObjectKey(i.to_bytes(32, "big"), "test-model", kv_rank_for(1, 0)) for i in range(4)]
    assert all(h is not None for _, h in l1.reserve_write(keys, [OBJECT_BYTES] * 4))
    l1.finish_write(keys)


def test_the_steps_answer_as_0_5_6_in_order(client: FlaskClient, stack: Services, dax_dir: str) -> None:
    # One server through the whole scenario: each step sees what the earlier ones did, as on
    # the reference. Every step is checked; the failures are reported together.
    problems: list[str] = []
    for step in STEPS:
        if step.method == STORE:
            store_objects(stack)
            continue
        recorded = VECTORS["steps"][step.name]
        response = client.open(step.path, method=step.method, json=step.body(dax_dir))
        body = response.get_json()
        want = step.deviation.get("status", recorded["status"])
        if response.status_code != want:
            problems.append(f"{step.name}: status {response.status_code}, expected {want}: {body} (0.5.6: {recorded})")
        elif not step.deviation:
            problems += [f"{step.name}: {p}" for p in differences(recorded["body"], body, error_body=recorded["status"] >= 400)]
    assert problems == []


def test_every_step_is_recorded_and_every_recording_is_a_step() -> None:
    names = {s.name for s in STEPS if s.method != STORE}
    assert sorted(names ^ set(VECTORS["steps"])) == []


def test_deviations_say_why() -> None:
    for step in STEPS:
        if step.deviation:
            assert set(step.deviation) == {"status", "why"} and len(step.deviation["why"]) > 20, step.name


def test_engine_driven_registration_is_answered_in_pickle_mode(tmp_path: Path) -> None:
    path = tmp_path / "l1.img"
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    pool = DaxMemoryPool(str(path), 16 << 20, pin_memory=False)
    services = bootstrap(ServerConfig(port=0, http_port=0, chunk_size=16), memory_pool=pool)
    server = ZmqDataPathServer(services.engine, pool, clock=services.clock, port=0, max_workers=2)
    server.start()
    try:
        with LMCacheClient(server.url, timeout=5.0) as engine:
            meta = {"instance_id": 4242, "model_name": "test-model", "world_size": 1, "block_size": 16,
                    "num_layers": 32, "hidden_dim_size": 1024, "dtype_str": "float16", "use_mla": False}
            reply = engine.call(RequestType.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT, meta)
        assert reply == VECTORS["engine_driven_registration_reply"] == {"shm_name": "", "pool_size": 0}
    finally:
        server.stop()
        services.close()
