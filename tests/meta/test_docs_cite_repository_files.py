"""The docs cite only files that are in the repository (no workspace paths, no missing files)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

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
