"""The "Endpoint overview" table of docs/http-api.md names every route a full server serves, and
the docs cite only files that are in the repository."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from lmcache_frontends.admin.app import create_app
from lmcache_frontends.admin.openapi import rule_to_openapi_path
from lmcache_frontends.config import ServerConfig
from lmcache_frontends.testing import builtin_plugins, in_memory_stack

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "http-api.md"
_ROW_RE = re.compile(r"^\| (GET|POST|PUT|DELETE|PATCH) \| (.+?) \|")


@pytest.fixture(scope="module")
def app() -> Iterator[Flask]:
    """Every built-in route group, the data path's included (what lmcache-server serves)."""
    import lmcache_frontends.zmq.plugin as data_path

    stack = in_memory_stack(ServerConfig(l2_adapters=('{"type": "mock"}',)), plugins=builtin_plugins(data_path))
    yield create_app(stack)
    stack.close()


def overview_rows(text: str) -> set[tuple[str, str]]:
    """(method, path) of each row of the overview table, aliases in the path cell included."""
    section = text.split("## Endpoint overview", 1)[1].split("\n## ", 1)[0]
    rows: set[tuple[str, str]] = set()
    for line in section.splitlines():
        match = _ROW_RE.match(line)
        if match:
            rows.update((match.group(1), path) for path in re.findall(r"`(/[^`]*)`", match.group(2)))
    return rows


def test_the_overview_table_lists_every_served_route(app: Flask) -> None:
    rows = overview_rows(DOC.read_text(encoding="utf-8"))
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            served.update((m, rule_to_openapi_path(rule.rule)) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"})
    assert sorted(f"{m} {p}" for m, p in served - rows) == []
    assert sorted(f"{m} {p}" for m, p in rows - served) == []


def test_the_overview_check_would_catch_a_missing_row() -> None:
    text = "## Endpoint overview\n\n| GET | `/healthcheck` (also `/api/healthcheck`) | x |\n\n## Next\n| GET | `/x` | y |"
    assert overview_rows(text) == {("GET", "/healthcheck"), ("GET", "/api/healthcheck")}


_LINK_RE = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_MD_NAME_RE = re.compile(r"(?<![\w/.-])([A-Z][A-Za-z_-]*\.md)\b")
_CODE_PATH_RE = re.compile(r"`((?:\.\./|\./)?(?:docs|src|tests|benchmarks|scripts|deploy|examples|\.\./shared)/[\w./-]+)`")


def test_docs_cite_only_files_in_the_repository() -> None:
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "deploy").rglob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for target in _LINK_RE.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).resolve().exists():
                broken.append(f"{doc.relative_to(REPO)} links {target}")
        for target in _CODE_PATH_RE.findall(text):
            path = target.split(":", 1)[0].rstrip(".")
            if not (REPO / path.removeprefix("./")).exists():
                broken.append(f"{doc.relative_to(REPO)} cites {target}")
        for name in _MD_NAME_RE.findall(text):  # PROTOCOL.md, SPEC.md: workspace files, not ours
            if not any(p.name == name for p in REPO.rglob(name) if ".venv" not in p.parts and ".tox" not in p.parts):
                broken.append(f"{doc.relative_to(REPO)} names {name}")
    assert broken == []
