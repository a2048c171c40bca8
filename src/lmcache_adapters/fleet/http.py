"""A small JSON-over-HTTP caller with kept-alive connections (one per thread and host), for the
coordinator's calls to servers and a server's reports to the coordinator. Standard library only."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from typing import Any

from lmcache_core.fleet.ports import ServerUnreachable


class JsonHttp:
    """`call(method, base_url, path, body)` -> (status, decoded JSON or text). Raises
    ServerUnreachable when no answer comes (refused, reset, timed out)."""

    def __init__(self, *, timeout_s: float = 10.0, token: str | None = None, user_agent: str = "lmcache-fleet") -> None:
        self.timeout_s = timeout_s
        self._token = token
        self._agent = user_agent
        self._local = threading.local()

    def _conn(self, netloc: str, scheme: str) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str], http.client.HTTPConnection] = getattr(self._local, "pool", None) or {}
        self._local.pool = pool
        conn = pool.get((scheme, netloc))
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = pool[(scheme, netloc)] = cls(netloc, timeout=self.timeout_s)
        return conn

    def _drop(self, netloc: str, scheme: str) -> None:
        pool = getattr(self._local, "pool", {})
        conn = pool.pop((scheme, netloc), None)
        if conn is not None:
            conn.close()

    def call(self, method: str, base_url: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None) -> tuple[int, Any]:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ServerUnreachable(f"not an http(s) URL: {base_url!r}")
        target = parts.path.rstrip("/") + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            target += "?" + urllib.parse.urlencode(params)
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json", "User-Agent": self._agent}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        # A kept-alive connection the peer closed fails on first use: retry once on a new one.
        for attempt in (0, 1):
            conn = self._conn(parts.netloc, parts.scheme)
            try:
                conn.request(method, target, body=payload, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                status = resp.status
                if resp.will_close:
                    self._drop(parts.netloc, parts.scheme)
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(parts.netloc, parts.scheme)
                if attempt:
                    raise ServerUnreachable(f"{method} {base_url}{path}: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(parts.netloc, parts.scheme)
                raise ServerUnreachable(f"{method} {base_url}{path}: {exc or type(exc).__name__}") from None
        text = raw.decode("utf-8", errors="replace")
        try:
            decoded: Any = json.loads(text) if text.strip() else None
        except ValueError:
            decoded = text
        return status, decoded

    def close(self) -> None:
        for conn in getattr(self._local, "pool", {}).values():
            conn.close()
        self._local.pool = {}


def error_text(status: int, body: Any) -> str:
    """A server's error message (`error`, `detail` or `reason`), else the status."""
    if isinstance(body, dict):
        for name in ("error", "detail", "reason"):
            if isinstance(body.get(name), str):
                return f"HTTP {status}: {body[name]}"
    return f"HTTP {status}"
