"""Request bodies and error bodies of LMCache 0.5.6's routes (`/cache/*`, `/config*`,
`/reconfigure/<backend>/l2|l1/*`), as its FastAPI server validates and answers them.

0.5.6's clients read `detail`: a string for an operation's own refusals, a list of problems
(`type`, `loc`, `msg`, `input`[, `ctx`]) for a body that fails validation (422). The bodies here
carry that, and `error` beside it (a one-line summary), as every error body of this server does.
Validation follows pydantic's lax rules for JSON (an integer may come as "2", a boolean as "yes");
each problem is reported, in the order the fields are declared."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from flask import Response, request

from lmcache_core.cache_ops import CacheOperations
from lmcache_core.plugin import RouteContext
from lmcache_frontends.admin.audit import audit
from lmcache_frontends.admin.errors import cache_operations, json_error

Loc = tuple[str | int, ...]

_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_MISSING = object()

SERVER_NOT_INITIALIZED = "server not initialized"
"""0.5.6's 503 detail on its `/cache/*` and `/config/adapters` routes while the engine starts."""


def detail_error(status: int, message: str) -> Response:
    """An operation's refusal as 0.5.6 answers it: `{"detail": message}` (plus `error`)."""
    return json_error(status, message, detail=message)


class BodyInvalid(Exception):
    """The body failed validation: the 422 answer, with every problem found."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__(problems[0]["msg"] if problems else "invalid body")
        self.problems = problems

    def response(self) -> Response:
        first = self.problems[0]
        where = ".".join(str(p) for p in first["loc"])
        summary = f"{where}: {first['msg']}" if where else first["msg"]
        if len(self.problems) > 1:
            summary += f" (and {len(self.problems) - 1} more problem(s))"
        return json_error(422, summary, detail=self.problems)


def _quoted(choices: Sequence[str]) -> str:
    items = [f"'{c}'" for c in choices]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


@dataclass(frozen=True)
class Field:
    """One body field: its name, kind and default (`_MISSING`: required).

    Kinds: `str`, `int`, `bool`, `enum` / `literal` (one of `choices`), `int_list`,
    `strict_int_or_str` (a size: an integer that is not a boolean or float, or a string) and
    `model` (a nested object described by `fields`, or a list of them with `many`)."""

    name: str
    kind: str
    default: Any = _MISSING
    nullable: bool = False
    choices: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()
    many: bool = False
    class_name: str = ""
    ge: int | None = None
    le: int | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING


@dataclass
class _Checker:
    root: Loc
    pydantic_urls: bool
    problems: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, loc: Loc, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> None:
        problem: dict[str, Any] = {"type": kind, "loc": list(self.root + loc), "msg": msg, "input": value}
        if ctx is not None:
            problem["ctx"] = ctx
        if self.pydantic_urls:
            problem["url"] = f"https://errors.pydantic.dev/2.14/v/{kind}"
        self.problems.append(problem)

    # -- scalars --------------------------------------------------------------------------

    def as_str(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, str):
            return value
        self.add("string_type", loc, "Input should be a valid string", value)
        return _MISSING

    def as_int(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if value.is_integer():
                return int(value)
            self.add("int_from_float", loc, "Input should be a valid integer, got a number with a fractional part", value)
            return _MISSING
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                self.add("int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", value)
                return _MISSING
        self.add("int_type", loc, "Input should be a valid integer", value)
        return _MISSING

    def as_bool(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int | float | str):
            self.add("bool_parsing", loc, "Input should be a valid boolean, unable to interpret input", value)
        else:
            self.add("bool_type", loc, "Input should be a valid boolean", value)
        return _MISSING

    def as_choice(self, value: Any, loc: Loc, choices: tuple[str, ...], kind: str) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        expected = _quoted(choices)
        self.add(kind, loc, f"Input should be {expected}", value, {"expected": expected})
        return _MISSING

    def as_strict_int_or_str(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        self.add("int_type", loc + ("int",), "Input should be a valid integer", value)
        self.add("string_type", loc + ("str",), "Input should be a valid string", value)
        return _MISSING

    # -- composites -----------------------------------------------------------------------

    def value(self, spec: Field, value: Any, loc: Loc) -> Any:
        if value is None and spec.nullable:
            return None
        if spec.kind == "str":
            return self.as_str(value, loc)
        if spec.kind == "int":
            number = self.as_int(value, loc)
            if number is _MISSING:
                return number
            if spec.ge is not None and number < spec.ge:
                self.add("greater_than_equal", loc, f"Input should be greater than or equal to {spec.ge}", value, {"ge": spec.ge})
                return _MISSING
            if spec.le is not None and number > spec.le:
                self.add("less_than_equal", loc, f"Input should be less than or equal to {spec.le}", value, {"le": spec.le})
                return _MISSING
            return number
        if spec.kind == "bool":
            return self.as_bool(value, loc)
        if spec.kind in ("enum", "literal"):
            return self.as_choice(value, loc, spec.choices, spec.kind if spec.kind == "enum" else "literal_error")
        if spec.kind == "strict_int_or_str":
            return self.as_strict_int_or_str(value, loc)
        if spec.kind == "int_list":
            if not isinstance(value, list):
                self.add("list_type", loc, "Input should be a valid list", value)
                return _MISSING
            items = [self.as_int(v, loc + (i,)) for i, v in enumerate(value)]
            return _MISSING if any(v is _MISSING for v in items) else items
        if spec.kind == "model":
            if spec.many:
                if not isinstance(value, list):
                    self.add("list_type", loc, "Input should be a valid list", value)
                    return _MISSING
                items = [self.model(spec.fields, v, loc + (i,), spec.class_name) for i, v in enumerate(value)]
                return _MISSING if any(v is _MISSING for v in items) else items
            return self.model(spec.fields, value, loc, spec.class_name)
        raise AssertionError(f"unknown field kind {spec.kind!r}")

    def model(self, fields: Sequence[Field], value: Any, loc: Loc, class_name: str, *, forbid_extra: bool = False) -> Any:
        if not isinstance(value, dict):
            self.add(
                "dataclass_type",
                loc,
                f"Input should be a dictionary or an instance of {class_name}",
                value,
                {"class_name": class_name},
            )
            return _MISSING
        out: dict[str, Any] = {}
        ok = True
        for spec in fields:
            if spec.name not in value:
                if spec.required:
                    self.add("missing", loc + (spec.name,), "Field required", value)
                    ok = False
                else:
                    out[spec.name] = spec.default
                continue
            parsed = self.value(spec, value[spec.name], loc + (spec.name,))
            ok = ok and parsed is not _MISSING
            out[spec.name] = parsed
        if forbid_extra:
            known = {f.name for f in fields}
            for name, extra in value.items():
                if name not in known:
                    self.add("extra_forbidden", loc + (name,), "Extra inputs are not permitted", extra)
                    ok = False
        return out if ok else _MISSING


def parse_query(fields: Sequence[Field]) -> dict[str, Any]:
    """Validate query parameters (a repeated one counts by its last value); problems are
    located under `query`."""
    checker = _Checker(("query",), pydantic_urls=False)
    out: dict[str, Any] = {}
    for spec in fields:
        values = request.args.getlist(spec.name)
        if not values:
            if spec.required:
                checker.add("missing", (spec.name,), "Field required", None)
            out[spec.name] = None if spec.required else spec.default
            continue
        out[spec.name] = checker.value(spec, values[-1], (spec.name,))
    if checker.problems:
        raise BodyInvalid(checker.problems)
    return out


def _raw_json() -> Any:
    """The decoded body; `_MISSING` when there is none. BodyInvalid for a body that is not JSON,
    or (as FastAPI) one sent with a non-JSON content type."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return _MISSING
    mimetype = request.mimetype or ""
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        return _NotJSON(raw.decode("utf-8", errors="replace"))
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        error = getattr(exc, "msg", None) or str(exc)
        position = getattr(exc, "pos", 0)
        raise BodyInvalid(
            [{"type": "json_invalid", "loc": ["body", position], "msg": "JSON decode error", "input": {}, "ctx": {"error": error}}]
        ) from None


