"""The ZeroMQ data-path server: LMCache 0.5.0 and 0.5.6 engines on one socket, at once.

This module only assembles the rooms of the data path and reports on them:

- `transport.py`: the ROUTER socket(s), the lanes (inline, per-client transfer workers, blocking)
  and the reply path; it knows no operation;
- `detect.py`, `codec_v050.py`, `codec_v056.py`: which protocol a client speaks, and its frames
  turned into the typed requests of `requests.py` and typed results back into frames;
- `dispatch.py`: per message, protocol -> lane -> decode -> handler -> encode, and every error
  reply;
- the handlers, by concern (`handlers.py` joins them): registrations (`instances.py`), lookups
  and sessions (`lookups.py`), engine-driven (`engine_driven.py`) and server-driven
  (`server_driven.py`) transfers. They receive typed requests and the client's identity; the
  rules (ownership, leases, caps) are the core's (`lmcache_core.lookup`, `leases`, `clients`).

docs/architecture.md draws the rooms; docs/protocol.md the wire; docs/security.md the threat model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from lmcache_adapters.memory.faultguard import native_guard
from lmcache_adapters.transfer import ntcopy
from lmcache_adapters.transfer.copy_pool import CopyPool, default_copy_threads
from lmcache_core.clients import ClientLimits
from lmcache_core.engine import CacheEngine
from lmcache_core.inspection import RequestInspector
from lmcache_core.lookup import DataPath
from lmcache_core.oplog import OperationLog
from lmcache_core.periodic import PeriodicThread, Summary
from lmcache_core.plugin.server_context import Endpoint
from lmcache_core.ports import Clock, MemoryPool, MetricsSink, NullMetricsSink
from lmcache_core.ratelimit import LogRateLimiter
from lmcache_core.readiness import ReadinessCheck, ReadinessRegistry
from lmcache_core.sessions import DEFAULT_SESSION_TTL_SECONDS
from lmcache_frontends.zmq.curve import CurveConfig
from lmcache_frontends.zmq.detect import PROTOCOL_CHOICES, ProtocolDetector
from lmcache_frontends.zmq.dispatch import DataPathRouter
from lmcache_frontends.zmq.engine_driven import EngineDrivenHandlers
from lmcache_frontends.zmq.fastkey import KeyFrameDecoder
from lmcache_frontends.zmq.handlers import TRANSFER_MODES, DataPathHandlers
from lmcache_frontends.zmq.instances import SERVER_DRIVEN, Instance, InstanceRegistry
from lmcache_frontends.zmq.kv_caches import registration_report
from lmcache_frontends.zmq.lookups import LookupHandlers
from lmcache_frontends.zmq.requests import EngineDrivenContext
from lmcache_frontends.zmq.server_driven import ServerDrivenHandlers
from lmcache_frontends.zmq.transfers import TransferSupport
from lmcache_frontends.zmq.transport import ZmqTransport, bind_ipc

__all__ = ["HOUSEKEEPING_THREAD", "ZmqDataPathServer", "bind_ipc", "loop_readiness"]

log = logging.getLogger(__name__)

HOUSEKEEPING_PERIOD_SECONDS = 1.0
HOUSEKEEPING_THREAD = "zmq-housekeeping"
"""The data path's reaper in the periodic-thread registry (level high: a dead one makes the
server unhealthy: silent workers would keep their reservations and locks forever)."""
DEFAULT_MAX_FRAME_BYTES = 256 << 20
LOOP_STALE_SECONDS = 5.0
"""The socket loop polls every 100 ms; a heartbeat this old means it is stuck (GET /readyz)."""
READINESS_CHECK = "zmq"

RunPeriodic = Callable[..., PeriodicThread]
"""`Services.run_periodic`: runs a target as a supervised periodic thread of the server."""


class _Heartbeating(Protocol):
    loop_heartbeat: float

    def report_status(self) -> dict[str, Any]: ...


def loop_readiness(frontend: _Heartbeating) -> ReadinessCheck:
    """The data path's readiness check: its threads are alive and its socket loop turned recently."""

    def check() -> dict[str, Any]:
        if not frontend.report_status().get("is_healthy", False):
            return {"ok": False, "error": "data-path threads not alive"}
        heartbeat = frontend.loop_heartbeat
        if heartbeat:
            age = time.monotonic() - heartbeat
            if age > LOOP_STALE_SECONDS:
                return {"ok": False, "error": f"socket loop last turned {age:.1f} s ago"}
            return {"ok": True, "loop_heartbeat_age_s": round(age, 3)}
        return {"ok": True}

    return check


def _one_torch_thread() -> None:
    # Per transfer worker (OpenMP's thread count is per calling thread): a transfer is hundreds
    # of ~0.5 MiB copies, and a multi-threaded copy that size waits at a barrier for a sibling
    # thread; on a busy host that wait dominates (measured 0.5 GB/s with 2 threads against
    # 3 GB/s with 1). Parallelism comes from the copy pool instead: whole layers per thread.
    torch.set_num_threads(1)


