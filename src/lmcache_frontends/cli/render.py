"""Terminal rendering for the CLI: the status tree, humanised bytes, colour rules, 80 columns."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterable
from typing import Any, TextIO

WIDTH = 80
INDENT = "  "
_GREEN, _RED, _YELLOW, _RESET = "\033[32m", "\033[31m", "\033[33m", "\033[0m"


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, colour: str, enabled: bool) -> str:
    return f"{colour}{text}{_RESET}" if enabled else text


def health_tag(healthy: bool, colour: bool) -> str:
    return paint("HEALTHY", _GREEN, colour) if healthy else paint("UNHEALTHY", _RED, colour)


def warn(text: str, colour: bool) -> str:
    return paint(text, _YELLOW, colour)


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; below 1 KiB the exact count."""
    if abs(n) < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def is_bytes_field(name: str) -> bool:
    n = name.lower()
    return n in ("bytes", "nbytes", "size_bytes") or n.endswith("_bytes") or n.startswith("bytes_") or "_bytes_" in n


def scalar(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and is_bytes_field(name):
        return human_bytes(value)
    if isinstance(value, float):
        if name.endswith("ratio") and 0 <= value <= 1:
            return f"{value:.1%}"
        return format(value, ".3f").rstrip("0").rstrip(".")
    return str(value)


def fit(line_prefix: str, text: str, width: int = WIDTH) -> list[str]:
    """`prefix + text` wrapped to `width` columns; continuation lines indented under the text."""
    sub = " " * min(len(line_prefix) + 2, width // 2)
    return textwrap.wrap(
        line_prefix + text,
        width=width,
        subsequent_indent=sub,
        break_long_words=True,
        break_on_hyphens=False,
        drop_whitespace=True,
    ) or [line_prefix.rstrip()]


def _indent(depth: int) -> str:
    # Deep trees keep their shape but never eat more than a third of the width.
    return INDENT * min(depth, WIDTH // (3 * len(INDENT)))


def status_tree(doc: Any, *, colour: bool, title: str = "status") -> list[str]:
    """The /status document as an indented tree: one node per line, dicts with `is_healthy`
    tagged HEALTHY/UNHEALTHY, lists shown by index, byte fields humanised."""
    lines: list[str] = []

    def node(name: str, value: Any, depth: int) -> None:
        pad = _indent(depth)
        if isinstance(value, dict):
            healthy = value.get("is_healthy")
            tag = f"  {health_tag(bool(healthy), colour)}" if isinstance(healthy, bool) else ""
            head = fit(pad, f"{name}:" if not tag else name)
            if not value:
                lines.extend(fit(pad, f"{name}: {{}}"))
                return
            lines.extend(head[:-1])
            lines.append(head[-1] + tag)
            for key, child in value.items():
                if key == "is_healthy":
                    continue
                node(str(key), child, depth + 1)
        elif isinstance(value, list):
            if not value:
                lines.extend(fit(pad, f"{name}: []"))
                return
            lines.extend(fit(pad, f"{name}:"))
            for i, child in enumerate(value):
                node(f"[{i}]", child, depth + 1)
        else:
            lines.extend(fit(pad, f"{name}: {scalar(name, value)}"))

    node(title, doc, 0)
    return lines


def table(rows: Iterable[tuple[str, str]], *, key_width: int = 16) -> list[str]:
    """`key  value` lines, values wrapped under themselves within 80 columns."""
    out: list[str] = []
    for key, value in rows:
        prefix = f"  {key:<{key_width}} "
        wrapped = textwrap.wrap(value, width=WIDTH - len(prefix), break_long_words=True) or [""]
        out.append(prefix + wrapped[0])
        out.extend(" " * len(prefix) + rest for rest in wrapped[1:])
    return out
