"""JSON error bodies and the one place where core errors map to HTTP status codes."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from flask import Response, jsonify

from lmcache_core.cache_ops import CacheOperations
from lmcache_core.errors import (
    ConfigError,
    ConflictError,
    ForbiddenOperationError,
    InvalidKeyError,
    InvalidRequestError,
    InvalidValueError,
    LMCacheError,
    NotFoundError,
    NotInitializedError,
    NotSupportedError,
    PluginError,
    UnavailableError,
    UnprocessableError,
    UpstreamError,
)
from lmcache_core.plugin import RouteContext
from lmcache_core.plugin.route_context import ENGINE_NOT_INITIALIZED
from lmcache_core.ports import ListingNotSupportedError

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"

@dataclass(frozen=True)
class ErrorStatus:
    """One row of the map: a core error type, its HTTP status, and its status where it answers
    a request body (a `ConfigError` raised while applying an operator's body is that body
    failing validation: 422, as LMCache 0.5.6's model validation answers)."""

    error: type[BaseException]
    status: int
    body_status: int | None = None


# The one map from typed core errors to HTTP statuses, for every admin route (the app's error
# handlers and the routes that answer an error themselves). Most specific first:
# InvalidValueError is a ConfigError, InvalidKeyError and ConfigError are ValueErrors.
ERROR_STATUSES: tuple[ErrorStatus, ...] = (
    ErrorStatus(UnprocessableError, 422),
    ErrorStatus(InvalidKeyError, 400),
    ErrorStatus(InvalidRequestError, 400),
    ErrorStatus(InvalidValueError, 400),
    ErrorStatus(ConfigError, 400, body_status=422),
    ErrorStatus(NotFoundError, 404),
    ErrorStatus(ConflictError, 409),
    ErrorStatus(ForbiddenOperationError, 403),
    ErrorStatus(NotInitializedError, 503),
    ErrorStatus(UnavailableError, 503),
    ErrorStatus(UpstreamError, 502),
    ErrorStatus(NotSupportedError, 501),
    ErrorStatus(ListingNotSupportedError, 501),
    ErrorStatus(PluginError, 500),
)
UNLISTED_CORE_ERROR_STATUS = 400
"""An LMCacheError of a type the map does not list: a refusal of the request, not a bug."""


def status_for(exc: BaseException, *, of_body: bool = False) -> int | None:
    """The HTTP status of a core error, or None for errors that are bugs (answered as 500).
    `of_body`: the error answers applying a request body (see `ErrorStatus.body_status`)."""
    for row in ERROR_STATUSES:
        if isinstance(exc, row.error):
            return row.body_status if of_body and row.body_status is not None else row.status
    if isinstance(exc, LMCacheError):
        return UNLISTED_CORE_ERROR_STATUS
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


def domain_error(exc: LMCacheError, *, detail: bool = False, of_body: bool = False) -> Response:
    """The answer to a core error raised by an operation: its mapped status and message (a bug,
    mapped to 500, is logged and answered with a fixed message). `detail` adds the message as
    `detail`, the field LMCache 0.5.6's clients read; `of_body` as in `status_for`."""
    status = status_for(exc, of_body=of_body) or 500
    message = str(exc)
    if status == 500:
        log.error("admin operation failed", exc_info=exc)
        message = INTERNAL_ERROR
    return json_error(status, message, **({"detail": message} if detail else {}))


def cache_operations(context: RouteContext) -> CacheOperations | None:
    """The running server's cache operations, or None while the engine is not started: the
    routes that answer in LMCache 0.5.6's order (body first, then the engine) answer 503 then."""
    return context.app().cache_ops if context.started else None