class ZmqDataPathServer:
    """The data path of one server: a ROUTER on `host:port` (and `ipc_path`), both LMCache
    protocols recognised per client (`protocol` forces one), transfers on `max_workers`
    threads chosen by client identity, the housekeeping reaper as a supervised periodic thread
    (`run_periodic`, else a thread of its own). A bad frame, unknown operation or failing
    handler is logged (rate-limited per client and reason) and answered as its protocol says;
    it never stops the server."""

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
        protocol: str = "auto",
        run_periodic: RunPeriodic | None = None,
        oplog: OperationLog | None = None,
        inspector: RequestInspector | None = None,
        readiness: ReadinessRegistry | None = None,
        data_path: DataPath | None = None,
    ) -> None:
        if supported_transfer_mode not in TRANSFER_MODES:
            raise ValueError(f"supported_transfer_mode must be one of {', '.join(TRANSFER_MODES)}, not {supported_transfer_mode!r}")
        if protocol not in PROTOCOL_CHOICES:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_CHOICES)}, not {protocol!r}")
        self.engine = engine
        self.pool = memory_pool
        self.clock = clock
        self.transfer_mode = supported_transfer_mode
        self.transfer_threads = int(transfer_threads) if int(transfer_threads) > 0 else default_copy_threads()
        # Shared by every worker: at most `transfer_threads` threads copy at once per transfer,
        # each one layer at a time with one torch thread (see CopyPool).
        self.copy_pool = CopyPool(self.transfer_threads)
        self.metrics: MetricsSink = metrics if metrics is not None else NullMetricsSink()
        self.limits = limits if limits is not None else ClientLimits()
        self.max_frame_bytes = int(max_frame_bytes)
        self.chunk_size = engine.chunk_size
        # The server's data path comes from the composition root; a server built alone (tests)
        # gets one of its own, by the same recipe.
        if data_path is None:
            data_path = DataPath.for_engine(
                engine, clock=clock, session_ttl_seconds=session_ttl_seconds, limits=self.limits, metrics=self.metrics
            )
        self.data_path = data_path
        self.sessions = data_path.sessions
        self.key_decoder = KeyFrameDecoder()
        self.registry = InstanceRegistry(
            self.data_path, engine.storage.l1, memory_pool, clock=clock, reap_timeout_seconds=worker_reap_timeout_seconds
        )
        self._log_limiter = LogRateLimiter(clock)
        transfers = TransferSupport(self.data_path, self.metrics, self.chunk_size)
        self.server_driven = ServerDrivenHandlers(self.registry, transfers, self.copy_pool)
        self.handlers = DataPathHandlers(
            registry=self.registry,
            lookups=LookupHandlers(self.data_path),
            engine_driven=EngineDrivenHandlers(self.registry, transfers, shared_pool=self._shared_pool()),
            server_driven=self.server_driven,
            clear_l1=engine.storage.clear_l1,
            chunk_size=self.chunk_size,
            transfer_mode=supported_transfer_mode,
            log_limiter=self._log_limiter,
        )
        self.detector = ProtocolDetector(protocol, key_decoder=self.key_decoder)
        self.router = DataPathRouter(
            self.detector, self.handlers, chunk_size=self.chunk_size, max_frame_bytes=self.max_frame_bytes,
            max_tokens_per_key=self.limits.max_tokens_per_key, log_limiter=self._log_limiter, oplog=oplog,
        )
        self.transport = ZmqTransport(
            self.router, host=host, port=port, ipc_path=ipc_path, ipc_mode=ipc_mode, workers=max_workers,
            max_frame_bytes=self.max_frame_bytes, curve=curve, worker_setup=_one_torch_thread,
        )
        self._run_periodic = run_periodic
        # Core services this data path reports into while it runs (a server's; tests may omit them).
        self._inspector = inspector
        self._readiness = readiness
        self._housekeeper: PeriodicThread | None = None

    def _shared_pool(self) -> EngineDrivenContext | None:
        """The L1 pool engines map for engine-driven transfers, offered to clients of both
        versions; None (pickle mode) when the pool is not shared memory or the server serves
        server-driven transfers only."""
        name = getattr(self.pool, "shm_name", "")
        if not name or self.transfer_mode == "lmcache_driven":
            return None
        return EngineDrivenContext(name, self.pool.capacity_bytes)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind and start the threads and the housekeeping loop; raises if a port cannot be bound."""
        self.transport.start()
        run = self._run_periodic if self._run_periodic is not None else self._own_periodic
        self._housekeeper = run(
            HOUSEKEEPING_THREAD, self.housekeeping, interval_seconds=HOUSEKEEPING_PERIOD_SECONDS, level="high"
        )
        self.engine.add_status_contributor("data_path", self._status_fields)
        if self._inspector is not None:
            self._inspector.attach(self.sessions)
        if self._readiness is not None:
            self._readiness.register(READINESS_CHECK, loop_readiness(self))
        log.info("ZeroMQ data path listening on %s (protocol %s)", " and ".join(self.transport.endpoints), self.detector.forced)

    def _own_periodic(self, name: str, target: Callable[[], Summary], *, interval_seconds: float, level: str) -> PeriodicThread:
        """Without a server's registry (a server built on its own, as tests do): the same
        supervised loop, started here and stopped by stop()."""
        thread = PeriodicThread(name, target, interval_seconds=interval_seconds, level=level, clock=self.clock)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop the threads, drop every registration (pending writes discarded). Idempotent."""
        if self.transport.stopped:
            return
        if self._readiness is not None:
            self._readiness.unregister(READINESS_CHECK)
        if self._inspector is not None:
            self._inspector.detach(self.sessions)
        if self._housekeeper is not None:
            self._housekeeper.stop()
        self.transport.stop()
        self.registry.drop_all("server stopping")
        self.engine.remove_status_contributor("data_path")
        self.copy_pool.close()

    # ------------------------------------------------------------------ housekeeping

    def housekeeping(self) -> dict[str, int]:
        """Reap silent workers, expired sessions, abandoned lookup jobs and leases; recover from
        a truncated segment noticed outside a transfer. Returns what it removed."""
        reaped = self.registry.reap()
        self.registry.check_segments()
        sessions, jobs = self.data_path.reap()
        return {"instances_reaped": reaped, "sessions_reaped": sessions, "jobs_reaped": jobs}

    # ------------------------------------------------------------------ endpoints

    @property
    def url(self) -> str:
        """The bound tcp endpoint, e.g. tcp://127.0.0.1:5555."""
        return self.transport.url

    @property
    def ipc_url(self) -> str | None:
        """The Unix-domain endpoint (ipc://PATH) with --ipc-path, else None."""
        return self.transport.ipc_url

    def endpoints(self) -> Mapping[str, Endpoint]:
        """The tcp endpoint (`zmq`, with the port really bound) and the Unix-domain one
        (`zmq-ipc`, None without --ipc-path): the ready line, --ready-file and the fleet
        registration read them."""
        return {"zmq": Endpoint(self.url, self.bound_port), "zmq-ipc": Endpoint(self.ipc_url)}

    @property
    def bound_port(self) -> int | None:
        return self.transport.bound_port

    @property
    def loop_heartbeat(self) -> float:
        """time.monotonic() of the socket loop's latest turn (GET /readyz checks it is recent)."""
        return self.transport.loop_heartbeat

    # ------------------------------------------------------------------ registrations

    def instances(self) -> dict[int, Instance]:
        """A snapshot of the registrations: per instance id, the newest one."""
        out: dict[int, Instance] = {}
        for (_, iid), inst in self.registry.items():
            out[iid] = inst  # insertion order: the last one is the newest
        return out

    def registrations(self, instance_id: int) -> list[Instance]:
        """Every client's registration of `instance_id`, newest first."""
        return self.registry.of_instance(instance_id)

    def kv_checksums(self, inst: Instance, block_ids: list[int], chunk_size: int, *, layerwise: bool) -> Any:
        """/kvcache/check over `inst`'s registered tensors (a truncated segment fails it)."""
        return self.server_driven.checksums(inst, block_ids, chunk_size, layerwise=layerwise)

    # ------------------------------------------------------------------ status

    def _status_fields(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        regs = self.registry.items()
        per_id: dict[int, int] = {}
        for (_, iid), _inst in regs:
            per_id[iid] = per_id.get(iid, 0) + 1

        def name(client: bytes, iid: int) -> str:
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
            "registered_gpu_ids": sorted({iid for (_, iid), i in regs if i.mode == SERVER_DRIVEN}),
            "cache_context_meta": {
                name(client, iid): (
                    {**i.layout.describe(), **registration_report(i.model_name, i.world_size, i.layout)}
                    if i.layout is not None
                    else {"mode": "engine_driven", "model_name": i.model_name, "world_size": i.world_size,
                          "object_shape": list(i.slot_shape), "dtype": i.dtype_str, "object_size": i.object_size}
                )
                for (client, iid), i in regs
            },
            "workers": workers,
        }

    def report_status(self) -> dict[str, Any]:
        alive = self.transport.threads_alive()
        return {
            "is_healthy": alive and self.transport.bind_error is None,
            "endpoint": self.transport.url,
            "ipc_endpoint": self.ipc_url,
            "protocol": self.detector.forced,
            "clients_by_protocol": self.detector.counts(),
            "transfer_threads": self.transfer_threads,
            "non_temporal_copy_threshold": ntcopy.active_threshold(),
            "threads_alive": alive,
            "max_workers": self.transport.workers,
            "max_frame_bytes": self.max_frame_bytes,
            "supported_transfer_mode": self.transfer_mode,
            "requests_total": self.router.requests_total,
            "dropped_total": self.router.dropped_total,
            "failed_total": self.router.failed_total,
            "not_supported_total": self.handlers.not_supported_total,
            "suppressed_log_lines_total": self._log_limiter.suppressed_total,
            "reaped_instances_total": self.registry.reaped_total,
            "registrations": len(self.registry),
            "truncation_guard": "sigbus" if native_guard() else "size_checks",
            "segment_faults_total": self.registry.segment_faults_total,
            "sessions": self.sessions.report_status(),
            "lookup": self.data_path.report_status(),
        }
