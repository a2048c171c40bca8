"""Fleet e2e helpers: the real `lmcache-coordinator` as a subprocess, a round-robin HTTP proxy (two
coordinators behind one URL), and FakeFleetServer: a small HTTP server that holds keys, answers
the coordinator's `DELETE`/`GET /cache/objects` and reports its events with CoordinatorClient,
as a real server does."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from serverproc import ServerProcess, pump_stderr, server_command

from lmcache_adapters.fleet.client import CoordinatorClient
from lmcache_core.fleet.model import Tier
from lmcache_core.keys import ObjectKey
from lmcache_core.testing import poll_until
from lmcache_frontends.admin.server import AdminServer

READY_RE = re.compile(r"listening on (http://\S+)")
# A coordinator or server that is starting, restarting or catching up answers with a refused
# connection, an error status or a body without the field yet: polls over HTTP pass
# `ignore=NOT_YET` so those count as "not yet", and `interval=0.1` not to load what they wait for.
NOT_YET: tuple[type[BaseException], ...] = (OSError, AssertionError, KeyError, TypeError, ValueError)


def start_coordinator(*args: str, timeout: float = 60.0) -> ServerProcess:
    cmd = [*server_command("lmcache-coordinator"), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = ServerProcess(proc)
    threading.Thread(target=pump_stderr, args=(proc, server), daemon=True).start()
    server.url = server.wait_for_line(READY_RE, timeout).group(1)
    return server


REFERENCE_VENVS = {
    "0.5.0": Path(os.environ.get("LMCACHE_REFERENCE_VENV", Path.home() / ".cache" / "lmcache-reference" / "venv")),
    "0.5.6": Path(os.environ.get("LMCACHE_REFERENCE_056_VENV", Path.home() / ".cache" / "lmcache-reference-056" / "venv")),
}


@contextlib.contextmanager
def reference_coordinator(version: str, port: int) -> Iterator[str]:
    """LMCache `version`'s own `lmcache coordinator` (eviction off) on 127.0.0.1:`port`; yields
    its URL once it answers, stops it afterwards."""
    env = {**os.environ, "LMCACHE_DISABLE_BANNER": "1", "LMCACHE_TRACK_USAGE": "false", "DO_NOT_TRACK": "1"}
    proc = subprocess.Popen(
        [str(REFERENCE_VENVS[version] / "bin" / "lmcache"), "coordinator", "--host", "127.0.0.1", "--port", str(port),
         "--eviction-check-interval", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll_until(
            lambda: get_json(f"{url}/healthz", timeout=1)[0] == 200,
            timeout=120, what=f"the reference {version} coordinator", interval=0.1, ignore=NOT_YET,
        )
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def get_json(url: str, method: str = "GET", body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


class RoundRobinProxy:
    """One URL in front of several coordinators: each request goes to the next backend, and to
    the one after it when that one refuses the connection (a killed coordinator)."""

    def __init__(self, backends: Sequence[str]) -> None:
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy._lock:
                    first = next(proxy._next)
                last_error = ""
                for i in range(len(proxy.backends)):
                    base = proxy.backends[(first + i) % len(proxy.backends)]
                    req = urllib.request.Request(base + self.path, data=body, method=self.command, headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(req, timeout=10) as resp:
                            code, raw = resp.status, resp.read()
                    except urllib.error.HTTPError as err:
                        code, raw = err.code, err.read()
                    except (urllib.error.URLError, OSError) as exc:
                        last_error = str(exc)
                        continue
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                    return
                raw = json.dumps({"error": f"no coordinator answered: {last_error}"}).encode()
                self.send_response(502)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeFleetServer:
    """A server's admin surface as the coordinator sees it, with real HTTP and a real client."""

    def __init__(
        self,
        instance_id: str,
        coordinator_url: str,
        *,
        backend: str = "s3",
        shared: bool = True,
        pool: dict[ObjectKey, int] | None = None,
        pool_lock: threading.Lock | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.backend = backend
        self.shared = shared
        self.l1: dict[ObjectKey, int] = {}
        # A shared backend is one pool: pass the same dict (and lock) to every server mounting it.
        self.l2: dict[ObjectKey, int] = {} if pool is None else pool
        self.lock = pool_lock or threading.Lock()
        self.deletes_received = 0
        app = Flask(f"fake-{instance_id}")

        @app.delete("/cache/objects")
        def delete_objects() -> Response:
            body = request.get_json()
            keys = [ObjectKey.from_json(k) for k in body["keys"]]
            with self.lock:
                self.deletes_received += len(keys)
                gone = [k for k in keys if self.l2.pop(k, None) is not None]
            self.client.events.delete(Tier.L2, self.backend, gone, shared=self.shared)
            return jsonify({"deleted": len(gone), "skipped": 0, "ok": True})

        @app.get("/cache/objects")
        def list_objects() -> Response:
            with self.lock:
                entries = [{"key": k.to_json(), "size_bytes": n} for k, n in self.l2.items()]
            return jsonify({"adapter": self.backend, "shared": self.shared, "entries": entries, "next_page_token": None})

        self.http = AdminServer(app, "127.0.0.1", 0, threads=2)
        self.http.start()
        self.client = CoordinatorClient(
            coordinator_url,
            instance_id=instance_id,
            advertise_ip="127.0.0.1",
            http_port=self.http.port,
            heartbeat_interval=0.3,
            flush_interval=0.1,
            timeout_s=2.0,
        )
        self.client.start()

    def store(self, keys: Sequence[ObjectKey], size: int, *, l1: bool = True) -> None:
        with self.lock:
            for k in keys:
                self.l2[k] = size
                if l1:
                    self.l1[k] = size
        if l1:
            self.client.events.store(Tier.L1, "dram", keys, [size] * len(keys))
        self.client.events.store(Tier.L2, self.backend, keys, [size] * len(keys), shared=self.shared)

    def crash(self) -> None:
        """Die without deregistering: the client thread stops, the HTTP server goes away."""
        self.client._stop.set()
        self.client._wake.set()
        self.http.stop()

    def close(self) -> None:
        self.client.stop(timeout=3)
        self.http.stop()
