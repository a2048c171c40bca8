"""Settings section: The HTTP admin server and the process around it: its socket, state directory, shared-memory name, ready file, drain, config file."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_non_empty, check_port, check_positive, option
from lmcache_frontends.settings.values import check_shm_suffix


@dataclass(frozen=True)
class AdminSettings:
    """The HTTP admin server and the process around it: its socket, state directory, shared-memory name, ready file, drain, config file."""

    http_host: str = option("127.0.0.1", "Address the HTTP admin server binds.", check=check_non_empty)
    http_port: int = option(8080, "Port of the HTTP admin server (0 = pick a free port).", check=check_port)
    state_dir: str | None = option(
        None, "Directory for state that survives a restart (quotas). Unset = memory only.", check=check_non_empty
    )
    shm_name: str | None = option(
        None,
        "Suffix of the L1 shared-memory segment name (lmcache_l1_pool_<suffix>); default: srv-<pid>-<start ticks>.",
        check=check_shm_suffix,
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