@dataclass(frozen=True)
class _NotJSON:
    text: str


def parse_body(fields: Sequence[Field], class_name: str, *, optional: bool = False) -> dict[str, Any] | None:
    """Validate the request's JSON body as 0.5.6's request dataclass `class_name` (unknown
    fields ignored). An absent body (or JSON null) is None when `optional`, else a 422 problem."""
    body = _raw_json()
    checker = _Checker(("body",), pydantic_urls=False)
    if body is _MISSING or body is None:
        if optional:
            return None
        checker.add("missing", (), "Field required", None)
        raise BodyInvalid(checker.problems)
    if isinstance(body, _NotJSON):
        body = body.text
    out = checker.model(fields, body, (), class_name)
    if checker.problems:
        raise BodyInvalid(checker.problems)
    return dict(out)


def parse_object_body() -> dict[str, Any]:
    """A body that must be a JSON object of any fields (0.5.6's `payload: dict[str, object]`)."""
    body = _raw_json()
    if body is _MISSING or body is None:
        raise BodyInvalid([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    if isinstance(body, _NotJSON) or not isinstance(body, dict):
        value = body.text if isinstance(body, _NotJSON) else body
        raise BodyInvalid([{"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary", "input": value}])
    return body


def parse_model_body(fields: Sequence[Field]) -> dict[str, Any]:
    """Validate the JSON body as a pydantic model that forbids unknown fields (0.5.6's L1 DAX
    request bodies): problems located under `body`."""
    body = _raw_json()
    if body is _MISSING or body is None:
        raise BodyInvalid([{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}])
    if isinstance(body, _NotJSON) or not isinstance(body, dict):
        value = body.text if isinstance(body, _NotJSON) else body
        raise BodyInvalid(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ["body"],
                    "msg": "Input should be a valid dictionary or object to extract fields from",
                    "input": value,
                }
            ]
        )
    return validate_model(fields, body, root=("body",), pydantic_urls=False)


