"""`lmcache`: the command-line entry point; each subcommand is one entry of SUBCOMMANDS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from lmcache_core.errors import ConfigError
from lmcache_frontends import version

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REJECTED = 2
EXIT_INTERRUPTED = 130


class CLIArgumentParser(argparse.ArgumentParser):
    """Usage errors raise ConfigError, so every CLI error exits 1 with one message."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


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

    return main_from_namespace(namespace, prog="lmcache server")


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "server",
        "run the KV-cache server (the same flags as lmcache-server)",
        _configure_server,
        _run_server,
        # Suppressed defaults let the server tell explicit flags from env vars and files.
        argument_default=argparse.SUPPRESS,
    ),
)


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lmcache` console script; returns the exit code."""
    try:
        namespace = build_parser().parse_args(argv)
    except ConfigError as exc:
        print(f"lmcache: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return int(namespace._run(namespace))
    except KeyboardInterrupt:
        print("lmcache: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
