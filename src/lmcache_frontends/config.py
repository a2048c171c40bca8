"""Server configuration: one frozen dataclass, loaded from flags > LMCACHE_* env > config file >
defaults. The settings live here; the generic option machinery in `options.py`."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_frontends import options as options_module
from lmcache_frontends.options import (
    MIN_TOKEN_LENGTH,
    ConfigArgumentParser,
    OptionSpec,
    build_options,
    check_count,
    check_fields,
    check_fraction,
    check_non_empty,
    check_port,
    check_positive,
    check_token,
    check_value,
    choices_metavar,
    config_from_sources,
    one_of,
    option,
    read_config_file,
)

ENV_PREFIX = "LMCACHE_"
REDACTED = "***"

HASH_ALGORITHMS = ("blake3", "xxh3", "sha256", "builtin")
EVICTION_POLICIES = ("LRU", "IsolatedLRU", "noop")
TRANSFER_MODES = ("auto", "engine_driven", "lmcache_driven")
PROTOCOLS = ("auto", "0.5.0", "0.5.6")
L2_PREFETCH_POLICIES = ("default", "retain")
L2_STORE_POLICIES = ("default", "skip_l1")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Names of JSON fields inside --l2-adapter that /conf must not echo (S3 keys, tokens, ...).
_SECRET_FIELD_RE = re.compile(r"secret|token|password|passwd|credential|access_key|private_key", re.I)

def _copy_threads(value: int) -> int:
    if not 0 <= value <= 64:
        raise ValueError(f"must be in 0..64 (0 = the CPUs available, at most 4), got {value}")
    return value


def _frame_bytes(value: int) -> int:
    if not 1 << 16 <= value <= 1 << 32:
        raise ValueError(f"must be a byte count from 65536 to 4294967296, got {value}")
    return value


def _tokens_per_key(value: int) -> int:
    if not 1 <= value <= 1 << 26:
        raise ValueError(f"must be in 1..67108864, got {value}")
    return value


def _bytes_or_auto(value: int) -> int:
    if value < 0:
        raise ValueError(f"must be a byte count >= 0 (0 = automatic), got {value}")
    return value


# sun_path holds 108 bytes with its terminating NUL on Linux.
_MAX_IPC_PATH_BYTES = 107


def _ipc_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if "\x00" in value or value.endswith("/"):
        raise ValueError(f"must be a file path without NUL, got {value!r}")
    if len(value.encode()) > _MAX_IPC_PATH_BYTES:
        raise ValueError(f"must be at most {_MAX_IPC_PATH_BYTES} bytes (a Unix socket path), got {len(value.encode())}")
    return value


def _file_mode(value: str) -> str:
    try:
        mode = int(value, 8)
    except (TypeError, ValueError):
        raise ValueError(f"must be an octal permission mode such as 0600 or 0660, got {value!r}") from None
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        raise ValueError(f"must be a permission mode in 0600..0777 that keeps the owner's rw bits, got {value!r}")
    return value


def _nt_threshold(value: int) -> int:
    # glibc ignores non-temporal thresholds below 0x4040 (its tunable's minimum).
    if value != 0 and not 0x4040 <= value <= 1 << 40:
        raise ValueError(f"must be 0 (off) or a byte count from 16448 (0x4040), got {value}")
    return value


def _shm_suffix(value: str) -> str:
    if "/" in value or "\x00" in value:
        raise ValueError(f"must not contain '/' or NUL, got {value!r}")
    return value


def _l2_adapter_json(value: str) -> str:
    # Structure only; the adapter registry checks kinds and fields at bootstrap.
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(obj, dict):
        raise ValueError("must be a JSON object")
    if not isinstance(obj.get("type"), str):
        raise ValueError('needs a string "type" field')
    return json.dumps(obj, sort_keys=False)


def _l1_manager_json(value: str) -> str:
    # The whole object is checked here, so a bad one stops the start with the field named.
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc.msg} at char {exc.pos}") from None
    parse_l1_manager(obj)
    return json.dumps(obj, sort_keys=False)


def _coordinator_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL of a coordinator, got {value!r}")
    try:
        parts.port  # noqa: B018 -- raises for a port out of range
    except ValueError:
        raise ValueError(f"has a bad port: {value!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"must not have a query or fragment, got {value!r}")
    return value.strip().rstrip("/")


def _instance_id(value: str) -> str:
    if not 1 <= len(value) <= 256 or any(ord(c) < 32 or ord(c) == 127 or c in "/?#%" for c in value):
        raise ValueError(f"must be 1-256 characters without control characters or / ? # %, got {value!r}")
    return value


def _event_transport(value: str) -> str:
    if value == "kafka":
        raise ValueError("kafka is not supported by this server: cache events go to the coordinator over http")
    return one_of(("http",))(value)


L1_MANAGER_TYPES = ("DRAM", "DEVDAX")
_L1_COMMON_FIELDS = {"type", "tag", "size_gb", "align_bytes", "eviction", "read_ttl_seconds", "write_ttl_seconds"}
_L1_TYPE_FIELDS = {"DRAM": {"use_lazy", "init_size_gb", "shm_name", "use_hugepages"}, "DEVDAX": {"path"}}
_L1_EVICTION_FIELDS = {"eviction_policy", "trigger_watermark", "eviction_ratio"}
DEFAULT_L1_TAG = "_default"


@dataclass(frozen=True)
class L1ManagerSpec:
    """One `--l1-manager` object (LMCache 0.5.6's tagged L1 JSON), checked."""

    type: str
    tag: str
    size_gb: float
    path: str | None = None
    shm_name: str | None = None
    eviction: Mapping[str, Any] = field(default_factory=dict)
    read_ttl_seconds: float | None = None
    write_ttl_seconds: float | None = None


def parse_l1_manager(obj: Any) -> L1ManagerSpec:
    """Check one `--l1-manager` object as LMCache 0.5.6 does (ValueError naming the field), for
    the types this server has: DRAM (the shared-memory pool) and DEVDAX (Device-DAX arenas)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError("must be a JSON object with a string \"type\"")
    kind = obj["type"]
    if kind == "GDS":
        raise ValueError("type GDS (an NVMe slab over GPUDirect Storage) is not supported by this server; use DRAM or DEVDAX")
    if kind not in L1_MANAGER_TYPES:
        raise ValueError(f"requires type DRAM, DEVDAX or GDS, got {kind!r}")
    unknown = sorted(set(obj) - _L1_COMMON_FIELDS - _L1_TYPE_FIELDS[kind])
    if unknown:
        raise ValueError(f"has unknown L1 fields for type {kind}: {unknown}")
    tag = obj.get("tag")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError("tag must be a non-empty string")
    if tag == DEFAULT_L1_TAG and kind != "DRAM":
        raise ValueError("only DRAM can use the _default tag")
    ints = {}
    for name in ("align_bytes", "read_ttl_seconds", "write_ttl_seconds"):
        raw = obj.get(name)
        if raw is not None and (isinstance(raw, bool) or not isinstance(raw, int) or raw <= 0):
            raise ValueError(f"{name} must be a positive integer, got {raw!r}")
        ints[name] = raw
    align = ints["align_bytes"]
    if align is not None and (align & (align - 1) or align > 4096):
        raise ValueError(f"align_bytes must be a power of two up to 4096 (objects here are 4096-aligned), got {align}")
    size = obj.get("size_gb")
    if isinstance(size, bool) or not isinstance(size, int | float) or not math.isfinite(size) or size <= 0:
        raise ValueError(f"size_gb must be a number > 0, got {size!r}")
    eviction = obj.get("eviction", {})
    if not isinstance(eviction, dict) or set(eviction) - _L1_EVICTION_FIELDS:
        raise ValueError("eviction must contain eviction_policy, trigger_watermark and eviction_ratio only")
    policy = eviction.get("eviction_policy", EVICTION_POLICIES[0])
    if not isinstance(policy, str) or policy.lower() not in {p.lower() for p in EVICTION_POLICIES}:
        raise ValueError(f"eviction_policy must be one of {', '.join(EVICTION_POLICIES)}, got {policy!r}")
    for name in ("trigger_watermark", "eviction_ratio"):
        if name in eviction:
            value = eviction[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
                raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    path = shm_name = None
    if kind == "DEVDAX":
        path = obj.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ValueError("path must be a non-empty string")
    else:
        if obj.get("use_hugepages", False) is not False:
            raise ValueError("use_hugepages is not supported by this server (its DRAM L1 is a shared-memory segment)")
        for name in ("use_lazy",):
            if not isinstance(obj.get(name, True), bool):
                raise ValueError(f"{name} must be true or false")
        shm_name = obj.get("shm_name", "")
        if not isinstance(shm_name, str):
            raise ValueError("shm_name must be a string")
        _shm_suffix(shm_name)
    return L1ManagerSpec(
        type=kind,
        tag=tag,
        size_gb=float(size),
        path=path,
        shm_name=shm_name or None,
        eviction=dict(eviction),
        read_ttl_seconds=ints["read_ttl_seconds"],
        write_ttl_seconds=ints["write_ttl_seconds"],
    )


# --------------------------------------------------------------------------- option table


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of one lmcache-server process; validated on construction."""

    host: str = option("127.0.0.1", "Address the ZeroMQ data-path socket binds.", check=check_non_empty)
    port: int = option(5555, "Port of the ZeroMQ data-path socket (0 = pick a free port).", check=check_port)
    ipc_path: str | None = option(
        None,
        "Also serve the ZeroMQ data path on this Unix-domain socket (engines on this host connect to "
        "ipc://PATH, a shorter round trip than tcp loopback). A stale socket file is replaced; a live one "
        "or any other file is refused.",
        check=_ipc_path,
    )
    ipc_mode: str = option(
        "0600", "Permissions (octal) of the --ipc-path socket file, e.g. 0660 for engines in the file's group.",
        check=_file_mode,
    )
    chunk_size: int = option(256, "Tokens per KV chunk; only full chunks are cached.", check=check_positive)
    hash_algorithm: str = option(
        "blake3",
        "Chunk hash chain: blake3 (LMCache 0.5.0 compatible), xxh3 (faster, not shared with reference "
        "servers), sha256, builtin (needs a fixed PYTHONHASHSEED).",
        metavar=choices_metavar(HASH_ALGORITHMS),
        check=one_of(HASH_ALGORITHMS, ignore_case=True),
    )
    max_workers: int = option(
        4, "Worker threads of the ZeroMQ data path (STORE/RETRIEVE/PREPARE/COMMIT, per-client affinity).", check=check_positive
    )
    worker_reap_timeout_seconds: float = option(
        120.0, "Drop an engine worker's registrations when it has not pinged for this long.", check=check_positive
    )
    supported_transfer_mode: str = option(
        "auto",
        "Transfer modes offered to engines: auto (both), engine_driven (shared-memory slots only), "
        "lmcache_driven (server gathers/scatters the engine's shared KV tensors only).",
        metavar=choices_metavar(TRANSFER_MODES),
        check=one_of(TRANSFER_MODES),
    )
    protocol: str = option(
        "auto",
        "LMCache wire protocol of the data path: auto (each client recognised from its own messages, "
        "0.5.0 and 0.5.6 at once), or 0.5.0 / 0.5.6 for every client.",
        metavar=choices_metavar(PROTOCOLS),
        check=one_of(PROTOCOLS),
    )
    transfer_threads: int = option(
        0,
        "Threads that copy one server-driven gather/scatter in parallel, whole layers each, one torch "
        "thread apiece (0 = the CPUs available, at most 4; 1 = the data-path worker copies alone).",
        check=_copy_threads,
    )
    nt_copy_threshold: int = option(
        262144,
        "Bytes from which a server-driven transfer copies a contiguous piece with glibc's memmove using "
        "non-temporal stores (glibc.cpu.x86_non_temporal_threshold, set by re-executing the server once at "
        "startup; x86-64 glibc Linux only). 0 = leave glibc's default and copy with torch.",
        check=_nt_threshold,
    )
    session_ttl_seconds: float = option(
        600.0, "A request's session (tokens, chunk hashes) expires after this long without END_SESSION.", check=check_positive
    )
    max_frame_bytes: int = option(
        256 << 20,
        "Largest ZeroMQ frame the data path accepts (ZeroMQ's MAXMSGSIZE: a bigger one drops the sender's "
        "connection before it is buffered).",
        check=_frame_bytes,
    )
    max_tokens_per_key: int = option(
        1 << 20, "Token ids one request key may hold; a longer key is refused before it is hashed.",
        check=_tokens_per_key,
    )
    max_sessions: int = option(
        65536, "Live sessions (and LOOKUP lock leases) of all clients; past it the least recently used goes.",
        check=check_count,
    )
    max_sessions_per_client: int = option(
        8192, "Live sessions one data-path client created; past it that client's least recently used goes.",
        check=check_count,
    )
    max_lookups_per_client: int = option(
        4096, "Live LOOKUPs (unqueried jobs, and leases of unretrieved locks) of one data-path client; past it "
        "its oldest is released.",
        check=check_count,
    )
    max_pending_write_bytes_per_client: int = option(
        0, "Bytes of uncommitted PREPARE_STORE slots one data-path client may hold (0 = a quarter of L1).",
        check=_bytes_or_auto,
    )
    http_host: str = option("127.0.0.1", "Address the HTTP admin server binds.", check=check_non_empty)
    http_port: int = option(8080, "Port of the HTTP admin server (0 = pick a free port).", check=check_port)
    state_dir: str | None = option(
        None, "Directory for state that survives a restart (quotas). Unset = memory only.", check=check_non_empty
    )
    shm_name: str | None = option(
        None,
        "Suffix of the L1 shared-memory segment name (lmcache_l1_pool_<suffix>); default: srv-<pid>-<start ticks>.",
        check=_shm_suffix,
    )
    ready_file: str | None = option(
        None,
        "Once the server is ready, write this JSON file (pid, admin URL, ZeroMQ endpoints, L1 segment) for "
        "scripts to read instead of parsing logs; removed at shutdown.",
        check=check_non_empty,
    )
    shutdown_drain_seconds: float = option(
        10.0,
        "At shutdown, wait up to this long for the L2 write-back to drain. A second SIGINT/SIGTERM stops "
        "waiting; objects not written are counted (l2_stores_unwritten_at_shutdown) and logged.",
        check=check_positive,
    )
    config_file: str | None = option(
        None, "A JSON or TOML file with any of these options (lowest precedence after defaults).", flag="--config"
    )
    admin_token: str | None = option(
        None, "Bearer token with the admin scope (every route). Prefer the env var or --token-file.",
        check=check_token, secret=True,
    )
    read_token: str | None = option(
        None, "Bearer token with the read scope (status, conf, metrics, listings).", check=check_token, secret=True
    )
    token_file: str | None = option(
        None, "File of tokens, one 'name:scope:token' per line (scope read or admin); re-read on SIGHUP.",
        check=check_non_empty,
    )
    metrics_require_token: bool = option(False, "GET /metrics needs a read token (default: open, like the probes).")
    allow_unauthenticated_admin: bool = option(
        False, "Serve the admin API on a non-loopback --http-host without any token (refused otherwise)."
    )
    allow_unauthenticated_data_path: bool = option(
        False, "Serve the ZeroMQ data path on a non-loopback --host without CURVE keys (refused otherwise)."
    )
    zmq_curve_secret_key_file: str | None = option(
        None, "ZeroMQ CURVE certificate (secret) file of the data-path server; turns on CURVE encryption.",
        check=check_non_empty,
    )
    zmq_curve_authorized_keys: str | None = option(
        None, "Directory of the CURVE public-key certificates of the engines allowed to connect.", check=check_non_empty
    )
    audit_log: str | None = option(
        None, "Append audit records (JSON lines) of state-changing admin calls to this file.", check=check_non_empty
    )
    readyz_timeout_seconds: float = option(
        2.0, "GET /readyz: deadline of each L2 adapter check.", check=check_positive
    )
    l1_size_gb: float = option(1.0, "Size of the L1 (CPU memory) pool in GiB.", section="storage_manager", check=check_positive)
    l1_devdax_path: str | None = option(
        None,
        "A Device-DAX device (/dev/daxX.Y) or an existing regular file that holds L1 instead of shared "
        "memory, --l1-size-gb of it; more devices can be added at run time (POST /reconfigure/dax/l1/add). "
        "Engine-driven engines then get pickle mode (no shared L1 segment).",
        section="storage_manager",
        check=check_non_empty,
    )
    no_l1_use_lazy: bool = option(
        False,
        "Accepted so LMCache 0.5.6 command lines start unchanged (its --l1-devdax-path needs it); this "
        "server never allocates L1 lazily, so it changes nothing.",
        section="storage_manager",
    )
    l1_manager: tuple[str, ...] = option(
        (),
        'LMCache 0.5.6\'s tagged L1 as JSON instead of --l1-size-gb/--l1-devdax-path: {"type": "DRAM" or '
        '"DEVDAX", "tag": "...", "size_gb": N, "path": "/dev/dax0.0" (DEVDAX)}; one L1 per server.',
        section="storage_manager",
        metavar="JSON",
        check=_l1_manager_json,
    )
    eviction_policy: str = option(
        "LRU",
        "L1 eviction policy: LRU, IsolatedLRU (one LRU per cache_salt, driven by quotas) or noop.",
        section="storage_manager",
        metavar=choices_metavar(EVICTION_POLICIES),
        check=one_of(EVICTION_POLICIES, ignore_case=True),
    )
    eviction_trigger_watermark: float = option(
        0.8, "Start evicting when L1 usage reaches this fraction.", section="storage_manager", check=check_fraction
    )
    eviction_ratio: float = option(
        0.2, "Fraction of L1 to free in one eviction cycle.", section="storage_manager", check=check_fraction
    )
    eviction_interval_seconds: float = option(
        1.0, "Period of the eviction controller thread.", section="storage_manager", check=check_positive
    )
    l1_write_ttl_seconds: float = option(
        600.0, "A write lock expires after this long (a crashed client cannot pin memory).",
        section="storage_manager", check=check_positive,
    )
    l1_read_ttl_seconds: float = option(
        300.0, "A read lock expires after this long.", section="storage_manager", check=check_positive
    )
    l2_adapters: tuple[str, ...] = option(
        (),
        'An L2 storage adapter as JSON, e.g. \'{"type": "fs", "base_path": "/data/kv"}\'; repeat for '
        "several (the first is the primary).",
        section="storage_manager",
        flag="--l2-adapter",
        metavar="JSON",
        check=_l2_adapter_json,
    )
    l2_store_policy: str = option(
        "default",
        "default: keep objects in L1 after copying them to L2; skip_l1: drop them from L1 afterwards.",
        section="storage_manager",
        metavar=choices_metavar(L2_STORE_POLICIES),
        check=one_of(L2_STORE_POLICIES),
    )
    l2_prefetch_max_in_flight: int = option(
        8, "At most this many L2 prefetch jobs at once.", section="storage_manager", check=check_positive
    )
    l2_prefetch_policy: str = option(
        "default",
        "default: objects prefetched from L2 are temporary in L1 (freed after their last read); "
        "retain: they stay in L1 as ordinary objects.",
        section="storage_manager",
        metavar=choices_metavar(L2_PREFETCH_POLICIES),
        check=one_of(L2_PREFETCH_POLICIES),
    )
    instance_id: str | None = option(
        None,
        "Stable identity of this server in a fleet: its coordinator membership key (LMCache 0.5.6's flag). "
        "Default: <advertise ip>:<admin port>, the same across restarts, so a restart is a new incarnation "
        "of the same member.",
        check=_instance_id,
    )
    coordinator_url: str | None = option(
        None,
        "Join the fleet coordinator at this URL (lmcache coordinator, or LMCache's): register, heartbeat, "
        "report L1 and L2 cache events, deregister at shutdown. Unset = no fleet.",
        section="coordinator",
        metavar="URL",
        check=_coordinator_url,
    )
    coordinator_advertise_ip: str | None = option(
        None,
        "Address the coordinator calls this server's admin API at. Default: --http-host, or the address "
        "that routes to the coordinator when --http-host is a wildcard (0.0.0.0, ::).",
        section="coordinator",
        metavar="IP",
        check=check_non_empty,
    )
    coordinator_heartbeat_interval: float = option(
        5.0, "Seconds between heartbeats (keep well under the coordinator's --instance-timeout).",
        section="coordinator", check=check_positive,
    )
    coordinator_event_reporting: bool = option(
        True,
        "Report L1 and L2 cache events (store, access, delete) to the coordinator. On by default here "
        "(LMCache needs the flag); false (env or file) reports none: the server is listed, nothing more.",
        section="coordinator",
    )
    coordinator_event_flush_interval: float = option(
        1.0, "Seconds between flushes of the buffered cache events.", section="coordinator", check=check_positive
    )
    coordinator_l2_event_reporting: bool = option(
        False,
        "LMCache 0.5.0's spelling of --coordinator-event-reporting (turns it on even when the env or a "
        "file turned it off).",
        section="coordinator",
    )
    coordinator_l2_event_flush_interval: float | None = option(
        None,
        "LMCache 0.5.0's spelling of --coordinator-event-flush-interval (used when that one is left at "
        "its default).",
        section="coordinator",
        check=check_positive,
    )
    coordinator_event_transport: str = option(
        "http", "LMCache 0.5.6's event transport: http only here (kafka is refused).",
        section="coordinator", metavar="{http}", check=_event_transport,
    )
    coordinator_max_buffered_events: int = option(
        100_000,
        "Cache events held while the coordinator is slow or down; past it new events are dropped and "
        "counted (the coordinator then under-reports this server until its next stores).",
        section="coordinator", check=check_count,
    )
    coordinator_timeout_seconds: float = option(
        2.0, "Timeout of each call to the coordinator.", section="coordinator", check=check_positive
    )
    coordinator_token: str | None = option(
        None,
        "Bearer token sent to the coordinator (one with its admin scope, when it requires tokens).",
        section="coordinator", check=check_non_empty, secret=True,
    )
    log_level: str = option(
        "INFO",
        "Log level of the server process.",
        section="observability",
        metavar=choices_metavar(LOG_LEVELS),
        check=one_of(LOG_LEVELS, ignore_case=True),
    )
    env_unredacted: bool = option(
        False, "GET /env shows values of variables whose names look secret (KEY, TOKEN, SECRET, PASSWORD, CREDENTIAL).",
        section="observability",
    )
    enable_run_script: bool = option(
        False, "Serve POST /run_script (runs uploaded Python in the server process: remote code execution).",
        section="observability",
    )
    metrics_labels: str = option(
        "on", "Label metrics by model_name and cache_salt (off: bounded cardinality for large fleets).",
        section="observability", metavar="{on,off}", check=one_of(("on", "off"), ignore_case=True),
    )
    metrics_max_label_values: int = option(
        1000, "Distinct values one metric label may take; later ones are reported as \"other\".",
        section="observability", check=check_positive,
    )

    def __post_init__(self) -> None:
        # Direct construction (tests, library users) gets the same checks as the command line.
        check_fields(self, OPTIONS)
        self._fold_l1_manager()
        self._fold_coordinator_aliases()
        if self.l1_devdax_path is not None and self.shm_name:
            raise ConfigError(
                f"--l1-devdax-path cannot be combined with --shm-name {self.shm_name!r}: the L1 bytes live in "
                'the DAX map and are never shared by name (leave --shm-name unset, or set it to "")'
            )

    def _fold_coordinator_aliases(self) -> None:
        """LMCache 0.5.0's coordinator flags stand for 0.5.6's (the new spelling wins when both
        are given); idempotent, so /conf shows the values in effect."""
        if self.coordinator_l2_event_reporting and not self.coordinator_event_reporting:
            object.__setattr__(self, "coordinator_event_reporting", True)
        legacy_flush = self.coordinator_l2_event_flush_interval
        if legacy_flush is not None and self.coordinator_event_flush_interval == OPTIONS_BY_NAME[
            "coordinator_event_flush_interval"
        ].default:
            object.__setattr__(self, "coordinator_event_flush_interval", legacy_flush)

    def _fold_l1_manager(self) -> None:
        """Apply a `--l1-manager` to the L1 fields it stands for (size, device, shm name, eviction,
        lock TTLs), so the rest of the server reads one set of fields and /conf shows them.
        Idempotent: a config rebuilt from a folded one folds to the same values."""
        if not self.l1_manager:
            return
        if len(self.l1_manager) > 1:
            raise ConfigError("--l1-manager may be given once: this server runs one L1")
        spec = parse_l1_manager(json.loads(self.l1_manager[0]))
        clashes = []
        if self.l1_size_gb not in (OPTIONS_BY_NAME["l1_size_gb"].default, spec.size_gb):
            clashes.append("--l1-size-gb")
        if self.l1_devdax_path not in (None, spec.path):
            clashes.append("--l1-devdax-path")
        if clashes:
            raise ConfigError(f"use either --l1-manager or the legacy L1 flags ({', '.join(clashes)}), not both")
        values: dict[str, Any] = {"l1_size_gb": spec.size_gb, "l1_devdax_path": spec.path}
        if spec.shm_name is not None:
            values["shm_name"] = spec.shm_name
        for ours, theirs in (("eviction_policy", "eviction_policy"), ("eviction_trigger_watermark", "trigger_watermark"),
                             ("eviction_ratio", "eviction_ratio")):
            if theirs in spec.eviction:
                values[ours] = spec.eviction[theirs]
        for name in ("l1_read_ttl_seconds", "l1_write_ttl_seconds"):
            value = getattr(spec, name.removeprefix("l1_"))
            if value is not None:
                values[name] = float(value)
        for name, value in values.items():
            object.__setattr__(self, name, check_value(OPTIONS_BY_NAME[name], value, f"--l1-manager {name}"))

    @property
    def l1_size_bytes(self) -> int:
        return int(self.l1_size_gb * (1 << 30))

    def to_public_dict(self) -> dict[str, dict[str, Any]]:
        """The configuration as /conf shows it: grouped in sections, secrets shown as "***"."""
        out: dict[str, dict[str, Any]] = {"mp": {}, "storage_manager": {}, "observability": {}, "coordinator": {}}
        for spec in OPTIONS:
            value = getattr(self, spec.name)
            if spec.secret:
                value = REDACTED if value else value
            elif spec.name in ("l2_adapters", "l1_manager"):
                value = [_redact_mapping(json.loads(raw)) for raw in value]
            out.setdefault(spec.section, {})[spec.name] = value
        return out


def _redact_mapping(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {
            k: (REDACTED if _SECRET_FIELD_RE.search(k) and v not in (None, "") else _redact_mapping(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [_redact_mapping(v) for v in obj]
    return obj


OPTIONS: tuple[OptionSpec, ...] = build_options(ServerConfig, ENV_PREFIX)
OPTIONS_BY_NAME: dict[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}


# --------------------------------------------------------------------------- argparse

SERVER_OPTIONS_TITLE = "server options (each also from an LMCACHE_* env var)"


def add_arguments(
    parser: argparse.ArgumentParser,
    options: Sequence[OptionSpec] | None = None,
    title: str = SERVER_OPTIONS_TITLE,
) -> None:
    """Add every flag of `options` (default: the server's) to `parser` (defaults suppressed, so
    explicit flags can be told apart)."""
    options_module.add_arguments(parser, OPTIONS if options is None else options, title)


def build_parser(prog: str = "lmcache-server") -> argparse.ArgumentParser:
    """The parser of `lmcache-server` (and of `lmcache server`)."""
    parser = ConfigArgumentParser(
        prog=prog,
        description="Run the LMCache KV-cache server: the L1/L2 storage stack and the HTTP admin API.",
        argument_default=argparse.SUPPRESS,
    )
    add_arguments(parser)
    return parser


def config_from_namespace(
    namespace: argparse.Namespace | Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    *,
    options: Sequence[OptionSpec] | None = None,
    config_cls: Callable[..., Any] | None = None,
) -> Any:
    """Merge explicit flags (`namespace`, defaults suppressed) with env vars, the config file and
    defaults, in that order of precedence; raise ConfigError naming the offending source.
    Builds a ServerConfig unless another option table and config class are given."""
    return config_from_sources(
        namespace,
        env,
        options=OPTIONS if options is None else options,
        config_cls=ServerConfig if config_cls is None else config_cls,
    )


def load_config(
    argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None, prog: str = "lmcache-server"
) -> ServerConfig:
    """Parse `argv` (default: sys.argv[1:]) into a ServerConfig. Errors raise ConfigError;
    `--help` exits through argparse as usual."""
    namespace = build_parser(prog).parse_args(argv)
    config: ServerConfig = config_from_namespace(namespace, env)
    return config


# The generic machinery moved to options.py; these names stay importable from here.
__all__ = [
    "MIN_TOKEN_LENGTH",
    "OptionSpec",
    "build_options",
    "check_fields",
    "check_fraction",
    "check_non_empty",
    "check_port",
    "check_positive",
    "check_token",
    "one_of",
    "option",
    "read_config_file",
]
