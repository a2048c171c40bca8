"""Server configuration: one frozen dataclass, loaded from flags > LMCACHE_* env > config file >
defaults. Its settings are declared in sections (`settings/`: data path, admin, security,
readiness, L1, L2, fleet, observability); the generic option machinery is `options.py`."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmcache_core.errors import ConfigError
from lmcache_frontends import options as options_module
from lmcache_frontends.options import (
    MIN_TOKEN_LENGTH,
    ConfigArgumentParser,
    OptionSpec,
    build_options,
    check_fields,
    check_fraction,
    check_non_empty,
    check_port,
    check_positive,
    check_token,
    check_value,
    config_from_sources,
    one_of,
    option,
    read_config_file,
)
from lmcache_frontends.settings.admin import AdminSettings
from lmcache_frontends.settings.data_path import DataPathSettings
from lmcache_frontends.settings.fleet import FleetSettings
from lmcache_frontends.settings.l1 import L1Settings
from lmcache_frontends.settings.l2 import L2Settings
from lmcache_frontends.settings.observability import ObservabilitySettings
from lmcache_frontends.settings.readiness import ReadinessSettings
from lmcache_frontends.settings.security import SecuritySettings
from lmcache_frontends.settings.values import (  # the vocabulary, importable from here as before
    ENV_PREFIX,
    HASH_ALGORITHMS,
    LOG_LEVELS,
    REDACTED,
    SECRET_FIELD_RE,
    TRANSFER_MODES,
    parse_l1_manager,
)

# --------------------------------------------------------------------------- option table


@dataclass(frozen=True)
class ServerConfig(
    ObservabilitySettings,
    FleetSettings,
    L2Settings,
    L1Settings,
    ReadinessSettings,
    SecuritySettings,
    AdminSettings,
    DataPathSettings,
):
    """Every setting of one lmcache-server process; validated on construction. Its fields are
    the sections' (`lmcache_frontends/settings/`), in the order of the bases read right to left:
    flags, `--help`, env names and `/config` stay in one order."""

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
            k: (REDACTED if SECRET_FIELD_RE.search(k) and v not in (None, "") else _redact_mapping(v))
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


# Names other modules import from here: the settings' vocabulary (settings/values.py) and the
# generic machinery (options.py) moved out, and stay importable from here.
__all__ = [
    "ENV_PREFIX",
    "HASH_ALGORITHMS",
    "LOG_LEVELS",
    "OPTIONS",
    "OPTIONS_BY_NAME",
    "REDACTED",
    "TRANSFER_MODES",
    "ServerConfig",
    "add_arguments",
    "build_parser",
    "config_from_namespace",
    "load_config",

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
