"""Per-operation DEBUG log lines of the data path (op, client, keys, duration), off by default."""

from __future__ import annotations

import logging

LOGGER_NAME = "lmcache.datapath"
"""The logger of these lines: `--log-level DEBUG` turns them on with everything else,
`GET /loglevel?logger_name=lmcache.datapath&level=DEBUG` turns on only them, at run time."""


class OperationLog:
    """One line per data-path request, for a frontend to call when a request ends:
    `op=STORE client=3f2a… keys=4 duration_ms=1.234 ok=true request_id=req-42`.

    Disabled (the default, INFO), `record()` is one level check: no formatting, no allocation
    beyond the call, so it may sit on every request of the hot path."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(LOGGER_NAME)

    @property
    def enabled(self) -> bool:
        """Whether lines are written now (check it before computing costly fields)."""
        return self._log.isEnabledFor(logging.DEBUG)

    def record(
        self, op: str, *, client: str, keys: int, duration_s: float, ok: bool = True, **fields: object
    ) -> None:
        """Log one finished operation; `fields` (request_id, model_name, instance, hits...) are
        appended as `name=value`, sorted by name."""
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        extra = "".join(f" {name}={value}" for name, value in sorted(fields.items()))
        self._log.debug(
            "op=%s client=%s keys=%d duration_ms=%.3f ok=%s%s",
            op, client, keys, duration_s * 1000.0, "true" if ok else "false", extra,
        )
