"""JSON error bodies and the one place where core errors map to HTTP status codes."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, jsonify

from lmcache_core.errors import (
    ConfigError,
    ConflictError,
    ForbiddenOperationError,
    InvalidKeyError,
    InvalidRequestError,
    LMCacheError,
    NotFoundError,
    NotInitializedError,
    NotSupportedError,
    PluginError,
    UnavailableError,
    UnprocessableError,
    UpstreamError,
)
from lmcache_core.ports import ListingNotSupportedError

log = logging.getLogger(__name__)

ENGINE_NOT_INITIALIZED = "engine not initialized"
INTERNAL_ERROR = "internal error"

# Most specific first: InvalidKeyError and ConfigError are also ValueErrors.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (UnprocessableError, 422),
    (InvalidKeyError, 400),
    (InvalidRequestError, 400),
    (ConfigError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ForbiddenOperationError, 403),
    (NotInitializedError, 503),
    (UnavailableError, 503),
    (UpstreamError, 502),
    (NotSupportedError, 501),
    (ListingNotSupportedError, 501),
    (PluginError, 500),
)


def status_for(exc: BaseException) -> int | None:
    """The HTTP status of a core error, or None for errors that are bugs (answered as 500)."""
    for error_type, status in _STATUS_BY_ERROR:
        if isinstance(exc, error_type):
            return status
    if isinstance(exc, LMCacheError):
        return 400
    return None


def json_error(http_status: int, message: str, /, **fields: Any) -> Response:
    """An error response: the route's documented fields (`status`, `reason`...) plus `error`,
    which every error body carries so clients can rely on one field."""
    body = dict(fields)
    body["error"] = message
    response = jsonify(body)
    response.status_code = http_status
    return response


def engine_not_initialized(**fields: Any) -> Response:
    """The 503 answer of routes that need the engine while it is still starting (or failed)."""
    return json_error(503, ENGINE_NOT_INITIALIZED, **fields)


def domain_error(exc: LMCacheError, *, detail: bool = False) -> Response:
    """The answer to a core error raised by an operation: its mapped status and message (a bug,
    mapped to 500, is logged and answered with a fixed message). `detail` adds the message as
    `detail`, the field LMCache 0.5.6's clients read."""
    status = status_for(exc) or 500
    message = str(exc)
    if status == 500:
        log.error("admin operation failed", exc_info=exc)
        message = INTERNAL_ERROR
    return json_error(status, message, **({"detail": message} if detail else {}))


def cache_operations(services: Any) -> Any:
    """The services' cache operations (`CacheOperations`), or None while the engine is not
    running: the routes answer 503 then."""
    return None if services.engine is None else services.cache_ops
