"""CoordinatorConfig: every setting of one `lmcache coordinator` process, from flags >
LMCACHE_MP_COORDINATOR_* env vars (LMCache 0.5.0's names) > a config file > defaults."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_frontends import options as option_machinery
from lmcache_frontends.config import HASH_ALGORITHMS, LOG_LEVELS
from lmcache_frontends.options import (
    build_options,
    check_fields,
    check_non_empty,
    check_port,
    check_positive,
    check_token,
    config_from_sources,
    one_of,
    option,
)

ENV_PREFIX = "LMCACHE_MP_COORDINATOR_"
STORES = ("redis", "memory")


def _non_negative(value: float) -> float:
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"must be >= 0 (0 turns the loop off), got {value}")
    return value


def _ratio(value: float) -> float:
    if not 0 <= value <= 1:
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


def _watermark(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


def _buckets(value: int) -> int:
    if not 1 <= value <= 256:
        raise ValueError(f"must be in 1..256, got {value}")
    return value


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://", "valkey://", "valkeys://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value.replace("valkey", "redis", 1) if value.startswith("valkey") else value


def _prefix(value: str) -> str:
    if not value or any(c in value for c in "{}: \t\n"):
        raise ValueError(f"must be non-empty without braces, colons or spaces, got {value!r}")
    return value


@dataclass(frozen=True)
class CoordinatorConfig:
    """The coordinator's settings; validated on construction."""

    host: str = option("127.0.0.1", "Address the coordinator's HTTP API binds (LMCache binds 0.0.0.0).", check=check_non_empty)
    port: int = option(9300, "Port of the coordinator's HTTP API (0 = pick a free port).", check=check_port)
    store: str | None = option(
        None,
        "Where the fleet's state lives: redis (shared: run several coordinators) or memory (embedded, one "
        "coordinator, lost on exit: a one-node trial). Default: redis when --redis-url is set, else memory.",
        metavar="{redis,memory}",
        check=one_of(STORES),
    )
    redis_url: str | None = option(
        None, "Redis or Valkey URL, e.g. redis://:PASSWORD@redis:6379/0 (the password is never logged).",
        check=_redis_url, secret=True,
    )
    redis_cluster: bool = option(
        False, "--redis-url names a node of a Redis (or Valkey) Cluster: talk to the whole cluster."
    )
    key_prefix: str = option("lmc", "Prefix of every Redis key (fleets sharing one Redis use different ones).", check=_prefix)
    shard_buckets: int = option(
        1, "Shards per (model, cache_salt) in Redis: raise it to spread one tenant over a Redis Cluster "
        "(fixed when the store is first used).", check=_buckets,
    )
    instance_timeout: float = option(
        30.0, "Lease of a registration: an instance that sends no heartbeat for this long is expired and "
        "its L1 placements leave the directory.", check=check_positive,
    )
    health_check_interval: float = option(10.0, "Seconds between lease sweeps (0 turns them off).", check=_non_negative)
    eviction_check_interval: float = option(
        5.0, "Seconds between fleet quota checks by the eviction leader (0 turns eviction off).", check=_non_negative
    )
    eviction_ratio: float = option(
        0.2, "An over-quota salt is trimmed to (1 - ratio) x its limit.", check=_ratio
    )
    trigger_watermark: float = option(1.0, "Evict once usage reaches this fraction of the limit.", check=_watermark)
    eviction_retry_seconds: float = option(
        30.0, "A delete whose delete events have not come back is sent again after this long.", check=check_positive
    )
    chunk_size: int = option(256, "Tokens per chunk; must equal the servers' --chunk-size.", check=check_positive)
    hash_algorithm: str = option(
        "blake3", "Chunk hash; must equal the servers' --hash-algorithm.",
        metavar="{" + ",".join(HASH_ALGORITHMS) + "}", check=one_of(HASH_ALGORITHMS),
    )
    disable_startup_resync: bool = option(
        False, "Do not backfill an empty store from the servers' L2 listings (GET /cache/objects or /l2/keys)."
    )
    resync_delay: float = option(
        10.0, "After finding the store empty, wait this long for servers to (re-)register before the resync.",
        check=_non_negative,
    )
    server_timeout: float = option(10.0, "Timeout of each call to a server's admin API.", check=check_positive)
    server_token: str | None = option(
        None, "Bearer token the coordinator sends to servers' admin APIs (their admin scope).", check=check_token, secret=True
    )
    threads: int = option(8, "HTTP worker threads.", check=check_positive)
    config_file: str | None = option(None, "A JSON or TOML file with any of these options.", flag="--config")
    admin_token: str | None = option(
        None, "Bearer token with the admin scope: every route (servers need it to register and report events).",
        check=check_token, secret=True,
    )
    read_token: str | None = option(
        None, "Bearer token with the read scope: listings, status, lookups and routing scores.", check=check_token, secret=True
    )
    token_file: str | None = option(None, "File of tokens, one 'name:scope:token' per line.", check=check_non_empty)
    metrics_require_token: bool = option(False, "GET /metrics needs a read token.")
    allow_unauthenticated_admin: bool = option(
        False, "Serve on a non-loopback --host without any token (refused otherwise)."
    )
    audit_log: str | None = option(None, "Append audit records of state-changing calls to this file.", check=check_non_empty)
    log_level: str = option(
        "INFO", "Log level.", metavar="{" + ",".join(LOG_LEVELS) + "}", check=one_of(LOG_LEVELS, ignore_case=True)
    )

    def __post_init__(self) -> None:
        check_fields(self, OPTIONS)
        if self.store == "redis" and not self.redis_url:
            raise ConfigError("--store redis needs --redis-url (or LMCACHE_MP_COORDINATOR_REDIS_URL)")

    @property
    def store_kind(self) -> str:
        return self.store or ("redis" if self.redis_url else "memory")

    @property
    def http_host(self) -> str:
        """The address the API binds (the name the shared exposure check reads)."""
        return self.host

    def to_public_dict(self) -> dict[str, Any]:
        out = {}
        for spec in OPTIONS:
            value = getattr(self, spec.name)
            out[spec.name] = ("***" if value else value) if spec.secret else value
        out["store"] = self.store_kind
        return out


OPTIONS = build_options(CoordinatorConfig, ENV_PREFIX)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    option_machinery.add_arguments(parser, OPTIONS, f"coordinator options (each also from an {ENV_PREFIX}* env var)")


def load(namespace: argparse.Namespace | Mapping[str, Any], env: Mapping[str, str] | None = None) -> CoordinatorConfig:
    config: CoordinatorConfig = config_from_sources(namespace, env, options=OPTIONS, config_cls=CoordinatorConfig)
    return config


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None, *, prog: str = "lmcache coordinator") -> CoordinatorConfig:
    from lmcache_frontends.cli.main import CLIArgumentParser

    parser = CLIArgumentParser(prog=prog, argument_default=argparse.SUPPRESS, description="Run the fleet coordinator.")
    add_arguments(parser)
    return load(parser.parse_args(argv), env)
