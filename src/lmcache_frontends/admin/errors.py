"""JSON error bodies and the one place where core errors map to HTTP status codes."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from lmcache_core.errors import (
    ConfigError,
    ConflictError,
    ForbiddenOperationError,
    InvalidKeyError,
    LMCacheError,
    NotFoundError,
    NotInitializedError,
    PluginError,
    UnavailableError,
    UnprocessableError,
    UpstreamError,
)
from lmcache_core.ports import ListingNotSupportedError

ENGINE_NOT_INITIALIZED = "engine not initialized"
INTERNAL_ERROR = "internal error"

# Most specific first: InvalidKeyError and ConfigError are also ValueErrors.
_STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (UnprocessableError, 422),
    (InvalidKeyError, 400),
    (ConfigError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (ForbiddenOperationError, 403),
    (NotInitializedError, 503),
    (UnavailableError, 503),
    (UpstreamError, 502),
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
