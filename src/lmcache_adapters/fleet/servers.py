"""HttpServerControl: the coordinator's calls to servers' admin APIs (delete, list, proxy), for
both generations: `DELETE /cache/objects` and `GET /cache/objects` (0.5.6, ours), falling back to
`DELETE /l2` and `GET /l2/keys` (0.5.0) when a server does not have them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from lmcache_adapters.fleet.http import JsonHttp, error_text
from lmcache_core.errors import InvalidKeyError
from lmcache_core.fleet.model import LEGACY_BACKEND, InstanceInfo, KeyPage
from lmcache_core.fleet.ports import ServerUnreachable
from lmcache_core.keys import ObjectKey

log = logging.getLogger(__name__)

_NOT_THERE = (404, 405)


class HttpServerControl:
    """ServerControl over HTTP; remembers which servers speak only the 0.5.0 routes."""

    def __init__(self, *, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.http = JsonHttp(timeout_s=timeout_s, token=token, user_agent="lmcache-coordinator")
        self._legacy: set[str] = set()
        self._lock = threading.Lock()

    def _is_legacy(self, target: InstanceInfo) -> bool:
        with self._lock:
            return target.base_url in self._legacy

    def _mark_legacy(self, target: InstanceInfo) -> None:
        with self._lock:
            self._legacy.add(target.base_url)

    def call(self, target: InstanceInfo, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        return self.http.call(method, target.base_url, path, body)

    def delete_l2(self, target: InstanceInfo, keys: Sequence[ObjectKey]) -> int:
        body = {"keys": [k.to_json() for k in keys]}
        if not self._is_legacy(target):
            status, reply = self.http.call("DELETE", target.base_url, "/cache/objects", {**body, "tier": "l2"})
            if status not in _NOT_THERE:
                return self._deleted(target, status, reply, len(keys))
            self._mark_legacy(target)
        status, reply = self.http.call("DELETE", target.base_url, "/l2", body)
        return self._deleted(target, status, reply, len(keys))

    @staticmethod
    def _deleted(target: InstanceInfo, status: int, reply: Any, asked: int) -> int:
        if not 200 <= status < 300:
            raise ServerUnreachable(f"delete on {target.instance_id}: {error_text(status, reply)}", status)
        if isinstance(reply, dict):
            if reply.get("ok") is False:  # the server reached its adapter, which failed
                raise ServerUnreachable(f"delete on {target.instance_id}: {error_text(status, {'error': reply.get('error', 'failed')})}", status)
            if isinstance(reply.get("deleted"), int):
                return int(reply["deleted"])
            if isinstance(reply.get("results"), list):  # 0.5.0's per-key answer
                return sum(1 for r in reply["results"] if isinstance(r, dict) and r.get("deleted"))
        return asked

    def list_l2(self, target: InstanceInfo, page_token: str | None, page_size: int) -> KeyPage:
        query = {"page_size": page_size, "page_token": page_token}
        if not self._is_legacy(target):
            status, reply = self.http.call("GET", target.base_url, "/cache/objects", query={**query, "tier": "l2"})
            if status not in _NOT_THERE:
                return self._page(target, status, reply, legacy=False)
            self._mark_legacy(target)
        status, reply = self.http.call("GET", target.base_url, "/l2/keys", query=query)
        return self._page(target, status, reply, legacy=True)

    @staticmethod
    def _page(target: InstanceInfo, status: int, reply: Any, *, legacy: bool) -> KeyPage:
        if not 200 <= status < 300 or not isinstance(reply, dict):
            raise ServerUnreachable(f"listing on {target.instance_id}: {error_text(status, reply)}", status)
        entries = []
        for entry in reply.get("entries") or []:
            try:
                key = ObjectKey.from_json(entry["key"])
                size = entry.get("size_bytes")
                entries.append((key, int(size) if isinstance(size, int) and size >= 0 else None))
            except (InvalidKeyError, KeyError, TypeError):
                log.debug("resync: skipping an unreadable entry from %s", target.instance_id)
        token = reply.get("next_page_token")
        if legacy:
            # 0.5.0 reports its L2 as the one pool its events speak of.
            return KeyPage(tuple(entries), token if isinstance(token, str) and token else None, LEGACY_BACKEND, True)
        backend = reply.get("adapter")
        return KeyPage(
            tuple(entries),
            token if isinstance(token, str) and token else None,
            backend if isinstance(backend, str) and backend else LEGACY_BACKEND,
            bool(reply.get("shared", False)),
        )
