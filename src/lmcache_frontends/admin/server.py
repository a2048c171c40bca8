"""AdminServer: serves the admin WSGI app with Waitress on a background thread and stops cleanly."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from waitress import wasyncore
from waitress.server import BaseWSGIServer, create_server

log = logging.getLogger(__name__)

DEFAULT_THREADS = 4
_LOOP_TIMEOUT_S = 0.5


class AdminServer:
    """One Waitress server on its own socket map and thread.

    The socket is bound in the constructor, so `port` is the real one even when 0 was asked
    for, and a port already in use fails at once (OSError) rather than in the thread."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        threads: int = DEFAULT_THREADS,
        max_request_body_size: int = 16 << 20,  # above the app limit, so Flask answers 413 as JSON
        drain_timeout_s: float = 3.0,
    ) -> None:
        self._map: dict[int, Any] = {}
        self._server = create_server(
            app,
            map=self._map,
            host=host,
            port=port,
            threads=threads,
            ident="lmcache-server",
            # The app answers oversized bodies with a JSON 413; this only stops a huge upload
            # from being buffered in full before the app sees it.
            max_request_body_size=max_request_body_size,
            # Admin bodies are tiny: no need to spool to temporary files.
            inbuf_overflow=max_request_body_size + 1,
        )
        listeners = self._listeners()
        first = listeners[0]
        self.host: str = first.effective_host
        self.port: int = int(first.effective_port)
        self._drain_timeout_s = drain_timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        """Start serving on a daemon thread (idempotent)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name="lmcache-admin-http", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close every connection."""
        self._stop.set()
        self._wake()
        if self._thread is None:
            self._close_all()
            return
        self._thread.join(timeout if timeout is not None else self._drain_timeout_s + 5)
        if self._thread.is_alive():
            log.warning("admin HTTP server thread did not stop in time")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- loop thread ----------------------------------------------------------------------

    def _listeners(self) -> list[BaseWSGIServer]:
        return [obj for obj in self._map.values() if isinstance(obj, BaseWSGIServer)]

    def _wake(self) -> None:
        for listener in self._listeners():
            try:
                listener.pull_trigger()
            except OSError:  # already closed
                pass

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                wasyncore.loop(timeout=_LOOP_TIMEOUT_S, map=self._map, use_poll=True, count=1)
            self._drain()
        except Exception:
            log.exception("admin HTTP server loop failed")
        finally:
            self._close_all()

    def _drain(self) -> None:
        # Stop accepting first (the socket closes, so new connections are refused), then keep
        # the loop turning until responses in flight are written out, within a deadline.
        for listener in self._listeners():
            listener.accepting = False
            wasyncore.dispatcher.close(listener)  # not listener.close(): keep its wake-up trigger
        deadline = time.monotonic() + self._drain_timeout_s
        while time.monotonic() < deadline and self._busy():
            wasyncore.loop(timeout=0.05, map=self._map, use_poll=True, count=1)

    def _busy(self) -> bool:
        for channel in list(self._map.values()):
            if getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0):
                return True
        return False

    def _close_all(self) -> None:
        dispatcher = getattr(self._server, "task_dispatcher", None)
        wasyncore.close_all(self._map)
        if dispatcher is not None:
            dispatcher.shutdown(cancel_pending=True, timeout=self._drain_timeout_s)
