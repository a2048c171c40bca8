"""A typed facade over pluggy's PluginManager for the `lmcache` plugin project."""

from __future__ import annotations

import logging
from importlib import metadata
from types import SimpleNamespace
from typing import Any

import pluggy

from lmcache_core.errors import PluginError
from lmcache_core.plugin import FrontendRegistry, L2AdapterRegistry
from lmcache_core.plugin import spec as core_spec

log = logging.getLogger(__name__)

_hookspec = pluggy.HookspecMarker(core_spec.PROJECT_NAME)


def _spec_namespace() -> SimpleNamespace:
    # The core declares its hooks as plain functions (it must not import pluggy); mark them here.
    return SimpleNamespace(**{fn.__name__: _hookspec(fn) for fn in core_spec.HOOKSPECS})


class LMCachePluginManager:
    """Loads plugins (entry points of the `lmcache` group, or objects registered directly) and
    calls their hooks with typed registries.

    `load_entrypoints=False` gives an empty manager for tests; register plugin objects with
    `register()`. A misspelled hook implementation (`lmcache_*` name with no spec) fails loudly,
    and so does a duplicate entry-point name (pluggy would skip it silently)."""

    def __init__(self, *, load_entrypoints: bool = True) -> None:
        self._pm = pluggy.PluginManager(core_spec.PROJECT_NAME)
        self._pm.add_hookspecs(_spec_namespace())
        self._entry_points: dict[str, str] = {}
        if load_entrypoints:
            self.load_entrypoints()

    # -- loading --------------------------------------------------------------------------

    def load_entrypoints(self, group: str = core_spec.ENTRY_POINT_GROUP) -> list[str]:
        """Load every plugin advertised in `group`; returns their names."""
        loaded: list[str] = []
        for ep in sorted(metadata.entry_points(group=group), key=lambda e: e.name):
            dist = getattr(ep.dist, "name", "?") if getattr(ep, "dist", None) else "?"
            where = f"{ep.value} (from {dist})"
            if ep.name in self._entry_points:
                if self._entry_points[ep.name] == where:
                    continue  # the same distribution seen twice on sys.path
                raise PluginError(
                    f"two plugins use the entry-point name {ep.name!r}: {self._entry_points[ep.name]} and {where}"
                )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"cannot load plugin {ep.name!r} ({where}): {type(exc).__name__}: {exc}") from exc
            self._entry_points[ep.name] = where
            self.register(plugin, ep.name)
            loaded.append(ep.name)
        return loaded

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (module, class instance...) implementing hooks."""
        if name is not None and self._pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        try:
            registered = self._pm.register(plugin, name)
        except ValueError as exc:
            raise PluginError(str(exc)) from exc
        if registered is None:
            raise PluginError(f"plugin {name or plugin!r} is blocked or already registered")
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(plugin)
            raise PluginError(f"plugin {registered!r}: {exc}") from exc
        log.debug("registered plugin %s", registered)
        return registered

    def plugin_names(self) -> list[str]:
        return sorted(name for name, _ in self._pm.list_name_plugin())

    def entry_points(self) -> dict[str, str]:
        """Loaded entry-point names and where each came from (for /status and `lmcache describe`)."""
        return dict(self._entry_points)

    # -- hooks ----------------------------------------------------------------------------

    def l2_adapter_registry(self) -> L2AdapterRegistry:
        """A fresh registry filled by every plugin's `lmcache_register_l2_adapters`."""
        registry = L2AdapterRegistry()
        self._call_each("lmcache_register_l2_adapters", registry)
        return registry

    def frontend_registry(self) -> FrontendRegistry:
        """A fresh registry filled by every plugin's `lmcache_register_frontends`."""
        registry = FrontendRegistry()
        self._call_each("lmcache_register_frontends", registry)
        return registry

    def _call_each(self, hook_name: str, registry: Any) -> None:
        # Call implementations one by one so a registration error names the plugin responsible.
        caller = getattr(self._pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order (pluggy itself calls LIFO)
            if impl.hookwrapper or impl.wrapper:
                continue  # wrappers observe registration; they register nothing themselves
            registry.current_source = impl.plugin_name
            kwargs = {"registry": registry} if "registry" in impl.argnames else {}
            try:
                impl.function(**kwargs)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc
        registry.current_source = ""
