"""CLI rendering: colour only on a terminal without NO_COLOR, humanised bytes, 80 columns."""

from __future__ import annotations

import io

import pytest

from lmcache_frontends.cli import render


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert render.use_colour(Tty()) and not render.use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not render.use_colour(Tty())


def test_tree_tags_health_humanises_bytes_and_indexes_lists() -> None:
    doc = {
        "is_healthy": False,
        "gpu_ids": [3, 5],
        "child": {"is_healthy": True, "used_bytes": 3 << 30, "usage_ratio": 0.25},
        "long": "x" * 300,
    }
    plain = render.status_tree(doc, colour=False, title="root")
    assert plain[0] == "root  UNHEALTHY"
    assert "  gpu_ids:" in plain and "    [1]: 5" in plain
    assert "  child  HEALTHY" in plain and "    used_bytes: 3.0 GiB" in plain and "    usage_ratio: 25.0%" in plain
    assert all(len(line) <= 80 for line in plain)
    coloured = render.status_tree(doc, colour=True, title="root")
    assert "\033[31mUNHEALTHY\033[0m" in coloured[0] and "\033[32mHEALTHY" in "\n".join(coloured)


def test_human_bytes() -> None:
    assert render.human_bytes(512) == "512 B"
    assert render.human_bytes(1536) == "1.5 KiB"
    assert render.human_bytes(5 << 40) == "5.0 TiB"