def validate_model(
    fields: Sequence[Field], body: dict[str, Any], *, root: Loc = (), pydantic_urls: bool = True
) -> dict[str, Any]:
    """Validate an already-decoded object against `fields`, unknown fields forbidden; problems
    located from `root` (0.5.6's reconfigure bodies are validated after decoding, without the
    `body` prefix and with pydantic's documentation links)."""
    checker = _Checker(root, pydantic_urls=pydantic_urls)
    out = checker.model(fields, body, (), "", forbid_extra=True)
    if checker.problems:
        raise BodyInvalid(checker.problems)
    return dict(out)


def accept_change(
    context: RouteContext, action: str, fields: Sequence[Field], class_name: str, *, optional: bool = False
) -> tuple[dict[str, Any] | None, CacheOperations] | Response:
    """The start of a state-changing 0.5.6 `/cache/*` route, in 0.5.6's order: the body's
    validation (422), then the engine (503 `server not initialized`), each refusal audited under
    `action`. Returns (the body, the cache operations), or the refusal to answer."""
    try:
        body = parse_body(fields, class_name, optional=optional)
    except BodyInvalid as exc:
        audit(action, "rejected", reason=str(exc))
        return exc.response()
    ops = cache_operations(context)
    if ops is None:
        audit(action, "refused: engine not initialized")
        return detail_error(503, SERVER_NOT_INITIALIZED)
    return body, ops


def enum_values(enum: type[Enum]) -> tuple[str, ...]:
    """The wire values of a string enum, in declaration order."""
    return tuple(str(member.value) for member in enum)
