"""The architecture's import contracts hold, and they would catch a wrong import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _run_lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(project / "src"))
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(project / "pyproject.toml")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(ROOT / "pyproject.toml", project / "pyproject.toml")
    return project


def test_the_tree_keeps_its_contracts() -> None:
    result = _run_lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "bad_import",
    ["flask", "torch", "zmq", "boto3", "pluggy", "prometheus_client", "lmcache_frontends"],
)
def test_a_core_module_importing_an_outer_library_fails_the_contract(tmp_path: Path, bad_import: str) -> None:
    project = _copy_project(tmp_path)
    module = project / "src" / "lmcache_core" / "keys.py"
    module.write_text(f"import {bad_import}  # noqa\n" + module.read_text())
    result = _run_lint_imports(project)
    assert result.returncode != 0, f"importing {bad_import} from the core was not caught"
    assert "BROKEN" in result.stdout
