"""The core's error hierarchy; frontends map these to HTTP codes and CLI exit codes in one place."""

from __future__ import annotations


class LMCacheError(Exception):
    """Base of every error the server raises on purpose."""


class InvalidKeyError(LMCacheError, ValueError):
    """An ObjectKey (or its JSON / storage-name form) is malformed; the message names the field."""


class ConfigError(LMCacheError, ValueError):
    """A configuration value is invalid; the message names the flag or field."""


class PluginError(LMCacheError):
    """A plugin misbehaved: duplicate registration, unknown kind, bad hook implementation."""


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
