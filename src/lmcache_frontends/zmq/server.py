"""The ZeroMQ data-path server: a ROUTER speaking LMCache 0.5.0's multiprocess protocol.

This module is the wire side only: it decodes frames, names the client (the ROUTER identity
frame, a `ClientId`) and hands typed values to the core's data path, which owns the rules
(ownership of reservations and locks, leases, caps). docs/security.md has the threat model."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import queue
import socket
import stat
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch
import zmq

from lmcache_adapters.memory.faultguard import (
    GuardedRange,
    SegmentFaultError,
    fault_count,
    native_guard,
)
from lmcache_adapters.transfer import ntcopy
from lmcache_adapters.transfer.copy_pool import CopyPool, default_copy_threads
from lmcache_adapters.transfer.layout import KVCacheLayout
from lmcache_adapters.transfer.tensors import CpuShmTensorWrapper, CudaIPCWrapper
from lmcache_adapters.transfer.unpickler import dumps_cpu_tensors, load_cpu_tensors, load_wrapper
from lmcache_core.clients import ClientId, ClientLimits, Registrations
from lmcache_core.engine import CacheEngine
from lmcache_core.errors import InvalidKeyError
from lmcache_core.lookup import DataPath, RequestKey, TransferKeys
from lmcache_core.metric_names import (
    RETRIEVE_REQUESTS,
    RETRIEVE_THROUGHPUT_GBPS,
    RETRIEVED_TOKENS,
    STORE_REQUESTS,
    STORE_THROUGHPUT_GBPS,
    STORED_TOKENS,
    MetricFamily,
)
from lmcache_core.ports import Clock, MemoryHandle, MemoryPool, MetricsSink, NullMetricsSink
from lmcache_core.ratelimit import LogRateLimiter
from lmcache_core.sessions import DEFAULT_SESSION_TTL_SECONDS, SessionManager
from lmcache_frontends.zmq.curve import CurveConfig, apply_server_curve, start_authenticator
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.kv_caches import registration_report
from lmcache_frontends.zmq.protocol import (
    EXT_DEVICE_IPC_WRAPPER,
    KEY_FIRST_TYPES,
    NO_RESPONSE,
    PAYLOAD_COUNTS,
    REGISTER_ED_FIELDS,
    ProtocolError,
    RequestType,
    decode,
    encode,
    parse_key,
    parse_type,
)

log = logging.getLogger(__name__)

# A registration that never pinged is reaped this long after its last activity (0.5.0: 3600 s).
NEVER_PINGED_REAP_SECONDS = 3600.0
HOUSEKEEPING_PERIOD_SECONDS = 1.0
_POLL_MS = 100
_MAX_WAIT_SECONDS = 300.0
DEFAULT_MAX_FRAME_BYTES = 256 << 20
# Frames of requests handled on the socket thread (everything but transfers) beyond this are
# refused before decoding, whatever --max-frame-bytes allows: keys are capped by their token
# count, and a registration of a few thousand layers is well below it.
_MAX_INLINE_FRAME_BYTES = 16 << 20
# A token id takes at most 5 bytes in msgpack (uint32): what a key of N tokens can occupy.
_KEY_FRAME_SLACK_BYTES = 64 << 10
_MAX_KV_TENSORS = 4096

R = RequestType
# Handled on worker threads with per-client affinity (each client's transfers stay FIFO).
TRANSFER_TYPES = frozenset({R.STORE, R.RETRIEVE, R.PREPARE_STORE, R.COMMIT_STORE, R.PREPARE_RETRIEVE, R.COMMIT_RETRIEVE})
# Blocking requests go to their own thread so the socket thread never waits.
BLOCKING_TYPES = frozenset({R.WAIT_PREFETCH_STATUS})


class RequestFailed(Exception):
    """The request fails: it is answered with its type's own failure value."""


@dataclass
class Instance:
    """One engine worker's registration (engine-driven context or shared KV tensors), owned by
    the client that sent it."""

    client: ClientId
    instance_id: int
    mode: str  # "engine_driven" | "lmcache_driven"
    model_name: str
    world_size: int
    registered_at: float
    last_seen: float
    pinged: bool = False
    object_size: int = 0
    slot_shape: list[int] = field(default_factory=list)
    dtype_str: str = ""
    dtype: torch.dtype | None = None
    layout: KVCacheLayout | None = None
    engine_type: str = ""
    reply: dict[str, Any] | None = None
    # The client's shared KV segments the server maps (CPU): watched for truncation.
    guards: list[GuardedRange] = field(default_factory=list)
    faults_seen: int = 0

    def segment_faults(self) -> int:
        return sum(g.faults() for g in self.guards)

    def segments_intact(self) -> bool:
        """Without the native guard: whether every shared segment still has its size."""
        try:
            for guard in self.guards:
                guard.check_size()
        except SegmentFaultError:
            return False
        return True


def _failure_value(rtype: RequestType, payloads: list[Any]) -> Any:
    """The type's own failure answer (every request type the server handles has one; the
    types whose result is None are answered with no response frame)."""
    if rtype in (R.STORE, R.RETRIEVE):
        handle = payloads[3] if len(payloads) > 3 and isinstance(payloads[3], bytes) else b""
        return [handle, False]
    if rtype is R.PREPARE_STORE:
        return {"context": {"slots": [], "chunk_indices": []}}
    if rtype is R.PREPARE_RETRIEVE:
        return {"success": False, "data": b"", "context": {}}
    if rtype in (R.COMMIT_STORE, R.COMMIT_RETRIEVE, R.PING):
        return False
    if rtype in (R.QUERY_PREFETCH_STATUS, R.WAIT_PREFETCH_STATUS, R.QUERY_PREFETCH_LOOKUP_HITS):
        return 0
    if rtype is R.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT:
        # No shared pool offered: nothing is registered, and every later request of that
        # instance is answered with its failure value.
        return {"shm_name": "", "pool_size": 0}
    return None


