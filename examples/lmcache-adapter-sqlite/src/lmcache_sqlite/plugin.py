"""Registers the `sqlite` adapter kind through lmcache's plugin hook."""

from __future__ import annotations

from typing import Any

from lmcache_sdk import AdapterContext, L2AdapterRegistry, StorageBackend, config_field, hookimpl

FIELDS = {
    "path": config_field(str, required=True, help="the SQLite database file (created if missing)"),
    "capacity_bytes": config_field(int, help="refuse stores beyond this many payload bytes"),
}


def _create(config: dict[str, Any], context: AdapterContext) -> StorageBackend:
    """A bare storage backend: the server gives it the standard L2 stack (threads, locks, metrics)."""
    from lmcache_sqlite.adapter import SqliteBackend

    return SqliteBackend(config["path"], capacity_bytes=config.get("capacity_bytes"))


@hookimpl
def lmcache_register_l2_adapters(registry: L2AdapterRegistry) -> None:
    registry.register("sqlite", _create, fields=FIELDS, description="KV chunks as rows of a SQLite database")
