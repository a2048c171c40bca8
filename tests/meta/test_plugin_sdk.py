"""A third-party plugin needs only `lmcache_sdk`: the worked example imports nothing else of ours,
and the SDK's names are the very objects the server uses (not copies that could drift)."""

from __future__ import annotations

import ast
from pathlib import Path

import lmcache_sdk
import lmcache_sdk.testing
from lmcache_adapters import plugin as builtin_plugin
from lmcache_adapters.testing import L2AdapterContract, StorageBackendContract
from lmcache_core.clock import ManualClock
from lmcache_core.plugin import registry
from lmcache_core.ports import NullMetricsSink
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.container import ServerAdapterContext

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "lmcache-adapter-sqlite"
OURS = ("lmcache_core", "lmcache_adapters", "lmcache_frontends")


def _our_imports(path: Path, root: Path = REPO) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        names += [f"{path.relative_to(root)}: {m}" for m in modules if m.split(".")[0] in OURS]
    return names


def test_the_sqlite_example_imports_only_the_sdk() -> None:
    # The example's own sources, not what a pip install of it left behind (build/, *.egg-info).
    files = sorted(f for f in EXAMPLE.rglob("*.py") if not {"build", "dist"} & set(f.relative_to(EXAMPLE).parts))
    assert files, "the example is missing"
    assert [name for f in files for name in _our_imports(f)] == []
    assert any("lmcache_sdk" in f.read_text(encoding="utf-8") for f in files)


def test_the_check_would_see_an_import_from_the_server_rings(tmp_path: Path) -> None:
    bad = tmp_path / "plugin.py"
    bad.write_text("from lmcache_adapters.plugin import hookimpl\nimport lmcache_core.keys, lmcache_sdk\n", encoding="utf-8")
    assert _our_imports(bad, tmp_path) == ["plugin.py: lmcache_adapters.plugin", "plugin.py: lmcache_core.keys"]


def test_the_sdk_hands_out_the_servers_own_objects() -> None:
    assert lmcache_sdk.hookimpl is builtin_plugin.hookimpl
    assert lmcache_sdk.config_field is registry.config_field
    assert lmcache_sdk.L2AdapterRegistry is registry.L2AdapterRegistry
    assert lmcache_sdk.testing.StorageBackendContract is StorageBackendContract
    assert lmcache_sdk.testing.L2AdapterContract is L2AdapterContract
    assert set(lmcache_sdk.__all__) <= set(dir(lmcache_sdk))
    assert set(lmcache_sdk.testing.__all__) <= set(dir(lmcache_sdk.testing))


def test_the_context_the_server_builds_is_an_sdk_adapter_context(tmp_path: Path) -> None:
    context = ServerAdapterContext(
        config=ServerConfig(state_dir=str(tmp_path)), clock=ManualClock(), index=1, name="cold", metrics=NullMetricsSink()
    )
    assert isinstance(context, lmcache_sdk.AdapterContext)
    assert (context.name, context.index, context.state_dir) == ("cold", 1, tmp_path)
    assert not isinstance(object(), lmcache_sdk.AdapterContext)


def test_a_plugin_written_against_the_sdk_registers_and_builds(tmp_path: Path) -> None:
    """A plugin module typed against the SDK alone registers a kind whose factory gets a context."""
    seen: list[lmcache_sdk.AdapterContext] = []

    class Plugin:
        @staticmethod
        def _create(config: dict[str, object], context: lmcache_sdk.AdapterContext) -> lmcache_sdk.L2Adapter:
            seen.append(context)
            from lmcache_adapters.l2.mock import create_mock_adapter

            return create_mock_adapter(dict(config), context)

        @lmcache_sdk.hookimpl
        def lmcache_register_l2_adapters(self, registry: lmcache_sdk.L2AdapterRegistry) -> None:
            registry.register("sdk-probe", self._create, fields={"capacity_bytes": lmcache_sdk.config_field(int)})

    pm = lmcache_sdk.testing.LMCachePluginManager(load_entrypoints=False)
    pm.register(Plugin(), "sdk-probe-plugin")
    spec, fields = pm.l2_adapter_registry().parse('{"type": "sdk-probe", "capacity_bytes": 1048576}')
    context = ServerAdapterContext(config=ServerConfig(), clock=ManualClock(), index=0, name="probe")
    adapter = spec.factory(fields, context)
    try:
        assert seen == [context]
        assert isinstance(adapter, lmcache_sdk.L2Adapter)
    finally:
        adapter.close()
