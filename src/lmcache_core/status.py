"""Status composition: every component reports a dict with `is_healthy`; parents nest children."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger(__name__)


@runtime_checkable
class StatusReporter(Protocol):
    """Anything that can describe itself for the /status tree."""

    def report_status(self) -> dict[str, Any]:
        """Own fields plus `is_healthy: bool`; must be cheap (no long locks, no I/O waits)."""
        ...


def safe_report(reporter: StatusReporter) -> dict[str, Any]:
    """Call `report_status()`; a reporter that raises, or returns no `is_healthy`, is unhealthy."""
    try:
        report = reporter.report_status()
    except Exception as exc:  # a broken child must not break the whole tree
        log.exception("report_status failed for %r", reporter)
        return {"is_healthy": False, "error": f"report_status failed: {type(exc).__name__}: {exc}"}
    if not isinstance(report, dict):
        return {"is_healthy": False, "error": f"report_status returned {type(report).__name__}"}
    if not isinstance(report.get("is_healthy"), bool):
        report = dict(report)
        report["is_healthy"] = False
        report.setdefault("error", "report_status did not say is_healthy")
    return report


def compose_status(
    fields: Mapping[str, Any],
    children: Mapping[str, StatusReporter] | None = None,
    *,
    healthy: bool = True,
) -> dict[str, Any]:
    """Assemble one node: `fields`, each child's report nested under its name, and
    `is_healthy` = `healthy` and every child healthy. `is_healthy` comes first in the dict."""
    nested = {name: safe_report(child) for name, child in (children or {}).items()}
    is_healthy = bool(healthy) and all(report["is_healthy"] for report in nested.values())
    out: dict[str, Any] = {"is_healthy": is_healthy}
    out.update({k: v for k, v in fields.items() if k != "is_healthy"})
    out.update(nested)
    return out


def unhealthy_paths(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted paths of the deepest unhealthy nodes of a status tree (what an operator looks at)."""
    paths: list[str] = []
    for name, child in tree.items():
        if isinstance(child, Mapping) and "is_healthy" in child:
            path = f"{prefix}{name}"
            sub = unhealthy_paths(child, path + ".")
            if sub:
                paths.extend(sub)
            elif child.get("is_healthy") is False:
                paths.append(path)
    return paths
