"""Start-up exposure checks: no unauthenticated admin API or data path off loopback unless asked."""

from __future__ import annotations

import ipaddress
from typing import Any

from lmcache_core.errors import ConfigError

ALLOW_ADMIN_FLAG = "--allow-unauthenticated-admin"
ALLOW_DATA_PATH_FLAG = "--allow-unauthenticated-data-path"


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; any other name or address (including the
    wildcards 0.0.0.0 and ::) counts as exposed."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def admin_has_tokens(config: Any) -> bool:
    """Whether any admin-API token is configured (flags, env, or a non-empty token file)."""
    from lmcache_frontends.admin.auth import TokenStore

    return TokenStore.from_config(config).enabled


def check_http_exposure(
    config: Any,
    *,
    what: str = "the admin API",
    host_flag: str = "--http-host",
    env_hint: str = "LMCACHE_ADMIN_TOKEN/LMCACHE_READ_TOKEN",
    harm: str = "clear caches, read /env and change the configuration",
) -> list[str]:
    """Refuse an HTTP API on a non-loopback `config.http_host` without tokens unless
    --allow-unauthenticated-admin; returns the warning of the allowed case."""
    if is_loopback(config.http_host) or admin_has_tokens(config):
        return []
    if not getattr(config, "allow_unauthenticated_admin", False):
        raise ConfigError(
            f"refusing to serve {what} on non-loopback {host_flag} {config.http_host} without a token: "
            f"set --admin-token/--read-token (or {env_hint}) or --token-file, "
            f"or pass {ALLOW_ADMIN_FLAG} to accept anyone who can reach it"
        )
    return [f"{what} on {config.http_host} is unauthenticated ({ALLOW_ADMIN_FLAG}): anyone who reaches it can {harm}"]


def check_exposure(config: Any) -> list[str]:
    """Refuse (ConfigError) a configuration that serves the admin API or the ZeroMQ data path on
    a non-loopback address without authentication, unless the matching allow flag is given;
    returns the warnings to log and show in /status for the allowed cases."""
    from lmcache_frontends.zmq.curve import load_curve_config

    warnings = check_http_exposure(config)
    curve = load_curve_config(config)  # validates the key files whatever the address
    if not is_loopback(config.host) and (curve is None or curve.authorized_keys_dir is None):
        if not getattr(config, "allow_unauthenticated_data_path", False):
            missing = "--zmq-curve-secret-key-file and --zmq-curve-authorized-keys" if curve is None else "--zmq-curve-authorized-keys"
            raise ConfigError(
                f"refusing to serve the ZeroMQ data path on non-loopback --host {config.host} without CURVE "
                f"authentication: set {missing}, or pass {ALLOW_DATA_PATH_FLAG} "
                "(anyone who reaches the socket can read every tenant's KV cache)"
            )
        warnings.append(
            f"the ZeroMQ data path on {config.host} accepts unauthenticated clients ({ALLOW_DATA_PATH_FLAG}): "
            "anyone who reaches it can read and write every tenant's KV cache"
        )
    return warnings


def security_status(warnings: list[str], config: Any) -> dict[str, Any]:
    """The `security` block of /status (warnings do not make the server unhealthy)."""
    return {
        "security": {
            "warnings": list(warnings),
            "admin_authentication": admin_has_tokens(config),
            "unauthenticated_admin": bool(getattr(config, "allow_unauthenticated_admin", False))
            and not is_loopback(config.http_host) and not admin_has_tokens(config),
            "data_path_curve": getattr(config, "zmq_curve_secret_key_file", None) is not None,
        },
        "is_healthy": True,
    }
