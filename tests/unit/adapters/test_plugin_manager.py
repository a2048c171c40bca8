"""The plugin system: hooks, typed registries, entry points, loud failures."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pluggy
import pytest

from lmcache_adapters.plugin import hookimpl
from lmcache_adapters.plugin_manager import LMCachePluginManager
from lmcache_core.errors import ConfigError, PluginError
from lmcache_core.plugin import FrontendRegistry, L2AdapterRegistry
from lmcache_core.plugin.registry import config_field


class _FakeAdapter:
    kind = "fake"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


class FakePlugin:
    """What a third-party package would ship, registered without installing anything."""

    @hookimpl
    def lmcache_register_l2_adapters(self, registry: L2AdapterRegistry) -> None:
        registry.register(
            "fake",
            lambda config, services: _FakeAdapter(config),
            fields={"depth": config_field(int, required=True, help="how deep")},
            description="a fake adapter",
        )

    @hookimpl
    def lmcache_register_frontends(self, registry: FrontendRegistry) -> None:
        registry.add_http_routes("fake_routes", lambda services: "blueprint")


def test_a_registered_plugin_object_contributes_its_adapter_kind() -> None:
    pm = LMCachePluginManager(load_entrypoints=False)
    pm.register(FakePlugin(), "fake-plugin")
    registry = pm.l2_adapter_registry()
    assert registry.kinds() == ["fake"]
    spec, config = registry.parse('{"type": "fake", "depth": 3}')
    adapter = spec.factory(config, None)
    assert isinstance(adapter, _FakeAdapter) and adapter.config == {"depth": 3}
    assert spec.source == "fake-plugin"
    assert "fake_routes" in pm.frontend_registry().http_routes


def test_builtin_plugins_come_through_the_entry_point_group() -> None:
    pm = LMCachePluginManager()
    assert {"builtin_l2_adapters", "builtin_frontends"} <= set(pm.entry_points())
    assert "mock" in pm.l2_adapter_registry().kinds()


def test_misspelled_hook_fails_loudly() -> None:
    mark = pluggy.HookimplMarker("lmcache")

    class Typo:
        @mark
        def lmcache_register_l2_adapter(self, registry: Any) -> None:  # missing "s"
            pass

    pm = LMCachePluginManager(load_entrypoints=False)
    with pytest.raises(PluginError, match="lmcache_register_l2_adapter"):
        pm.register(Typo(), "typo")
    assert "typo" not in pm.plugin_names()


def test_duplicate_kind_names_both_plugins() -> None:
    pm = LMCachePluginManager(load_entrypoints=False)
    pm.register(FakePlugin(), "first")
    pm.register(FakePlugin(), "second")
    with pytest.raises(PluginError, match="registered twice.*first.*second"):
        pm.l2_adapter_registry()


def test_duplicate_plugin_name_is_refused() -> None:
    pm = LMCachePluginManager(load_entrypoints=False)
    pm.register(FakePlugin(), "same")
    with pytest.raises(PluginError, match="already registered"):
        pm.register(FakePlugin(), "same")


def test_a_hook_that_raises_is_reported_with_the_plugin_name() -> None:
    class Broken:
        @hookimpl
        def lmcache_register_l2_adapters(self, registry: Any) -> None:
            raise RuntimeError("boom")

    pm = LMCachePluginManager(load_entrypoints=False)
    pm.register(Broken(), "broken")
    with pytest.raises(PluginError, match="broken.*boom"):
        pm.l2_adapter_registry()


def test_duplicate_entry_point_names_are_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    import lmcache_adapters.plugin_manager as pmod

    def ep(name: str, value: str, dist: str) -> Any:
        return SimpleNamespace(name=name, value=value, dist=SimpleNamespace(name=dist), load=lambda: FakePlugin())

    fake_eps = [ep("dup", "pkg_a.plugin", "pkg-a"), ep("dup", "pkg_b.plugin", "pkg-b")]
    monkeypatch.setattr(pmod.metadata, "entry_points", lambda group: fake_eps)
    with pytest.raises(PluginError, match="dup.*pkg_a.plugin.*pkg_b.plugin"):
        LMCachePluginManager()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ("{}", 'missing the "type" field'),
        ('{"type": "nope"}', "unknown L2 adapter type 'nope'"),
        ('{"type": "fake"}', "requires field 'depth'"),
        ('{"type": "fake", "depth": "3"}', "field 'depth' .* must be integer"),
        ('{"type": "fake", "depth": true}', "field 'depth' .* must be integer"),
        ('{"type": "fake", "depth": 3, "colour": 1}', "unknown field 'colour'"),
    ],
)
def test_adapter_config_errors_name_the_field(raw: str, message: str) -> None:
    pm = LMCachePluginManager(load_entrypoints=False)
    pm.register(FakePlugin(), "fake-plugin")
    with pytest.raises(ConfigError, match=message):
        pm.l2_adapter_registry().parse(raw)
