"""The CLI's HTTP client for the admin API: stdlib urllib only, bearer token, JSON in and out."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 30.0


class Unreachable(Exception):
    """The server did not answer (refused, unresolvable, timed out)."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"cannot reach {url}: {detail}")
        self.url = url


class NotHTTP(OSError):
    """The peer speaks another protocol (a ZeroMQ socket answers with its greeting)."""


# A ZeroMQ (ZMTP) peer greets first: 0xFF, 8 padding bytes, 0x7F. HTTP servers never speak first.
_ZMTP_SIGNATURE_FIRST = 0xFF


class _CheckedHTTPConnection(http.client.HTTPConnection):
    """Before parsing an answer, look at its first bytes: a ZeroMQ greeting (the --url of the
    data-path port, a common slip) fails at once instead of waiting for a status line."""

    def getresponse(self) -> http.client.HTTPResponse:
        sock = self.sock
        if sock is not None:
            try:
                first = sock.recv(16, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                first = b""
            if first and first[0] == _ZMTP_SIGNATURE_FIRST:
                raise NotHTTP(
                    "it answered with a ZeroMQ greeting, not HTTP: --url must be the "
                    "admin API (--http-port of the server, default 8080), not its ZeroMQ data-path port"
                )
        return super().getresponse()


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(_CheckedHTTPConnection, req)


_OPENER = urllib.request.build_opener(_CheckedHTTPHandler)


def open_url(req: urllib.request.Request | str, timeout: float) -> Any:
    """urllib's urlopen, except that a ZeroMQ port answers URLError(NotHTTP) at once."""
    return _OPENER.open(req, timeout=timeout)


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status code, decoded JSON body (or text), round-trip seconds."""

    status: int
    body: Any
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def message(self) -> str:
        """The server's error message: `error`, else `reason`, else the raw body."""
        if isinstance(self.body, dict):
            for field in ("error", "reason", "message"):
                if isinstance(self.body.get(field), str):
                    return str(self.body[field])
        return str(self.body).strip() or f"HTTP {self.status}"


class AdminClient:
    """Calls one admin server; every call returns a Reply or raises Unreachable."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--url must look like http://HOST:PORT, got {url!r}")
        self.url = url.rstrip("/")
        self._token = token or None
        self._timeout = timeout_s

    def call(self, method: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None) -> Reply:
        params = {k: v for k, v in (query or {}).items() if v is not None}
        target = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(target, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        started = time.monotonic()
        try:
            with open_url(req, self._timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except urllib.error.URLError as err:
            raise Unreachable(self.url, str(err.reason)) from None
        except TimeoutError:
            raise Unreachable(self.url, f"no answer within {self._timeout:g} s") from None
        except (ConnectionError, OSError) as err:
            raise Unreachable(self.url, str(err)) from None
        elapsed = time.monotonic() - started
        text = raw.decode("utf-8", errors="replace")
        try:
            decoded: Any = json.loads(text) if text.strip() else None
        except ValueError:
            decoded = text
        return Reply(status, decoded, elapsed)
