"""The core's error hierarchy; frontends map these to HTTP codes and CLI exit codes in one place."""

from __future__ import annotations


class LMCacheError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidKeyError(LMCacheError, ValueError):
    """An ObjectKey (or its JSON / storage-name form) is malformed; the message names the field."""


class ConfigError(LMCacheError, ValueError):
    """A configuration value is invalid; the message names the flag or field."""


class InvalidValueError(ConfigError):
    """One value an operator gave is malformed or out of range (a size, an operation name): HTTP
    400 even where a body's other validation failures answer 422 (LMCache 0.5.6's own checks
    vs its model validation)."""


class PluginError(LMCacheError):
    """A plugin misbehaved: duplicate registration, unknown kind, bad hook implementation."""


class InvalidRequestError(LMCacheError, ValueError):
    """A request is malformed or asks for something the operation does not do (HTTP 400)."""


class NotInitializedError(LMCacheError):
    """A component was used before it was started (maps to HTTP 503)."""


class NotFoundError(LMCacheError, KeyError):
    """A named thing (quota, adapter, context) does not exist (maps to HTTP 404)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConflictError(LMCacheError):
    """The operation conflicts with the current state (maps to HTTP 409)."""


class ForbiddenOperationError(LMCacheError):
    """The operation is not allowed on this target (maps to HTTP 403)."""


class RegistrationError(LMCacheError, ValueError):
    """An engine registration that cannot be served (an object that cannot fit in L1, say)."""


class UnavailableError(LMCacheError):
    """What the operation needs is not there now: no L2 adapter, no engine registered for the
    model, the fleet store not answering (maps to HTTP 503); retrying later may succeed."""


class NotSupportedError(LMCacheError):
    """The target cannot do this operation (a KV layout without checksums; maps to HTTP 501)."""


class UnprocessableError(LMCacheError, ValueError):
    """A well-formed request whose body fails validation (maps to HTTP 422); the message names
    the field."""


class UpstreamError(LMCacheError):
    """A server this process called on a client's behalf failed or could not be reached (maps
    to HTTP 502)."""


class BackendUnavailableError(UnavailableError):
    """An L2 adapter's backend cannot be used (missing bucket, unwritable path, dead endpoint);
    the message names the problem for an operator."""


class BackendUnreachableError(BackendUnavailableError):
    """An L2 backend did not answer at all (connection refused, timed out, reset), or its
    circuit breaker is open. The circuit-breaking wrapper counts these, and only these: an
    answer that refuses (missing object, access denied) proves the backend reachable."""


class CorruptObjectError(LMCacheError):
    """A stored object failed verification (bad header, wrong length, checksum mismatch). A
    backend raises it from `get_into` after removing the object; the caller sees a miss."""
