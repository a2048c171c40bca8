"""Settings section: Who may call: admin and read tokens, token file, unauthenticated overrides, CURVE keys, the audit log."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_non_empty, check_token, option


@dataclass(frozen=True)
class SecuritySettings:
    """Who may call: admin and read tokens, token file, unauthenticated overrides, CURVE keys, the audit log."""

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
