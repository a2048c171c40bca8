"""The generic option machinery of our processes' configurations: one frozen dataclass per
process whose fields are declared with `option(...)`, read from flags > env > config file >
defaults, every value type- and range-checked with errors that name its source.

`lmcache_frontends.config` (the server) and `lmcache_frontends.coordinator.config` (the
coordinator) declare their settings with it; neither reaches into the other."""

from __future__ import annotations

import argparse
import json
import math
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from lmcache_core.errors import ConfigError

_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False, "": False}

# --------------------------------------------------------------------------- value checks
# Each check takes the already-typed value and returns it (possibly normalised) or raises
# ValueError with a message that completes "<flag> ...".


def check_port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number in 0..65535 (0 = pick a free port), got {value}")
    return value


def check_positive(value: float) -> float:
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"must be > 0, got {value}")
    return value



def check_count(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be an integer >= 1, got {value}")
    return value



def check_fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError(f"must be in (0, 1], got {value}")
    return value


def one_of(choices: Sequence[str], *, ignore_case: bool = False) -> Callable[[str], str]:
    def check(value: str) -> str:
        for choice in choices:
            if value == choice or (ignore_case and value.lower() == choice.lower()):
                return choice
        raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return check


def check_non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value



MIN_TOKEN_LENGTH = 16


def check_token(value: str) -> str:
    # Never echo the value: the message ends up on stderr and in logs.
    if len(value) < MIN_TOKEN_LENGTH or any(c.isspace() for c in value):
        raise ValueError(f"must be at least {MIN_TOKEN_LENGTH} characters without whitespace (got {len(value)} characters)")
    return value



@dataclass(frozen=True)
class OptionSpec:
    """How one config field is spelt on the command line, in the environment and in files."""

    name: str
    flag: str
    env_var: str
    kind: type
    default: Any
    help: str
    section: str
    metavar: str | None = None
    check: Callable[[Any], Any] | None = None
    optional: bool = False
    repeatable: bool = False
    secret: bool = False

    @property
    def file_keys(self) -> tuple[str, ...]:
        """Keys accepted in a config file: the flag name with dashes or underscores, and the field name."""
        dashed = self.flag[2:]
        return tuple(dict.fromkeys((dashed, dashed.replace("-", "_"), self.name)))


def option(
    default: Any,
    help: str,
    *,
    section: str = "mp",
    flag: str | None = None,
    metavar: str | None = None,
    check: Callable[[Any], Any] | None = None,
    secret: bool = False,
) -> Any:
    return field(
        default=default,
        repr=not secret,  # a secret must not reach a log line through repr(config)
        metadata={"help": help, "section": section, "flag": flag, "metavar": metavar, "check": check, "secret": secret},
    )


def choices_metavar(choices: Sequence[str]) -> str:
    return "{" + ",".join(choices) + "}"



def build_options(config_cls: type, env_prefix: str) -> tuple[OptionSpec, ...]:
    """The option table of a config dataclass whose fields are declared with `option(...)`."""
    specs = []
    for f in fields(config_cls):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        annotation = str(f.type)  # a string: this module uses postponed annotations
        kind: type
        if annotation.startswith("bool"):
            kind = bool
        elif annotation.startswith("float"):
            kind = float
        elif annotation.startswith("int"):
            kind = int
        else:
            kind = str
        specs.append(
            OptionSpec(
                name=f.name,
                flag=flag,
                env_var=env_prefix + flag[2:].upper().replace("-", "_"),
                kind=kind,
                default=default,
                help=meta["help"],
                section=meta["section"],
                metavar=meta["metavar"],
                check=meta["check"],
                optional="None" in annotation,
                repeatable=annotation.startswith("tuple"),
                secret=meta["secret"],
            )
        )
    return tuple(specs)



# --------------------------------------------------------------------------- coercion


def coerce_scalar(spec: OptionSpec, value: Any) -> Any:
    """Turn a string (flag, env) or a native file value into the option's type; ValueError if not."""
    if value is None:
        if spec.optional:
            return None
        raise ValueError("must be set")
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        raise ValueError(f"must be true or false (1/0, yes/no, on/off), got {value!r}")
    if spec.kind is int:
        if isinstance(value, bool):
            raise ValueError(f"must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip(), 10)
            except ValueError:
                pass
        raise ValueError(f"must be an integer, got {value!r}")
    if spec.kind is float:
        if isinstance(value, bool):
            raise ValueError(f"must be a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        return value
    if spec.repeatable and isinstance(value, dict):
        return json.dumps(value)
    raise ValueError(f"must be a string, got {type(value).__name__}")


def check_value(spec: OptionSpec, value: Any, label: str) -> Any:
    """Type-check and range-check a typed value; ConfigError names `label` (the flag, env var...)."""
    try:
        if spec.repeatable:
            if not isinstance(value, tuple | list):
                raise ValueError(f"must be a list, got {type(value).__name__}")
            checked: list[Any] = []
            for i, item in enumerate(value, start=1):
                try:
                    checked.append(spec.check(coerce_scalar(spec, item)) if spec.check else item)
                except ValueError as exc:
                    raise ValueError(f"#{i} {exc}") from None
            return tuple(checked) if checked != list(value) or not isinstance(value, tuple) else value
        value = coerce_scalar(spec, value)
        if value is None or spec.check is None:
            return value
        return spec.check(value)
    except ValueError as exc:
        raise ConfigError(f"{label} {exc}") from None


def check_fields(config: Any, options: Sequence[OptionSpec]) -> None:
    """Type- and range-check every option field of a frozen config in place (its __post_init__)."""
    for spec in options:
        value = getattr(config, spec.name)
        checked = check_value(spec, value, spec.flag)
        if checked is not value:
            object.__setattr__(config, spec.name, checked)


def env_value(spec: OptionSpec, raw: str) -> Any:
    if not spec.repeatable:
        return raw
    # A repeatable option in one variable: a JSON object, or a JSON array of them.
    stripped = raw.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{spec.env_var} is not valid JSON: {exc.msg} at char {exc.pos}") from None
        return [json.dumps(item) if isinstance(item, dict) else item for item in items]
    return [raw] if stripped else []


def file_value(spec: OptionSpec, value: Any) -> Any:
    if spec.repeatable and not isinstance(value, list | tuple):
        return [value]
    return value


# --------------------------------------------------------------------------- config files


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a JSON or TOML config file (by suffix; .toml is TOML, anything else JSON)."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--config cannot read {str(p)!r}: {exc.strerror or exc}") from None
    try:
        if p.suffix.lower() == ".toml":
            data: Any = tomllib.loads(text.decode("utf-8"))
        else:
            data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config file {str(p)!r} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config file {str(p)!r} must hold an object/table of options")
    return data


def options_from_file(path: str, data: Mapping[str, Any], options: Sequence[OptionSpec]) -> dict[str, tuple[Any, str]]:
    by_key = {key: spec for spec in options for key in spec.file_keys}
    out: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        spec = by_key.get(key)
        if spec is None or spec.name == "config_file":
            raise ConfigError(f"config file {path!r}: unknown option {key!r}")
        if spec.name in out:
            raise ConfigError(f"config file {path!r}: option {spec.flag} given twice")
        out[spec.name] = (file_value(spec, value), f"config file {path!r}: {key} ({spec.flag})")
    return out



class ConfigArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise ConfigError (exit code 1 and one message, not 2)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def add_arguments(
    parser: argparse.ArgumentParser,
    options: Sequence[OptionSpec],
    title: str,
) -> None:
    """Add every flag of `options` to `parser` (defaults suppressed, so explicit flags can be
    told apart)."""
    group = parser.add_argument_group(title)
    for spec in options:
        default_txt = "unset" if spec.default in (None, ()) else repr(spec.default)
        kwargs: dict[str, Any] = {
            "dest": spec.name,
            "default": argparse.SUPPRESS,
            "help": f"{spec.help} [env {spec.env_var}; default {default_txt}]".replace("%", "%%"),
            "metavar": spec.metavar or spec.flag[2:].upper().replace("-", "_"),
        }
        if spec.repeatable:
            kwargs["action"] = "append"
        if spec.kind is bool:  # a switch: present = true (false comes from the env or a file)
            del kwargs["metavar"]
            kwargs.update(action="store_const", const=True)
        group.add_argument(spec.flag, **kwargs)


# --------------------------------------------------------------------------- sources


def config_from_sources(
    namespace: argparse.Namespace | Mapping[str, Any],
    env: Mapping[str, str] | None,
    *,
    options: Sequence[OptionSpec],
    config_cls: Callable[..., Any],
) -> Any:
    """Merge explicit flags (`namespace`, defaults suppressed) with env vars, the config file
    (the option named `config_file`, if any) and defaults, in that order of precedence, into
    `config_cls(**values)`; raise ConfigError naming the offending source."""
    given = dict(vars(namespace) if isinstance(namespace, argparse.Namespace) else namespace)
    environ = os.environ if env is None else env

    chosen: dict[str, tuple[Any, str]] = {}
    for spec in options:
        if spec.name in given:
            chosen[spec.name] = (given[spec.name], spec.flag)
        elif spec.env_var in environ:
            chosen[spec.name] = (env_value(spec, environ[spec.env_var]), f"{spec.env_var} ({spec.flag})")

    config_path = chosen.get("config_file", (None, ""))[0]
    from_file: dict[str, tuple[Any, str]] = {}
    if config_path:
        from_file = options_from_file(config_path, read_config_file(config_path), options)

    values: dict[str, Any] = {}
    for spec in options:
        if spec.name in chosen:
            raw, label = chosen[spec.name]
        elif spec.name in from_file:
            raw, label = from_file[spec.name]
        else:
            continue
        values[spec.name] = check_value(spec, raw, label)
    return config_cls(**values)
