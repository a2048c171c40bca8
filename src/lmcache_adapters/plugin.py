"""The built-in L2 adapters' plugin: registered through the `lmcache` entry point like any other.

Factories import their modules lazily, so a missing optional dependency (boto3 for s3) only
matters to someone who configures that adapter, and the message says what to install."""

from __future__ import annotations

from typing import Any

import pluggy

from lmcache_core.plugin import L2AdapterRegistry
from lmcache_core.plugin.spec import PROJECT_NAME

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marker for hook implementations: `@hookimpl def lmcache_register_l2_adapters(registry)`."""


def _create_mock(config: dict[str, Any], services: Any) -> Any:
    from lmcache_adapters.l2.mock import create_mock_adapter

    return create_mock_adapter(config, services)


def _create_fs(config: dict[str, Any], services: Any) -> Any:
    from lmcache_adapters.l2.fs import create_fs_adapter

    return create_fs_adapter(config, services)


def _create_s3(config: dict[str, Any], services: Any) -> Any:
    from lmcache_adapters.l2.s3 import create_s3_adapter

    return create_s3_adapter(config, services)


def _create_dax(config: dict[str, Any], services: Any) -> Any:
    from lmcache_adapters.l2.dax import create_dax_adapter

    return create_dax_adapter(config, services)


@hookimpl
def lmcache_register_l2_adapters(registry: L2AdapterRegistry) -> None:
    from lmcache_adapters.l2.dax import DAX_FIELDS
    from lmcache_adapters.l2.fs import FS_FIELDS
    from lmcache_adapters.l2.mock import MOCK_FIELDS
    from lmcache_adapters.l2.s3 import S3_FIELDS

    registry.register(
        "mock",
        _create_mock,
        fields=MOCK_FIELDS,
        description="in-memory adapter with optional capacity and simulated bandwidth (tests, demos)",
    )
    registry.register(
        "fs",
        _create_fs,
        fields=FS_FIELDS,
        description="one file per object under base_path; checksummed, crash-safe, rebuilt on restart",
    )
    registry.register(
        "s3",
        _create_s3,
        fields=S3_FIELDS,
        description="any S3-compatible object store (boto3); circuit breaker; checksummed",
    )
    registry.register(
        "dax",
        _create_dax,
        fields=DAX_FIELDS,
        description="fixed-size slots on Device-DAX devices (or files); runtime add/remove/resize",
    )
