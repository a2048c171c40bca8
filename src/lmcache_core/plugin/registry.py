"""Typed registries handed to plugin hooks: L2 adapter kinds and frontends."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.errors import ConfigError, PluginError
from lmcache_core.plugin.context import AdapterContext
from lmcache_core.ports import L2Adapter, StorageBackend

if TYPE_CHECKING:
    from lmcache_core.plugin.route_context import RouteContext
    from lmcache_core.plugin.server_context import ServerContext, ServerFrontend

L2AdapterFactory = Callable[[dict[str, Any], AdapterContext], L2Adapter | StorageBackend]
"""`factory(config, context) -> StorageBackend | L2Adapter`; `config` is the validated JSON
without `type`, `context` the server's `AdapterContext` for this adapter. A bare StorageBackend
gets the standard wrappers (threads, locks, metrics)."""

HttpRoutesFactory = Callable[["RouteContext"], Any]
"""`factory(context) -> RouteGroup` (its blueprint, scopes and OpenAPI; a bare flask.Blueprint
is still accepted, its `openapi` and `scopes` attributes read as the declaration); `context` is
the typed RouteContext (`lmcache_core.plugin.route_context`)."""

ServerFrontendFactory = Callable[["ServerContext"], "ServerFrontend"]
"""`factory(context) -> ServerFrontend` (start, stop, report_status, endpoints); `context` is the
typed ServerContext (`lmcache_core.plugin.server_context`)."""

_JSON_TYPE_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
}


@dataclass(frozen=True)
class ConfigField:
    """One field of an adapter's JSON configuration."""

    types: tuple[type, ...]
    required: bool = False
    help: str = ""

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) and bool not in self.types:
            return False  # JSON true is not an integer
        if isinstance(value, int) and not isinstance(value, bool) and float in self.types:
            return True
        return isinstance(value, self.types)

    def type_names(self) -> str:
        return " or ".join(_JSON_TYPE_NAMES.get(t, t.__name__) for t in self.types)


def config_field(*types: type, required: bool = False, help: str = "") -> ConfigField:
    """Shorthand: `config_field(str, required=True, help="...")`."""
    return ConfigField(types=types, required=required, help=help)


@dataclass(frozen=True)
class L2AdapterSpec:
    """A registered adapter kind: its factory and the fields its JSON config accepts."""

    kind: str
    factory: L2AdapterFactory
    fields: Mapping[str, ConfigField]
    description: str = ""
    source: str = ""


# Fields every adapter accepts; the storage manager (not the adapter) consumes them.
COMMON_FIELDS: Mapping[str, ConfigField] = {
    "eviction": config_field(dict, help="L2 eviction policy: {policy, trigger_watermark, eviction_ratio}"),
    "serde": config_field(dict, help="payload transform wrapper, e.g. {\"type\": \"zstd\"}"),
    "name": config_field(str, help="a label shown in /status and /l2/adapters"),
    "shared": config_field(
        bool, help="the adapter mounts a storage domain several servers share (one bucket): its fleet events say so"
    ),
}


class L2AdapterRegistry:
    """Adapter kinds by name. Registering a kind twice is an error that names both sources."""

    def __init__(self) -> None:
        self._specs: dict[str, L2AdapterSpec] = {}
        self.current_source = ""

    def register(
        self,
        kind: str,
        factory: L2AdapterFactory,
        *,
        fields: Mapping[str, ConfigField] | None = None,
        description: str = "",
    ) -> None:
        """Register `kind`; `fields` lists the config fields the factory accepts."""
        if not kind or not isinstance(kind, str) or not kind.replace("_", "").replace("-", "").isalnum():
            raise PluginError(f"invalid L2 adapter kind {kind!r}")
        if kind in self._specs:
            prev = self._specs[kind].source or "an earlier plugin"
            raise PluginError(
                f"L2 adapter kind {kind!r} registered twice (by {prev} and {self.current_source or 'another plugin'})"
            )
        clash = set(fields or {}) & set(COMMON_FIELDS)
        if clash:
            raise PluginError(f"adapter {kind!r} redefines reserved field(s): {', '.join(sorted(clash))}")
        self._specs[kind] = L2AdapterSpec(kind, factory, dict(fields or {}), description, self.current_source)

    def kinds(self) -> list[str]:
        return sorted(self._specs)

    def get(self, kind: str) -> L2AdapterSpec:
        try:
            return self._specs[kind]
        except KeyError:
            known = ", ".join(self.kinds()) or "none"
            raise ConfigError(f"unknown L2 adapter type {kind!r} (registered: {known})") from None

    def parse(self, raw: str | Mapping[str, Any]) -> tuple[L2AdapterSpec, dict[str, Any]]:
        """Validate one `--l2-adapter` value; return its spec and config (without `type`).

        Raises ConfigError naming the bad, missing or unknown field."""
        if isinstance(raw, str):
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--l2-adapter is not valid JSON: {exc.msg} at char {exc.pos}") from None
        else:
            obj = dict(raw)
        if not isinstance(obj, dict):
            raise ConfigError("--l2-adapter must be a JSON object")
        kind = obj.pop("type", None)
        if kind is None:
            raise ConfigError('--l2-adapter is missing the "type" field')
        if not isinstance(kind, str):
            raise ConfigError('--l2-adapter field "type" must be a string')
        spec = self.get(kind)
        allowed = {**COMMON_FIELDS, **spec.fields}
        for name, value in obj.items():
            if name not in allowed:
                raise ConfigError(
                    f"unknown field {name!r} for L2 adapter {kind!r} (accepted: {', '.join(sorted(allowed))})"
                )
            fld = allowed[name]
            if value is not None and not fld.accepts(value):
                raise ConfigError(
                    f"field {name!r} of L2 adapter {kind!r} must be {fld.type_names()}, got {type(value).__name__}"
                )
        for name, fld in spec.fields.items():
            if fld.required and obj.get(name) is None:
                raise ConfigError(f"L2 adapter {kind!r} requires field {name!r}")
        return spec, obj


@dataclass
class FrontendRegistry:
    """HTTP route groups (blueprints) and long-running server frontends, in registration order."""

    http_routes: dict[str, HttpRoutesFactory] = field(default_factory=dict)
    servers: dict[str, ServerFrontendFactory] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    current_source: str = ""

    def add_http_routes(self, name: str, factory: HttpRoutesFactory) -> None:
        """Mount the route group returned by `factory(context)` (a RouteContext) on the admin server."""
        self._check_new(f"http:{name}")
        self.http_routes[name] = factory

    def add_server(self, name: str, factory: ServerFrontendFactory) -> None:
        """Start `factory(context)` (a ServerContext) with the server: a ServerFrontend."""
        self._check_new(f"server:{name}")
        self.servers[name] = factory

    def _check_new(self, qualified: str) -> None:
        if qualified in self.sources:
            raise PluginError(
                f"frontend {qualified!r} registered twice (by {self.sources[qualified] or 'an earlier plugin'} "
                f"and {self.current_source or 'another plugin'})"
            )
        self.sources[qualified] = self.current_source
