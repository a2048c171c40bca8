"""docs/architecture.md describes the code as it is: every port and implementation class its ports
table names is defined in the tree, and every room (module or package path) it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "architecture.md"
# Where the doc's names may live: our code and the example plugin a third party would copy.
CODE_ROOTS = (REPO / "src", REPO / "examples")

_TICKED = re.compile(r"`([^`]+)`")
_CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")
# A room: a module (`x.py`, `a/b.py`) or a package (`a/`, `src/a/b/`), as the doc writes them.
_ROOM = re.compile(r"^(?:[\w.-]+/)*(?:[\w-]+\.py|[\w.-]+/)$")
_HEADING = re.compile(r"^#+ ")


def _defined_classes() -> set[str]:
    names: set[str] = set()
    for root in CODE_ROOTS:
        for path in root.rglob("*.py"):
            if ".venv" in path.parts:
                continue
            names.update(re.findall(r"^\s*class (\w+)\b", path.read_text(encoding="utf-8"), re.M))
    return names


def _tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(the text that introduces it: its section heading and the prose since, header cells, body
    rows) for each markdown table."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    intro: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if _HEADING.match(line):
            intro = [line]
        elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= {"-", ":"}:
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            tables.append(("\n".join(intro), header, rows))
            intro = intro[:1]  # the next table is introduced by the heading and its own prose
            continue
        else:
            intro.append(line)
        i += 1
    return tables


def _exists_under(base: Path, room: str) -> bool:
    return (base / room.removeprefix("src/")).exists() or (REPO / room).exists()


def _exists_somewhere(room: str) -> bool:
    """A relative room (`zmq/kv_caches.py`, `l2/listener.py`) exists if some path in the tree ends
    with it."""
    if (REPO / room).exists() or (REPO / "src" / room).exists():
        return True
    parts = Path(room.rstrip("/")).parts
    for root in CODE_ROOTS:
        for path in root.rglob(parts[-1]):
            if ".venv" not in path.parts and path.parts[-len(parts) :] == parts:
                if room.endswith("/") == path.is_dir():
                    return True
    return False


def architecture_problems(text: str, classes: set[str]) -> list[str]:
    """What in `text` (an architecture doc) does not match the tree."""
    problems: list[str] = []
    for intro, header, rows in _tables(text):
        if header[:2] == ["port", "implemented by"]:
            for row in rows:
                for name in _TICKED.findall(row[0]):
                    if _CLASS_NAME.match(name) and name not in classes:
                        problems.append(f"port {name} is not defined")
                for name in _TICKED.findall(row[1]):
                    if _CLASS_NAME.match(name) and name not in classes:
                        problems.append(f"port {row[0]} lists {name}, which is not defined")
        elif header[0] == "module":
            # A rooms table: its first column is relative to the package its introduction names
            # last (`## The core (`src/lmcache_core/`)`, "The `dax` package (`.../l2/dax/`)").
            bases = [b for b in _TICKED.findall(intro) if _ROOM.match(b) and b.endswith("/") and "/" in b[:-1]]
            bases.reverse()
            base = REPO / "src" / bases[0].removeprefix("src/") if bases else REPO / "src"
            for row in rows:
                for room in _TICKED.findall(row[0]):
                    if _ROOM.match(room) and not _exists_under(base, room):
                        problems.append(f"room {room} (under {base.relative_to(REPO)}) is missing")
    # Anywhere else, a path-like name (`lmcache_core/l1/arenas.py`, `zmq/kv_caches.py`, `l1/`).
    for token in _TICKED.findall(text):
        if "/" in token and _ROOM.match(token) and not _exists_somewhere(token):
            problems.append(f"room {token} is missing")
    return sorted(set(problems))


def test_architecture_doc_names_only_classes_and_rooms_that_exist() -> None:
    assert architecture_problems(DOC.read_text(encoding="utf-8"), _defined_classes()) == []


def test_the_check_catches_a_stale_implementation_and_a_missing_room() -> None:
    stale = (
        "## Ports\n\n| port | implemented by | why |\n|---|---|---|\n"
        "| `MemoryPool` | `SharedMemoryPool`, `GhostPool` (gone) | x |\n"
        "| `KVTransfer` | CUDA IPC | y |\n\n"
        "## Rooms (`lmcache_adapters/l2/`)\n\n| module | job |\n|---|---|\n"
        "| `stack.py`, `vanished.py` | z |\n\n"
        "The package (`lmcache_adapters/l2/dax/`):\n\n| module | job |\n|---|---|\n| `sizes.py`, `stack.py` | w |\n\n"
        "The pool lives in `lmcache_adapters/memory/nowhere.py`; `lmcache_core/l1/` is real.\n"
    )
    assert architecture_problems(stale, _defined_classes()) == [
        "port KVTransfer is not defined",
        "port `MemoryPool` lists GhostPool, which is not defined",
        "room lmcache_adapters/memory/nowhere.py is missing",
        "room stack.py (under src/lmcache_adapters/l2/dax) is missing",
        "room vanished.py (under src/lmcache_adapters/l2) is missing",
    ]
