"""`lmcache`: the command-line entry point; each subcommand is one entry of SUBCOMMANDS.

argparse (stdlib) rather than click: the server's flags are already argparse (shared with
`lmcache-server`), the CLI must run with no dependency beyond the server's own, and nested
subcommands, env-var defaults and exit-code control are all we need."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from lmcache_core.errors import ConfigError
from lmcache_frontends import version

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 2
EXIT_INTERRUPTED = 130


class UsageError(ConfigError):
    """A command line argparse refused, with the usage line of the (sub)command it was for."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class CLIArgumentParser(argparse.ArgumentParser):
    """Usage errors raise UsageError, so every CLI error exits 1: the usage line of the
    subcommand, then one message, which lists the choices of a missing ACTION."""

    def error(self, message: str) -> NoReturn:
        for action in self._actions:
            # A subcommand's metavar (ACTION, COMMAND) hides its choices in argparse's message.
            if isinstance(action, argparse._SubParsersAction) and action.metavar and action.choices:
                if f"required: {action.metavar}" in message:
                    message += f" (choose from {', '.join(action.choices)})"
        raise UsageError(message, self.format_usage().strip())


@dataclass(frozen=True)
class Subcommand:
    """One `lmcache <name>` subcommand: how to add its flags and how to run it."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    argument_default: object = None


def _configure_server(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.config import add_arguments

    add_arguments(parser)


def _run_server(namespace: argparse.Namespace) -> int:
    from lmcache_frontends.server import main_from_namespace

    argv = getattr(namespace, "_argv", None)
    reexec = None if argv is None else ["-m", "lmcache_frontends.cli.main", *argv]
    return main_from_namespace(namespace, prog="lmcache server", reexec_args=reexec)


def _configure_coordinator(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.coordinator.config import add_arguments

    add_arguments(parser)


def _run_coordinator(namespace: argparse.Namespace) -> int:
    from lmcache_frontends.coordinator.main import run_namespace

    return run_namespace(namespace)


def _configure_status(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.cli.commands import configure_status

    configure_status(parser)


def _configure_common(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.cli.commands import add_common_options

    add_common_options(parser)


def _configure_kvcache_target(parser: argparse.ArgumentParser) -> None:
    # LMCache 0.5.6 spells these `describe kvcache` / `ping kvcache`: accept its spelling too.
    parser.add_argument("target", nargs="?", choices=("kvcache",), help="what to ask (LMCache 0.5.6 spelling; optional)")
    _configure_common(parser)


def _configure_quota(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.cli.commands import configure_quota

    configure_quota(parser)


def _configure_kvcache(parser: argparse.ArgumentParser) -> None:
    from lmcache_frontends.cli.commands import configure_kvcache

    configure_kvcache(parser)


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    def run(namespace: argparse.Namespace) -> int:
        from lmcache_frontends.cli import commands

        return int(getattr(commands, name)(namespace))

    return run


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "server",
        "run the KV-cache server (the same flags as lmcache-server)",
        _configure_server,
        _run_server,
        # Suppressed defaults let the server tell explicit flags from env vars and files.
        argument_default=argparse.SUPPRESS,
    ),
    Subcommand(
        "coordinator",
        "run the fleet coordinator (membership, cache events, quotas, key directory, routing scores)",
        _configure_coordinator,
        _run_coordinator,
        argument_default=argparse.SUPPRESS,
    ),
    Subcommand("status", "show the server's status tree (--json for the raw document)", _configure_status, _runner("RUN_STATUS")),
    Subcommand("describe", "a one-screen summary of the server", _configure_kvcache_target, _runner("RUN_DESCRIBE")),
    Subcommand("ping", "check health and round-trip time", _configure_kvcache_target, _runner("RUN_PING")),
    Subcommand("quota", "per-cache_salt budgets: set | get | delete | list", _configure_quota, _runner("RUN_QUOTA")),
    Subcommand(
        "kvcache",
        "per-request cache control: clear | info | pin | unpin | compress",
        _configure_kvcache,
        _runner("RUN_KVCACHE"),
    ),
)


def _add_bench(sub: Any, real: bool) -> None:
    # The bench needs torch; load it only when `lmcache bench` runs, so the other commands
    # start fast. `lmcache --help` still lists it.
    if real:
        from lmcache_frontends.cli.bench import add_bench_parser, run_bench

        parser = add_bench_parser(sub)
        parser.set_defaults(_run=run_bench)
    else:
        sub.add_parser("bench", help="benchmarks against a running server (lmcache bench server)")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = CLIArgumentParser(prog="lmcache", description="LMCache KV-cache server tools.")
    parser.add_argument("--version", action="version", version=f"lmcache {version.combined_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CLIArgumentParser)
    for command in SUBCOMMANDS:
        sp = sub.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            argument_default=command.argument_default,
        )
        command.configure(sp)
        sp.set_defaults(_run=command.run)
    args = list(sys.argv[1:] if argv is None else argv)
    _add_bench(sub, real=bool(args) and args[0] == "bench")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lmcache` console script; returns the exit code."""
    try:
        namespace = build_parser(argv).parse_args(argv)
    except UsageError as exc:
        print(f"{exc.usage}\nlmcache: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except ConfigError as exc:
        print(f"lmcache: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    # Run as the script, `lmcache server` may re-execute itself once; embedded (argv given), never.
    namespace._argv = list(sys.argv[1:]) if argv is None else None
    try:
        return int(namespace._run(namespace))
    except KeyboardInterrupt:
        print("lmcache: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
