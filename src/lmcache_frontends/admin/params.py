"""Query-parameter parsing shared by the admin routes (tenant salts, model names)."""

from __future__ import annotations

from collections.abc import Mapping

from werkzeug.datastructures import MultiDict

from lmcache_core.errors import InvalidKeyError, UnprocessableError
from lmcache_core.keys import validate_cache_salt, validate_model_name

DEFAULT_SALT_ALIAS = "_default"
"""How URLs address the empty cache_salt (the default tenant)."""


def salt_from_url(value: str) -> str:
    """A cache_salt as written in a URL: `_default` (or empty) is the empty salt; InvalidKeyError
    when the salt is not valid."""
    salt = "" if value in ("", DEFAULT_SALT_ALIAS) else value
    return validate_cache_salt(salt)


def single(args: MultiDict[str, str] | Mapping[str, str], name: str) -> str | None:
    """The one value of query parameter `name`, None when absent; InvalidKeyError when repeated."""
    if isinstance(args, MultiDict):
        values = args.getlist(name)
        if len(values) > 1:
            raise InvalidKeyError(f"query parameter {name} given {len(values)} times; give it once")
        return values[0] if values else None
    return args.get(name)


def bounded_int(name: str, raw: str | None, default: int, *, lo: int, hi: int) -> int:
    """Query parameter `name` (its raw value, None when absent) as an integer in [lo, hi];
    UnprocessableError (422) naming the parameter otherwise."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UnprocessableError(f"query parameter {name} must be an integer") from None
    if not lo <= value <= hi:
        raise UnprocessableError(f"query parameter {name} must be in [{lo}, {hi}]")
    return value


def optional_salt(args: MultiDict[str, str] | Mapping[str, str], name: str = "cache_salt") -> str | None:
    """Parse an optional cache_salt query parameter; errors name the parameter."""
    raw = single(args, name)
    if raw is None:
        return None
    try:
        return salt_from_url(raw)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"invalid query parameter {name}: {_tail(exc, 'cache_salt')}") from None


def optional_model_name(args: MultiDict[str, str] | Mapping[str, str], name: str = "model_name") -> str | None:
    """Parse an optional model_name query parameter; errors name the parameter."""
    raw = single(args, name)
    if raw is None:
        return None
    try:
        return validate_model_name(raw)
    except InvalidKeyError as exc:
        raise InvalidKeyError(f"invalid query parameter {name}: {_tail(exc, 'model_name')}") from None


def _tail(exc: Exception, field: str) -> str:
    # "cache_salt must not contain '/'" -> "must not contain '/'": the parameter is named already.
    text = str(exc)
    return text[len(field) + 1 :] if text.startswith(field + " ") else text
