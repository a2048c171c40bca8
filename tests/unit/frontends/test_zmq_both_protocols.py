"""One server, LMCache 0.5.0 and 0.5.6 clients at once, over real ZeroMQ sockets; the --protocol
override; 0.5.6's read-lock counts, clear(force) and tensor descriptors; the data path's reaper in
the periodic-thread registry; the per-operation DEBUG lines."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import torch

from lmcache_adapters.memory.shm_pool import SharedMemoryPool
from lmcache_core.oplog import LOGGER_NAME
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.app import create_app
from lmcache_frontends.bootstrap import Services, bootstrap
from lmcache_frontends.client import LMCacheClient, make_key
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import Client056, RawClient, pack
from lmcache_frontends.testing import cpu_shm_descriptor as descriptor
from lmcache_frontends.testing import key056 as base_key056
from lmcache_frontends.zmq.server import HOUSEKEEPING_THREAD, ZmqDataPathServer

CHUNK = 16
LAYERS, HIDDEN = 2, 64  # engine-driven objects of 2*2*16*64*2 = 8 KiB


class _Killed(BaseException):
    """Escapes a periodic thread's `except Exception`: the thread dies."""


WAIT = 10.0  # a bound on a failing poll only: a passing one returns as soon as its check holds


def key056(tokens: list[int], request_id: str, **fields: Any) -> bytes:
    return base_key056(tokens, request_id, chunk_size=CHUNK, **fields)


class Stack:
    """A bootstrapped engine with a shared-memory pool and the data path built by its plugin
    (as `lmcache-server` builds it: the reaper in the server's periodic-thread registry)."""

    def __init__(self, **config: Any) -> None:
        self.pool = SharedMemoryPool(8 << 20, shm_suffix=f"both_{uuid.uuid4().hex[:10]}", prefault="none",
                                     pin_memory=False)
        cfg = ServerConfig(port=0, http_port=0, chunk_size=CHUNK, **config)
        self.services: Services = bootstrap(cfg, memory_pool=self.pool)
        self.server: ZmqDataPathServer = self.services.frontends.servers["zmq"](self.services)
        self.server.start()
        self.services.on_close("zmq", self.server.stop)
        self.services.engine.add_status_contributor(
            "zmq", lambda: {"zmq": self.server.report_status(), "is_healthy": self.server.report_status()["is_healthy"]}
        )
        self.http = create_app(self.services).test_client()
        self.closers: list[Callable[[], None]] = []

    def v056(self) -> Client056:
        c = Client056(self.server.url)
        self.closers.append(c.close)
        return c

    def v050(self) -> LMCacheClient:
        c = LMCacheClient(self.server.url, timeout=5.0)
        self.closers.append(c.close)
        return c

    def close(self) -> None:
        for close in self.closers:
            close()
        self.services.close()


@pytest.fixture
def make_stack() -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**config: Any) -> Stack:
        s = Stack(**config)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


def register056(c: Client056, iid: int = 1, slots: int | None = None) -> dict[str, Any]:
    meta = {"instance_id": iid, "model_name": "m", "world_size": 1, "block_size": 16, "num_layers": LAYERS,
            "hidden_dim_size": HIDDEN, "dtype_str": "float16", "use_mla": False, "num_physical_slots": slots}
    reply: dict[str, Any] = c.value(14, pack(meta))
    return reply


