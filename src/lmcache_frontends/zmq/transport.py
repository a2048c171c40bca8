"""The ZeroMQ transport of the data path: sockets, lanes and the reply path, and nothing of requests.

One ROUTER socket bound to tcp (and an ipc path when asked), with a cap on every frame
(ZeroMQ's MAXMSGSIZE: a bigger frame drops the peer before any of it is buffered). The socket
thread reads each message and asks a `MessageRouter` which lane it belongs to:

- INLINE: served on the socket thread at once (small requests: lookups, queries, pings);
- TRANSFER: one of `workers` queues, chosen by client identity, so each client's transfers stay in
  order while different clients' run in parallel;
- BLOCKING: its own thread (a request that may wait, so the socket thread never does).

Replies of the worker threads come back over an inproc PUSH/PULL pair and leave through the
socket thread (a ZeroMQ socket belongs to one thread). The transport knows no operation, no
codec and no handler: a message is opaque frames in, reply messages out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, Protocol

import zmq

from lmcache_frontends.zmq.curve import CurveConfig, apply_server_curve, start_authenticator

log = logging.getLogger(__name__)

_POLL_MS = 100
_BATCH = 1000  # messages read (or replies forwarded) per poll turn before looking at the other socket

Reply = list[bytes]
"""One reply message without the identity frame (the transport adds it)."""


class Lane(IntEnum):
    """Where a message is served."""

    INLINE = 0
    TRANSFER = 1
    BLOCKING = 2


class MessageRouter(Protocol):
    """What the transport hands messages to: `route` runs on the socket thread and must be cheap
    (it may decide to drop a message: None); `serve` runs on the lane's thread and returns the
    reply messages (none, one, or several for a stream)."""

    def route(self, identity: bytes, frames: list[bytes]) -> tuple[Lane, Any] | None: ...

    def serve(self, identity: bytes, job: Any) -> Sequence[Reply]: ...


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


class ZmqTransport:
    """A ROUTER on `host:port` (and `ipc_path`), `workers` transfer threads with per-client
    affinity, one blocking thread, and the socket thread that owns the ROUTER."""

    def __init__(
        self,
        router: MessageRouter,
        *,
        host: str = "127.0.0.1",
        port: int = 5555,
        ipc_path: str | None = None,
        ipc_mode: int = 0o600,
        workers: int = 4,
        max_frame_bytes: int,
        curve: CurveConfig | None = None,
        worker_setup: Callable[[], None] | None = None,
    ) -> None:
        self._router = router
        self.host = host
        self.port = port
        self.ipc_path = ipc_path
        self.ipc_mode = ipc_mode
        self.workers = max(1, int(workers))
        self.max_frame_bytes = int(max_frame_bytes)
        self.curve = curve
        self._worker_setup = worker_setup
        self._ctx = zmq.Context()
        self._ipc_inode: int | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._bind_error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.Queue[Any]] = []
        self._blocking: queue.Queue[Any] = queue.Queue()
        self._reply_addr = f"inproc://lmcache-replies-{id(self)}"
        self._zap: Any = None
        self.bound_port: int | None = None
        self.loop_heartbeat = 0.0
        """time.monotonic() of the socket loop's latest turn (GET /readyz checks it is recent)."""

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start the threads; raises RuntimeError if an endpoint cannot be bound."""
        for i in range(self.workers):
            q: queue.Queue[Any] = queue.Queue()
            self._queues.append(q)
            self._spawn(f"lmcache-zmq-worker-{i}", self._worker_loop, q)
        self._spawn("lmcache-zmq-blocking", self._worker_loop, self._blocking)
        self._zap = start_authenticator(self._ctx, self.curve)
        self._spawn("lmcache-zmq-socket", self._socket_loop)
        if not self._ready.wait(30.0) or self._bind_error is not None:
            self.stop()
            raise RuntimeError(f"cannot serve the ZeroMQ data path: {self._bind_error}")

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop every thread and close the sockets (the ipc socket file is removed). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        for q in [*self._queues, self._blocking]:
            q.put(None)
        for t in self._threads:
            t.join(timeout=10.0)
        if self._zap is not None:
            self._zap.stop()
        self._ctx.term()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def threads_alive(self) -> bool:
        """Every thread of the transport runs (and it was not stopped)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads) and not self._stop.is_set()

    @property
    def bind_error(self) -> BaseException | None:
        return self._bind_error

    # -- endpoints --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The bound tcp endpoint, e.g. tcp://127.0.0.1:5555."""
        return f"tcp://{self.host}:{self.bound_port if self.bound_port is not None else self.port}"

    @property
    def ipc_url(self) -> str | None:
        """The Unix-domain endpoint (ipc://PATH) with an ipc path, else None."""
        return f"ipc://{self.ipc_path}" if self.ipc_path else None

    @property
    def endpoints(self) -> list[str]:
        """Every endpoint engines can connect to."""
        return [self.url] + ([self.ipc_url] if self.ipc_url else [])

    # -- the socket thread ------------------------------------------------------------------

    def _bind(self, router: zmq.Socket[Any], pull: zmq.Socket[Any]) -> None:
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

    def _socket_loop(self) -> None:
        router = self._ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # A bigger frame drops the peer's connection in ZeroMQ's I/O thread, before any of it
        # is buffered for us.
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes)
        pull = self._ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        try:
            self._bind(router, pull)
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
                    # Worker replies first: they are the latency-critical transfers.
                    for _ in range(_BATCH):
                        try:
                            router.send_multipart(pull.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                if router in events:
                    for _ in range(_BATCH):
                        try:
                            frames = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._dispatch(router, frames)
                        # Not kept until the next message arrives: one may be a big frame.
                        del frames
        except Exception:
            log.exception("ZeroMQ socket loop crashed")
        finally:
            router.close()
            pull.close()
            self._release_ipc_path()

    def _dispatch(self, router: zmq.Socket[Any], frames: list[bytes]) -> None:
        identity = frames[0]
        del frames[0]
        routed = self._router.route(identity, frames)
        if routed is None:
            return
        lane, job = routed
        if lane is Lane.INLINE:
            try:
                replies = self._router.serve(identity, job)
            except Exception:  # serve answers failures itself; this keeps the socket loop alive
                log.exception("data-path request failed")
                return
            for reply in replies:
                router.send_multipart([identity, *reply])
        elif lane is Lane.TRANSFER:
            self._queues[zlib.crc32(identity) % len(self._queues)].put((identity, job))
        else:
            self._blocking.put((identity, job))

    def _release_ipc_path(self) -> None:
        """Remove our socket file (only ours: the inode we bound), once the socket is closed."""
        if self.ipc_path and self._ipc_inode is not None:
            with contextlib.suppress(OSError):
                if os.lstat(self.ipc_path).st_ino == self._ipc_inode:
                    os.unlink(self.ipc_path)
            self._ipc_inode = None

    # -- lane threads -----------------------------------------------------------------------

    def _worker_loop(self, q: queue.Queue[Any]) -> None:
        if self._worker_setup is not None:
            self._worker_setup()
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        if not self._ready.wait(30.0) or self._bind_error is not None:
            push.close()
            return
        push.connect(self._reply_addr)
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                identity, job = item
                # Dropped before serving: the job alone holds the request's frames, and the
                # router drops them once decoded; nothing here keeps a big frame alive.
                del item
                try:
                    replies = list(self._router.serve(identity, job))
                except Exception:  # serve answers failures itself; this guards the thread
                    log.exception("data-path worker failed")
                    replies = []
                del job
                # Popped as sent: no reply (a pickle-mode retrieve's may be big) stays referenced
                # while the worker waits for the next job.
                while replies:
                    push.send_multipart([identity, *replies.pop(0)])
                del replies
        finally:
            push.close()