def bind_ipc(router: zmq.Socket[Any], path: str, mode: int) -> int:
    """Bind `router` to ipc://`path` with permissions `mode`; returns the socket file's inode.

    A socket file nobody listens on (a crashed server's) is replaced. A live one is refused:
    ZeroMQ would silently take the path over from the server still using it. Any other kind of
    file is refused too, never deleted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"--ipc-path {path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # stale: left behind by a server that did not shut down
        except OSError as exc:
            raise RuntimeError(f"cannot check --ipc-path {path}: {exc}") from None
        else:
            raise RuntimeError(f"--ipc-path {path}: another server is listening there")
        finally:
            probe.close()
    try:
        router.bind(f"ipc://{path}")
    except zmq.ZMQError as exc:
        raise RuntimeError(f"cannot bind ipc://{path}: {exc}") from None
    # Right after bind, before any engine is told the path: the file is created under the
    # process umask (umask itself is process-wide, so it is not changed around the bind).
    os.chmod(path, mode)
    return os.lstat(path).st_ino


class ZmqDataPathServer:
    """ROUTER socket on `host:port`. Small requests run on the socket thread; transfers on
    `max_workers` threads chosen by client identity; WAIT_PREFETCH_STATUS on its own thread.
    A bad frame, unknown type or failing handler is logged (rate-limited per client and
    reason) and answered with the type's failure value; it never stops the loop."""

    def __init__(
        self,
        engine: CacheEngine,
        memory_pool: MemoryPool,
        *,
        clock: Clock,
        host: str = "127.0.0.1",
        port: int = 5555,
        ipc_path: str | None = None,
        ipc_mode: int = 0o600,
        max_workers: int = 4,
        worker_reap_timeout_seconds: float = 120.0,
        session_ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS,
        supported_transfer_mode: str = "auto",
        curve: CurveConfig | None = None,
        transfer_threads: int = 0,
        metrics: MetricsSink | None = None,
        limits: ClientLimits | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        if supported_transfer_mode not in ("auto", "engine_driven", "lmcache_driven"):
            raise ValueError(f"supported_transfer_mode must be auto, engine_driven or lmcache_driven, not {supported_transfer_mode!r}")
        self.engine = engine
        self.pool = memory_pool
        self.clock = clock
        self.host = host
        self.port = port
        self.ipc_path = ipc_path
        self.ipc_mode = ipc_mode
        self._ipc_inode: int | None = None
        self.max_workers = max(1, int(max_workers))
        self.reap_timeout = float(worker_reap_timeout_seconds)
        self.transfer_mode = supported_transfer_mode
        self.transfer_threads = int(transfer_threads) if int(transfer_threads) > 0 else default_copy_threads()
        # Shared by every worker: at most `transfer_threads` threads copy at once per transfer,
        # each one layer at a time with one torch thread (see CopyPool).
        self.copy_pool = CopyPool(self.transfer_threads)
        self.metrics: MetricsSink = metrics if metrics is not None else NullMetricsSink()
        self.limits = limits if limits is not None else ClientLimits()
        self.max_frame_bytes = int(max_frame_bytes)
        self._max_key_frame_bytes = 5 * self.limits.max_tokens_per_key + _KEY_FRAME_SLACK_BYTES
        self.sessions = SessionManager(
            engine.hasher, clock=clock, ttl_seconds=session_ttl_seconds,
            max_sessions=self.limits.max_sessions, max_sessions_per_client=self.limits.max_sessions_per_client,
        )
        self.data_path = DataPath(
            engine.storage.l1, self.sessions, clock=clock, prefetcher=getattr(engine.storage, "prefetch", None),
            metrics=self.metrics, limits=self.limits,
        )
        self.chunk_size = engine.chunk_size
        self.key_decoder = KeyFrameDecoder()
        self._lock = threading.Lock()
        self._registrations: Registrations[Instance] = Registrations()
        self._pool_identity: tuple[int, int] | None = getattr(memory_pool, "segment_identity", None)
        self._pool_lock = threading.Lock()
        self._ctx = zmq.Context()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.Queue[Any]] = []
        self._reply_addr = f"inproc://lmcache-replies-{id(self)}"
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self.bound_port: int | None = None
        self.curve = curve
        self._zap: Any = None
        self.loop_heartbeat = 0.0
        """time.monotonic() of the socket loop's latest turn (GET /readyz checks it is recent)."""
        self.requests_total = 0
        self.dropped_total = 0
        self.failed_total = 0
        self.reaped_instances_total = 0
        self.segment_faults_total = 0
        self._log_limiter = LogRateLimiter(clock)
        self._handlers: dict[RequestType, Callable[[ClientId, list[Any]], Any]] = {
            R.REGISTER_KV_CACHE: self._register_kv_cache,
            R.UNREGISTER_KV_CACHE: self._unregister,
            R.STORE: self._store,
            R.RETRIEVE: self._retrieve,
            R.LOOKUP: self._lookup,
            R.QUERY_PREFETCH_STATUS: self._query,
            R.WAIT_PREFETCH_STATUS: self._wait,
            R.QUERY_PREFETCH_LOOKUP_HITS: self._lookup_hits,
            R.FREE_LOOKUP_LOCKS: self._free_lookup_locks,
            R.END_SESSION: self._end_session,
            R.REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: self._register_ed,
            R.UNREGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT: self._unregister,
            R.CLEAR: self._clear,
            R.GET_CHUNK_SIZE: lambda c, p: self.chunk_size,
            R.PING: self._ping,
            R.REPORT_BLOCK_ALLOCATION: lambda c, p: None,
            R.NOOP: lambda c, p: "OK",
        }
        if supported_transfer_mode != "lmcache_driven":
            self._handlers.update(
                {
                    R.PREPARE_STORE: self._prepare_store,
                    R.COMMIT_STORE: self._commit_store,
                    R.PREPARE_RETRIEVE: self._prepare_retrieve,
                    R.COMMIT_RETRIEVE: self._commit_retrieve,
                }
            )
        if supported_transfer_mode == "engine_driven":
            for rtype in (R.REGISTER_KV_CACHE, R.STORE, R.RETRIEVE):
                del self._handlers[rtype]

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and start the threads; raises if the port cannot be bound."""
        for i in range(self.max_workers):
            q: queue.Queue[Any] = queue.Queue()
            self._queues.append(q)
            self._spawn(f"lmcache-zmq-worker-{i}", self._worker_loop, q)
        self._blocking_queue: queue.Queue[Any] = queue.Queue()
        self._spawn("lmcache-zmq-blocking", self._worker_loop, self._blocking_queue)
        self._zap = start_authenticator(self._ctx, self.curve)
        self._spawn("lmcache-zmq-socket", self._socket_loop)
        if not self._ready.wait(30.0) or self._bind_error is not None:
            self.stop()
            raise RuntimeError(f"cannot serve the ZeroMQ data path: {self._bind_error}")
        self._spawn("lmcache-zmq-housekeeping", self._housekeeping_loop)
        self.engine.add_status_contributor("data_path", self._status_fields)
        log.info("ZeroMQ data path listening on %s", " and ".join(self.endpoints))

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop the threads, drop every registration (pending writes discarded). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        for q in self._queues:
            q.put(None)
        if hasattr(self, "_blocking_queue"):
            self._blocking_queue.put(None)
        for t in self._threads:
            t.join(timeout=10.0)
        for (client, iid), _inst in self._registrations.items():
            self._drop_instance(client, iid, "server stopping")
        self.engine.remove_status_contributor("data_path")
        self.copy_pool.close()
        if self._zap is not None:
            self._zap.stop()
        self._ctx.term()

    # ------------------------------------------------------------------ socket loop

    def _socket_loop(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # A bigger frame drops the peer's connection in ZeroMQ's I/O thread, before any of it
        # is buffered for us.
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        pull = self._ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        try:
            apply_server_curve(router, self.curve)
            if self.port == 0:
                self.bound_port = router.bind_to_random_port(f"tcp://{self.host}")
            else:
                try:
                    router.bind(f"tcp://{self.host}:{self.port}")
                except zmq.ZMQError as exc:
                    raise RuntimeError(f"cannot bind tcp://{self.host}:{self.port}: {exc}") from None
                self.bound_port = self.port
            if self.ipc_path:
                self._ipc_inode = bind_ipc(router, self.ipc_path, self.ipc_mode)
            pull.bind(self._reply_addr)
        except Exception as exc:
            self._bind_error = exc
            router.close()
            pull.close()
            self._release_ipc_path()
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                self.loop_heartbeat = time.monotonic()
                events = dict(poller.poll(_POLL_MS))
                if pull in events:
                    # Drain worker replies first: they are the latency-critical transfers.
                    for _ in range(1000):
                        try:
                            frames = pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        router.send_multipart(frames)
                if router in events:
                    for _ in range(1000):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        reply = self._on_request(frames)
                        # Not kept until the next message arrives: one may be a big frame.
                        del frames
                        if reply is not None:
                            router.send_multipart(reply)
                        del reply
        except Exception:
            log.exception("ZeroMQ socket loop crashed")
        finally:
            router.close()
            pull.close()
            self._release_ipc_path()

    def _release_ipc_path(self) -> None:
        """Remove our socket file (only ours: the inode we bound), once the socket is closed."""
        if self.ipc_path and self._ipc_inode is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.ipc_path).st_ino == self._ipc_inode:
                    os.unlink(self.ipc_path)
            self._ipc_inode = None

    def _on_request(self, frames: list[bytes]) -> list[bytes] | None:
        """Decode and dispatch one request; returns the reply of an inline request."""
        self.requests_total += 1
        if len(frames) < 3:
            self.dropped_total += 1
            self._log_bad(ClientId(frames[0] if frames else b""), "frames", "dropping a message of %d frames (need identity, uid, type)", len(frames))
            return None
        client, uid, type_frame = ClientId(frames[0]), frames[1], frames[2]
        try:
            rtype = parse_type(type_frame)
        except ProtocolError as exc:
            # No reply: a type the client cannot decode back would kill its poll thread.
            self.dropped_total += 1
            self._log_bad(client, "type", "dropping a request: %s", exc)
            return None
        handler = self._handlers.get(rtype)
        if handler is None:
            self.dropped_total += 1
            self._log_bad(client, ("unhandled", rtype), "no handler for %s under transfer mode %s; dropped", rtype.name, self.transfer_mode)
            return None
        job = (client, uid, type_frame, rtype, frames[3:])
        if rtype in TRANSFER_TYPES:
            self._queues[zlib.crc32(client) % len(self._queues)].put(job)
            return None
        if rtype in BLOCKING_TYPES:
            self._blocking_queue.put(job)
            return None
        return self._handle(*job)

    def _log_bad(self, client: ClientId, reason: Any, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log a bad request at most once per client and reason every few seconds, with the
        number of like lines held back since."""
        emit, held = self._log_limiter.allow((client, reason))
        if not emit:
            return
        suffix = f" [client {client.hex() or '-'}; {held} similar lines suppressed]" if held else f" [client {client.hex() or '-'}]"
        log.warning(message + suffix, *args, exc_info=exc_info)

    def _decode_payloads(self, rtype: RequestType, raw: list[bytes]) -> list[Any]:
        if len(raw) != PAYLOAD_COUNTS[rtype]:
            raise ProtocolError(f"{rtype.name} takes {PAYLOAD_COUNTS[rtype]} payloads, got {len(raw)}")
        if rtype is R.REPORT_BLOCK_ALLOCATION:
            return [None] * len(raw)  # informational only: never decoded
        inline = rtype not in TRANSFER_TYPES
        for i, frame in enumerate(raw):
            limit = _MAX_INLINE_FRAME_BYTES if inline else self.max_frame_bytes
            if i == 0 and rtype in KEY_FIRST_TYPES:
                limit = min(limit, self._max_key_frame_bytes)
            if len(frame) > limit:
                raise ProtocolError(f"{rtype.name} payload {i} is {len(frame)} bytes, over the {limit}-byte limit")
        if rtype in KEY_FIRST_TYPES:
            first = self.key_decoder.decode(raw[0])
            return [decode(raw[0]) if first is None else first] + [decode(f) for f in raw[1:]]
        return [decode(f) for f in raw]

    def _handle(
        self, client: ClientId, uid: bytes, type_frame: bytes, rtype: RequestType, raw: list[bytes]
    ) -> list[bytes] | None:
        head = [client, uid, type_frame]
        payloads: list[Any] = []
        try:
            payloads = self._decode_payloads(rtype, raw)
            result = self._handlers[rtype](client, payloads)
        except Exception as exc:
            self.failed_total += 1
            expected = isinstance(exc, ProtocolError | RequestFailed | ValueError | SegmentFaultError | pickle.UnpicklingError)
            self._log_bad(
                client, (rtype, type(exc).__name__), "%s failed: %s" if expected else "%s failed: %r",
                rtype.name, exc, exc_info=not expected,
            )
            if rtype in NO_RESPONSE:
                return head
            failure = _failure_value(rtype, payloads)
            return None if failure is None else head + [encode(failure)]
        if rtype in NO_RESPONSE:
            return head
        return head + [encode(result)]

    def _worker_loop(self, q: queue.Queue[Any]) -> None:
        # Per thread (OpenMP's thread count is per calling thread): a transfer is hundreds of
        # ~0.5 MiB copies, and a multi-threaded copy that size waits at a barrier for a sibling
        # thread; on a busy host that wait dominates (measured 0.5 GB/s with 2 threads against
        # 3 GB/s with 1). Parallelism comes from the copy pool instead: whole layers per thread.
        torch.set_num_threads(1)
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        if not self._ready.wait(30.0) or self._bind_error is not None:
            push.close()
            return
        push.connect(self._reply_addr)
        try:
            while True:
                job = q.get()
                if job is None:
                    return
                try:
                    reply = self._handle(*job)
                except Exception:  # _handle already catches; this guards the thread itself
                    log.exception("worker failed")
                    reply = None
                # Drop the request's frames now, not at the next request: one big frame must
                # not stay referenced while the worker waits.
                del job
                if reply is not None:
                    push.send_multipart(reply)
                del reply
        finally:
            push.close()

    # ------------------------------------------------------------------ liveness

    def _housekeeping_loop(self) -> None:
        while not self._stop.wait(HOUSEKEEPING_PERIOD_SECONDS):
            try:
                self.housekeeping()
            except Exception:
                log.exception("data-path housekeeping failed")

    def housekeeping(self) -> None:
        """Reap silent workers, expired sessions, abandoned lookup jobs and leases; recover from
        a truncated segment noticed outside a transfer."""
        now = self.clock.monotonic()
        for (client, iid), inst in self._registrations.items():
            limit = self.reap_timeout if inst.pinged else max(self.reap_timeout, NEVER_PINGED_REAP_SECONDS)
            if now - inst.last_seen >= limit:
                if self._drop_instance(client, iid, "reaped: no ping", expected=inst):
                    self.reaped_instances_total += 1
        self._check_segments()
        self.data_path.reap()

    def _instance(self, client: ClientId, iid: Any) -> Instance:
        """The caller's own registration of `iid` (liveness refreshed); RequestFailed when it
        has none (another client's registration of the same id is never used)."""
        iid = self._iid(iid)
        inst = self._registrations.get(client, iid)
        if inst is None:
            raise RequestFailed(f"unknown instance_id {iid}")
        inst.last_seen = self.clock.monotonic()
        return inst

    def _drop_instance(self, client: ClientId, iid: int, reason: str, *, expected: Instance | None = None) -> bool:
        inst = self._registrations.pop(client, iid, expected)
        if inst is None:
            return False
        # A prepared write never committed holds incomplete data: discard it, never publish it.
        self.data_path.drop_instance(client, iid)
        self.data_path.unregister_layout(inst.model_name, inst.world_size)
        for guard in inst.guards:
            guard.close()
        log.info("instance %d (%s) of client %s removed: %s", iid, inst.mode, client.hex() or "-", reason)
        return True

    # ------------------------------------------------------------------ truncated segments

    def _copy_guarded(self, inst: Instance | None, copy: Callable[[], Any]) -> Any:
        """Run a copy over the L1 pool (and `inst`'s shared segments). A segment truncated by
        another process fails the request with SegmentFaultError instead of killing the
        server: found before the copy (the pool's size or fault count, one fstat; a client
        segment's size without the native guard), or caught during it by the SIGBUS guard.
        The broken side is then recovered (the pool) or dropped (the client's registration)."""
        needs = getattr(self.pool, "needs_recovery", None)
        broken = needs is not None and needs()
        if not broken and inst is not None:
            broken = inst.segment_faults() != inst.faults_seen or not inst.segments_intact()
        if broken:
            self._check_segments()
            raise SegmentFaultError("shared memory was truncated by another process; the request failed")
        before = fault_count()
        result = copy()
        if fault_count() != before:
            self._check_segments()
            raise SegmentFaultError("shared memory was truncated during the copy; the request failed")
        return result

    def _check_segments(self) -> None:
        """Recover the pool after a truncation (dropping objects whose bytes are gone) and drop
        registrations whose client segments were truncated."""
        needs = getattr(self.pool, "needs_recovery", None)
        if needs is not None and needs():
            with self._pool_lock:
                lost_from = self.pool.recover()  # type: ignore[attr-defined]
            if lost_from is not None:
                self.segment_faults_total += 1
                dropped = self.engine.storage.l1.drop_where(lambda h: h.offset + h.slot_bytes > lost_from)
                log.error("dropped %d L1 objects whose bytes were lost with the truncated pool segment", dropped)
        for (client, iid), inst in self._registrations.items():
            faults = inst.segment_faults()
            if faults != inst.faults_seen or not inst.segments_intact():
                inst.faults_seen = faults
                self.segment_faults_total += 1
                self._drop_instance(client, iid, "its shared KV segment was truncated", expected=inst)

    # ------------------------------------------------------------------ helpers

    def _object_tensor(self, handle: MemoryHandle) -> torch.Tensor:
        view = getattr(self.pool, "tensor_view", None)
        if view is not None:
            return view(handle)
        return torch.frombuffer(self.pool.view(handle), dtype=torch.uint8)

    @staticmethod
    def _iid(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProtocolError("instance_id must be an integer")
        return value

    def _transfer_key(self, client: ClientId, raw_key: Any) -> tuple[RequestKey, TransferKeys]:
        key = parse_key(raw_key)
        try:
            return key, self.data_path.transfer_keys(key, client)
        except InvalidKeyError as exc:
            raise RequestFailed(str(exc)) from None

    def _shm_available(self) -> bool:
        return bool(getattr(self.pool, "shm_name", "")) and self.transfer_mode != "lmcache_driven"

    def _count_request(self, family: MetricFamily, key: RequestKey) -> None:
        self.metrics.inc(family.name, 1, model_name=key.model_name, cache_salt=key.cache_salt)

    def _report_moved(
        self, tokens: MetricFamily, throughput: MetricFamily, key: RequestKey, chunks: int, object_size: int,
        started: float | None,
    ) -> None:
        """One request's moved chunks: their tokens, and the throughput since `started`."""
        self.metrics.inc(tokens.name, chunks * self.chunk_size, model_name=key.model_name, cache_salt=key.cache_salt)
        if chunks and started is not None:
            seconds = time.perf_counter() - started
            if seconds > 0:
                self.metrics.observe(throughput.name, chunks * object_size / seconds / 1e9)

    # ------------------------------------------------------------------ registration

    def _register_ed(self, client: ClientId, p: list[Any]) -> dict[str, Any]:
        meta = p[0]
        if not isinstance(meta, dict) or any(f not in meta for f in REGISTER_ED_FIELDS):
            raise RequestFailed("REGISTER_KV_CACHE_ENGINE_DRIVEN_CONTEXT needs the 8 context fields")
        iid = self._iid(meta["instance_id"])
        known = self._registrations.get(client, iid)
        if known is not None and known.reply is not None:
            known.last_seen = self.clock.monotonic()
            return known.reply
        dtype_str = meta["dtype_str"]
        dtype = getattr(torch, dtype_str, None) if isinstance(dtype_str, str) and not dtype_str.startswith("_") else None
        if not isinstance(dtype, torch.dtype):
            raise RequestFailed(f"dtype_str {dtype_str!r} is not a torch dtype")
        model, ws = meta["model_name"], meta["world_size"]
        layers, hidden = meta["num_layers"], meta["hidden_dim_size"]
        for name, value in (("world_size", ws), ("num_layers", layers), ("hidden_dim_size", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RequestFailed(f"{name} must be a positive integer")
        if not isinstance(model, str) or not model or "@" in model or ws > 255:
            raise RequestFailed("bad model_name or world_size")
        shape = [layers, self.chunk_size, hidden] if meta["use_mla"] else [2, layers, self.chunk_size, hidden]
        itemsize = torch.empty((), dtype=dtype).element_size()
        object_size = math.prod(shape) * itemsize
        # Refused before anything is registered: an object that cannot fit in L1 (num_layers
        # = 2**40, say) would only make every store ask the reclaimer to evict everyone.
        self.data_path.check_object_size(object_size)
        if self._shm_available():
            reply = {"shm_name": self.pool.shm_name, "pool_size": self.pool.capacity_bytes}  # type: ignore[attr-defined]
        else:
            reply = {"shm_name": "", "pool_size": 0}
        now = self.clock.monotonic()
        inst = Instance(client, iid, "engine_driven", model, ws, now, now, object_size=object_size, slot_shape=shape,
                        dtype_str=dtype_str, dtype=dtype, reply=reply)
        self._install(inst)
        return reply

    def _install(self, inst: Instance) -> None:
        """Register `inst` for its client (replacing that client's earlier one of the id)."""
        self.data_path.register_layout(inst.model_name, inst.world_size, inst.object_size)
        old = self._registrations.get(inst.client, inst.instance_id)
        if old is not None:
            self._drop_instance(inst.client, inst.instance_id, "re-registered", expected=old)
        self._registrations.put(inst.client, inst.instance_id, inst)

    def _register_kv_cache(self, client: ClientId, p: list[Any]) -> None:
        iid = self._iid(p[0])
        known = self._registrations.get(client, iid)
        if known is not None:
            known.last_seen = self.clock.monotonic()
            return None
        kv_caches, model, ws, engine_type, hints, groups = p[1:7]
        if not isinstance(kv_caches, list) or not kv_caches or len(kv_caches) > _MAX_KV_TENSORS:
            raise RequestFailed(f"kv_caches must be an array of 1..{_MAX_KV_TENSORS} tensor handles")
        if not isinstance(hints, dict):
            raise RequestFailed("layout_hints must be a map")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise RequestFailed("engine_group_infos must be an array of maps")
        if not isinstance(model, str) or not model or "@" in model or isinstance(ws, bool) or not isinstance(ws, int) or not 1 <= ws <= 255:
            raise RequestFailed("bad model_name or world_size")
        refuse = [self._pool_identity] if self._pool_identity is not None else []
        tensors, guards = [], []
        for ext in kv_caches:
            if not isinstance(ext, msgpack.ExtType) or ext.code != EXT_DEVICE_IPC_WRAPPER:
                raise RequestFailed("kv_caches entries must be Ext type 1 tensor handles")
            wrapper = load_wrapper(ext.data)
            if isinstance(wrapper, CpuShmTensorWrapper):
                tensor, guard = wrapper.map_segment(refuse)
                tensors.append(tensor)
                guards.append(guard)
            elif isinstance(wrapper, CudaIPCWrapper):
                tensors.append(wrapper.to_tensor(refuse=refuse))
            else:
                tensors.append(wrapper.to_tensor())
        layout = KVCacheLayout(tensors, self.chunk_size, layout_hints=hints, engine_group_infos=groups)
        now = self.clock.monotonic()
        inst = Instance(client, iid, "lmcache_driven", model, ws, now, now, object_size=layout.object_size,
                        layout=layout, engine_type=str(engine_type), guards=guards)
        self._install(inst)
        log.info("registered KV cache of instance %d (client %s): %s", iid, client.hex() or "-", layout.describe())
        return None

    def _unregister(self, client: ClientId, p: list[Any]) -> None:
        iid = self._iid(p[0])
        if not self._drop_instance(client, iid, "unregistered"):
            raise RequestFailed(f"unregister of unknown instance_id {iid}")
        return None

    def _ping(self, client: ClientId, p: list[Any]) -> bool:
        iid = p[0]
        if isinstance(iid, int) and not isinstance(iid, bool):
            inst = self._registrations.get(client, iid)
            if inst is not None:
                inst.pinged = True
                inst.last_seen = self.clock.monotonic()
        # The server is up: that is what PING answers (vLLM re-registers on a false -> true edge).
        return True

    # ------------------------------------------------------------------ lookup & sessions

    @staticmethod
    def _tp(value: Any) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1 << 16 else 1

    def _lookup(self, client: ClientId, p: list[Any]) -> None:
        self.data_path.lookup(parse_key(p[0]), self._tp(p[1]), client)
        return None

    @staticmethod
    def _request_id(value: Any) -> str:
        if not isinstance(value, str):
            raise ProtocolError("request_id must be a string")
        return value

    def _query(self, client: ClientId, p: list[Any]) -> int | None:
        return self.data_path.query(self._request_id(p[0]), client)[1]

    def _wait(self, client: ClientId, p: list[Any]) -> int | None:
        timeout = p[1] if isinstance(p[1], int | float) and not isinstance(p[1], bool) else 0.0
        timeout = float(timeout) if math.isfinite(float(timeout)) else 0.0
        return self.data_path.wait(self._request_id(p[0]), min(max(0.0, timeout), _MAX_WAIT_SECONDS), client)

    def _lookup_hits(self, client: ClientId, p: list[Any]) -> int | None:
        return self.data_path.lookup_hits(self._request_id(p[0]), client)

    def _free_lookup_locks(self, client: ClientId, p: list[Any]) -> None:
        self.data_path.free_lookup_locks(parse_key(p[0]), self._tp(p[1]), client)
        return None

    def _end_session(self, client: ClientId, p: list[Any]) -> None:
        self.data_path.end_session(self._request_id(p[0]), client)
        return None

    def _clear(self, client: ClientId, p: list[Any]) -> None:
        self.engine.storage.clear_l1(force=True)
        return None

    # ------------------------------------------------------------------ engine-driven

    def _slot(self, inst: Instance, handle: MemoryHandle) -> dict[str, Any]:
        return {"offset": handle.offset, "length": inst.object_size, "shape": inst.slot_shape, "dtype": inst.dtype_str}

    def _engine_driven(self, client: ClientId, iid: Any) -> Instance:
        inst = self._instance(client, iid)
        if inst.mode != "engine_driven":
            raise RequestFailed(f"instance {inst.instance_id} is not an engine-driven context")
        return inst

    def _prepare_store(self, client: ClientId, p: list[Any]) -> dict[str, Any]:
        inst = self._engine_driven(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        if not self._shm_available():
            return {"context": {}}
        self._count_request(STORE_REQUESTS, key)
        reserved = self.data_path.prepare_store(client, inst.instance_id, transfer, inst.object_size, time.perf_counter())
        return {"context": {"slots": [self._slot(inst, h) for _, h in reserved], "chunk_indices": [i for i, _ in reserved]}}

    def _commit_store(self, client: ClientId, p: list[Any]) -> bool:
        inst = self._engine_driven(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        data = p[2]
        if not isinstance(data, bytes):
            raise ProtocolError("cpu_data must be bin")
        if not data:
            done = self.data_path.commit_store(client, inst.instance_id, transfer.identity)
            if done is None:
                return False
            stored, reserved, started = done
            self._report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, key, stored, inst.object_size, started)
            return stored == reserved
        # Pickle mode: the chunks travel in the message (the whole store is this one request).
        self._count_request(STORE_REQUESTS, key)
        started = time.perf_counter()
        tensors = load_cpu_tensors(data)
        keys = transfer.keys
        reserved = self.data_path.reserve_new(keys, inst.object_size)
        written: list[int] = []
        failed: list[int] = []
        try:
            for i, handle in reserved:
                src = tensors[i] if i < len(tensors) else None
                if src is None or src.numel() * src.element_size() != inst.object_size:
                    failed.append(i)
                    continue
                dst = self._object_tensor(handle)
                self._copy_guarded(None, lambda d=dst, s=src: d.copy_(s.contiguous().view(-1).view(torch.uint8)))
                written.append(i)
        except BaseException:
            self.data_path.abort([keys[i] for i, _ in reserved], [h for _, h in reserved])
            raise
        handles = dict(reserved)
        self.data_path.abort([keys[i] for i in failed], [handles[i] for i in failed])
        stored = self.data_path.commit_count([keys[i] for i in written], [handles[i] for i in written])
        self._report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, key, stored, inst.object_size, started)
        return stored == len(written) and not failed

    def _prepare_retrieve(self, client: ClientId, p: list[Any]) -> dict[str, Any]:
        inst = self._engine_driven(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        self._count_request(RETRIEVE_REQUESTS, key)
        started = time.perf_counter()
        if not self._shm_available():
            ticket = self.data_path.acquire_for_read(transfer.keys, inst.object_size, request_id=key.request_id, client=client)
            if ticket is None:
                return {"success": False, "data": b"", "context": {}}
            try:
                assert inst.dtype is not None
                dtype, shape = inst.dtype, inst.slot_shape
                chunks = self._copy_guarded(
                    None, lambda: [self._object_tensor(h).view(dtype).view(shape).clone() for h in ticket.handles]
                )
            finally:
                self.data_path.release_read(ticket)
            data = dumps_cpu_tensors(chunks)
            self._report_moved(RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, key, len(transfer.keys), inst.object_size, started)
            return {"success": True, "data": data, "context": {}}
        ticket = self.data_path.prepare_retrieve(
            client, inst.instance_id, transfer, key.request_id, inst.object_size, started
        )
        if ticket is None:
            return {"success": False, "data": b"", "context": {}}
        return {"success": True, "data": b"", "context": {"slots": [self._slot(inst, h) for h in ticket.handles]}}

    def _commit_retrieve(self, client: ClientId, p: list[Any]) -> bool:
        inst = self._engine_driven(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        done = self.data_path.commit_retrieve(client, inst.instance_id, transfer.identity)
        if done is None:
            return False  # nothing of this client was pending under that key
        ticket, started = done
        # The engine copied the chunks out between PREPARE and this COMMIT.
        self._report_moved(RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, key, len(ticket.keys), inst.object_size, started)
        return True

    # ------------------------------------------------------------------ LMCache-driven

    def _layout_of(self, client: ClientId, iid: Any) -> tuple[Instance, KVCacheLayout]:
        inst = self._instance(client, iid)
        if inst.layout is None:
            raise RequestFailed(f"instance {inst.instance_id} registered no KV tensors")
        return inst, inst.layout

    @staticmethod
    def _block_ids(value: Any) -> list[list[int]]:
        if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
            raise ProtocolError("gpu_block_ids must be an array of int arrays")
        return value

    def _wait_client_event(self, layout: KVCacheLayout, handle: Any) -> None:
        if layout.device.type == "cuda" and isinstance(handle, bytes) and len(handle) == 64:
            event = torch.cuda.Event.from_ipc_handle(layout.device, handle)
            event.wait(torch.cuda.current_stream(layout.device))

    def _server_event(self, layout: KVCacheLayout, client_handle: bytes) -> bytes:
        if layout.device.type != "cuda":
            return client_handle  # the CPU stub: both sides ignore its content
        event = torch.cuda.Event(interprocess=True)
        event.record(torch.cuda.current_stream(layout.device))
        return bytes(event.ipc_handle())

    def _store(self, client: ClientId, p: list[Any]) -> list[Any]:
        inst, layout = self._layout_of(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        keys = transfer.keys
        self._count_request(STORE_REQUESTS, key)
        block_ids, handle = self._block_ids(p[2]), p[3] if isinstance(p[3], bytes) else b""
        if not layout.check_block_ids(block_ids, len(keys)):
            return [handle, False]
        self._wait_client_event(layout, handle)
        started = time.perf_counter()
        reserved = self.data_path.reserve_new(keys, inst.object_size)
        done = [keys[i] for i, _ in reserved]
        handles = [h for _, h in reserved]
        try:
            self._copy_guarded(inst, lambda: layout.gather(
                block_ids, [i for i, _ in reserved], [self._object_tensor(h) for h in handles], self.copy_pool
            ))
        except BaseException:
            self.data_path.abort(done, handles)
            raise
        stored = self.data_path.commit_count(done, handles)
        self._report_moved(STORED_TOKENS, STORE_THROUGHPUT_GBPS, key, stored, inst.object_size, started)
        return [self._server_event(layout, handle), True]

    def _retrieve(self, client: ClientId, p: list[Any]) -> list[Any]:
        inst, layout = self._layout_of(client, p[1])
        key, transfer = self._transfer_key(client, p[0])
        keys = transfer.keys
        self._count_request(RETRIEVE_REQUESTS, key)
        block_ids, handle, skip = self._block_ids(p[2]), p[3] if isinstance(p[3], bytes) else b"", p[4]
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ProtocolError("skip_first_n_tokens must be a non-negative integer")
        if not layout.check_block_ids(block_ids, len(keys)):
            return [handle, False]
        ticket = self.data_path.acquire_for_read(keys, inst.object_size, request_id=key.request_id, client=client)
        if ticket is None:
            return [handle, False]
        started = time.perf_counter()
        try:
            self._wait_client_event(layout, handle)
            self._copy_guarded(inst, lambda: layout.scatter(
                block_ids, list(range(len(keys))), [self._object_tensor(h) for h in ticket.handles], skip,
                self.copy_pool,
            ))
        finally:
            self.data_path.release_read(ticket)
        self._report_moved(RETRIEVED_TOKENS, RETRIEVE_THROUGHPUT_GBPS, key, len(keys), inst.object_size, started)
        return [self._server_event(layout, handle), True]

    # ------------------------------------------------------------------ status & checks

    @property
    def url(self) -> str:
        """The bound tcp endpoint, e.g. tcp://127.0.0.1:5555."""
        return f"tcp://{self.host}:{self.bound_port if self.bound_port is not None else self.port}"

    @property
    def ipc_url(self) -> str | None:
        """The Unix-domain endpoint (ipc://PATH) with --ipc-path, else None."""
        return f"ipc://{self.ipc_path}" if self.ipc_path else None

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint engines can connect to."""
        return [self.url] + ([self.ipc_url] if self.ipc_url else [])

    def instances(self) -> dict[int, Instance]:
        """A snapshot of the registrations: per instance id, the newest one."""
        out: dict[int, Instance] = {}
        for (_, iid), inst in self._registrations.items():
            out[iid] = inst  # insertion order: the last one is the newest
        return out

    def registrations(self, instance_id: int) -> list[Instance]:
        """Every client's registration of `instance_id`, newest first."""
        return self._registrations.of_instance(instance_id)

    def kv_checksums(self, inst: Instance, block_ids: list[int], chunk_size: int, *, layerwise: bool) -> Any:
        """/kvcache/check over `inst`'s registered tensors (a truncated segment fails it)."""
        assert inst.layout is not None
        layout = inst.layout
        return self._copy_guarded(inst, lambda: layout.checksums(block_ids, chunk_size, layerwise=layerwise))

    def _status_fields(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        regs = self._registrations.items()
        per_id: dict[int, int] = {}
        for (_, iid), _inst in regs:
            per_id[iid] = per_id.get(iid, 0) + 1

        def name(client: ClientId, iid: int) -> str:
            # Several clients may register one id (every `lmcache bench` uses 0).
            return str(iid) if per_id[iid] == 1 else f"{iid}@{client.hex()}"

        workers = {}
        for (client, iid), i in regs:
            writes, reads = self.data_path.pending_counts(client, iid)
            workers[name(client, iid)] = {
                "mode": i.mode,
                "model_name": i.model_name,
                "pinged": i.pinged,
                "seconds_since_seen": round(now - i.last_seen, 3),
                "pending_writes": writes,
                "pending_reads": reads,
            }
        return {
            "active_sessions": self.sessions.active_count(),
            "active_prefetch_jobs": self.data_path.active_job_count(),
            "registered_gpu_ids": sorted({iid for (_, iid), i in regs if i.mode == "lmcache_driven"}),
            "cache_context_meta": {
                name(client, iid): (
                    {**i.layout.describe(), **registration_report(i.model_name, i.world_size, i.layout)}
                    if i.layout is not None
                    else {"mode": "engine_driven", "model_name": i.model_name, "world_size": i.world_size,
                          "object_shape": i.slot_shape, "dtype": i.dtype_str, "object_size": i.object_size}
                )
                for (client, iid), i in regs
            },
            "workers": workers,
        }

    def report_status(self) -> dict[str, Any]:
        alive = all(t.is_alive() for t in self._threads) and not self._stop.is_set()
        return {
            "is_healthy": alive and self._bind_error is None,
            "endpoint": f"tcp://{self.host}:{self.bound_port}",
            "ipc_endpoint": self.ipc_url,
            "transfer_threads": self.transfer_threads,
            "non_temporal_copy_threshold": ntcopy.active_threshold(),
            "threads_alive": alive,
            "max_workers": self.max_workers,
            "max_frame_bytes": self.max_frame_bytes,
            "supported_transfer_mode": self.transfer_mode,
            "requests_total": self.requests_total,
            "dropped_total": self.dropped_total,
            "failed_total": self.failed_total,
            "suppressed_log_lines_total": self._log_limiter.suppressed_total,
            "reaped_instances_total": self.reaped_instances_total,
            "registrations": len(self._registrations),
            "truncation_guard": "sigbus" if native_guard() else "size_checks",
            "segment_faults_total": self.segment_faults_total,
            "sessions": self.sessions.report_status(),
            "lookup": self.data_path.report_status(),
        }
