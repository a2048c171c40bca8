"""Audit log lines for state-changing admin calls: who, what, when, outcome."""

from __future__ import annotations

import logging
from typing import Any

from flask import request

audit_log = logging.getLogger("lmcache.audit")


def audit(action: str, outcome: str, **details: Any) -> None:
    """Log one line for a state-changing call made in the current request."""
    who = request.remote_addr or "-"
    extra = " ".join(f"{k}={v!r}" for k, v in details.items() if v is not None)
    audit_log.info(
        "audit who=%s action=%s route=%s %s outcome=%s%s",
        who,
        action,
        request.method,
        request.path,
        outcome,
        f" {extra}" if extra else "",
    )