def store056(c: Client056, stack: Stack, tokens: list[int], fill: float, iid: int = 1) -> None:
    """prepare_store, write each slot through our own mapping of the shared pool (as the
    engine does), commit_store."""
    key = key056(tokens, "w", worker_id=0)
    ctx = c.value(16, key, pack(iid))["context"]
    pool = c.pool(stack.pool.shm_name)
    for slot in ctx["slots"]:
        torch.frombuffer(pool, dtype=torch.float16, count=slot["length"] // 2, offset=slot["offset"]).fill_(fill)
    assert c.value(17, key, pack(iid), pack(b"")) is True


# -- both versions at once -------------------------------------------------------------------------


def test_both_versions_share_one_cache_and_are_counted_per_protocol(stack: Stack) -> None:
    new, old = stack.v056(), stack.v050()
    tokens = list(range(1, 3 * CHUNK + 2))
    assert register056(new)["shm_name"] == stack.pool.shm_name  # the shared pool, offered to 0.5.6 too
    store056(new, stack, tokens, 7.0)
    # A 0.5.0 client of the same model sees the 0.5.6 client's chunks, and reads them back right.
    ctx = old.register_engine_driven(2, model_name="m", num_layers=LAYERS, hidden_dim_size=HIDDEN)
    old.lookup(make_key("m", tokens, "r-old"))
    assert old.wait_for_lookup("r-old") == 3
    got = old.retrieve_engine_driven(ctx, make_key("m", tokens, "r-old", end=3 * CHUNK, worker_id=0))
    assert got is not None and all(bool((t == 7.0).all()) for t in got)
    # ... and the other way round: 0.5.6 looks up and holds what is there.
    assert new.value(8, key056(tokens, "r-new"), pack(1)) is None
    poll_until(lambda: new.value(9, pack("r-new")) == 3, timeout=WAIT, what="the 0.5.6 lookup to hold 3 chunks")
    status = stack.server.report_status()
    assert status["protocol"] == "auto"
    assert status["clients_by_protocol"] == {"0.5.0": 1, "0.5.6": 1}
    assert stack.http.get("/status").get_json()["zmq"]["clients_by_protocol"] == {"0.5.0": 1, "0.5.6": 1}
    assert status["failed_total"] == 0 and status["dropped_total"] == 0


def test_0_5_6_num_physical_slots_sets_the_object_shape(stack: Stack) -> None:
    c = stack.v056()
    register056(c, iid=3, slots=2 * CHUNK)
    meta = stack.http.get("/status").get_json()["cache_context_meta"]["3"]
    assert meta["object_shape"] == [2, LAYERS, 2 * CHUNK, HIDDEN]
    ctx = c.value(16, key056(list(range(CHUNK + 1)), "w", worker_id=0), pack(3))["context"]
    assert ctx["slots"][0]["shape"] == [2, LAYERS, 2 * CHUNK, HIDDEN]


def test_num_kv_readers_sets_how_many_retrieves_a_lookup_serves(stack: Stack) -> None:
    c = stack.v056()
    register056(c)
    tokens = list(range(100, 100 + 2 * CHUNK + 1))
    store056(c, stack, tokens, 1.0)
    for readers, served in ((1, 1), (2, 2)):
        rid = f"r{readers}"
        c.value(8, key056(tokens, rid, readers=readers), pack(1))
        poll_until(lambda rid=rid: c.value(9, pack(rid)) == 2, timeout=WAIT, what=f"lookup {rid} to hold 2 chunks")
        answers = [c.value(18, key056(tokens, rid, worker_id=0), pack(1)) for _ in range(served + 1)]
        assert [a["success"] for a in answers] == [True] * served + [False]
        for _ in range(served):
            c.value(19, key056(tokens, rid, worker_id=0), pack(1))


def test_0_5_6_clear_without_force_keeps_what_a_lookup_holds(stack: Stack) -> None:
    c = stack.v056()
    register056(c)
    held, free = list(range(1, CHUNK + 2)), list(range(500, 500 + CHUNK + 1))
    store056(c, stack, held, 1.0)
    store056(c, stack, free, 2.0)
    c.value(8, key056(held, "h"), pack(1))
    poll_until(lambda: c.value(9, pack("h")) == 1, timeout=WAIT, what="lookup h to hold 1 chunk")
    l1 = stack.services.storage.l1
    assert l1.object_count() == 2
    assert c.value(20, pack(False)) is None
    assert l1.object_count() == 1  # the held chunk stays
    assert c.value(18, key056(held, "h", worker_id=0), pack(1))["success"] is True
    c.value(19, key056(held, "h", worker_id=0), pack(1))
    assert c.value(20, pack(True)) is None
    assert l1.object_count() == 0


def test_forced_protocol_skips_recognition(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(protocol="0.5.6")
    with RawClient(stack.server.url) as raw:
        # (21, 0) is get_chunk_size under --protocol 0.5.6: the int itself, not the ambiguous string
        assert raw.request([pack(0), pack(21)]) == [pack(0), pack(21), pack(CHUNK)]
        # 0.5.0's GET_CHUNK_SIZE (18, 0) is 0.5.6's prepare_retrieve without payloads: an error reply
        reply = raw.request([pack(1), pack(18)])
        assert reply is not None and msgpack.unpackb(reply[1]).startswith("lmcache-server error: prepare_retrieve takes 2")
    assert stack.server.report_status()["protocol"] == "0.5.6"


def test_an_unknown_message_gets_an_error_reply_and_one_log_line(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    c = stack.v056()
    with caplog.at_level(logging.WARNING, logger="lmcache_frontends.zmq"):
        for i in range(20):
            reply = c.raw.request([pack(100 + i), pack("no_such_operation")])
            assert reply == [pack(100 + i), pack("lmcache-server error: unknown operation 'no_such_operation'")]
    lines = [r for r in caplog.records if "no_such_operation" in r.getMessage()]
    assert len(lines) == 1
    assert c.value(24) == "OK"  # the connection and the server are fine


def test_not_supported_operations_are_answered_at_once(stack: Stack) -> None:
    c = stack.v056()
    assert c.value(33, pack(1)) == [0, False]  # cb_protocol_handshake: incompatible
    assert c.value("cb_reorder_plan", key056([1] * 20, "x"), pack(0), pack(10)) == []
    assert c.value("server_module_call", pack({"method": "m", "payload": b""}))["success"] is False
    assert stack.server.report_status()["not_supported_total"] == 3


# -- 0.5.6 tensor descriptors (server-driven) -----------------------------------------------------


LAYER = [2, 8, 16, 2, 32]  # (2, NB, BS, NH, HS) fp16: 32 KiB


def register_kv056(c: Client056, handles: list[msgpack.ExtType], iid: int = 7) -> None:
    assert c.value(1, pack(iid), pack(handles), pack("m"), pack(1), pack("vllm"), pack({}),
                   pack([{"engine_group_id": 0, "layer_indices": list(range(len(handles))), "tokens_per_block": 16,
                          "sw_size_tokens": -1, "extra_object_group_tag": 0, "recurrent_state": False}])) is None


@pytest.fixture
def segments() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        try:
            os.unlink(f"/dev/shm/{name}")
        except FileNotFoundError:
            pass


def shared_layer(segments: list[str]) -> tuple[torch.Tensor, str]:
    import mmap

    name = f"both_kv_{uuid.uuid4().hex[:10]}"
    segments.append(name)
    nbytes = 2 * 8 * 16 * 2 * 32 * 2
    fd = os.open(f"/dev/shm/{name}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        mapping = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    return torch.frombuffer(mapping, dtype=torch.float16).view(LAYER), name


def test_descriptor_registration_store_and_retrieve(stack: Stack, segments: list[str]) -> None:
    c = stack.v056()
    layers = [shared_layer(segments) for _ in range(2)]
    register_kv056(c, [descriptor("/" + name, 2 * 8 * 16 * 2 * 32 * 2, LAYER) for _, name in layers])
    assert stack.server.instances()[7].layout is not None
    for t, _ in layers:
        t.copy_(torch.randn(LAYER).half())
    before = [t.clone() for t, _ in layers]
    tokens = list(range(7, 7 + 2 * CHUNK + 1))
    blocks = pack([list(range(2))])
    assert c.value(6, key056(tokens, "s", worker_id=0), pack(7), blocks, pack(b"stub")) == [b"stub", True]
    for t, _ in layers:
        t.zero_()
    c.value(8, key056(tokens, "r"), pack(1))
    poll_until(lambda: c.value(9, pack("r")) == 2, timeout=WAIT, what="lookup r to hold 2 chunks")
    assert c.value(7, key056(tokens, "r", worker_id=0), pack(7), blocks, pack(b"stub"), pack(0)) == [b"stub", True]
    # the two chunks' blocks came back byte for byte
    assert all(torch.equal(t[:, :2], b[:, :2]) for (t, _), b in zip(layers, before, strict=True))
    assert all(bool((t[:, 2:] == 0).all()) for t, _ in layers)


@pytest.mark.parametrize(
    ("name", "why"),
    [("../etc/passwd", "one name under /dev/shm"), ("a/b", "one name under /dev/shm"), ("", "one name under")],
)
def test_descriptor_names_one_segment_under_dev_shm(stack: Stack, name: str, why: str, caplog: pytest.LogCaptureFixture) -> None:
    c = stack.v056()
    with caplog.at_level(logging.WARNING, logger="lmcache_frontends.zmq"):
        register_kv056(c, [descriptor(name, 1024, [2, 8])])
    assert 7 not in stack.server.instances()
    assert any(why in r.getMessage() for r in caplog.records)


def test_descriptor_refusals(stack: Stack, segments: list[str], tmp_path: Any) -> None:
    c = stack.v056()
    _, name = shared_layer(segments)
    nbytes = 2 * 8 * 16 * 2 * 32 * 2
    # a view past the end of the segment (the codec checks the sum; the segment's real size too)
    register_kv056(c, [descriptor(name, nbytes * 2, [2, 16, 16, 2, 32])])
    assert 7 not in stack.server.instances()
    # the server's own L1 segment is never mapped as a client's tensor
    register_kv056(c, [descriptor(stack.pool.shm_name, 1024, [512])])
    assert 7 not in stack.server.instances()
    # a symbolic link under /dev/shm is not followed
    link = f"both_link_{uuid.uuid4().hex[:8]}"
    os.symlink(f"/dev/shm/{name}", f"/dev/shm/{link}")
    segments.append(link)
    register_kv056(c, [descriptor(link, nbytes, LAYER)])
    assert 7 not in stack.server.instances()
    # a tag this server cannot open
    vmm = msgpack.unpackb(descriptor(name, nbytes, LAYER).data)
    vmm.update(type="cuda_vmm", export_id=b"0" * 16, kind="posix_fd", fabric_blob=None, alloc_size=nbytes,
               alloc_offset=0)
    register_kv056(c, [msgpack.ExtType(1, pack(vmm))])
    assert 7 not in stack.server.instances()
    # a dtype outside the allow-list does not even decode: the error reply names it
    with pytest.raises(AssertionError, match="unsupported tensor dtype 'complex64'"):
        register_kv056(c, [descriptor(name, nbytes, [nbytes // 8], dtype="complex64")])
    assert 7 not in stack.server.instances()
    # every refusal was answered (the ack of a None-typed operation), and the server is fine
    assert c.value(24) == "OK"
    assert stack.server.report_status()["is_healthy"] is True


# -- the reaper in the registry, and the per-operation log -----------------------------------------


def test_the_reaper_is_a_registered_periodic_thread_and_a_dead_one_is_unhealthy(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = stack.http.get(f"/periodic-threads/{HOUSEKEEPING_THREAD}").get_json()
    assert listed["level"] == "high" and listed["is_alive"]
    poll_until(lambda: stack.http.get(f"/periodic-threads/{HOUSEKEEPING_THREAD}").get_json()["total_runs"] >= 1,
               timeout=WAIT, what="a first housekeeping run")
    summary = stack.http.get(f"/periodic-threads/{HOUSEKEEPING_THREAD}").get_json()["last_summary"]
    assert set(summary) == {"instances_reaped", "sessions_reaped", "jobs_reaped"}
    assert stack.http.get("/periodic-threads-health").get_json()["healthy"] is True
    thread = stack.services.periodic_threads.get(HOUSEKEEPING_THREAD)

    def die() -> None:
        raise _Killed("simulated crash of the reaper")

    monkeypatch.setattr(thread, "_target", die)
    thread.wake()
    poll_until(lambda: not thread.is_alive(), timeout=WAIT, what="the killed reaper thread to end")
    health = stack.http.get("/periodic-threads-health").get_json()
    assert health["healthy"] is False and health["unhealthy"] == [HOUSEKEEPING_THREAD]
    assert stack.http.get("/status").get_json()["is_healthy"] is False


def test_operation_log_lines_at_debug_only(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    c = stack.v056()
    register056(c)
    tokens = list(range(900, 900 + 2 * CHUNK + 1))
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        store056(c, stack, tokens, 3.0)
    assert [r for r in caplog.records if r.name == LOGGER_NAME] == []
    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        c.value(8, key056(tokens, "dbg"), pack(1))
        c.value(18, key056(list(range(5)) * 10, "none", worker_id=0), pack(1))
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert len(lines) == 2
    lookup, refused = lines
    assert lookup.startswith("op=LOOKUP client=") and " keys=2 " in lookup and " ok=true" in lookup
    assert "request_id=dbg" in lookup and "duration_ms=" in lookup
    assert refused.startswith("op=PREPARE_RETRIEVE") and " ok=false" in refused and "instance=1" in refused


def test_the_operation_log_costs_one_level_check_when_off(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the operation log ran while off")

    monkeypatch.setattr(stack.server.router, "_record", boom)
    logging.getLogger(LOGGER_NAME).setLevel(logging.INFO)
    try:
        c = stack.v056()
        register056(c)
        store056(c, stack, list(range(40, 40 + CHUNK + 1)), 1.0)
    finally:
        logging.getLogger(LOGGER_NAME).setLevel(logging.NOTSET)
