"""Settings section: Readiness probing (`GET /readyz`)."""

from __future__ import annotations

from dataclasses import dataclass

from lmcache_frontends.options import check_positive, option


@dataclass(frozen=True)
class ReadinessSettings:
    """Readiness probing (`GET /readyz`)."""

    readyz_timeout_seconds: float = option(
        2.0, "GET /readyz: deadline of each L2 adapter check.", check=check_positive
    )
